//! The sidecar against a real TLS + AUTH Redis Cluster: health, outage and recovery.

mod support;

use std::time::Duration;

use support::{Cluster, Options, Sidecar, config, sample};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_cluster_is_ready_and_exports_every_node() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(Options::default()))
        .await
        .unwrap();
    let sidecar = Sidecar::start(config(&cluster.env())).await;

    assert_eq!(sidecar.get("/livez").await, (200, "ok\n".into()));
    sidecar
        .wait_status("/readyz", 200, Duration::from_secs(15))
        .await;
    let (status, body) = sidecar.get("/readyz?verbose").await;
    assert_eq!(status, 200);
    assert_eq!(body, "[+]redis ok\n[+]shutdown ok\nreadyz check passed\n");
    assert_eq!(sidecar.get("/readyz/redis").await, (200, "ok\n".into()));

    let m = sidecar.metrics().await;
    for name in [
        "redis_health_checks_total",
        "redis_health_check_failed_total{reason=\"auth\"} 0",
        "redis_health_check_attempts_total{result=\"success\"}",
        "redis_health_check_duration_seconds_bucket",
        "redis_up 1",
        "redis_circuit_breaker_state{state=\"closed\"} 1",
        "redis_circuit_breaker_transitions_total{from=\"closed\",to=\"open\"} 0",
        "redis_probe_ready 1",
        "redis_probe_build_info{version=",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    for n in &cluster.nodes {
        let up = ["primary", "replica"]
            .iter()
            .filter_map(|role| {
                sample(
                    &m,
                    &format!("redis_node_up{{node=\"{}\",role=\"{role}\"}}", n.addr()),
                )
            })
            .sum::<f64>();
        assert_eq!(up, 1.0, "node {} not up in\n{m}", n.addr());
        assert!(m.contains(&format!("redis_node_ping_seconds{{node=\"{}\"", n.addr())));
    }
    assert_eq!(m.matches("role=\"primary\"} 1").count(), 3, "{m}");
    sidecar.stop().await;
}
