//! `redis-probe diagnose`: one run with the sidecar's configuration that connects, measures for
//! a few seconds and reports what an incident review would want, each finding with the number
//! behind it. Exit status: 0 when nothing is wrong, 1 when something is, 64 on bad
//! configuration.
//!
//! It reuses the probe (connections, topology, PING, INFO), the pool counter and the OTLP
//! checks, and prints instead of publishing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::probe::{Reason, RedisProbe, Role};

/// Command-line options of `diagnose`.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub json: bool,
    /// Pods of the Deployment, for the fleet's connection ceiling.
    pub replicas: Option<u32>,
    /// The kubelet's readinessProbe `timeoutSeconds`.
    pub probe_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub section: &'static str,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `ok` or `problems`.
    pub verdict: &'static str,
    pub findings: Vec<Finding>,
    pub reachability: Reachability,
    pub topology: TopologyView,
    pub latency: Vec<NodeLatency>,
    pub connections: Connections,
    pub timeouts: Timeouts,
    pub otlp: OtlpView,
    pub sidecar: SidecarTiming,
}

#[derive(Debug, Default, Serialize)]
pub struct Reachability {
    /// Configured address -> resolved IPs (or the error).
    pub dns: BTreeMap<String, Result<Vec<String>, String>>,
    pub nodes: Vec<NodeReach>,
}

#[derive(Debug, Serialize)]
pub struct NodeReach {
    pub node: String,
    pub role: &'static str,
    /// `ok`, or the failure reason of the first check.
    pub check: String,
    pub auth: &'static str,
    pub tls: Option<Result<crate::probe::tls::CertInfo, String>>,
}

