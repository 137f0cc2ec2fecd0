//! One node's thread (`raft-n<id>`): a crossbeam `select!` loop over its peer inbox, client
//! requests, a shutdown channel and a ticker, feeding the node's [`Driver`]. The committed
//! entries are applied on a second thread (`raft-n<id>-apply`), so a slow `apply` never holds
//! up heartbeats.
//!
//! The only blocking the loop does is waiting in `select!`: sends go through the transport,
//! which drops rather than blocks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::error::Error;
use crate::message::Message;
use crate::node::{execute_all, Driver, NodeStatus, Request};
use crate::state_machine::StateMachine;
use crate::storage::Storage;
use crate::transport::Transport;

/// The driver as the thread runtime builds it: storage and transport chosen at run time.
pub(crate) type NodeDriver<S> = Driver<
    S,
    Box<dyn Storage<<S as StateMachine>::Command>>,
    Box<dyn Transport<<S as StateMachine>::Command>>,
>;

/// How many times an idle node yields, polling its inbox, before it parks.
const SPIN_ROUNDS: usize = 64;
/// How many peer messages to handle before looking at the other channels again.
const MAX_MESSAGE_BURST: usize = 256;

/// The node's channels.
pub(crate) struct Channels<S: StateMachine> {
    pub inbox: Receiver<Message<S::Command>>,
    pub requests: Receiver<Request<S>>,
    pub shutdown: Receiver<()>,
}

/// Why a node stopped on its own, shared with the [`crate::Cluster`].
pub(crate) type Failure = Arc<Mutex<Option<Error>>>;

/// Runs `driver` until shutdown. A storage error stops the node; a state machine panic leaves it
/// failed: it takes no part in the protocol any more but still answers requests with the panic.
pub(crate) fn run<S: StateMachine>(
    mut driver: NodeDriver<S>,
    channels: Channels<S>,
    tick: Duration,
    failure: Failure,
) {
    let ticker = crossbeam_channel::tick(tick);
    let error = loop {
        let result = match poll_briefly(&mut driver, &channels) {
            Some(result) => result.and_then(|()| poll_timers(&mut driver, &channels, &ticker)),
            None => wait(&mut driver, &channels, &ticker),
        };
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => break e,
        }
        if let Some(e) = driver.failure() {
            break e;
        }
    };
    tracing::error!(error = %error, "node failed");
    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
    serve_failed(&mut driver, &channels, error);
}

/// A failed node answers every request with its failure until it is killed.
fn serve_failed<S: StateMachine>(driver: &mut NodeDriver<S>, channels: &Channels<S>, error: Error) {
    let core = driver.core().status();
    loop {
        select! {
            recv(channels.shutdown) -> _ => return,
            recv(channels.inbox) -> msg => if msg.is_err() { return },
            recv(channels.requests) -> req => match req {
                Ok(Request::Propose { responder, .. }) => responder.finish(Err(error.clone())),
                Ok(Request::ChangeMembership { reply, .. }) => { let _ = reply.send(Err(error.clone())); }
                Ok(Request::Compact { reply }) => { let _ = reply.send(Err(error.clone())); }
                Ok(Request::Read { read }) => crate::node::fail_read(read, error.clone()),
                Ok(Request::TransferLeadership { reply, .. }) => { let _ = reply.send(Err(error.clone())); }
                Ok(Request::Status { reply }) => {
                    let status = NodeStatus {
                        core: core.clone(),
                        digest: 0,
                        rpcs: Default::default(),
                        failure: Some(error.clone()),
                        metrics: Default::default(),
                    };
                    let _ = reply.send(status);
                }
                Err(_) => return,
            },
        }
    }
}

/// Before parking, yield-spin a little: the next message of a round trip usually arrives
/// within microseconds, and a parked thread takes several to wake.
fn poll_briefly<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    channels: &Channels<S>,
) -> Option<Result<(), Error>> {
    for _ in 0..SPIN_ROUNDS {
        if let Ok(msg) = channels.inbox.try_recv() {
            return Some(on_messages(driver, msg, &channels.inbox));
        }
        if let Ok(req) = channels.requests.try_recv() {
            return Some(driver.handle(req, &mut channels.requests.try_iter(), &mut execute_all));
        }
        std::thread::yield_now();
    }
    None
}

/// After work found by spinning: a due tick or a shutdown must not starve.
fn poll_timers<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    channels: &Channels<S>,
    ticker: &Receiver<Instant>,
) -> Result<bool, Error> {
    if channels.shutdown.try_recv().is_ok() {
        return Ok(false);
    }
    if ticker.try_recv().is_ok() {
        driver.tick(&mut execute_all)?;
    }
    Ok(true)
}

fn wait<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    channels: &Channels<S>,
    ticker: &Receiver<Instant>,
) -> Result<bool, Error> {
    select! {
        recv(channels.shutdown) -> _ => Ok(false),
        recv(channels.inbox) -> msg => match msg {
            Ok(msg) => on_messages(driver, msg, &channels.inbox).map(|()| true),
            Err(_) => Ok(false),
        },
        recv(channels.requests) -> req => match req {
            Ok(req) => driver.handle(req, &mut channels.requests.try_iter(), &mut execute_all).map(|()| true),
            Err(_) => Ok(false),
        },
        recv(ticker) -> _ => driver.tick(&mut execute_all).map(|()| true),
        recv(driver.taken().clone()) -> snapshot => match snapshot {
            Ok(snapshot) => driver.snapshot_taken(snapshot, &mut execute_all).map(|()| true),
            Err(_) => Ok(false),
        },
    }
}

fn on_messages<S: StateMachine>(
    driver: &mut NodeDriver<S>,
    first: Message<S::Command>,
    inbox: &Receiver<Message<S::Command>>,
) -> Result<(), Error> {
    driver.receive(first, &mut execute_all)?;
    for msg in inbox.try_iter().take(MAX_MESSAGE_BURST) {
        driver.receive(msg, &mut execute_all)?;
    }
    Ok(())
}
