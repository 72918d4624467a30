//! Micro-benchmarks of what runs on every request and every check.
//!
//! ```text
//! cargo bench --bench hot_paths
//! ```

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::Method;
use redis_probe::breaker::{Breaker, Settings};
use redis_probe::config::{HostPort, OnFailure};
use redis_probe::health::{HealthLoop, Timing};
use redis_probe::metrics::{Metrics, Options};
use redis_probe::probe::info::NodeInfo;
use redis_probe::probe::{CheckReport, NodeReport, Probe, Role};
use redis_probe::schedule::NoJitter;
use redis_probe::server::{AppState, route};
use tokio::time::Instant;

struct Passing;

impl Probe for Passing {
    async fn check(&mut self, _deadline: Instant) -> CheckReport {
        CheckReport::passed()
    }
}

fn nodes(n: u16) -> Vec<NodeReport> {
    (0..n)
        .map(|i| NodeReport {
            addr: HostPort {
                host: format!("10.0.{}.{}", i / 250, i % 250),
                port: 6379,
            },
            role: if i % 2 == 0 {
                Role::Primary
            } else {
                Role::Replica
            },
            result: Ok(Duration::from_micros(300)),
        })
        .collect()
}

fn metrics_with(n: u16) -> Metrics {
    let m = Metrics::with_options(Options {
        expected_shards: Some(redis_probe::config::ShardRange { min: 3, max: 3 }),
        pool: true,
        pool_ceiling: true,
        client_cert: true,
    });
    m.health.record_check(Ok(()), 0.002, 0.0);
    m.nodes.record(&nodes(n));
    m
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = rt.block_on(async {
        let schedule = Timing {
            interval: Duration::from_secs(5),
            jitter: 0.0,
            attempts: 1,
            attempt_timeout: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(100),
        };
        let b = Settings {
            failure_threshold: 3,
            success_threshold: 1,
            open_duration: Duration::from_secs(5),
            open_duration_max: Duration::from_secs(30),
            jitter: 0.0,
        };
        let metrics = Arc::new(metrics_with(6));
        let (l, rx) = HealthLoop::new(Passing, schedule, b, NoJitter, metrics.clone());
        tokio::spawn(l.run());
        let mut rx2 = rx.clone();
        while rx2.borrow_and_update().last.is_none() {
            rx2.changed().await.unwrap();
        }
        AppState::new(rx, metrics, OnFailure::Unready, vec![])
    });
    let _guard = rt.enter();
    c.bench_function("readyz from published state", |b| {
        b.iter(|| route(&state, &Method::GET, "/readyz", None, None))
    });
    c.bench_function("readyz?verbose", |b| {
        b.iter(|| route(&state, &Method::GET, "/readyz", Some("verbose"), None))
    });
    for n in [6u16, 60] {
        let m = metrics_with(n);
        c.bench_function(&format!("encode /metrics, {n} nodes"), |b| {
            b.iter(|| {
                let mut s = String::with_capacity(16 * 1024);
                m.encode_openmetrics(&mut s);
                s
            })
        });
    }
    c.bench_function("breaker step", |b| {
        let mut br = Breaker::new(
            Settings {
                failure_threshold: 3,
                success_threshold: 1,
                open_duration: Duration::from_secs(5),
                open_duration_max: Duration::from_secs(30),
                jitter: 0.2,
            },
            NoJitter,
        );
        let now = Instant::now();
        let mut ok = false;
        b.iter(|| {
            ok = !ok;
            br.observe(now, ok)
        })
    });
    let info = "# Clients\r\nconnected_clients:7\r\ncluster_connections:10\r\nmaxclients:10000\r\nclient_recent_max_input_buffer:20480\r\nclient_recent_max_output_buffer:0\r\nblocked_clients:0\r\ntracking_clients:0\r\nclients_in_timeout_table:0\r\n\r\n# Stats\r\ntotal_connections_received:42\r\ntotal_commands_processed:1234\r\ninstantaneous_ops_per_sec:3\r\ntotal_net_input_bytes:100000\r\ntotal_net_output_bytes:200000\r\nrejected_connections:3\r\nsync_full:1\r\nsync_partial_ok:0\r\nexpired_keys:0\r\nevicted_keys:0\r\nkeyspace_hits:10\r\nkeyspace_misses:2\r\n";
    c.bench_function("parse INFO clients stats", |b| {
        b.iter(|| NodeInfo::parse(info))
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);
