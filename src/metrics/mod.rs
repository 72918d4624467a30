//! Prometheus metrics: one registry built at start-up, in groups, each registering its own
//! series and recording what happened through methods named for it; encoded on scrape.
//!
//! | group | series | written by |
//! |---|---|---|
//! | [`HealthMetrics`] | `redis_health_check*`, `redis_up`, `redis_probe_last_check_timestamp`, `redis_probe_connection_attempts`, `redis_probe_commands`, `redis_probe_connections` | the health loop |
//! | [`BreakerMetrics`] | `redis_circuit_breaker_*` | the health loop |
//! | [`NodeMetrics`] | `redis_node_up`, `redis_node_ping_seconds` | the health loop |
//! | [`ServerViewMetrics`] | `redis_connected_clients`, `redis_max_clients`, `redis_cluster_*`, ... | the health loop's INFO reads |
//! | [`PoolMetrics`] | `redis_pool_*` | the pool watcher |
//! | [`CheckMetrics`] | `redis_probe_check_up`, `redis_probe_check_failures` | the checks beside Redis |
//! | [`TlsMetrics`] | `redis_tls_cert_expiry_timestamp_seconds` | the certificate watcher |
//! | [`CanaryMetrics`] | `redis_idle_cut_seconds`, `redis_idle_canary_total` | the idle canary |
//! | [`Metrics`] itself | `redis_probe_ready`, `redis_probe_build_info`, `redis_probe_parse_errors`, `redis_probe_config_warning`, `redis_probe_cpu_limit_cores` | the server (ready, on scrape; the CPU limit it paces scrapes by), the INFO and /proc parsers, start-up |
//!
//! Every label value known in advance (each failure reason, each breaker state and transition,
//! each attempt result) is created at start so dashboards and `rate()` see zeros instead of
//! missing series. Per-node series leave with their node.

mod breaker;
mod canary;
mod checks;
mod health;
pub mod labels;
mod nodes;
mod pool;
mod server_view;
mod tls;

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use self::breaker::BreakerMetrics;
pub use self::canary::CanaryMetrics;
pub use self::checks::CheckMetrics;
pub use self::health::HealthMetrics;
use self::labels::{ConnCauseLabels, KindLabel, NodeLabel, SourceLabel, VersionLabel};
pub use self::nodes::NodeMetrics;
pub use self::pool::{Ceiling, PoolMetrics};
pub use self::server_view::ServerViewMetrics;
pub use self::tls::TlsMetrics;
use crate::config::WarningKind;

/// `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4, for clients that do not ask for
/// OpenMetrics.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which optional metrics exist: a metric that would only ever say 0 is not exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `PROBE_EXPECTED_SHARDS` is set.
    pub expected_shards: Option<crate::config::ShardRange>,
    /// `/proc/net/tcp` exists, so the pod's connections can be counted.
    pub pool: bool,
    /// The pod's ceiling is known (`REDIS_POOL_SIZE` or `PROBE_POOL_MAX_CONNS`).
    pub pool_ceiling: bool,
    /// A client certificate is configured (mutual TLS).
    pub client_cert: bool,
}

/// What a `redis_probe_parse_errors` count is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseSource {
    /// INFO and CLUSTER INFO replies.
    Info,
    /// `/proc/net/tcp{,6}` lines.
    ProcNetTcp,
}

impl ParseSource {
    const ALL: [ParseSource; 2] = [ParseSource::Info, ParseSource::ProcNetTcp];

    fn as_str(self) -> &'static str {
        match self {
            ParseSource::Info => "info",
            ParseSource::ProcNetTcp => "proc_net_tcp",
        }
    }
}

/// Every metric the sidecar exports, in groups.
pub struct Metrics {
    registry: Registry,
    pub health: HealthMetrics,
    pub breaker: BreakerMetrics,
    pub nodes: NodeMetrics,
    pub server_view: ServerViewMetrics,
    pub pool: PoolMetrics,
    pub checks: CheckMetrics,
    pub tls: TlsMetrics,
    pub canary: CanaryMetrics,
    ready: Gauge,
    parse_errors: Family<SourceLabel, Counter>,
    config_warning: Family<KindLabel, Gauge>,
    cpu_limit: Gauge<f64, AtomicU64>,
    events: Family<KindLabel, Counter>,
    disconnects: Family<ConnCauseLabels, Counter>,
}

