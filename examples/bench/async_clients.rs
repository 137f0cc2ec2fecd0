//! Async clients awaiting [`ferraft::Receipt`] directly:
//!
//! ```text
//! cargo run --release --example bench -- async-clients --clients C [--ops N] [--workers W]
//! ```
//!
//! C tokio tasks on a multi-threaded runtime of W worker threads (default 2, one per core here)
//! share one `Client`; each proposes, awaits its receipt, and proposes again (closed loop) until
//! `--ops` proposals (default 200,000) are done. Same JSON fields as `clients`.

use std::time::Instant;

use ferraft::Cluster;

use super::{cpu_secs, report_closed_loop, share_of, Args, Sum};

pub fn async_clients(cluster: &Cluster<Sum>, args: &Args) {
    let ops = if args.ops == 0 { 200_000 } else { args.ops };
    let workers: usize =
        args.text("--workers").map_or(2, |w| w.parse().expect("--workers needs a number"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .build()
        .expect("a tokio runtime");
    let client = cluster.client();
    let cpu_before = cpu_secs();
    let start = Instant::now();
    let samples: Vec<u64> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|i| {
                let (client, mine) = (client.clone(), share_of(ops, args.clients, i));
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(mine);
                    let mut t = Instant::now(); // NB: one clock read per operation
                    for _ in 0..mine {
                        client.propose_async(8).await.expect("proposal applied");
                        let now = Instant::now();
                        samples.push((now - t).as_nanos() as u64);
                        t = now;
                    }
                    samples
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("client task"));
        }
        all
    });
    let secs = start.elapsed().as_secs_f64();
    let head = format!(
        "\"workload\":\"async-clients\",\"nodes\":{},\"clients\":{},\"workers\":{workers}",
        args.nodes, args.clients
    );
    report_closed_loop(&head, ops, samples, secs, cpu_before);
}
