//! One function per section: each measures what it needs, fills its view and adds findings.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::findings::{Code, Findings};
use super::{
    AppConnections, Auth, Connections, NodeConnections, NodeLatency, NodeReach, Options, OtlpView,
    Reachability, Report, ShardView, SidecarTiming, Timeouts, TopologyView, Verdict,
};
use crate::checks::{self, Target};
use crate::config::Config;
use crate::health::Timing;
use crate::pool;
use crate::probe::topology::SLOT_COUNT;
use crate::probe::{CheckReport, InfoReport, Reason, RedisProbe, Role, Topology, tls};

/// The whole report, section by section.
pub(super) async fn report(config: &Config, opts: &Options) -> Report {
    let mut f = Findings::default();
    let mut r = Report {
        reachability: Reachability {
            dns: dns(config, &mut f).await,
            nodes: vec![],
        },
        ..Report::default()
    };
    let attempt = config.probe.attempt_timeout;
    match RedisProbe::new(&config.redis) {
        Err(e) => f.add(
            Code::PasswordFile,
            format!("REDIS_PASSWORD_FILE cannot be read: {e}"),
        ),
        Ok(mut probe) => {
            let first = probe.check(Instant::now() + attempt).await;
            r.reachability.nodes = reachability(config, &first, &mut f).await;
            let info = probe.info(Instant::now() + attempt).await;
            r.topology = topology(config, probe.topology(), &info, &mut f);
            if probe.dropped_nodes() > 0 {
                let message = format!(
                    "the cluster reports {} nodes more than the {} redis-probe follows",
                    probe.dropped_nodes(),
                    probe.max_nodes()
                );
                f.add(Code::TopologyTruncated, message);
            }
            r.latency = latency(&mut probe, &first, opts.duration, attempt, &mut f).await;
            let virtual_shard = r.topology.one_virtual_shard;
            r.connections = connections(
                config,
                opts,
                &info,
                &r.reachability.nodes,
                virtual_shard,
                &mut f,
            )
            .await;
            r.timeouts = timeouts(config, opts, &r.latency, &mut f);
            r.otlp = otlp(config, &mut f).await;
            r.sidecar = sidecar_timing(config);
            r.events = super::history::read(config.listen.port()).await;
            max_clients(&r.reachability.nodes, &r.events, &mut f);
        }
    }
    if !f.0.is_empty() {
        r.verdict = Verdict::Problems;
    }
    r.findings = f.0;
    r
}