// === impl Metrics ===

impl Metrics {
    /// The core metrics only.
    pub fn new() -> Self {
        Self::with_options(Options::default())
    }

    pub fn with_options(opts: Options) -> Self {
        let mut registry = Registry::default();
        let health = HealthMetrics::register(&mut registry);
        let nodes = NodeMetrics::register(&mut registry);
        let breaker = BreakerMetrics::register(&mut registry);
        let server_view = ServerViewMetrics::register(&mut registry, opts.expected_shards);
        let tls = TlsMetrics::register(&mut registry, opts.client_cert);
        let pool = PoolMetrics::register(&mut registry, opts.pool, opts.pool_ceiling);
        let checks = CheckMetrics::register(&mut registry);
        let canary = CanaryMetrics::register(&mut registry);
        let m = Metrics {
            ready: Gauge::default(),
            parse_errors: Family::default(),
            config_warning: Family::default(),
            cpu_limit: Gauge::default(),
            events: Family::default(),
            disconnects: Family::default(),
            registry,
            health,
            breaker,
            nodes,
            server_view,
            pool,
            checks,
            tls,
            canary,
        };
        m.register_sidecar()
    }

    fn register_sidecar(mut self) -> Self {
        for kind in WarningKind::all() {
            let _ = self.config_warning.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for source in ParseSource::ALL {
            let _ = self.parse_errors.get_or_create(&SourceLabel {
                source: source.as_str(),
            });
        }
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
                revision: env!("REDIS_PROBE_REVISION"),
            })
            .set(1);
        let r = self.registry.sub_registry_with_prefix("redis_probe");
        r.register("ready", "1 when /readyz answers 200", self.ready.clone());
        r.register(
            "build_info",
            "Always 1; the version and the source revision are labels",
            build,
        );
        r.register(
            "parse_errors",
            "Lines of INFO replies or /proc/net/tcp that did not parse",
            self.parse_errors.clone(),
        );
        r.register(
            "config_warning",
            "1 for each kind of questionable setting found at start-up (OTEL exporter variables, app settings not readable, ...)",
            self.config_warning.clone(),
        );
        r.register(
            "events",
            "Events the sidecar saw, by kind (the log is on /events)",
            self.events.clone(),
        );
        r.register(
            "disconnects",
            "Connections the sidecar lost, by connection (canary) and the cause it decided",
            self.disconnects.clone(),
        );
        r.register(
            "cpu_limit_cores",
            "CPUs the cgroup's CFS quota allows this process (0.1 for 100m); 0 when unlimited. Sets the /metrics pace",
            self.cpu_limit.clone(),
        );
        self
    }

    /// An event of `kind` happened (`declare` only creates the series at 0).
    pub fn record_event(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn declare_event(&self, kind: &'static str) {
        let _ = self.events.get_or_create(&KindLabel { kind });
    }

    /// The `conn` connection was lost, for `cause` (`declare` only creates the series at 0).
    pub fn record_disconnect(&self, conn: &'static str, cause: &'static str) {
        self.disconnects
            .get_or_create(&ConnCauseLabels { conn, cause })
            .inc();
    }

    pub fn declare_disconnect(&self, conn: &'static str, cause: &'static str) {
        let _ = self
            .disconnects
            .get_or_create(&ConnCauseLabels { conn, cause });
    }

    /// The CPU limit now; `None` exports 0.
    pub fn set_cpu_limit(&self, cores: Option<f64>) {
        self.cpu_limit.set(cores.unwrap_or(0.0));
    }

    /// What `/readyz` answers now; the server sets it just before it encodes a scrape.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// `n` lines from `source` did not parse.
    pub fn record_parse_errors(&self, source: ParseSource, n: u64) {
        self.parse_errors
            .get_or_create(&SourceLabel {
                source: source.as_str(),
            })
            .inc_by(n);
    }

    /// Marks the kinds of questionable settings found at start-up.
    pub fn set_config_warnings(&self, kinds: impl IntoIterator<Item = WarningKind>) {
        for kind in kinds {
            self.config_warning
                .get_or_create(&KindLabel {
                    kind: kind.as_str(),
                })
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

/// The nodes a group exports series for, so a node that leaves takes its series along.
#[derive(Default)]
struct NodeSeries(Mutex<HashSet<String>>);

impl NodeSeries {
    /// The nodes exported from now on are `current`; `remove` is called for each one that left.
    fn replace(&self, current: impl IntoIterator<Item = String>, remove: impl Fn(&NodeLabel)) {
        let current: HashSet<String> = current.into_iter().collect();
        // Held only while series are updated, never across an await; a panic elsewhere while
        // it was held leaves a set that is still usable.
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for stale in known.difference(&current) {
            remove(&NodeLabel {
                node: stale.clone(),
            });
        }
        *known = current;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::HostPort;
    use crate::probe::{NodeReport, Reason, Role};

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
        m.set_config_warnings([WarningKind::Otlp(crate::otlp::LintKind::GrpcPortWithHttp)]);
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
        m.nodes
            .record(&[node(1, Role::Primary, true), node(2, Role::Replica, false)]);
        // Failover: 2 is now primary, 1 replica.
        m.nodes
            .record(&[node(2, Role::Primary, true), node(1, Role::Replica, true)]);
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        for line in [
            "redis_node_info{node=\"127.0.0.1:2\",role=\"primary\"} 1",
            "redis_node_info{node=\"127.0.0.1:1\",role=\"replica\"} 1",
            "redis_node_up{node=\"127.0.0.1:1\"} 1",
            "redis_node_up{node=\"127.0.0.1:2\"} 1",
            "redis_node_ping_seconds{node=\"127.0.0.1:2\"} 0.00025",
        ] {
            assert!(s.contains(line), "{line} missing:\n{s}");
        }
        // The role moved: only the info series changed.
        assert!(
            !s.contains("redis_node_info{node=\"127.0.0.1:1\",role=\"primary\"}"),
            "{s}"
        );
        // A node that left takes its series with it.
        m.nodes.record(&[node(2, Role::Primary, true)]);
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(!s.contains("node=\"127.0.0.1:1\""), "{s}");
    }

    /// No CLUSTER INFO read (cluster mode disabled, or refused by the ACL): no cluster series,
    /// where a 0 would say the cluster failed or has no shards.
    #[test]
    fn the_cluster_view_is_absent_until_read() {
        let m = Metrics::new();
        let encoded = |m: &Metrics| {
            let mut s = String::new();
            m.encode_prometheus(&mut s);
            s
        };
        let info = crate::probe::InfoReport::default();
        m.server_view.record_info(&info, 10000, &Default::default());
        let s = encoded(&m);
        assert!(!s.contains("redis_cluster_"), "{s}");
        let cluster = "cluster_state:ok\r\ncluster_size:3\r\ncluster_slots_fail:0\r\n";
        let info = crate::probe::InfoReport {
            cluster: Some(crate::probe::info::ClusterInfo::parse(cluster).0),
            ..Default::default()
        };
        m.server_view.record_info(&info, 10000, &Default::default());
        let s = encoded(&m);
        for line in [
            "redis_cluster_state 1",
            "redis_cluster_size 3",
            "redis_cluster_slots_fail 0",
        ] {
            assert!(s.contains(line), "{line} missing:\n{s}");
        }
        // Only what CLUSTER INFO gave.
        assert!(!s.contains("redis_cluster_known_nodes"), "{s}");
    }

    #[test]
    fn certificate_series_leave_with_their_node() {
        let m = Metrics::new();
        m.tls
            .record_expiries(&[("10.0.0.1:6379".into(), 100), ("10.0.0.2:6379".into(), 200)]);
        m.tls.record_expiries(&[("10.0.0.2:6379".into(), 300)]);
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(!s.contains("node=\"10.0.0.1:6379\""), "{s}");
        assert!(
            s.contains("redis_tls_cert_expiry_timestamp_seconds{node=\"10.0.0.2:6379\"} 300"),
            "{s}"
        );
    }
}
