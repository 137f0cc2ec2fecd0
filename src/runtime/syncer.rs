//! A node's syncer thread (`raft-n<id>-sync`): runs the fsyncs its node loop hands it
//! ([`Storage::start_sync`](crate::storage::Storage::start_sync)), one at a time, and reports
//! each outcome back to the loop, which meanwhile keeps stepping (thesis §10.2.1). Started at
//! the first job, so a node on memory storage never has one.

use std::io;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::error::Error;
use crate::storage::SyncJob;
use crate::types::NodeId;

pub(crate) struct Syncer {
    id: NodeId,
    jobs: Option<Sender<SyncJob>>,
    done_tx: Sender<io::Result<()>>,
    done: Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    pub fn new(id: NodeId) -> Self {
        let (done_tx, done) = unbounded();
        Syncer { id, jobs: None, done_tx, done, thread: None }
    }

    /// Where the outcome of each job arrives, in order.
    pub fn done(&self) -> &Receiver<io::Result<()>> {
        &self.done
    }

    /// Runs `job` on the syncer thread, starting the thread if need be.
    pub fn submit(&mut self, job: SyncJob) -> Result<(), Error> {
        if self.jobs.is_none() {
            let (jobs, queue) = unbounded::<SyncJob>();
            let done = self.done_tx.clone();
            let name = format!("raft-n{}-sync", self.id.0);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    for job in queue {
                        if done.send(job()).is_err() {
                            return; // the node is gone
                        }
                    }
                })
                .map_err(|e| Error::Spawn(e.to_string()))?;
            (self.jobs, self.thread) = (Some(jobs), Some(thread));
        }
        let jobs = self.jobs.as_ref().expect("started above");
        // NB: the thread only ends once `jobs` is dropped, so the queue is open.
        let _ = jobs.send(job);
        Ok(())
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.jobs = None; // ends the thread once its current fsync returns
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
