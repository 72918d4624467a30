//! The monitoring path in real time, with the shipped rules and their shipped windows and
//! `for:` durations: a real Prometheus (15 s scrape and evaluation) scrapes two sidecars with
//! default settings on a real cluster through transient faults, a sustained full outage and
//! recovery, and prints when each alert went pending, fired and resolved.
//!
//! ```text
//! cargo build --release && cargo run --release --example alerts_realtime -- \
//!     target/release/redis-probe [OUTAGE_MINUTES] [RECORD_FILE]
//! ```
//!
//! With RECORD_FILE it writes a promtool unit test: the two series the seed's rule and the
//! breaker alert read, as Prometheus recorded them (15 s steps, timestamps from the start of the
//! run), and the alerts the real server showed at three moments. `tests/monitoring.rs` runs it,
//! so promtool and the real server are checked to agree on a real outage.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use support::prometheus::{Alert, Prometheus, Target};
use support::{Cluster, Fault, Options, Sidecar};

const JOB: &str = "redis-probe";
const STEP: u64 = 15;

/// When each alert (by name and labels) was first seen pending, firing, and gone again.
#[derive(Default)]
struct Timeline {
    seen: BTreeMap<String, Seen>,
}

/// Seconds from the start of the run.
#[derive(Default)]
struct Seen {
    pending: Option<u64>,
    firing: Option<u64>,
    resolved: Option<u64>,
}

impl Timeline {
    fn observe(&mut self, t: u64, alerts: &[Alert]) {
        for a in alerts {
            let key = format!("{} {}", a.name, short_labels(a));
            let e = self.seen.entry(key).or_default();
            e.resolved = None;
            if e.pending.is_none() {
                e.pending = Some(t);
            }
            if a.state == "firing" && e.firing.is_none() {
                e.firing = Some(t);
            }
        }
        for (key, e) in self.seen.iter_mut() {
            let active = alerts
                .iter()
                .any(|a| &format!("{} {}", a.name, short_labels(a)) == key);
            if !active && e.resolved.is_none() {
                e.resolved = Some(t);
            }
        }
    }
}