/// What each configured address resolves to.
async fn dns(config: &Config, f: &mut Findings) -> BTreeMap<String, Result<Vec<String>, String>> {
    let mut out = BTreeMap::new();
    for a in &config.redis.addresses {
        let resolved = crate::probe::resolve(a)
            .await
            .map(|addrs| addrs.iter().map(|s| s.ip().to_string()).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        if let Err(e) = &resolved {
            f.add(Code::Dns, format!("{a} does not resolve: {e}"));
        }
        out.insert(a.to_string(), resolved);
    }
    out
}

/// The first check's verdict per node, and each node's certificate.
async fn reachability(config: &Config, first: &CheckReport, f: &mut Findings) -> Vec<NodeReach> {
    if let Some(problem) = config.redis.tls.as_ref().and_then(tls::trust_store_problem) {
        f.add(Code::NoTrustStore, problem);
    }
    if let Err(reason) = first.result {
        let code = match reason {
            Reason::Auth => Code::Auth,
            Reason::Permission => Code::Permission,
            Reason::ClusterModeDisabled | Reason::NotPrimary | Reason::Sentinel => {
                Code::WrongServer
            }
            Reason::Tls => Code::Tls,
            Reason::Dns => Code::Dns,
            _ => Code::Unreachable,
        };
        let detail = first.detail.as_deref().unwrap_or("");
        f.add(code, format!("the first check failed: {reason} ({detail})"));
    }
    let mut nodes = vec![];
    for n in &first.nodes {
        let cert = match &config.redis.tls {
            Some(t) => Some(tls::inspect(&n.addr, t, config.probe.attempt_timeout).await),
            None => None,
        };
        if let Some(Ok(info)) = &cert {
            if let Some(e) = &info.verify_error {
                let message = format!("{}: certificate does not verify: {e}", n.addr);
                f.add(Code::TlsUnverified, message);
            }
            if info.days_left < 14 {
                let (days, subject) = (info.days_left, &info.subject);
                let message = format!("{}: certificate expires in {days} days ({subject})", n.addr);
                f.add(Code::CertExpiring, message);
            }
        }
        nodes.push(NodeReach {
            node: n.addr.to_string(),
            role: n.role,
            check: n
                .result
                .map(|_| "ok".to_string())
                .unwrap_or_else(|e| e.to_string()),
            auth: match n.result {
                Ok(_) => Auth::Ok,
                Err(Reason::Auth) => Auth::Rejected,
                Err(_) => Auth::NotReached,
            },
            tls: cert,
        });
    }
    nodes
}

/// The shards, their slots and the cluster's own state.
fn topology(
    config: &Config,
    topology: Option<&Topology>,
    info: &InfoReport,
    f: &mut Findings,
) -> TopologyView {
    let mut v = TopologyView {
        cluster_state_ok: info.cluster.and_then(|c| c.state_ok),
        expected_shards: config.observe.expected_shards,
        ..TopologyView::default()
    };
    for s in topology.iter().flat_map(|t| &t.shards) {
        v.shards.push(ShardView {
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
    v.slots_covered = v.shards.iter().map(|s| s.slots).sum();
    v.live_shards = v.shards.iter().filter(|s| s.slots > 0).count();
    v.one_virtual_shard = topology.is_some_and(Topology::one_virtual_shard);
    if !config.redis.cluster_mode || v.shards.is_empty() {
        return v;
    }
    if v.slots_covered < SLOT_COUNT {
        let message = format!("{} of {SLOT_COUNT} slots are served", v.slots_covered);
        f.add(Code::SlotsUncovered, message);
    }
    if v.cluster_state_ok == Some(false) {
        f.add(Code::ClusterState, "CLUSTER INFO says cluster_state:fail");
    }
    if let Some(expected) = v.expected_shards
        && !expected.contains(v.live_shards)
        && !v.one_virtual_shard
    {
        let message = format!(
            "{} shards serve slots, {expected} are declared (PROBE_EXPECTED_SHARDS); with shard auto scaling, set it to the bounds MIN..MAX",
            v.live_shards
        );
        f.add(Code::ShardDrift, message);
    }
    v
}

/// PING round trips over `duration`, a check every 100 ms. A failed PING counts as the whole
/// attempt timeout: that is what it cost.
async fn latency(
    probe: &mut RedisProbe,
    first: &CheckReport,
    duration: Duration,
    attempt: Duration,
    f: &mut Findings,
) -> Vec<NodeLatency> {
    let mut samples: BTreeMap<String, (Vec<Duration>, usize)> = BTreeMap::new();
    let until = Instant::now() + duration;
    while Instant::now() < until && first.result != Err(Reason::Auth) && !first.nodes.is_empty() {
        let report = probe.check(Instant::now() + attempt).await;
        for n in report.nodes {
            let (s, failures) = samples.entry(n.addr.to_string()).or_default();
            s.push(n.result.unwrap_or(attempt));
            *failures += usize::from(n.result.is_err());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes: Vec<NodeLatency> = samples
        .into_iter()
        .map(|(node, (mut s, failures))| {
            s.sort();
            NodeLatency {
                samples: s.len(),
                failures,
                min_ms: ms(s[0]),
                median_ms: ms(percentile(&s, 0.5)),
                p99_ms: ms(percentile(&s, 0.99)),
                node,
            }
        })
        .collect();
    slow_nodes(&nodes, f);
    nodes
}

/// A node whose median is over 5 ms and 5x the typical node's. The median, not the p99: over a
/// few seconds of samples the p99 is one sample, and one late PING on a busy host is not a
/// slow node.
fn slow_nodes(nodes: &[NodeLatency], f: &mut Findings) {
    let mut medians: Vec<f64> = nodes.iter().map(|l| l.median_ms).collect();
    medians.sort_by(f64::total_cmp);
    let typical = medians.get(medians.len() / 2).copied().unwrap_or(0.0);
    for l in nodes {
        if nodes.len() > 1 && l.median_ms > 5.0 && l.median_ms > 5.0 * typical.max(0.1) {
            let message = format!(
                "{}: median {:.1} ms (p99 {:.1} ms), the typical node's median is {:.2} ms",
                l.node, l.median_ms, l.p99_ms, typical
            );
            f.add(Code::SlowNode, message);
        }
    }
}

/// The server's view of its clients, this pod's connections, and the ceiling worked through.
async fn connections(
    config: &Config,
    opts: &Options,
    info: &InfoReport,
    reached: &[NodeReach],
    one_virtual_shard: bool,
    f: &mut Findings,
) -> Connections {
    let addrs: Vec<_> = info.nodes.iter().map(|n| n.addr.clone()).collect();
    let mut c = Connections::default();
    let view = pool::pod_connections(&addrs).await;
    let this_pod: Option<BTreeMap<String, u64>> =
        view.as_ref().map(|v| v.per_node.iter().cloned().collect());
    c.app = view
        .map(|v| v.tcp)
        .unwrap_or_default()
        .into_iter()
        .map(AppConnections::from)
        .collect();
    let cuts = idle_cuts(config.listen.port()).await;
    mixed_versions(&info.nodes, f);
    for n in &info.nodes {
        let node = n.addr.to_string();
        let maxclients = n.info.maxclients.unwrap_or(config.observe.maxclients);
        if let Some(clients) = n.info.connected_clients
            && clients as f64 > 0.8 * maxclients as f64
        {
            let message = format!("{node}: {clients} clients of maxclients {maxclients}");
            f.add(Code::ClientsNearMax, message);
        }
        c.nodes.push(NodeConnections {
            this_pod: this_pod.as_ref().and_then(|p| p.get(&node).copied()),
            idle_cut_seconds: cuts.get(&node).map(|c| c.0),
            connected_clients: n.info.connected_clients,
            maxclients,
            node,
        });
    }
    let app = &config.redis.app_pool;
    idle_finding(app.idle_time, &cuts, f);
    let primaries = reached.iter().filter(|n| n.role == Role::Primary).count();
    let used = pool::nodes_used(
        primaries as u64,
        reached.len() as u64,
        app.reads_from_replicas(),
    );
    c.pool_size = app.size;
    c.nodes_used_by_app = used as usize;
    c.pod_ceiling = app.size.map(|s| u64::from(s) * used);
    c.replicas = opts.replicas;
    c.lowest_maxclients = c.nodes.iter().map(|n| n.maxclients).min();
    c.one_virtual_shard = one_virtual_shard;
    if let (Some(size), Some(replicas)) = (app.size, opts.replicas)
        && !one_virtual_shard
    {
        let per_node = u64::from(size) * u64::from(replicas);
        c.fleet_ceiling_per_node = Some(per_node);
        if let Some(max) = c.lowest_maxclients
            && per_node > max
        {
            f.add(
                Code::CeilingAboveMaxclients,
                format!(
                    "{replicas} pods x REDIS_POOL_SIZE={size} = {per_node} connections may go to one node (go-redis sizes a cluster pool per node), above maxclients {max}"
                ),
            );
        }
    }
    c
}

/// One finding when the nodes that answered INFO do not all run the same engine and version,
/// counting each.
fn mixed_versions(nodes: &[crate::probe::NodeView], f: &mut Findings) {
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for n in nodes {
        let id = &n.info.identity;
        if let (Some(engine), Some(version)) = (id.engine, &id.version) {
            *runs.entry(format!("{engine} {version}")).or_default() += 1;
        }
    }
    if runs.len() > 1 {
        let each: Vec<String> = runs.iter().map(|(v, n)| format!("{n} on {v}")).collect();
        let message = format!(
            "the nodes run different versions: {} (a rolling upgrade in progress, or one that stopped half way)",
            each.join(", ")
        );
        f.add(Code::MixedVersions, message);
    }
}

/// The idle cuts the sidecar running in this pod has learned (`redis_idle_cut_seconds` on its
/// `/metrics`, on loopback at its listen port), with who cuts (`server` or `path`); empty when
/// none answers there.
async fn idle_cuts(port: u16) -> BTreeMap<String, (f64, String)> {
    let body = super::history::from_sidecar(port, "/metrics").await;
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("redis_idle_cut_seconds{node=\"")?;
            let (node, rest) = rest.split_once('"')?;
            let by = rest
                .strip_prefix(",by=\"")
                .and_then(|r| r.split_once('"'))
                .map_or("", |(by, _)| by);
            let value = rest.rsplit_once("} ")?.1.split(' ').next()?.parse().ok()?;
            Some((node.to_string(), (value, by.to_string())))
        })
        .collect()
}

/// go-redis v9 keeps an idle connection 30 minutes unless told otherwise.
const GO_REDIS_IDLE_DEFAULT: Duration = Duration::from_secs(30 * 60);

fn idle_finding(
    idle: Option<(&'static str, Duration)>,
    cuts: &BTreeMap<String, (f64, String)>,
    f: &mut Findings,
) {
    let Some((node, cut, by)) = cuts
        .iter()
        .min_by(|a, b| a.1.0.total_cmp(&b.1.0))
        .map(|(n, c)| (n, c.0, c.1.as_str()))
    else {
        return;
    };
    let who = match by {
        "server" => "the server closes idle connections (its `timeout`) at",
        _ => "something on the path (a load balancer, a firewall, NAT) cuts idle connections at",
    };
    let (setting, idle) = match idle {
        Some((key, d)) => (format!("{key}={}", humantime::format_duration(d)), d),
        None => (
            "the app's idle time (not set: go-redis v9's default 30m)".to_string(),
            GO_REDIS_IDLE_DEFAULT,
        ),
    };
    if idle.as_secs_f64() > cut {
        f.add(
            Code::IdleAboveCut,
            format!(
                "{setting} is longer than the idle cut measured to {node}: {who} {cut:.0} s (seen twice, no server event to explain it); pooled connections idle past it meet \"connection reset by peer\"; set the app's idle time below {cut:.0} s"
            ),
        );
    }
}

/// The configured timeouts against what was measured and what the kubelet allows.
fn timeouts(
    config: &Config,
    opts: &Options,
    latency: &[NodeLatency],
    f: &mut Findings,
) -> Timeouts {
    let attempt = config.probe.attempt_timeout;
    let read = config.redis.read_timeout;
    if let Some(pt) = opts.probe_timeout
        && attempt > pt
    {
        f.add(
            Code::AttemptAboveProbeTimeout,
            format!(
                "PROBE_ATTEMPT_TIMEOUT={attempt:?} is longer than the kubelet's timeoutSeconds ({pt:?}): an app that checks Redis in its own probe the same way would time out first"
            ),
        );
    }
    let worst = |healthy_only: bool| {
        latency
            .iter()
            .filter(|l| !healthy_only || l.failures == 0)
            .map(|l| l.p99_ms)
            .fold(0.0, f64::max)
    };
    let healthy_p99 = worst(true);
    if healthy_p99 > 0.0 && read.as_secs_f64() * 1000.0 < 10.0 * healthy_p99 {
        f.add(
            Code::ReadTimeoutTight,
            format!("REDIS_READ_TIMEOUT={read:?} is less than 10x the worst healthy p99 ({healthy_p99:.1} ms)"),
        );
    }
    Timeouts {
        dial_ms: config.redis.dial_timeout.as_millis(),
        read_ms: read.as_millis(),
        attempt_ms: attempt.as_millis(),
        kubelet_probe_timeout_ms: opts.probe_timeout.map(|d| d.as_millis()),
        worst_p99_ms: worst(false),
    }
}

/// The OTEL variables' lint, and one empty export to the configured collector: a one-shot
/// run makes that one connection whether or not the sidecar's own collector check is on
/// (`PROBE_OTLP_CHECK`).
async fn otlp(config: &Config, f: &mut Findings) -> OtlpView {
    let mut v = OtlpView::default();
    for lint in &config.checks.otlp_lints {
        f.add(Code::OtlpSetting, lint.to_string());
        v.lint.push(lint.to_string());
    }
    let Some(e) = &config.checks.otlp_exporter else {
        return v;
    };
    v.endpoint = Some(e.shown_url());
    v.protocol = Some(e.protocol.as_str());
    let target = Target::Otlp(e.clone());
    let reach = checks::check_once(&target, config.probe.attempt_timeout)
        .await
        .map_err(|failure| failure.text);
    if let Err(text) = &reach {
        let message = format!("{} ({}): {text}", e.shown_url(), e.protocol.as_str());
        f.add(Code::OtlpUnreachable, message);
    }
    v.reachable = Some(reach);
    v
}

/// What the sidecar's own settings mean in an incident, worst cases.
fn sidecar_timing(config: &Config) -> SidecarTiming {
    let p = &config.probe;
    let budget = Timing::from_config(config).check_budget().as_secs_f64();
    let retries = budget - p.attempt_timeout.as_secs_f64() * f64::from(p.attempts);
    let interval = p.interval.as_secs_f64() * (1.0 + p.jitter);
    let checks = f64::from(p.failure_threshold);
    SidecarTiming {
        outage_refused_to_unready_s: checks * (interval + retries),
        outage_timeout_to_unready_s: checks * (interval + budget),
        recovery_to_ready_s: p.open_duration_max.as_secs_f64() + budget,
    }
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

/// How recent a `clients_rejected` event of the running sidecar must be to explain a node that
/// drops this run's connections.
const REJECTED_LATELY: Duration = Duration::from_secs(600);

/// Nodes that refuse new connections at maxclients: the node said so (`max_clients`), or it
/// closed this run's connection while the running sidecar, over the connection it already
/// holds, saw the node's `rejected_connections` rise (a TLS node drops a new client before the
/// handshake, so the client sees only `connection_closed`). The app's new connections to such a
/// node fail while the ones it holds keep working.
fn max_clients(nodes: &[NodeReach], events: &[super::history::EventLine], f: &mut Findings) {
    let now = std::time::SystemTime::now();
    let rejected_lately = |node: &str| {
        events.iter().rev().find(|e| {
            e.kind == "clients_rejected"
                && e.node.as_deref() == Some(node)
                && humantime::parse_rfc3339(&e.ts)
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age < REJECTED_LATELY)
        })
    };
    for n in nodes {
        let said = n.check == Reason::MaxClients.as_str();
        let seen = rejected_lately(&n.node).filter(|_| {
            [Reason::ConnectionClosed, Reason::ConnectionReset]
                .iter()
                .any(|r| n.check == r.as_str())
        });
        let message = match (said, seen) {
            (true, _) => format!(
                "{}: refuses new connections, maxclients reached (the node said so)",
                n.node
            ),
            (false, Some(e)) => format!(
                "{}: drops new connections ({}) and rejected connections at {} ({}): maxclients \
                 reached; a TLS node drops a new client before the handshake",
                n.node,
                n.check,
                e.ts,
                e.detail.as_deref().unwrap_or("")
            ),
            (false, None) => continue,
        };
        f.add(Code::MaxClients, message);
    }
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

    fn node(name: &str, median_ms: f64) -> NodeLatency {
        NodeLatency {
            node: name.into(),
            samples: 10,
            failures: 0,
            min_ms: median_ms,
            median_ms,
            p99_ms: median_ms,
        }
    }

    #[test]
    fn a_slow_node_is_judged_on_its_median() {
        let mut f = Findings::default();
        slow_nodes(&[node("a", 0.3), node("b", 0.4), node("c", 40.0)], &mut f);
        assert_eq!(f.0.len(), 1);
        assert_eq!(f.0[0].code, Code::SlowNode);
        assert!(f.0[0].message.starts_with("c: median 40.0 ms"));
        let mut f = Findings::default();
        slow_nodes(&[node("a", 3.0), node("b", 4.0)], &mut f);
        assert!(f.0.is_empty(), "under 5 ms is never slow");
    }
}
