//! Membership changes at runtime: nodes die, are removed from the configuration, and fresh nodes
//! join as learners, catch up while writes continue, and are promoted to voters.
//!
//! Run with `cargo run --release --example membership`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{init_tracing, print_table, say, wait_converged};
use ferraft::{Cluster, Config, Error, KvCommand, KvStateMachine};

fn main() -> Result<(), Error> {
    init_tracing();
    let start = Instant::now();
    let cluster =
        Arc::new(Mutex::new(Cluster::new(Config::default(), 5, |_| KvStateMachine::new())?));
    let leader = lock(&cluster).wait_for_leader(Duration::from_secs(10))?;
    say(start, &format!("5 voters; {leader} leads"));
    preload(&cluster, 50_000)?;
    say(start, "preloaded 50,000 entries, so new nodes have a real log to catch up on");

    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = spawn_writer(Arc::clone(&cluster), Arc::clone(&stop), Arc::clone(&written));

    let victims: Vec<_> =
        lock(&cluster).ids().into_iter().filter(|&id| id != leader).take(2).collect();
    for &id in &victims {
        lock(&cluster).kill(id)?;
        say(start, &format!("{id} crashed"));
    }
    for &id in &victims {
        lock(&cluster).remove_node(id)?;
        say(start, &format!("removed dead {id} from the configuration"));
    }
    for _ in 0..2 {
        let began = Instant::now();
        let id = lock(&cluster).add_node()?;
        let took = began.elapsed().as_secs_f64() * 1e3;
        say(
            start,
            &format!(
                "added {id}: joined as a learner, caught up, promoted to voter in {took:.0} ms"
            ),
        );
    }
    let began = Instant::now();
    lock(&cluster).remove_node(leader)?;
    let new_leader = lock(&cluster).wait_for_leader(Duration::from_secs(10))?;
    let took = began.elapsed().as_secs_f64() * 1e3;
    say(start, &format!("removed the leader {leader}: it stepped down once that committed; {new_leader} leads ({took:.0} ms)"));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer thread")?;
    say(start, &format!("{writes} writes completed during the changes"));
    let cluster = Arc::into_inner(cluster).expect("writer joined").into_inner().expect("lock");
    let statuses = wait_converged(&cluster, Duration::from_secs(10))?;
    print_table(&statuses);
    cluster.shutdown();
    Ok(())
}

fn preload(cluster: &Mutex<Cluster<KvStateMachine>>, n: u64) -> Result<(), Error> {
    let c = lock(cluster);
    let mut receipts = std::collections::VecDeque::new();
    for i in 0..n {
        receipts.push_back(c.propose_async(KvCommand::Put {
            key: format!("pre{}", i % 1000),
            value: i.to_string(),
        }));
        if receipts.len() >= 256 {
            receipts.pop_front().expect("non-empty").wait(Duration::from_secs(10))?;
        }
    }
    receipts.into_iter().try_for_each(|mut r| r.wait(Duration::from_secs(10)).map(drop))
}

fn spawn_writer(
    cluster: Arc<Mutex<Cluster<KvStateMachine>>>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Result<u64, Error>> {
    std::thread::spawn(move || {
        let mut handle = None;
        while !stop.load(Ordering::SeqCst) {
            let n = written.load(Ordering::SeqCst);
            let command = KvCommand::Put { key: format!("k{}", n % 100), value: n.to_string() };
            if handle.is_none() {
                let c = lock(&cluster);
                handle = c.leader().and_then(|l| c.node(l).ok());
            }
            // NB: the wait happens outside the cluster lock, so writes go on during a change.
            match handle.as_ref().map(|h| h.propose(command, Duration::from_secs(2))) {
                Some(Ok(_)) => written.store(n + 1, Ordering::SeqCst),
                _ => {
                    handle = None;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        Ok(written.load(Ordering::SeqCst))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
