//! Helpers shared by the examples: logging setup, timestamped narration, and the final table
//! proving every replica identical.

use std::time::{Duration, Instant};

use ferraft::{Cluster, Error, NodeStatus};

/// Installs a tracing subscriber honouring `RUST_LOG` (default: warnings only).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

/// Prints `what`, stamped with the time since `start`.
pub fn say(start: Instant, what: &str) {
    println!("[{:>7.1} ms] {what}", start.elapsed().as_secs_f64() * 1e3);
}

/// Waits until every running member has applied the same entries into the same state.
pub fn wait_converged<S: ferraft::StateMachine>(
    cluster: &Cluster<S>,
    timeout: Duration,
) -> Result<Vec<NodeStatus>, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = cluster.statuses();
        let running = cluster.ids().into_iter().filter(|&id| cluster.is_running(id)).count();
        let same = s.windows(2).all(|w| {
            w[0].digest == w[1].digest && w[0].core.last_applied == w[1].core.last_applied
        });
        if s.len() == running && same {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One row per node: role, term, commit, applied, its view of the configuration, digest.
pub fn print_table(statuses: &[NodeStatus]) {
    println!("\n  node  role       term   commit  applied  voters            learners  digest");
    for s in statuses {
        let c = &s.core;
        let names = |ids: &std::collections::BTreeSet<ferraft::NodeId>| {
            ids.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
        };
        println!(
            "  {:<5} {:<10} {:<6} {:<7} {:<8} {:<17} {:<9} {:016x}",
            c.id.to_string(),
            c.role_name(),
            c.term.to_string(),
            c.commit_index.0,
            c.last_applied.0,
            names(&c.config.voters),
            names(&c.config.learners),
            s.digest
        );
    }
    println!();
}
