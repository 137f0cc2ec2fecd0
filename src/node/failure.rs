//! A node's failure on its own loop, the one path the thread runtime and the simulator share:
//! a step whose user code (a `Storage`, a `Transport`, `command_size`, a command's `Clone` or
//! `Drop`) or core assertion panics becomes `Error::NodePanicked` ([`step_caught`]); a step
//! that fails (that panic, or `Error::Storage` from a failed write) fails the node
//! ([`Driver::fail`]): everything that waits on it is answered at once, its lease is
//! withdrawn, and from then on it takes no input until it is killed and restarted from its
//! storage.
//!
//! Owns no state: whoever runs the driver keeps the failure (the runtime in its `Node` and
//! shared slot, the simulator in its `Live`) and stops stepping the driver.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::apply::panic_message;
use super::driver::Driver;
use super::read::LeaseClock;
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::storage::Storage;
use crate::transport::Transport;
use crate::types::NodeId;

/// Runs `work` (one step, or one batch of input) on `node` (a driver, or what holds one),
/// catching a panic in it as node `id`'s failure, `Error::NodePanicked`: the driver may be
/// half updated, so the caller must then [`Driver::fail`] it. Once per step, never per entry:
/// on the hot path the cost is a landing pad.
pub(crate) fn step_caught<N, T>(
    id: NodeId,
    node: &mut N,
    work: impl FnOnce(&mut N) -> Result<T, Error>,
) -> Result<T, Error> {
    match catch_unwind(AssertUnwindSafe(|| work(node))) {
        Ok(result) => result,
        Err(payload) => Err(Error::NodePanicked { node: id, message: panic_message(&*payload) }),
    }
}

impl<S, St, T, L> Driver<S, St, T, L>
where
    S: StateMachine,
    St: Storage<S::Command>,
    T: Transport<S::Command>,
    L: LeaseClock,
{
    /// The node failed with `error` (a step's `NodePanicked` or `Storage`, or its state
    /// machine's failure): this driver takes no further part, and everything that waits on
    /// it hears `error` now ([`Driver::fail_waiting`]), never only at the kill (`NodeDown`,
    /// which a client may read as "never appended"). Either way a proposal's outcome is
    /// unknown: its write may have landed.
    ///
    /// NB: answering drops the user's reads and commands, whose `Drop` may panic: a second
    /// panic is logged and leaves the rest to be answered `NodeDown` as the driver drops.
    pub fn fail(&mut self, error: &Error) {
        tracing::error!(error = %error, "node failed");
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.fail_waiting(error))) {
            let message = panic_message(&*payload);
            tracing::error!(%message, "panic while answering a failed node's waiters");
        }
    }
}
