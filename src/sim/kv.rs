//! The key-value workload ([`KvWorkload`]) and the bridge from the simulator's history to the
//! linearizability checker ([`check_kv_history`]).
//!
//! Owns no search: [`crate::linearizability`] decides; this module only converts.

use rand::rngs::SmallRng;
use rand::Rng;

use super::client::{HistoryOp, Workload};
use crate::kv::{KvCommand, KvOutput, KvStateMachine};
use crate::linearizability::{check_with_budget, CheckOutcome, Operation, Violation};

/// The most search steps the linearizability check spends on one key; past that it reports
/// [`CheckOutcome::Unknown`] instead of running for minutes.
pub const CHECK_BUDGET_PER_KEY: u64 = 2_000_000;

/// Put, Append and Get on a few keys. Every written value is unique (`c{client}-{seq};`), so
/// a lost, duplicated or reordered write shows in later reads.
#[derive(Clone, Copy, Debug)]
pub struct KvWorkload {
    /// How many keys (`k0`, `k1`, ...) the clients share.
    pub keys: u64,
}

impl Workload<KvStateMachine> for KvWorkload {
    fn command(&mut self, client: u64, seq: u64, rng: &mut SmallRng) -> KvCommand {
        let key = format!("k{}", rng.random_range(0..self.keys.max(1)));
        let value = format!("c{client}-{seq};");
        match rng.random_range(0..10) {
            0..=3 => KvCommand::Append { key: key.into(), value: value.into() },
            4..=5 => KvCommand::Put { key: key.into(), value: value.into() },
            _ => KvCommand::Get { key: key.into() },
        }
    }

    /// A `Get` may be served without the log (with `SimConfig::reads`).
    fn read(&self, command: &KvCommand) -> Option<super::client::ReadQuery<KvStateMachine>> {
        match command {
            KvCommand::Get { .. } => Some(|sm, c| sm.value(c.key())),
            _ => None,
        }
    }
}

/// Runs the linearizability checker over a KV history (times in virtual microseconds).
///
/// # Errors
///
/// The checker's [`Violation`] if no linearization exists.
pub fn check_kv_history(
    history: &[HistoryOp<KvCommand, KvOutput>],
) -> Result<CheckOutcome, Violation> {
    let ops: Vec<Operation> = history
        .iter()
        .filter(|op| !op.not_applied) // took no effect: nothing to linearize
        .map(|op| Operation {
            client: op.client,
            command: op.command.clone(),
            invoked_at: op.invoked_at,
            completed: op.completed.clone(),
        })
        .collect();
    check_with_budget(&ops, CHECK_BUDGET_PER_KEY)
}
