//! Reads in the simulator: a workload's read command becomes a `Request::Read` exactly as
//! `NodeHandle::read_async` builds one, so the simulated nodes serve it through the driver's
//! real read paths (ReadIndex, lease, follower read), and the history records it like any
//! operation: the linearizability checker then judges reads and writes together.

use super::client::ReadQuery;
use crate::node::{Applied, ReadFn, Responder};
use crate::state_machine::StateMachine;
use crate::types::Term;

/// The read of `command`, answered through `responder` once the node may run it.
pub(crate) fn read_request<S: StateMachine>(
    query: ReadQuery<S>,
    command: S::Command,
    responder: Responder<S::Output>,
) -> ReadFn<S> {
    Box::new(move |state| match state {
        Ok((sm, index)) => {
            let output = query(sm, &command);
            responder.finish(Ok(Applied { index, term: Term(0), output }));
        }
        Err(error) => responder.finish(Err(error)),
    })
}

pub(crate) mod caller;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod caller_tests;

#[cfg(test)]
mod sessions;
