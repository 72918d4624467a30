//! Prometheus metrics: one registry built at start-up, updated by the health loop, encoded on
//! scrape.
//!
//! Every label value known in advance (each failure reason, each breaker state and transition,
//! each attempt result) is created at start so dashboards and `rate()` see zeros instead of
//! missing series. Node series follow the topology: a node that leaves the cluster or changes
//! role has its old series removed.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::breaker::{self, State};
use crate::probe::{Cost, NodeReport, Reason};

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4, for clients that do not ask for
/// OpenMetrics.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckReasonLabels {
    pub check: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// The transitions the breaker can make (a check that ends after the open duration can take
/// open straight to closed).
const TRANSITIONS: [(State, State); 5] = [
    (State::Closed, State::Open),
    (State::Open, State::HalfOpen),
    (State::Open, State::Closed),
    (State::HalfOpen, State::Open),
    (State::HalfOpen, State::Closed),
];

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    pub checks: Counter,
    pub check_failures: Family<ReasonLabel, Counter>,
    pub attempts: Family<ResultLabel, Counter>,
    pub attempt_failures: Family<ReasonLabel, Counter>,
    pub check_duration: Histogram,
    pub up: Gauge,
    pub node_up: Family<NodeLabels, Gauge>,
    pub node_ping: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    pub breaker_state: Family<StateLabel, Gauge>,
    pub breaker_transitions: Family<TransitionLabels, Counter>,
    pub breaker_open_duration: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
    pub last_check: Gauge<f64, AtomicU64>,
    pub dials: Counter,
    pub commands: Counter,
    pub connections: Gauge,
    /// The node label sets currently exported, to remove stale ones.
    nodes: Mutex<HashSet<NodeLabels>>,
    pub server: ServerMetrics,
    pub pool: PoolMetrics,
    pub parse_errors: Family<SourceLabel, Counter>,
    pub check_up: Family<CheckLabel, Gauge>,
    pub extra_failures: Family<CheckReasonLabels, Counter>,
    pub config_warnings: Family<KindLabel, Gauge>,
}

/// The server-side view, from INFO and CLUSTER INFO (names as redis_exporter's where it has
/// them, so existing dashboards fit).
#[derive(Default)]
pub struct ServerMetrics {
    pub connected_clients: Family<NodeLabel, Gauge>,
    pub max_clients: Family<NodeLabel, Gauge>,
    pub rejected_connections: Family<NodeLabel, Counter>,
    pub connections_received: Family<NodeLabel, Counter>,
    pub cluster_state: Gauge,
    pub slots_assigned: Gauge,
    pub slots_ok: Gauge,
    pub slots_pfail: Gauge,
    pub slots_fail: Gauge,
    pub known_nodes: Gauge,
    pub cluster_size: Gauge,
    pub expected_shards: Gauge,
    pub cert_expiry: Family<NodeLabel, Gauge>,
    nodes: Mutex<HashSet<String>>,
}

/// The pod's connections to the cluster, counted from /proc/net/tcp.
#[derive(Default)]
pub struct PoolMetrics {
    pub current_conns: Gauge,
    pub node_conns: Family<NodeLabel, Gauge>,
    pub max_conns: Gauge,
    pub max_conns_per_node: Gauge,
    nodes: Mutex<HashSet<String>>,
}

/// Which optional metrics exist: a metric that would only ever say 0 is not exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `PROBE_EXPECTED_SHARDS` is set.
    pub expected_shards: Option<u32>,
    /// `/proc/net/tcp` exists, so the pod's connections can be counted.
    pub pool: bool,
    /// The pod's ceiling is known (`REDIS_POOL_SIZE` or `PROBE_POOL_MAX_CONNS`).
    pub pool_ceiling: bool,
}

// === impl Metrics ===

impl Metrics {
    /// The core metrics only.
    pub fn new() -> Self {
        Self::with_options(Options::default())
    }

