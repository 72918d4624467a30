//! How long, at the default settings, from an idle cut being in place on the path to
//! `redis_idle_cut_seconds` appearing: the network lab of the tests (pod, router and server
//! namespaces), a middlebox that forgets flows idle for CUT seconds (default 350, AWS's), the
//! sidecar with its defaults (PROBE_IDLE_CANARY 6m).
//!
//! ```text
//! cargo build --release && cargo run --release --example idle_cut_timing -- \
//!     target/release/redis-probe [CUT_SECONDS]
//! ```
//! Needs root (network namespaces).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::netns::Lab;
use support::{Cluster, Options, Sidecar, with_vars};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/redis-probe".into());
    let cut: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(350);
    let lab = Lab::new();
    let cluster = Cluster::launch(Options {
        netns: Some(lab.srv.clone()),
        ..Options::default()
    })
    .await;
    let env = with_vars(
        cluster.connection_env(),
        &[("REDIS_TLS_SERVER_NAME", "localhost")],
    );
    lab.idle_cut(cut);
    let start = Instant::now();
    let sidecar = Sidecar::spawn_binary_in(&lab.pod, &bin, &env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(60))
        .await;
    let ready = start.elapsed();
    loop {
        let m = sidecar.metrics().await;
        if let Some(line) = m.lines().find(|l| l.starts_with("redis_idle_cut_seconds{")) {
            println!(
                "idle cut of {cut} s in place at 0 s; sidecar ready at {:.1} s; first \
                 redis_idle_cut_seconds at {:.1} s: {line}",
                ready.as_secs_f64(),
                start.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "no cut learned:\n{m}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let failed = support::sample(
        &sidecar.metrics().await,
        "redis_health_check_failed_total{reason=\"connection_reset\"}",
    );
    println!("readiness: checks failed for connection_reset: {failed:?}");
    sidecar.stop().await;
}
