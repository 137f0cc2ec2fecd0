//! The main example: a 5-node key-value cluster that loses its leader, then a second node,
//! keeps serving writes with 3 of 5, and ends with every replica identical.
//!
//! Run with `cargo run --release --example kv_cluster` (set `RUST_LOG=ferraft=debug` to see
//! every role change and election; the RPC counts are in the final table).

use std::time::{Duration, Instant};

mod common;

use common::{init_tracing, print_table, say, wait_converged};
use ferraft::{Cluster, Config, Error, KvCommand, KvStateMachine, NodeId};

fn main() -> Result<(), Error> {
    init_tracing();
    let start = Instant::now();
    let config = Config { seed: 7, ..Config::default() };
    let cluster = Cluster::new(config, 5, |_| KvStateMachine::new())?;
    say(start, "started 5 nodes (election timeout 150-300 ms, heartbeat 50 ms)");

    let leader = elect(&cluster, start, "first election")?;
    write_keys(&cluster, start, 0..20)?;

    say(start, &format!("killing the leader {leader}"));
    cluster.kill(leader)?;
    let second = elect(&cluster, start, "re-election after the leader died")?;
    write_keys(&cluster, start, 20..40)?;

    say(start, &format!("killing {second} as well: 3 of 5 remain, still a majority"));
    cluster.kill(second)?;
    let third = elect(&cluster, start, "re-election with 3 of 5")?;
    write_keys(&cluster, start, 40..60)?;

    for id in [leader, second] {
        cluster.restart(id)?;
        say(start, &format!("restarted {id} from its persisted term, vote and log"));
    }
    write_keys(&cluster, start, 60..70)?;
    let statuses = wait_converged(&cluster, Duration::from_secs(10))?;
    say(start, &format!("{third} still leads; every node caught up"));
    print_table(&statuses);
    println!(
        "\n  node  elections(started/won)  RPCs sent  RPCs received  applies  (this incarnation)"
    );
    for s in &statuses {
        let m = &s.metrics;
        println!(
            "  {:<5} {:>8}/{:<14} {:>9}  {:>13}  {:>7}",
            s.core.id.to_string(),
            m.elections_started,
            m.elections_won,
            m.sent.requests() + m.sent.replies,
            s.rpcs.requests() + s.rpcs.replies,
            m.applies
        );
    }
    cluster.shutdown();
    say(start, "shut down; every node thread joined");
    Ok(())
}

fn elect(cluster: &Cluster<KvStateMachine>, start: Instant, what: &str) -> Result<NodeId, Error> {
    let began = Instant::now();
    let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    let term = cluster.status(leader)?.core.term;
    let took = began.elapsed().as_secs_f64() * 1e3;
    say(start, &format!("{what}: {leader} leads in {term} (took {took:.0} ms)"));
    Ok(leader)
}

fn write_keys(
    cluster: &Cluster<KvStateMachine>,
    start: Instant,
    keys: std::ops::Range<u32>,
) -> Result<(), Error> {
    let (first, last) = (keys.start, keys.end - 1);
    let mut at = None;
    for k in keys {
        let command =
            KvCommand::Put { key: format!("key{k:03}").into(), value: format!("value{k}").into() };
        at = Some(cluster.propose(command)?.index);
    }
    let index = at.map_or(0, |i| i.0);
    say(start, &format!("wrote key{first:03}..key{last:03}, committed through index {index}"));
    Ok(())
}