    pub fn with_options(opts: Options) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            checks: Counter::default(),
            check_failures: Family::default(),
            attempts: Family::default(),
            attempt_failures: Family::default(),
            check_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            up: Gauge::default(),
            node_up: Family::default(),
            node_ping: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            breaker_open_duration: Gauge::default(),
            ready: Gauge::default(),
            last_check: Gauge::default(),
            dials: Counter::default(),
            commands: Counter::default(),
            connections: Gauge::default(),
            nodes: Mutex::new(HashSet::new()),
            server: ServerMetrics::default(),
            pool: PoolMetrics::default(),
            parse_errors: Family::default(),
            check_up: Family::default(),
            extra_failures: Family::default(),
            config_warnings: Family::default(),
            registry: Registry::default(),
        };
        {
            let r = registry.sub_registry_with_prefix("redis");
            r.register(
                "health_checks",
                "Health checks run (each may make several attempts)",
                m.checks.clone(),
            );
            r.register(
                "health_check_failed",
                "Health checks whose every attempt failed, by the reason of the last attempt",
                m.check_failures.clone(),
            );
            r.register(
                "health_check_attempts",
                "Health check attempts, by result",
                m.attempts.clone(),
            );
            r.register(
                "health_check_attempt_failures",
                "Failed health check attempts, by reason, including those a retry absorbed",
                m.attempt_failures.clone(),
            );
            r.register_with_unit(
                "health_check_duration",
                "Duration of a whole health check, retries included",
                Unit::Seconds,
                m.check_duration.clone(),
            );
            r.register("up", "1 when the last health check passed", m.up.clone());
            r.register(
                "node_up",
                "1 when the node answered PING in the last health check",
                m.node_up.clone(),
            );
            r.register_with_unit(
                "node_ping",
                "PING round trip of the node in the last health check",
                Unit::Seconds,
                m.node_ping.clone(),
            );
            r.register(
                "circuit_breaker_state",
                "1 for the breaker's current state",
                m.breaker_state.clone(),
            );
            r.register(
                "circuit_breaker_transitions",
                "Circuit breaker state changes",
                m.breaker_transitions.clone(),
            );
            r.register_with_unit(
                "circuit_breaker_open_duration",
                "How long the breaker stays open the next time it opens (before jitter); doubles while trials fail",
                Unit::Seconds,
                m.breaker_open_duration.clone(),
            );
        }
        {
            let r = registry.sub_registry_with_prefix("redis_probe");
            r.register("ready", "1 when /readyz answers 200", m.ready.clone());
            r.register_with_unit(
                "last_check_timestamp",
                "Unix time the last health check finished",
                Unit::Seconds,
                m.last_check.clone(),
            );
            r.register(
                "connection_attempts",
                "Connections to Redis nodes the probe tried to open (TCP, TLS and AUTH when the node is up)",
                m.dials.clone(),
            );
            r.register(
                "commands",
                "Commands the probe sent to Redis (PING, CLUSTER SHARDS, CLUSTER INFO)",
                m.commands.clone(),
            );
            r.register(
                "connections",
                "Connections to Redis nodes the probe holds open",
                m.connections.clone(),
            );
            let build: Family<VersionLabel, Gauge> = Family::default();
            build
                .get_or_create(&VersionLabel {
                    version: env!("CARGO_PKG_VERSION"),
                })
                .set(1);
            r.register("build_info", "Always 1; the version is a label", build);
        }
        {
            let r = registry.sub_registry_with_prefix("redis");
            let sm = &m.server;
            r.register(
                "connected_clients",
                "Clients connected to the node (INFO clients)",
                sm.connected_clients.clone(),
            );
            r.register(
                "max_clients",
                "The node's maxclients (INFO; CONFIG GET; else PROBE_MAXCLIENTS)",
                sm.max_clients.clone(),
            );
            r.register(
                "rejected_connections",
                "Connections the node rejected for maxclients (INFO stats)",
                sm.rejected_connections.clone(),
            );
            r.register(
                "connections_received",
                "Connections the node accepted since it started (INFO stats)",
                sm.connections_received.clone(),
            );
            r.register(
                "cluster_state",
                "1 when CLUSTER INFO says cluster_state:ok",
                sm.cluster_state.clone(),
            );
            r.register(
                "cluster_slots_assigned",
                "Slots assigned to a shard",
                sm.slots_assigned.clone(),
            );
            r.register(
                "cluster_slots_ok",
                "Slots served by a healthy primary",
                sm.slots_ok.clone(),
            );
            r.register(
                "cluster_slots_pfail",
                "Slots whose primary is suspected down",
                sm.slots_pfail.clone(),
            );
            r.register(
                "cluster_slots_fail",
                "Slots whose primary is down",
                sm.slots_fail.clone(),
            );
            r.register(
                "cluster_known_nodes",
                "Nodes the cluster knows",
                sm.known_nodes.clone(),
            );
            r.register(
                "cluster_size",
                "Shards serving at least one slot",
                sm.cluster_size.clone(),
            );
            r.register_with_unit(
                "tls_cert_expiry_timestamp",
                "Unix time the node's TLS certificate expires (read every 6 hours)",
                Unit::Seconds,
                sm.cert_expiry.clone(),
            );
            if let Some(n) = opts.expected_shards {
                sm.expected_shards.set(i64::from(n));
                r.register(
                    "cluster_expected_shards",
                    "Shards the cluster should have (PROBE_EXPECTED_SHARDS)",
                    sm.expected_shards.clone(),
                );
            }
            if opts.pool {
                let pm = &m.pool;
                r.register(
                    "pool_current_conns",
                    "The pod's established connections to the cluster's nodes, the sidecar's own excluded",
                    pm.current_conns.clone(),
                );
                r.register(
                    "pool_node_conns",
                    "The pod's established connections to each node",
                    pm.node_conns.clone(),
                );
            }
            if opts.pool_ceiling {
                let pm = &m.pool;
                r.register(
                    "pool_max_conns",
                    "The pod's connection ceiling: REDIS_POOL_SIZE x nodes the app may use (or PROBE_POOL_MAX_CONNS)",
                    pm.max_conns.clone(),
                );
                r.register(
                    "pool_max_conns_per_node",
                    "The pod's ceiling per node (REDIS_POOL_SIZE: go-redis sizes a cluster pool per node)",
                    pm.max_conns_per_node.clone(),
                );
            }
        }
        registry.sub_registry_with_prefix("redis_probe").register(
            "parse_errors",
            "Lines of INFO replies or /proc/net/tcp that did not parse",
            m.parse_errors.clone(),
        );
        {
            let r = registry.sub_registry_with_prefix("redis_probe");
            r.register(
                "check_up",
                "1 when a check beside Redis passes (app: after its threshold)",
                m.check_up.clone(),
            );
            r.register(
                "check_failures",
                "Failed polls of a check beside Redis, by reason",
                m.extra_failures.clone(),
            );
            r.register(
                "config_warning",
                "1 for each kind of questionable setting found at start-up (OTEL exporter variables)",
                m.config_warnings.clone(),
            );
        }
        for kind in crate::otlp::FINDING_KINDS {
            let _ = m.config_warnings.get_or_create(&KindLabel { kind });
        }
        for source in ["info", "proc_net_tcp"] {
            let _ = m.parse_errors.get_or_create(&SourceLabel { source });
        }
        for reason in Reason::ALL {
            let _ = m.check_failures.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
            let _ = m.attempt_failures.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        for result in ["success", "failure"] {
            let _ = m.attempts.get_or_create(&ResultLabel { result });
        }
        for (from, to) in TRANSITIONS {
            let _ = m.breaker_transitions.get_or_create(&TransitionLabels {
                from: from.as_str(),
                to: to.as_str(),
            });
        }
        m.set_breaker_state(State::Closed);
        Metrics { registry, ..m }
    }

    pub fn set_breaker_state(&self, current: State) {
        for s in State::ALL {
            self.breaker_state
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(i64::from(s == current));
        }
    }

    pub fn record_transition(&self, t: breaker::Transition) {
        self.breaker_transitions
            .get_or_create(&TransitionLabels {
                from: t.from.as_str(),
                to: t.to.as_str(),
            })
            .inc();
        self.set_breaker_state(t.to);
    }

    pub fn record_attempt(&self, result: Result<(), Reason>, cost: Cost) {
        self.dials.inc_by(u64::from(cost.dials));
        self.commands.inc_by(u64::from(cost.commands));
        self.connections.set(i64::from(cost.held));
        match result {
            Ok(()) => {
                self.attempts
                    .get_or_create(&ResultLabel { result: "success" })
                    .inc();
            }
            Err(r) => {
                self.attempts
                    .get_or_create(&ResultLabel { result: "failure" })
                    .inc();
                self.attempt_failures
                    .get_or_create(&ReasonLabel { reason: r.as_str() })
                    .inc();
            }
        }
    }

    /// Records a finished check and the per-node results of its last attempt.
    pub fn record_check(
        &self,
        result: Result<(), Reason>,
        seconds: f64,
        nodes: &[NodeReport],
        unix_now: f64,
    ) {
        self.checks.inc();
        self.check_duration.observe(seconds);
        self.last_check.set(unix_now);
        self.up.set(i64::from(result.is_ok()));
        if let Err(r) = result {
            self.check_failures
                .get_or_create(&ReasonLabel { reason: r.as_str() })
                .inc();
        }
        if nodes.is_empty() {
            // Nothing was reached: every known node is down, keep their series at 0.
            for labels in self.nodes.lock().expect("metrics lock").iter() {
                self.node_up.get_or_create(labels).set(0);
            }
            return;
        }
        let current: HashSet<NodeLabels> = nodes
            .iter()
            .map(|n| NodeLabels {
                node: n.addr.to_string(),
                role: n.role.as_str(),
            })
            .collect();
        let mut known = self.nodes.lock().expect("metrics lock");
        for stale in known.difference(&current) {
            self.node_up.remove(stale);
            self.node_ping.remove(stale);
        }
        for n in nodes {
            let labels = NodeLabels {
                node: n.addr.to_string(),
                role: n.role.as_str(),
            };
            match n.result {
                Ok(rtt) => {
                    self.node_up.get_or_create(&labels).set(1);
                    self.node_ping.get_or_create(&labels).set(rtt.as_secs_f64());
                }
                Err(_) => {
                    self.node_up.get_or_create(&labels).set(0);
                }
            }
        }
        *known = current;
    }

    /// Records what INFO and CLUSTER INFO said; nodes that did not answer keep no series.
    pub fn record_info(&self, report: &crate::probe::InfoReport, maxclients_fallback: u64) {
        let sm = &self.server;
        let mut current = HashSet::new();
        for (addr, _, info) in &report.nodes {
            let node = NodeLabel {
                node: addr.to_string(),
            };
            if let Some(v) = info.connected_clients {
                sm.connected_clients.get_or_create(&node).set(v as i64);
            }
            sm.max_clients
                .get_or_create(&node)
                .set(info.maxclients.unwrap_or(maxclients_fallback) as i64);
            // Counters mirror the server's own totals (a restart of the node resets them, which
            // Prometheus' rate() handles).
            if let Some(v) = info.rejected_connections {
                sm.rejected_connections
                    .get_or_create(&node)
                    .inner()
                    .store(v, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(v) = info.total_connections_received {
                sm.connections_received
                    .get_or_create(&node)
                    .inner()
                    .store(v, std::sync::atomic::Ordering::Relaxed);
            }
            current.insert(node.node);
        }
        let mut known = sm.nodes.lock().expect("metrics lock");
        for stale in known.difference(&current) {
            let l = NodeLabel {
                node: stale.clone(),
            };
            sm.connected_clients.remove(&l);
            sm.max_clients.remove(&l);
            sm.rejected_connections.remove(&l);
            sm.connections_received.remove(&l);
        }
        *known = current;
        if let Some(c) = report.cluster {
            let set = |g: &Gauge, v: Option<u64>| {
                if let Some(v) = v {
                    g.set(v as i64);
                }
            };
            set(&sm.cluster_state, c.state_ok.map(u64::from));
            set(&sm.slots_assigned, c.slots_assigned);
            set(&sm.slots_ok, c.slots_ok);
            set(&sm.slots_pfail, c.slots_pfail);
            set(&sm.slots_fail, c.slots_fail);
            set(&sm.known_nodes, c.known_nodes);
            set(&sm.cluster_size, c.size);
        }
        self.parse_errors
            .get_or_create(&SourceLabel { source: "info" })
            .inc_by(u64::from(report.parse_errors));
        self.dials.inc_by(u64::from(report.cost.dials));
        self.commands.inc_by(u64::from(report.cost.commands));
    }

    /// Records the pod's connection counts per node.
    pub fn record_pool(&self, per_node: &[(String, u64)], ceiling: Option<(u64, u64)>) {
        let pm = &self.pool;
        pm.current_conns
            .set(per_node.iter().map(|(_, n)| *n as i64).sum());
        let current: HashSet<String> = per_node.iter().map(|(n, _)| n.clone()).collect();
        let mut known = pm.nodes.lock().expect("metrics lock");
        for stale in known.difference(&current) {
            pm.node_conns.remove(&NodeLabel {
                node: stale.clone(),
            });
        }
        for (node, n) in per_node {
            pm.node_conns
                .get_or_create(&NodeLabel { node: node.clone() })
                .set(*n as i64);
        }
        *known = current;
        if let Some((max, per_node_max)) = ceiling {
            pm.max_conns.set(max as i64);
            pm.max_conns_per_node.set(per_node_max as i64);
        }
    }

    /// Creates the series of a configured check beside Redis, at 0.
    pub fn register_extra_check(&self, check: &'static str) {
        self.check_up.get_or_create(&CheckLabel { check }).set(0);
        for reason in crate::checks::REASONS {
            let _ = self
                .extra_failures
                .get_or_create(&CheckReasonLabels { check, reason });
        }
    }

    pub fn record_extra_check(&self, check: &'static str, failure: Option<&'static str>) {
        if let Some(reason) = failure {
            self.extra_failures
                .get_or_create(&CheckReasonLabels { check, reason })
                .inc();
        }
    }

    pub fn set_extra_up(&self, check: &'static str, up: bool) {
        self.check_up
            .get_or_create(&CheckLabel { check })
            .set(i64::from(up));
    }

    /// Marks the kinds of questionable settings found at start-up.
    pub fn set_config_warnings(&self, kinds: impl IntoIterator<Item = &'static str>) {
        for kind in kinds {
            self.config_warnings
                .get_or_create(&KindLabel { kind })
                .set(1);
        }
    }

    /// OpenMetrics text.
    pub fn encode_openmetrics(&self, out: &mut String) {
        prometheus_client::encoding::text::encode(out, &self.registry)
            .expect("writing to a String cannot fail");
    }

    /// Prometheus text format 0.0.4.
    pub fn encode_prometheus(&self, out: &mut String) {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
            .expect("writing to a String cannot fail");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::HostPort;
    use crate::probe::Role;

    fn node(port: u16, role: Role, ok: bool) -> NodeReport {
        NodeReport {
            addr: HostPort {
                host: "127.0.0.1".into(),
                port,
            },
            role,
            result: if ok {
                Ok(Duration::from_micros(250))
            } else {
                Err(Reason::Timeout)
            },
        }
    }

    #[test]
    fn known_labels_render_as_zeros() {
        let m = Metrics::new();
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(
            s.contains("redis_health_check_failed_total{reason=\"connection_reset\"} 0"),
            "{s}"
        );
        assert!(s.contains("redis_circuit_breaker_state{state=\"closed\"} 1"));
        assert!(
            s.contains("redis_circuit_breaker_transitions_total{from=\"closed\",to=\"open\"} 0")
        );
        assert!(s.contains("redis_probe_build_info{version=\""));
        assert!(s.ends_with("# EOF\n"));
    }

    #[test]
    fn config_warnings_render_per_kind() {
        let m = Metrics::new();
        m.set_config_warnings(["grpc_port_with_http"]);
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(
            s.contains("redis_probe_config_warning{kind=\"grpc_port_with_http\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("redis_probe_config_warning{kind=\"missing_scheme\"} 0"),
            "{s}"
        );
    }

    #[test]
    fn nodes_follow_topology() {
        let m = Metrics::new();
        m.record_check(
            Ok(()),
            0.01,
            &[node(1, Role::Primary, true), node(2, Role::Replica, false)],
            0.0,
        );
        // Failover: 2 is now primary, 1 replica.
        m.record_check(
            Ok(()),
            0.01,
            &[node(2, Role::Primary, true), node(1, Role::Replica, true)],
            0.0,
        );
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(
            s.contains("redis_node_up{node=\"127.0.0.1:2\",role=\"primary\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("redis_node_up{node=\"127.0.0.1:1\",role=\"replica\"} 1"),
            "{s}"
        );
        assert!(
            !s.contains("redis_node_up{node=\"127.0.0.1:1\",role=\"primary\"}"),
            "{s}"
        );
        assert!(
            s.contains("redis_node_ping_seconds{node=\"127.0.0.1:2\",role=\"primary\"} 0.00025"),
            "{s}"
        );
    }
}
