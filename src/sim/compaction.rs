//! Log compaction as simulator events: on-demand compaction ([`Simulator::compact`], the
//! request path of `NodeHandle::compact`, through the same driver) and crashes in the middle of
//! an InstallSnapshot transfer ([`Fault::CrashMidSnapshot`](super::Fault::CrashMidSnapshot)),
//! armed now and fired at the next step that receives or sends a chunk that is not the last.
//!
//! Owns the pending compaction answers and the armed triggers; decides nothing random.

use crossbeam_channel::{bounded, Receiver, TryRecvError};

use super::node::Delivery;
use super::run::FailureKind;
use super::schedule::SnapshotSide;
use super::trace::InputSummary;
use super::{Event, FaultError, Simulator};
use crate::core::Action;
use crate::error::Error;
use crate::message::{Body, Message};
use crate::node::{Compaction, Request};
use crate::state_machine::StateMachine;
use crate::types::NodeId;

/// A compaction asked of `NodeId`'s driver, and where the driver answers.
pub(crate) type Pending = (NodeId, Receiver<Result<Compaction, Error>>);

impl<S: StateMachine> Simulator<S> {
    /// Asks `id` to compact its log now: at this instant its driver gets the same request
    /// `NodeHandle::compact` sends, and snapshots through its applied index. The outcome shows
    /// in the trace and in [`Stats::compactions`](super::Stats::compactions). A node that is
    /// down when the request arrives ignores it.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`] if the simulation never had `id`.
    pub fn compact(&mut self, id: NodeId) -> Result<(), FaultError> {
        if !self.nodes.contains_key(&id) {
            return Err(FaultError::UnknownNode(id));
        }
        self.schedule(0, Event::Compact(id));
        Ok(())
    }

    /// Arms a crash in the middle of the next InstallSnapshot transfer, at `side`'s end (of
    /// `node`'s transfers only, if given): the next node to receive a chunk that is not the
    /// last ([`SnapshotSide::Receiver`]), or to send one ([`SnapshotSide::Sender`]), crashes
    /// right after that step. Each arming fires once; none fires in the quiet period.
    ///
    /// # Errors
    ///
    /// [`FaultError::UnknownNode`] if `node` names a node the simulation never had.
    pub fn crash_mid_snapshot(
        &mut self,
        side: SnapshotSide,
        node: Option<NodeId>,
    ) -> Result<(), FaultError> {
        if let Some(id) = node.filter(|id| !self.nodes.contains_key(id)) {
            return Err(FaultError::UnknownNode(id));
        }
        self.note(format!("armed: crash mid-snapshot at the {side:?} ({node:?})"));
        self.mid_snapshot.push((side, node));
        Ok(())
    }

    /// [`Event::Compact`]: hands the request to the node's driver, if it runs.
    pub(crate) fn on_compact(&mut self, id: NodeId) -> Result<(), FailureKind> {
        if !self.is_up(id) {
            self.note(format!("compact {id}: down, ignored"));
            return Ok(());
        }
        let (reply, answer) = bounded(1);
        self.compactions.push((id, answer));
        self.step(id, Delivery::Request(Request::Compact { reply }), InputSummary::Compact)
    }

    /// After a step of `node`: the answers its driver gave to compactions asked of it.
    pub(crate) fn collect_compactions(&mut self, node: NodeId) {
        if self.compactions.is_empty() {
            return;
        }
        let mut done = Vec::new();
        self.compactions.retain(|(id, answer)| {
            if *id != node {
                return true;
            }
            match answer.try_recv() {
                Ok(outcome) => done.push(Some(outcome)),
                Err(TryRecvError::Disconnected) => done.push(None), // crashed with it
                Err(TryRecvError::Empty) => return true,
            }
            false
        });
        for outcome in done {
            if let Some(Ok(Compaction::Snapshot { .. })) = outcome {
                self.stats.compactions += 1;
            }
            self.note(format!("compact {node}: {outcome:?}"));
        }
    }

    /// Whether an armed [`SnapshotSide::Sender`] trigger could fire on a step of `id` (then
    /// the step's sends are watched).
    pub(crate) fn watches_sends(&self, id: NodeId) -> bool {
        self.armed_for(SnapshotSide::Sender, id).is_some()
    }

    fn armed_for(&self, side: SnapshotSide, id: NodeId) -> Option<usize> {
        if self.quiet {
            return None;
        }
        self.mid_snapshot.iter().position(|&(s, node)| s == side && node.is_none_or(|n| n == id))
    }

    /// After a step of `id` that received (`received_chunk`) or sent (`sent_chunk`) an
    /// InstallSnapshot chunk that is not the last: fires the first matching armed trigger.
    pub(crate) fn maybe_crash_mid_snapshot(
        &mut self,
        id: NodeId,
        received_chunk: bool,
        sent_chunk: bool,
    ) {
        if !self.is_up(id) {
            return; // a mid-step crash came first
        }
        let side = match (received_chunk, sent_chunk) {
            (true, _) if self.armed_for(SnapshotSide::Receiver, id).is_some() => {
                SnapshotSide::Receiver
            }
            (_, true) if self.armed_for(SnapshotSide::Sender, id).is_some() => SnapshotSide::Sender,
            _ => return,
        };
        let armed = self.armed_for(side, id).expect("matched above");
        self.mid_snapshot.remove(armed);
        match side {
            SnapshotSide::Receiver => self.stats.snapshot_receiver_crashes += 1,
            SnapshotSide::Sender => self.stats.snapshot_sender_crashes += 1,
        }
        self.note(format!("crash {id} mid-snapshot, at the {side:?}"));
        self.crash(id).expect("the node exists");
    }
}

/// Whether `msg` is an InstallSnapshot chunk that is not the last of its snapshot.
pub(crate) fn is_partial_chunk<C>(msg: &Message<C>) -> bool {
    matches!(&msg.body, Body::InstallSnapshot(chunk) if !chunk.done)
}

/// Whether a step's actions send an InstallSnapshot chunk that is not the last.
pub(crate) fn sends_partial_chunk<C>(actions: &[Action<C>]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Send(msg) if is_partial_chunk(msg)))
}
