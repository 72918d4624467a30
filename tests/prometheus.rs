//! A real Prometheus server scraping two real sidecars (two pods of one workload) on a real
//! cluster, with the shipped rule file loaded, asked through its HTTP API:
//! - every rule evaluates without error, and every query of the shipped dashboard returns data;
//! - transient faults (a planned failover, every connection killed) make no alert even pending;
//! - a full outage makes the seed's failure-rate rule and the breaker alert pending, the breaker
//!   alert once for the workload (valued 2 pods), the failure rate carried by `circuit_open`;
//! - recovery clears the breaker alert.
//!
//! The rules' `for:` durations (5 minutes) are longer than a CI run, so this test stops at
//! pending; `examples/alerts_realtime.rs` runs the same path in real time through firing and
//! resolution (its figures are in docs/metrics.md).

mod support;

use std::time::{Duration, Instant};

use support::prometheus::{Prometheus, Target};
use support::{Cluster, Fault, Options, Sidecar, with_vars};

const JOB: &str = "redis-probe";

fn rules() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/monitoring/redis-probe.rules.yaml")
}

/// The dashboard's queries with its variables substituted.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("k8s/monitoring/grafana-dashboard.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = vec![];
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap().replace("$job", JOB);
            out.push((p["title"].as_str().unwrap_or("").to_string(), expr));
        }
    }
    out
}

/// Polls Prometheus every 500 ms until `f` holds.
async fn wait_for<F, Fut>(limit: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    support::eventually_every(limit, Duration::from_millis(500), what, f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_through_a_real_prometheus() {
    // Mutual TLS, so the client certificate's expiry panel has data too.
    let mut cluster = Cluster::launch(Options {
        mtls: true,
        ..Options::default()
    })
    .await;
    let cert = cluster.pki.cert.display().to_string();
    let key = cluster.pki.key.display().to_string();
    // Default timings but a 1 s interval: the shipped open durations (5 s doubling to 30 s),
    // attempts and timeouts.
    let env = with_vars(
        cluster.patient_env(),
        &[
            ("PROBE_INTERVAL", "1s"),
            ("PROBE_INFO_INTERVAL", "2s"),
            ("REDIS_POOL_SIZE", "10"),
            ("PROBE_EXPECTED_SHARDS", "3"),
            ("REDIS_TLS_CERT_FILE", &cert),
            ("REDIS_TLS_KEY_FILE", &key),
        ],
    );
    let a = Sidecar::spawn(&env).await;
    let b = Sidecar::spawn(&env).await;
    for s in [&a, &b] {
        s.wait_status("/readyz", 200, Duration::from_secs(30)).await;
    }
    let targets = Target::pods(&[&a, &b]);
    let prom = Prometheus::start(&targets, JOB, "1s", &rules()).await;
    wait_for(Duration::from_secs(30), "both targets up", || async {
        match prom.targets_up().await {
            2 => Ok(()),
            n => Err(format!("{n} up")),
        }
    })
    .await;

    // Every dashboard query returns data once a few scrapes are in, and every rule has been
    // evaluated without error.
    let queries = dashboard_queries();
    wait_for(
        Duration::from_secs(60),
        "every dashboard panel has data",
        || async {
            for (title, expr) in &queries {
                if prom.query(expr).await.is_empty() {
                    return Err(format!("panel {title:?}: no data for {expr}"));
                }
            }
            Ok(())
        },
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "every rule evaluated ok",
        || async { prom.rule_health().await.map(|_| ()) },
    )
    .await;

    // Transient faults: nothing even pending. Both sidecars must have met them (an attempt
    // failed), or the quiet would prove nothing.
    let failures = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("redis_health_check_attempt_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = [failures(&a.metrics().await), failures(&b.metrics().await)];
    let faults = {
        Fault::PlannedFailover.apply(&mut cluster, None);
        Fault::ClientKill(None).apply(&mut cluster, None);
        Instant::now()
    };
    while faults.elapsed() < Duration::from_secs(20) {
        let alerts = prom.alerts().await;
        assert!(alerts.is_empty(), "transient faults raised {alerts:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (s, before) in [&a, &b].into_iter().zip(before) {
        let after = failures(&s.metrics().await);
        assert!(
            after > before,
            "a sidecar never met the faults ({before} -> {after})"
        );
    }

    // A full outage: the seed's rule and the breaker alert, once for the workload.
    cluster.kill_all();
    wait_for(Duration::from_secs(90), "outage alerts pending", || async {
        let alerts = prom.alerts().await;
        let breaker: Vec<_> = alerts
            .iter()
            .filter(|a| a.name == "RedisCircuitBreakerOpen")
            .collect();
        let rate: Vec<_> = alerts
            .iter()
            .filter(|a| a.name == "RedisHealthCheckFailureRate")
            .collect();
        let one_for_the_workload = breaker.len() == 1
            && breaker[0].labels.get("pod").is_none()
            && breaker[0].value.starts_with('2');
        let circuit_open = rate
            .iter()
            .any(|a| a.labels.get("reason").and_then(|r| r.as_str()) == Some("circuit_open"));
        if one_for_the_workload && circuit_open {
            Ok(())
        } else {
            Err(format!("{alerts:?}"))
        }
    })
    .await;

    // Recovery clears the breaker alert.
    tokio::task::block_in_place(|| cluster.restart_all(Duration::from_secs(60)));
    wait_for(
        Duration::from_secs(90),
        "the breaker alert cleared",
        || async {
            let alerts = prom.alerts().await;
            if alerts.iter().any(|a| a.name == "RedisCircuitBreakerOpen") {
                Err(format!("{alerts:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}
