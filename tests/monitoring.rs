//! The alert rules and the dashboard: promtool checks and tests them, every metric they use is
//! one redis-probe exports, and the prometheus-operator copy matches the plain rules file.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use redis_probe::config::HostPort;
use redis_probe::metrics::{Ceiling, Metrics, Options};
use redis_probe::probe::info::{ClusterInfo, NodeInfo};
use redis_probe::probe::{InfoReport, NodeReport, NodeView, Role};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/monitoring");

fn promtool(args: &[&str]) {
    let promtool = support::require_tool(
        "promtool",
        "sudo apt-get install -y prometheus (or run scripts/install-deps)",
    );
    let out = Command::new(promtool)
        .args(args)
        .current_dir(DIR)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    promtool(&["check", "rules", "redis-probe.rules.yaml"]);
    promtool(&["test", "rules", "redis-probe.rules.test.yaml"]);
}

/// The shipped rules over what a real Prometheus recorded through a real outage
/// (`examples/alerts_realtime.rs`): silent through transient faults, the seed's failure-rate
/// rule and the breaker alert firing 15 minutes into the outage, both resolved 11 minutes
/// after recovery, exactly as the real server showed them.
#[test]
fn rules_over_a_recorded_real_outage() {
    let recorded =
        std::fs::read_to_string(Path::new(DIR).join("recorded-outage.test.yaml")).unwrap();
    assert!(recorded.contains(
        "alertname: RedisHealthCheckFailureRate\n        exp_alerts:\n          - exp_labels:"
    ));
    assert!(recorded.contains("reason: \"circuit_open\""));
    promtool(&["test", "rules", "recorded-outage.test.yaml"]);
}

#[test]
fn prometheusrule_is_generated_from_the_rules_file() {
    let rules = std::fs::read_to_string(Path::new(DIR).join("redis-probe.rules.yaml")).unwrap();
    let crd = std::fs::read_to_string(Path::new(DIR).join("prometheusrule.yaml")).unwrap();
    let (_, spec) = crd.split_once("\nspec:\n").expect("a spec section");
    let expected: String = rules
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    assert_eq!(spec, expected, "run scripts/gen-prometheusrule");
}

/// Every metric name redis-probe can export, with series in every family.
fn exported_names() -> BTreeSet<String> {
    let m = Metrics::with_options(Options {
        expected_shards: Some(redis_probe::config::ShardRange { min: 3, max: 10 }),
        pool: true,
        pool_ceiling: true,
        client_cert: true,
    });
    let node = HostPort {
        host: "10.0.0.1".into(),
        port: 6379,
    };
    m.health.record_check(Ok(()), 0.01, 0.0);
    m.nodes.record(&[NodeReport {
        addr: node.clone(),
        role: Role::Primary,
        result: Ok(Duration::from_millis(1)),
    }]);
    let info = NodeInfo {
        connected_clients: Some(1),
        maxclients: Some(2),
        rejected_connections: Some(0),
        total_connections_received: Some(3),
        identity: redis_probe::probe::info::Identity::parse(
            "redis_version:7.0.15\nrun_id:x\nuptime_in_seconds:5\n",
        ),
    };
    let report = InfoReport {
        nodes: vec![NodeView {
            addr: node.clone(),
            role: Role::Primary,
            info,
        }],
        cluster: Some(
            ClusterInfo::parse(
                "cluster_state:ok\ncluster_slots_assigned:16384\ncluster_slots_ok:16384\n\
                 cluster_slots_pfail:0\ncluster_slots_fail:0\ncluster_known_nodes:6\n\
                 cluster_size:3\n",
            )
            .0,
        ),
        ..Default::default()
    };
    m.server_view
        .record_info(&report, 65000, &Default::default());
    let ceiling = Ceiling {
        pod: 10,
        per_node: 10,
    };
    m.pool
        .record_counts(&[(node.to_string(), 1)], Some(ceiling));
    m.tls.record_expiries(&[(node.to_string(), 1)]);
    let mut text = String::new();
    m.encode_prometheus(&mut text);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Metric names (`redis_...`) used in a text of PromQL.
fn used_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("redis_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn rules_and_dashboard_use_only_exported_metrics() {
    let exported = exported_names();
    assert!(
        exported.contains("redis_pool_current_conns")
            && exported.contains("redis_cluster_expected_shards_min")
            && exported.contains("redis_cluster_expected_shards_max")
    );
    let rules = std::fs::read_to_string(Path::new(DIR).join("redis-probe.rules.yaml")).unwrap();
    // Every expression on its line, so the line scan below sees all of them: a block scalar
    // (`expr: |`) would escape it.
    let exprs = rules
        .lines()
        .filter(|l| l.trim().starts_with("expr:"))
        .count();
    let alerts = rules
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    let records = rules
        .lines()
        .filter(|l| l.trim().starts_with("- record:"))
        .count();
    assert_eq!(exprs, alerts + records, "a rule without a one-line expr");
    assert!(
        !rules.lines().any(|l| {
            let t = l.trim();
            t.starts_with("expr:")
                && matches!(
                    t.trim_start_matches("expr:").trim(),
                    "|" | ">" | "|-" | ">-" | ""
                )
        }),
        "write each expr on one line"
    );
    let rule_exprs: String = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(DIR).join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut dash_exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            dash_exprs.push_str(t["expr"].as_str().unwrap());
            dash_exprs.push('\n');
        }
    }
    dash_exprs.push_str(
        dashboard["templating"]["list"][1]["query"]
            .as_str()
            .unwrap(),
    );
    for (what, text) in [("rules", rule_exprs), ("dashboard", dash_exprs)] {
        let used = used_names(&text);
        assert!(used.len() >= 8, "{what}: {used:?}");
        for name in used {
            assert!(
                exported.contains(&name),
                "{what} uses {name}, which redis-probe does not export"
            );
        }
    }
}

/// Every alert has a firing and a silent case in the promtool tests (docs/metrics.md says so), so a
/// new alert without both fails here.
#[test]
fn every_alert_has_a_firing_and_a_silent_case() {
    let rules = std::fs::read_to_string(Path::new(DIR).join("redis-probe.rules.yaml")).unwrap();
    let tests =
        std::fs::read_to_string(Path::new(DIR).join("redis-probe.rules.test.yaml")).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 16, "{alerts:?}");
    for alert in alerts {
        let cases: Vec<&str> = lines
            .windows(2)
            .filter(|w| w[0] == format!("alertname: {alert}"))
            .map(|w| w[1])
            .collect();
        assert!(
            cases.contains(&"exp_alerts: []"),
            "{alert}: no silent case in the promtool tests"
        );
        assert!(
            cases.contains(&"exp_alerts:"),
            "{alert}: no firing case in the promtool tests"
        );
    }
}
