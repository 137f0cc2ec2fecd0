//! Panics the simulator plants in user code other than storage: a transport whose `send`
//! panics ([`Fault::FailTransport`](super::Fault::FailTransport)) and, in tests, a poisoned
//! command whose `command_size` panics on any node that handles it (`PoisonKv`, test-only).
//! Each panics through [`strike`], which marks this thread first: the node's step then fails the
//! node through the runtime's own path (`Driver::fail`) instead of ending the run as a bug.
//!
//! Owns one mark per thread (the simulator runs on one); must draw no random numbers.

use std::cell::RefCell;

/// What a planted panic struck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Planted {
    /// The node's transport panicked in `send`.
    Transport,
    /// A poisoned command's `command_size` panicked; the command, as `Debug` prints it (the
    /// clients' commands are unique, so it names the submission). Only tests poison.
    #[cfg_attr(not(test), allow(dead_code))]
    Command(String),
}

thread_local! {
    static STRUCK: RefCell<Option<Planted>> = const { RefCell::new(None) };
}

/// Marks `what` as struck and unwinds as a panic does with `message` (without the panic
/// hook's report on stderr: a soak meets thousands).
pub(crate) fn strike(what: Planted, message: String) -> ! {
    STRUCK.with(|struck| *struck.borrow_mut() = Some(what));
    std::panic::resume_unwind(Box::new(message))
}

/// The planted panic struck on this thread since the last call, if one did.
pub(crate) fn take_struck() -> Option<Planted> {
    STRUCK.with(|struck| struck.borrow_mut().take())
}

/// The key whose commands are poisoned under [`PoisonKv`].
#[cfg(test)]
pub(crate) const POISON_KEY: &str = "poison";

/// The key-value state machine, except that a command on [`POISON_KEY`] is poisoned: its
/// `command_size` panics, so a node that handles it (the leader, or a node with no leader
/// to forward to) panics on its loop before the command reaches its log, and fails. The
/// production `Client` does not retry `NodePanicked` for this reason: retried, the command
/// would fail leader after leader.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct PoisonKv(pub crate::KvStateMachine);

#[cfg(test)]
impl crate::StateMachine for PoisonKv {
    type Command = crate::KvCommand;
    type Output = crate::kv::KvOutput;

    fn apply(&mut self, index: crate::LogIndex, command: &Self::Command) -> Self::Output {
        self.0.apply(index, command)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0.restore(snapshot)
    }

    fn command_size(command: &Self::Command) -> usize {
        if command.key() == POISON_KEY {
            let message = format!("poisoned command: {command:?}");
            strike(Planted::Command(format!("{command:?}")), message);
        }
        crate::KvStateMachine::command_size(command)
    }

    fn digest(&self) -> u64 {
        self.0.digest()
    }
}

/// [`KvWorkload`](super::KvWorkload) for [`PoisonKv`], whose writes are now and then a
/// poisoned `Put` on [`POISON_KEY`] (unique value, as every write): one in `one_in` of all
/// operations (0: never), and `client`'s `seq`-th if `at` names it.
#[cfg(test)]
pub(crate) struct PoisonWorkload {
    pub kv: super::KvWorkload,
    pub one_in: u32,
    pub at: Option<(u64, u64)>,
}

#[cfg(test)]
impl super::Workload<PoisonKv> for PoisonWorkload {
    fn command(
        &mut self,
        client: u64,
        seq: u64,
        rng: &mut rand::rngs::SmallRng,
    ) -> crate::KvCommand {
        use rand::Rng;
        let drawn = self.one_in > 0 && rng.random_ratio(1, self.one_in);
        if drawn || self.at == Some((client, seq)) {
            let value = format!("c{client}-{seq};");
            return crate::KvCommand::Put { key: POISON_KEY.into(), value: value.into() };
        }
        super::Workload::<crate::KvStateMachine>::command(&mut self.kv, client, seq, rng)
    }

    fn read(&self, command: &crate::KvCommand) -> Option<super::client::ReadQuery<PoisonKv>> {
        match command {
            crate::KvCommand::Get { .. } => Some(|sm, c| sm.0.value(c.key())),
            _ => None,
        }
    }
}
