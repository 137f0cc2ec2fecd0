//! A key-value service shape: writes, linearizable reads through every path, a client
//! whose session carries its writes through a leader failure exactly once, and a leadership
//! transfer before maintenance, ending with the replica table and each node's counters.
//!
//! Run with `cargo run --release --example kv_service`.

use std::time::{Duration, Instant};

mod common;

use common::{init_tracing, print_table, say, wait_converged};
use ferraft::{Cluster, Config, Error, KvCommand, KvStateMachine, Session, Sessions};

fn main() -> Result<(), Error> {
    init_tracing();
    let start = Instant::now();
    let config = Config { seed: 9, lease_reads: true, ..Config::default() };
    // The session table keeps up to 1,000 clients; it is replicated and snapshotted with the store.
    let cluster = Cluster::new(config, 3, |_| Sessions::new(KvStateMachine::new(), 1_000))?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    say(start, &format!("3 nodes, {leader} leads; lease reads on (drift bound 1.1)"));

    let session = Session::register(&cluster.client())?;
    say(
        start,
        &format!("registered client session {} (its registration's log index)", session.id().0),
    );
    for i in 0..10 {
        session.propose(KvCommand::Append { key: "log".into(), value: format!("{i};").into() })?;
    }
    say(start, &format!("10 writes; read at the leader: {:?}", cluster.read("log".into())?));
    for id in cluster.ids() {
        say(start, &format!("  read at {id}: {:?}", cluster.read_at(id, "log".into())?));
    }

    // The leader dies while the session client writes: it retries each write, with the same
    // sequence number, until the new leader answers; none is applied twice.
    let writer = {
        let session = session.clone();
        std::thread::spawn(move || -> Result<(), Error> {
            for i in 10..1010 {
                session.propose(KvCommand::Append {
                    key: "log".into(),
                    value: format!("{i};").into(),
                })?;
            }
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_millis(5));
    say(start, &format!("killing the leader {leader} during the writes"));
    cluster.kill(leader)?;
    writer.join().expect("writer thread")?;
    let value = cluster.read("log".into())?.unwrap_or_default();
    let entries: Vec<&str> = value.split(';').filter(|s| !s.is_empty()).collect();
    let in_order = entries.iter().enumerate().all(|(i, e)| *e == i.to_string());
    say(
        start,
        &format!("1,010 writes: {} entries, each once and in order: {in_order}", entries.len()),
    );
    cluster.restart(leader)?;

    let current = cluster.wait_for_leader(Duration::from_secs(10))?;
    let next = cluster.ids().into_iter().find(|&id| id != current).expect("another node");
    let began = Instant::now();
    cluster.transfer_leadership(next)?;
    let took = began.elapsed().as_secs_f64() * 1e3;
    say(
        start,
        &format!("moved leadership {current} -> {next} in {took:.1} ms (lease let run out first)"),
    );

    let statuses = wait_converged(&cluster, Duration::from_secs(10))?;
    print_table(&statuses);
    println!("\n  node  reads(index/lease/follower)  elections(started/won)  proposals  applies");
    for s in &statuses {
        let m = &s.metrics;
        println!(
            "  {:<5} {:>6}/{:>5}/{:<8}             {:>3}/{:<3}                 {:>7}  {:>7}",
            s.core.id.to_string(),
            m.reads_read_index,
            m.reads_lease,
            m.reads_follower,
            m.elections_started,
            m.elections_won,
            m.proposals,
            m.applies
        );
    }
    cluster.shutdown();
    Ok(())
}