#[derive(Debug, Default, Serialize)]
pub struct TopologyView {
    pub shards: Vec<ShardView>,
    pub slots_covered: u32,
    pub cluster_state_ok: Option<bool>,
    pub live_shards: usize,
    pub expected_shards: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ShardView {
    pub slots: u32,
    pub primary: Option<String>,
    pub replicas: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeLatency {
    pub node: String,
    pub samples: usize,
    pub failures: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Connections {
    pub nodes: Vec<NodeConnections>,
    pub pool_size: Option<u32>,
    pub nodes_used_by_app: usize,
    pub pod_ceiling: Option<u64>,
    pub replicas: Option<u32>,
    /// `pool_size x replicas`: what the fleet may open to one node.
    pub fleet_ceiling_per_node: Option<u64>,
    pub lowest_maxclients: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct NodeConnections {
    pub node: String,
    pub connected_clients: Option<u64>,
    pub maxclients: u64,
    /// This pod's established connections to the node (the sidecar's own excluded).
    pub this_pod: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Timeouts {
    pub dial_ms: u128,
    pub read_ms: u128,
    pub attempt_ms: u128,
    pub kubelet_probe_timeout_ms: Option<u128>,
    pub worst_p99_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct OtlpView {
    pub endpoint: Option<String>,
    pub protocol: Option<&'static str>,
    pub lint: Vec<String>,
    pub reachable: Option<Result<(), String>>,
}

#[derive(Debug, Default, Serialize)]
pub struct SidecarTiming {
    /// Full outage with connections refused -> 503, worst case.
    pub outage_refused_to_unready_s: f64,
    /// Full outage where nodes time out -> 503, worst case.
    pub outage_timeout_to_unready_s: f64,
    /// Cluster healthy again -> 200, worst case (longest open duration + one check).
    pub recovery_to_ready_s: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the diagnosis.
pub async fn run(config: &Config, opts: &Options) -> Report {
    crate::install_crypto_provider();
    let mut r = Report::default();
    let find = |section: &'static str, code: &'static str, message: String| Finding {
        section,
        code,
        message,
    };
    let mut findings = vec![];

    // Reachability: DNS of the configured addresses.
    for a in &config.redis.addresses {
        let resolved = tokio::net::lookup_host((a.host.as_str(), a.port))
            .await
            .map(|it| it.map(|s| s.ip().to_string()).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        if let Err(e) = &resolved {
            findings.push(find(
                "reachability",
                "dns",
                format!("{a} does not resolve: {e}"),
            ));
        }
        r.reachability.dns.insert(a.to_string(), resolved);
    }

    let mut probe = match RedisProbe::new(&config.redis) {
        Ok(p) => p,
        Err(e) => {
            findings.push(find(
                "reachability",
                "password_file",
                format!("REDIS_PASSWORD_FILE cannot be read: {e}"),
            ));
            return finish(r, findings);
        }
    };
    let attempt = config.probe.attempt_timeout;
    let first = probe.run_check(Instant::now() + attempt).await;
    if let Err(reason) = first.result {
        let code = match reason {
            Reason::Auth => "auth",
            Reason::Tls => "tls",
            Reason::Dns => "dns",
            _ => "unreachable",
        };
        findings.push(find(
            "reachability",
            code,
            format!(
                "the first check failed: {reason} ({})",
                first.detail.as_deref().unwrap_or("")
            ),
        ));
    }
    for n in &first.nodes {
        let tls = match &config.redis.tls {
            Some(tls) => Some(crate::probe::tls::inspect(&n.addr, tls, attempt).await),
            None => None,
        };
        if let Some(Ok(info)) = &tls {
            if let Some(e) = &info.verify_error {
                findings.push(find(
                    "reachability",
                    "tls_unverified",
                    format!("{}: certificate does not verify: {e}", n.addr),
                ));
            }
            if info.days_left < 14 {
                findings.push(find(
                    "reachability",
                    "cert_expiring",
                    format!(
                        "{}: certificate expires in {} days ({})",
                        n.addr, info.days_left, info.subject
                    ),
                ));
            }
        }
        r.reachability.nodes.push(NodeReach {
            node: n.addr.to_string(),
            role: n.role.as_str(),
            check: n
                .result
                .map(|_| "ok".to_string())
                .unwrap_or_else(|e| e.to_string()),
            auth: match n.result {
                Ok(_) => "ok",
                Err(Reason::Auth) => "rejected",
                Err(_) => "not reached",
            },
            tls,
        });
    }

    // Topology and the server's view.
    let info = probe.collect_info(Instant::now() + attempt).await;
    if let Some(t) = probe.topology() {
        for s in &t.shards {
            r.topology.shards.push(ShardView {
                slots: s.slots,
                primary: s.primary.as_ref().map(ToString::to_string),
                replicas: s
                    .nodes
                    .iter()
                    .filter(|n| n.role == Role::Replica)
                    .map(|n| n.addr.to_string())
                    .collect(),
            });
        }
        r.topology.slots_covered = t.shards.iter().map(|s| s.slots).sum();
        r.topology.live_shards = t.shards.iter().filter(|s| s.slots > 0).count();
    }
    r.topology.cluster_state_ok = info.cluster.and_then(|c| c.state_ok);
    r.topology.expected_shards = config.observe.expected_shards;
    if config.redis.cluster_mode && !r.topology.shards.is_empty() {
        if r.topology.slots_covered < 16384 {
            findings.push(find(
                "topology",
                "slots_uncovered",
                format!("{} of 16384 slots are served", r.topology.slots_covered),
            ));
        }
        if r.topology.cluster_state_ok == Some(false) {
            findings.push(find(
                "topology",
                "cluster_state",
                "CLUSTER INFO says cluster_state:fail".into(),
            ));
        }
        if let Some(expected) = config.observe.expected_shards
            && expected as usize != r.topology.live_shards
        {
            findings.push(find(
                "topology",
                "shard_drift",
                format!(
                    "{} shards serve slots, {expected} are declared (PROBE_EXPECTED_SHARDS)",
                    r.topology.live_shards
                ),
            ));
        }
    }

    // Latency over the duration: a check every 100 ms.
    let mut samples: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let until = Instant::now() + opts.duration;
    while Instant::now() < until && first.result != Err(Reason::Auth) && !first.nodes.is_empty() {
        let report = probe.run_check(Instant::now() + attempt).await;
        for n in report.nodes {
            match n.result {
                Ok(rtt) => samples.entry(n.addr.to_string()).or_default().push(rtt),
                // A failed PING counts as the whole attempt timeout: that is what it cost.
                Err(_) => {
                    *failures.entry(n.addr.to_string()).or_default() += 1;
                    samples.entry(n.addr.to_string()).or_default().push(attempt);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (node, mut s) in samples {
        s.sort();
        r.latency.push(NodeLatency {
            samples: s.len(),
            failures: failures.get(&node).copied().unwrap_or(0),
            min_ms: ms(s[0]),
            median_ms: ms(percentile(&s, 0.5)),
            p99_ms: ms(percentile(&s, 0.99)),
            node,
        });
    }
    let mut medians: Vec<f64> = r.latency.iter().map(|l| l.median_ms).collect();
    medians.sort_by(f64::total_cmp);
    let typical = medians.get(medians.len() / 2).copied().unwrap_or(0.0);
    for l in &r.latency {
        // The median, not the p99: over a few seconds of samples the p99 is one sample, and
        // one late PING on a busy host is not a slow node.
        if r.latency.len() > 1 && l.median_ms > 5.0 && l.median_ms > 5.0 * typical.max(0.1) {
            findings.push(find(
                "latency",
                "slow_node",
                format!(
                    "{}: median {:.1} ms (p99 {:.1} ms), the typical node's median is {:.2} ms",
                    l.node, l.median_ms, l.p99_ms, typical
                ),
            ));
        }
    }

    // Connections: the server's view, this pod's, and the ceiling worked through.
    let pod_counts = pod_connections(&info);
    for (addr, _, ni) in &info.nodes {
        r.connections.nodes.push(NodeConnections {
            node: addr.to_string(),
            connected_clients: ni.connected_clients,
            maxclients: ni.maxclients.unwrap_or(config.observe.maxclients),
            this_pod: pod_counts
                .as_ref()
                .and_then(|c| c.get(&addr.to_string()).copied()),
        });
    }
    for n in &r.connections.nodes {
        if let Some(c) = n.connected_clients
            && c as f64 > 0.8 * n.maxclients as f64
        {
            findings.push(find(
                "connections",
                "clients_near_max",
                format!("{}: {c} clients of maxclients {}", n.node, n.maxclients),
            ));
        }
    }
    let app = &config.redis.app_pool;
    let all = r.reachability.nodes.len();
    let primaries = r
        .reachability
        .nodes
        .iter()
        .filter(|n| n.role == "primary")
        .count();
    r.connections.pool_size = app.size;
    r.connections.nodes_used_by_app = if app.read_only || app.route_by_latency {
        all
    } else {
        primaries
    };
    r.connections.pod_ceiling = app
        .size
        .map(|s| u64::from(s) * r.connections.nodes_used_by_app as u64);
    r.connections.replicas = opts.replicas;
    r.connections.lowest_maxclients = r.connections.nodes.iter().map(|n| n.maxclients).min();
    if let (Some(size), Some(replicas)) = (app.size, opts.replicas) {
        let per_node = u64::from(size) * u64::from(replicas);
        r.connections.fleet_ceiling_per_node = Some(per_node);
        if let Some(max) = r.connections.lowest_maxclients
            && per_node > max
        {
            findings.push(find(
                "connections",
                "ceiling_above_maxclients",
                format!(
                    "{replicas} pods x REDIS_POOL_SIZE={size} = {per_node} connections may go to one node (go-redis sizes a cluster pool per node), above maxclients {max}"
                ),
            ));
        }
    }

    // Timeouts against what was measured and what the kubelet allows.
    r.timeouts = Timeouts {
        dial_ms: config.redis.dial_timeout.as_millis(),
        read_ms: config.redis.read_timeout.as_millis(),
        attempt_ms: attempt.as_millis(),
        kubelet_probe_timeout_ms: opts.probe_timeout.map(|d| d.as_millis()),
        worst_p99_ms: r.latency.iter().map(|l| l.p99_ms).fold(0.0, f64::max),
    };
    if let Some(pt) = opts.probe_timeout
        && attempt > pt
    {
        findings.push(find(
            "timeouts",
            "attempt_above_probe_timeout",
            format!(
                "PROBE_ATTEMPT_TIMEOUT={attempt:?} is longer than the kubelet's timeoutSeconds ({pt:?}): an app that checks Redis in its own probe the same way would time out first"
            ),
        ));
    }
    let healthy_p99: f64 = r
        .latency
        .iter()
        .filter(|l| l.failures == 0)
        .map(|l| l.p99_ms)
        .fold(0.0, f64::max);
    if healthy_p99 > 0.0 && (config.redis.read_timeout.as_secs_f64() * 1000.0) < 10.0 * healthy_p99
    {
        findings.push(find(
            "timeouts",
            "read_timeout_tight",
            format!("REDIS_READ_TIMEOUT={:?} is less than 10x the worst healthy p99 ({healthy_p99:.1} ms)", config.redis.read_timeout),
        ));
    }

    // OTLP.
    for f in &config.checks.otlp_findings {
        findings.push(find("otlp", "otlp_setting", f.to_string()));
        r.otlp.lint.push(f.to_string());
    }
    if let Some(e) = &config.checks.otlp {
        r.otlp.endpoint = Some(e.url.clone());
        r.otlp.protocol = Some(e.protocol.as_str());
        let reach = crate::checks::check_once(&crate::checks::Target::Otlp(e.clone()), attempt)
            .await
            .map_err(|f| f.text);
        if let Err(text) = &reach {
            findings.push(find(
                "otlp",
                "otlp_unreachable",
                format!("{} ({}): {text}", e.url, e.protocol.as_str()),
            ));
        }
        r.otlp.reachable = Some(reach);
    }

    // What the sidecar's own settings mean in an incident.
    let p = &config.probe;
    let schedule = crate::health::Schedule::from_config(config);
    let retries =
        schedule.check_budget().as_secs_f64() - attempt.as_secs_f64() * f64::from(p.attempts);
    let interval = p.interval.as_secs_f64() * (1.0 + p.jitter);
    r.sidecar = SidecarTiming {
        outage_refused_to_unready_s: f64::from(p.failure_threshold) * (interval + retries),
        outage_timeout_to_unready_s: f64::from(p.failure_threshold)
            * (interval + schedule.check_budget().as_secs_f64()),
        recovery_to_ready_s: p.open_duration_max.as_secs_f64()
            + schedule.check_budget().as_secs_f64(),
    };
    finish(r, findings)
}

fn finish(mut r: Report, findings: Vec<Finding>) -> Report {
    r.verdict = if findings.is_empty() {
        "ok"
    } else {
        "problems"
    };
    r.findings = findings;
    r
}

/// This pod's connections to each node, when `/proc/net/tcp` exists.
fn pod_connections(info: &crate::probe::InfoReport) -> Option<BTreeMap<String, u64>> {
    let nodes: Vec<(String, std::net::SocketAddr)> = info
        .nodes
        .iter()
        .filter_map(|(a, _, _)| {
            Some((
                a.to_string(),
                std::net::SocketAddr::new(a.host.parse().ok()?, a.port),
            ))
        })
        .collect();
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|(_, s)| *s).collect();
    let own = crate::pool::own_socket_inodes(Path::new("/proc/self/fd"));
    let (counts, _) = crate::pool::count_in_namespace(Path::new("/proc/net"), &addrs, &own)?;
    Some(
        nodes
            .into_iter()
            .map(|(n, s)| (n, counts.get(&s).copied().unwrap_or(0)))
            .collect(),
    )
}

/// The report for a person: sections, aligned tables, a verdict line per finding.
pub fn render_text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "redis-probe diagnose\n");
    let _ = writeln!(o, "== Reachability");
    for (addr, res) in &r.reachability.dns {
        match res {
            Ok(ips) => {
                let _ = writeln!(o, "  DNS {addr} -> {}", ips.join(", "));
            }
            Err(e) => {
                let _ = writeln!(o, "  DNS {addr} -> FAILED: {e}");
            }
        }
    }
    let _ = writeln!(
        o,
        "  {:<22} {:<8} {:<18} {:<12} TLS",
        "node", "role", "check", "auth"
    );
    for n in &r.reachability.nodes {
        let tls = match &n.tls {
            None => "off".to_string(),
            Some(Err(e)) => format!("no handshake: {e}"),
            Some(Ok(c)) => format!(
                "{} {} names [{}], expires in {} days, {}",
                c.protocol,
                c.subject,
                c.names.join(", "),
                c.days_left,
                match &c.verify_error {
                    None => "verified".to_string(),
                    Some(e) => format!("NOT verified: {e}"),
                }
            ),
        };
        let _ = writeln!(
            o,
            "  {:<22} {:<8} {:<18} {:<12} {tls}",
            n.node, n.role, n.check, n.auth
        );
    }
    let t = &r.topology;
    let _ = writeln!(o, "\n== Topology");
    let _ = writeln!(
        o,
        "  {} shards serve slots ({} declared); {} of 16384 slots covered; cluster_state {}",
        t.live_shards,
        t.expected_shards.map_or("none".into(), |e| e.to_string()),
        t.slots_covered,
        match t.cluster_state_ok {
            Some(true) => "ok",
            Some(false) => "FAIL",
            None => "unknown",
        }
    );
    for s in &t.shards {
        let _ = writeln!(
            o,
            "  shard: {:>5} slots  primary {:<22} replicas {}",
            s.slots,
            s.primary.as_deref().unwrap_or("NONE"),
            s.replicas.join(", ")
        );
    }
    let _ = writeln!(o, "\n== Latency (PING round trip)");
    let _ = writeln!(
        o,
        "  {:<22} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "node", "samples", "failed", "min ms", "median ms", "p99 ms"
    );
    for l in &r.latency {
        let _ = writeln!(
            o,
            "  {:<22} {:>7} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            l.node, l.samples, l.failures, l.min_ms, l.median_ms, l.p99_ms
        );
    }
    let c = &r.connections;
    let _ = writeln!(o, "\n== Connections");
    let _ = writeln!(
        o,
        "  {:<22} {:>10} {:>11} {:>9}",
        "node", "clients", "maxclients", "this pod"
    );
    for n in &c.nodes {
        let _ = writeln!(
            o,
            "  {:<22} {:>10} {:>11} {:>9}",
            n.node,
            n.connected_clients.map_or("?".into(), |v| v.to_string()),
            n.maxclients,
            n.this_pod.map_or("?".into(), |v| v.to_string())
        );
    }
    match (c.pool_size, c.replicas, c.fleet_ceiling_per_node) {
        (Some(size), Some(replicas), Some(per_node)) => {
            let _ = writeln!(
                o,
                "  ceiling: REDIS_POOL_SIZE {size} per node (go-redis) x {} nodes = {} per pod; x {replicas} pods = {per_node} on one node vs maxclients {}",
                c.nodes_used_by_app,
                c.pod_ceiling.unwrap_or(0),
                c.lowest_maxclients.map_or("?".into(), |m| m.to_string())
            );
        }
        (Some(size), None, _) => {
            let _ = writeln!(
                o,
                "  ceiling: REDIS_POOL_SIZE {size} per node x {} nodes = {} per pod (pass --replicas N for the fleet)",
                c.nodes_used_by_app,
                c.pod_ceiling.unwrap_or(0)
            );
        }
        _ => {
            let _ = writeln!(o, "  ceiling: REDIS_POOL_SIZE not set");
        }
    }
    let tm = &r.timeouts;
    let _ = writeln!(o, "\n== Timeouts");
    let _ = writeln!(
        o,
        "  dial {} ms, read {} ms, attempt {} ms, kubelet probe {}; worst PING p99 {:.1} ms",
        tm.dial_ms,
        tm.read_ms,
        tm.attempt_ms,
        tm.kubelet_probe_timeout_ms
            .map_or("not given".into(), |v| format!("{v} ms")),
        tm.worst_p99_ms
    );
    let _ = writeln!(o, "\n== OTLP");
    match (&r.otlp.endpoint, &r.otlp.reachable) {
        (Some(e), Some(Ok(()))) => {
            let _ = writeln!(o, "  {e} ({}) reachable", r.otlp.protocol.unwrap_or(""));
        }
        (Some(e), Some(Err(why))) => {
            let _ = writeln!(
                o,
                "  {e} ({}) NOT reachable: {why}",
                r.otlp.protocol.unwrap_or("")
            );
        }
        _ => {
            let _ = writeln!(o, "  no OTLP endpoint configured");
        }
    }
    let s = &r.sidecar;
    let _ = writeln!(o, "\n== Sidecar settings");
    let _ = writeln!(
        o,
        "  full outage -> 503: at most {:.0} s (connections refused), {:.0} s (nodes time out); recovery -> 200: at most {:.0} s",
        s.outage_refused_to_unready_s, s.outage_timeout_to_unready_s, s.recovery_to_ready_s
    );
    let _ = writeln!(o, "\n== Verdict");
    if r.findings.is_empty() {
        let _ = writeln!(o, "  OK    nothing wrong found");
    }
    for f in &r.findings {
        let _ = writeln!(o, "  FAIL  [{}] {}: {}", f.section, f.code, f.message);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
