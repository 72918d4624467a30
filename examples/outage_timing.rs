//! Measures, with the default settings (5 s interval, 3 attempts, threshold 3, open duration
//! 5 s doubling to 30 s), how long a full outage of a real local cluster takes to turn
//! `/readyz` to 503, and how long after the cluster is healthy again `/readyz` returns to 200.
//!
//! ```text
//! cargo run --release --example outage_timing            # one run
//! cargo run --release --example outage_timing -- 3 60    # 3 runs, each holding the outage 60 s
//! ```
//!
//! Needs `redis-server` and `redis-cli` (scripts/install-deps). The outage is held for a while
//! so the breaker's open duration has grown, as it would in a real outage.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

/// Longest wait for a readiness change; the harness fails past it.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() {
    let args = support::numeric_args();
    let runs = args.first().copied().unwrap_or(1);
    let hold = Duration::from_secs(args.get(1).copied().unwrap_or(40));
    let mut cluster = support::Cluster::launch(support::Options::default()).await;
    let mut env = cluster.connection_env();
    env.push(("PROBE_LISTEN".into(), "127.0.0.1:0".into()));
    let sidecar = support::Sidecar::start(support::config(&env)).await;
    let first = sidecar.wait_status("/readyz", 200, WAIT_LIMIT).await.0;
    println!("start -> ready: {first:.1?} (includes the jittered first check)");
    for run in 1..=runs {
        // Let the loop settle at its normal cadence before the outage.
        tokio::time::sleep(Duration::from_secs(12)).await;
        cluster.kill_all();
        let down = sidecar.wait_status("/readyz", 503, WAIT_LIMIT).await.0;
        tokio::time::sleep(hold.saturating_sub(down)).await;
        cluster = tokio::task::spawn_blocking(move || {
            cluster.restart_all(Duration::from_secs(120));
            cluster
        })
        .await
        .unwrap();
        let up = sidecar.wait_status("/readyz", 200, WAIT_LIMIT).await.0;
        println!(
            "run {run}: full outage -> 503 in {down:.1?}; cluster healthy -> 200 in {up:.1?} (outage held {hold:?})"
        );
    }
    sidecar.stop().await;
}
