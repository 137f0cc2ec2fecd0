//! Membership changes at runtime: nodes die, are removed from the configuration, and fresh nodes
//! join as learners, catch up while writes continue, and are promoted to voters.
//!
//! Run with `cargo run --release --example membership`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{init_tracing, print_table, say, wait_converged};
use ferraft::{Client, Cluster, Config, Error, KvCommand, KvStateMachine};

fn main() -> Result<(), Error> {
    init_tracing();
    let start = Instant::now();
    let cluster = Cluster::new(Config::default(), 5, |_| KvStateMachine::new())?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    say(start, &format!("5 voters; {leader} leads"));
    preload(&cluster.client(), 50_000)?;
    say(start, "preloaded 50,000 entries, so new nodes have a real log to catch up on");

    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    // The writer shares the cluster's client: no lock, and it follows the leader by itself.
    let writer = spawn_writer(cluster.client(), Arc::clone(&stop), Arc::clone(&written));

    let victims: Vec<_> = cluster.ids().into_iter().filter(|&id| id != leader).take(2).collect();
    for &id in &victims {
        cluster.kill(id)?;
        say(start, &format!("{id} crashed"));
    }
    for &id in &victims {
        cluster.remove_node(id)?;
        say(start, &format!("removed dead {id} from the configuration"));
    }
    for _ in 0..2 {
        let began = Instant::now();
        let id = cluster.add_node()?;
        let took = began.elapsed().as_secs_f64() * 1e3;
        say(
            start,
            &format!(
                "added {id}: joined as a learner, caught up, promoted to voter in {took:.0} ms"
            ),
        );
    }
    // Maintenance of the leader: hand leadership over first (thesis §3.10), so removing it
    // costs no election timeout.
    let began = Instant::now();
    let successor = cluster.ids().into_iter().find(|&id| id != leader).expect("another voter");
    cluster.transfer_leadership(successor)?;
    let took = began.elapsed().as_secs_f64() * 1e3;
    say(start, &format!("transferred leadership from {leader} to {successor} ({took:.1} ms)"));
    let began = Instant::now();
    cluster.remove_node(leader)?;
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10))?;
    let took = began.elapsed().as_secs_f64() * 1e3;
    say(start, &format!("removed the old leader {leader}; {new_leader} leads ({took:.0} ms)"));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer thread")?;
    say(start, &format!("{writes} writes completed during the changes"));
    let statuses = wait_converged(&cluster, Duration::from_secs(10))?;
    print_table(&statuses);
    cluster.shutdown();
    Ok(())
}

fn preload(client: &Client<KvStateMachine>, n: u64) -> Result<(), Error> {
    let mut receipts = std::collections::VecDeque::new();
    for i in 0..n {
        let command =
            KvCommand::Put { key: format!("pre{}", i % 1000).into(), value: i.to_string().into() };
        receipts.push_back(client.propose_async(command));
        if receipts.len() >= 256 {
            receipts.pop_front().expect("non-empty").wait(Duration::from_secs(10))?;
        }
    }
    receipts.into_iter().try_for_each(|mut r| r.wait(Duration::from_secs(10)).map(drop))
}

fn spawn_writer(
    client: Client<KvStateMachine>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Result<u64, Error>> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let n = written.load(Ordering::SeqCst);
            let command =
                KvCommand::Put { key: format!("k{}", n % 100).into(), value: n.to_string().into() };
            match client.propose_timeout(command, Duration::from_secs(2)) {
                Ok(_) => written.store(n + 1, Ordering::SeqCst),
                // A timeout during a leader change leaves the outcome unknown; the next write
                // is a new command, so nothing is applied twice.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        Ok(written.load(Ordering::SeqCst))
    })
}
