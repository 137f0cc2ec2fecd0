//! A 3-node key-value cluster on disk. Each run appends one line to a counter-like key and
//! prints what the cluster remembers, so a second run with the same directory shows the first
//! run's data coming back from the nodes' write-ahead logs.
//!
//! ```sh
//! cargo run --release --example kv_disk -- /tmp/ferraft-kv   # first run: 1 entry
//! cargo run --release --example kv_disk -- /tmp/ferraft-kv   # second run: 2 entries
//! ```
//!
//! Without an argument it uses `ferraft-kv-disk` in the system temp directory. Delete the
//! directory to start over.

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use common::{init_tracing, print_table, say, wait_converged};
use ferraft::{Cluster, Config, Error, KvCommand, KvStateMachine};

fn main() -> Result<(), Error> {
    init_tracing();
    let start = Instant::now();
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ferraft-kv-disk"));
    let cluster = Cluster::builder(Config::default(), |_| KvStateMachine::new())
        .nodes(3)
        .data_dir(&dir) // node n lives in <dir>/n<n>; fsync on every step
        .start()?;
    say(start, &format!("started 3 nodes on disk in {}", dir.display()));
    let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    let term = cluster.status(leader)?.core.term;
    say(start, &format!("{leader} leads in {term}"));

    let before = read(&cluster)?;
    let runs = before.split_inclusive(';').count();
    if runs == 0 {
        say(start, "an empty directory: this is the first run");
    } else {
        say(start, &format!("resumed from disk: {runs} earlier run(s) remembered: {before}"));
    }
    let stamp = format!("run{};", runs + 1);
    cluster.propose(KvCommand::Append { key: "runs".into(), value: stamp.clone().into() })?;
    say(start, &format!("appended {stamp:?}; committed on a majority, fsync'd on each"));
    say(start, &format!("now: {}", read(&cluster)?));
    print_table(&wait_converged(&cluster, Duration::from_secs(10))?);
    cluster.shutdown();
    say(start, "shut down; run again with the same directory to see it resume");
    Ok(())
}

fn read(cluster: &Cluster<KvStateMachine>) -> Result<String, Error> {
    let read = cluster.propose(KvCommand::Get { key: "runs".into() })?;
    Ok(read.output.as_deref().unwrap_or_default().to_owned())
}
