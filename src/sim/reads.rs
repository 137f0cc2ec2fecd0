//! Reads in the simulator: a workload's read command becomes a `Request::Read` exactly as
//! `NodeHandle::read_async` builds one, so the simulated nodes serve it through the driver's
//! real read paths (ReadIndex, lease, follower read), and the history records it like any
//! operation: the linearizability checker then judges reads and writes together.

pub(crate) mod caller;

#[cfg(test)]
pub(super) mod tests;

#[cfg(test)]
pub(super) mod caller_tests;

#[cfg(test)]
pub(super) mod membership_tests;

#[cfg(test)]
mod sessions;

#[cfg(test)]
mod hunt_tests;