fn short_labels(a: &Alert) -> String {
    let mut parts: Vec<String> = a
        .labels
        .iter()
        .filter(|(k, _)| !["alertname", "severity", "namespace", "job"].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    parts.sort();
    parts.join(",")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/redis-probe".into());
    let outage_minutes: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(15);
    let record = args.get(2).cloned();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("k8s/monitoring/redis-probe.rules.yaml");

    let mut cluster = Cluster::launch(Options::default()).await;
    let env = cluster.connection_env();
    let a = Sidecar::spawn_binary(&bin, &env).await;
    let b = Sidecar::spawn_binary(&bin, &env).await;
    for s in [&a, &b] {
        s.wait_status("/readyz", 200, Duration::from_secs(60)).await;
    }
    let targets = Target::pods(&[&a, &b]);
    let prom = Prometheus::start(&targets, JOB, &format!("{STEP}s"), &rules).await;
    let start = Instant::now();
    let start_unix = unix_now();
    let mut timeline = Timeline::default();
    let mut marks: Vec<(String, u64)> = vec![];
    let now = |start: Instant| start.elapsed().as_secs();

    let watch = async |timeline: &mut Timeline, until: u64| {
        while now(start) < until {
            timeline.observe(now(start), &prom.alerts().await);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };

    // Healthy, then transient faults 2 minutes apart.
    watch(&mut timeline, 120).await;
    // The same faults tests/prometheus.rs makes, from the harness's vocabulary.
    let apply =
        |cluster: &mut Cluster, f: Fault| tokio::task::block_in_place(|| f.apply(cluster, None));
    marks.push(("planned failover".into(), now(start)));
    apply(&mut cluster, Fault::PlannedFailover);
    watch(&mut timeline, 240).await;
    marks.push(("primary killed".into(), now(start)));
    let p = cluster.primaries()[0];
    apply(&mut cluster, Fault::Kill(p));
    watch(&mut timeline, 300).await;
    apply(&mut cluster, Fault::Start(p));
    tokio::task::block_in_place(|| cluster.wait_healthy(Duration::from_secs(60)));
    watch(&mut timeline, 360).await;
    marks.push(("every connection killed".into(), now(start)));
    apply(&mut cluster, Fault::ClientKill(None));
    watch(&mut timeline, 480).await;
    let transient_end = now(start);
    let quiet: Vec<String> = timeline.seen.keys().cloned().collect();

    marks.push(("full outage".into(), now(start)));
    let outage_at = now(start);
    apply(&mut cluster, Fault::KillAll);
    watch(&mut timeline, outage_at + outage_minutes * 60).await;
    let outage_end = now(start);
    let firing_at_end = prom.alerts().await;
    marks.push(("recovery".into(), now(start)));
    let recovery_at = now(start);
    apply(&mut cluster, Fault::RestartAll);
    watch(&mut timeline, recovery_at + 11 * 60).await;
    let end = now(start);

    println!("events (seconds from start):");
    for (m, t) in &marks {
        println!("  {t:>5}  {m}");
    }
    println!("alerts during transient faults (0..{transient_end} s): {quiet:?}");
    println!("alert | pending after outage | firing after outage | resolved after recovery");
    for (key, e) in &timeline.seen {
        let rel = |t: Option<u64>, base: u64| {
            t.map(|t| format!("{} s", t as i64 - base as i64))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{key} | {} | {} | {}",
            rel(e.pending, outage_at),
            rel(e.firing, outage_at),
            rel(e.resolved, recovery_at)
        );
    }
    if let Some(path) = record {
        let text = promtool_test(
            &prom,
            start_unix,
            end,
            &[
                (transient_end, vec![]),
                (outage_end, firing_at_end),
                (end, prom.alerts().await),
            ],
        )
        .await;
        std::fs::write(&path, text).unwrap();
        println!("recorded series and alerts written to {path}");
    }
    a.stop().await;
    b.stop().await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A promtool unit test over what Prometheus recorded: the series of the seed's failure-rate
/// rule and of the breaker alert, and, at each `(second, alerts)`, the firing alerts of those
/// two rules the real server showed (pending ones are not alerts to promtool).
async fn promtool_test(
    prom: &Prometheus,
    start_unix: u64,
    end: u64,
    checks: &[(u64, Vec<Alert>)],
) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "# Recorded by examples/alerts_realtime.rs from a real Prometheus: a real cluster, two\n\
         # sidecars with default settings, transient faults, a full outage, recovery. Each value is\n\
         # the series at one {STEP} s step from the start of the run; the expected alerts are the\n\
         # ones the real server showed at those moments.\n\
         rule_files:\n  - redis-probe.rules.yaml\nevaluation_interval: {STEP}s\ntests:\n  - interval: {STEP}s\n    input_series:"
    )
    .unwrap();
    for metric in [
        "redis_health_check_failed_total",
        "redis_circuit_breaker_state",
    ] {
        let series = prom
            .query_range(metric, start_unix, start_unix + end, STEP)
            .await;
        for (labels, values) in series {
            writeln!(out, "      - series: '{metric}{labels}'").unwrap();
            writeln!(out, "        values: '{values}'").unwrap();
        }
    }
    writeln!(out, "    alert_rule_test:").unwrap();
    for (t, alerts) in checks {
        let t = t - t % STEP;
        for name in ["RedisHealthCheckFailureRate", "RedisCircuitBreakerOpen"] {
            writeln!(out, "      - eval_time: {t}s\n        alertname: {name}").unwrap();
            let firing: Vec<&Alert> = alerts
                .iter()
                .filter(|a| a.name == name && a.state == "firing")
                .collect();
            if firing.is_empty() {
                writeln!(out, "        exp_alerts: []").unwrap();
                continue;
            }
            writeln!(out, "        exp_alerts:").unwrap();
            for a in firing {
                let labels: Vec<String> = a
                    .labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != "alertname")
                    .map(|(k, v)| format!("{k}: {:?}", v.as_str().unwrap_or("")))
                    .collect();
                writeln!(out, "          - exp_labels: {{{}}}", labels.join(", ")).unwrap();
                writeln!(out, "            exp_annotations:").unwrap();
                for (k, v) in &a.annotations {
                    writeln!(out, "              {k}: {:?}", v.as_str().unwrap_or("")).unwrap();
                }
            }
        }
    }
    out
}
