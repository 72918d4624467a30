//! 1,000 reconnect cycles: every cycle the proxy in front of the server forgets the sidecar's
//! connection, the next PING meets an RST and the retry connects again (TCP + TLS + AUTH). The
//! sidecar's RSS and open file descriptors must stay flat.

mod support;

use std::time::{Duration, Instant};

use support::proxy::ResetProxy;
use support::{Cluster, Options, Sidecar, sample};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_reconnects_keep_rss_and_fds_flat() {
    let server = Cluster::launch(Options::standalone()).await;
    let proxy = ResetProxy::start(server.nodes[0].addr().parse().unwrap()).await;
    let mut env = server.env();
    env.extend(
        [
            ("REDIS_ADDRESS", proxy.addr.to_string()),
            ("PROBE_INTERVAL", "5ms".into()),
            ("PROBE_ATTEMPTS", "3".into()),
            ("PROBE_RETRY_BACKOFF", "5ms".into()),
            ("PROBE_LOG_LEVEL", "warn".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let sidecar = Sidecar::spawn(&env).await;
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(30))
        .await;
    let pid = sidecar.pid().unwrap();

    let mut warm = (0, 0);
    let fds_before = fds(pid);
    let start = Instant::now();
    let successes =
        |m: &str| sample(m, "redis_health_check_attempts_total{result=\"success\"}").unwrap();
    for cycle in 1..=1000 {
        let before = (proxy.accepted(), successes(&sidecar.metrics().await));
        proxy.reset_all();
        // A cycle ends when the sidecar has connected again and a PING over the new
        // connection has passed.
        let t = Instant::now();
        while proxy.accepted() == before.0 || successes(&sidecar.metrics().await) <= before.1 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no reconnect in cycle {cycle}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if cycle % 100 == 0 {
            eprintln!("cycle {cycle}: RSS {} KiB, fds {}", rss_kib(pid), fds(pid));
        }
        if cycle == 100 {
            warm = (rss_kib(pid), fds(pid));
        }
    }
    let end = (rss_kib(pid), fds(pid));
    let m = sidecar.metrics().await;
    let resets = sample(
        &m,
        "redis_health_check_attempt_failures_total{reason=\"connection_reset\"}",
    )
    .unwrap();
    eprintln!(
        "1000 reconnect cycles in {:?}: RSS {} KiB after 100, {} KiB after 1000; fds {} before, {} after 100, {} after 1000; {} resets seen",
        start.elapsed(),
        warm.0,
        end.0,
        fds_before,
        warm.1,
        end.1,
        resets
    );
    assert!(resets >= 900.0, "{m}");
    assert!(
        end.1 <= fds_before + 2 && end.1 <= warm.1 + 2,
        "file descriptors grew: {fds_before} before, {} after 100, {} after 1000",
        warm.1,
        end.1
    );
    assert!(
        end.0 <= warm.0 + 1024,
        "RSS grew by more than 1 MiB: {} -> {} KiB",
        warm.0,
        end.0
    );
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    sidecar.stop().await;
}
