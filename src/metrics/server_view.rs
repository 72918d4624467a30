//! The server-side view, from INFO and CLUSTER INFO (names as redis_exporter's where it has
//! them, so existing dashboards fit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::NodeSeries;
use super::labels::{NodeLabel, NodeServerLabels, ReasonLabel};
use crate::probe::InfoReport;
use crate::probe::info::ClusterInfo;

#[derive(Default)]
pub struct ServerViewMetrics {
    connected_clients: Family<NodeLabel, Gauge>,
    max_clients: Family<NodeLabel, Gauge>,
    rejected_connections: Family<NodeLabel, Counter>,
    connections_received: Family<NodeLabel, Counter>,
    cluster_state: Unread,
    cluster_slots_assigned: Unread,
    cluster_slots_ok: Unread,
    cluster_slots_pfail: Unread,
    cluster_slots_fail: Unread,
    cluster_known_nodes: Unread,
    cluster_size: Unread,
    cluster_expected_shards_min: Gauge,
    cluster_expected_shards_max: Gauge,
    info_failures: Family<ReasonLabel, Counter>,
    server_info: Family<NodeServerLabels, Gauge>,
    /// The `server_info` labels each node has now, to remove them when they change.
    server_labels: Mutex<HashMap<String, NodeServerLabels>>,
    uptime: Family<NodeLabel, Gauge>,
    restarts: Family<NodeLabel, Counter>,
    nodes: NodeSeries,
}

// === impl ServerViewMetrics ===

impl ServerViewMetrics {
    /// `expected_shards` (`PROBE_EXPECTED_SHARDS`) is exported only when set.
    pub fn register(
        root: &mut Registry,
        expected_shards: Option<crate::config::ShardRange>,
    ) -> Self {
        let m = ServerViewMetrics::default();
        let r = root.sub_registry_with_prefix("redis");
        r.register(
            "node_server_info",
            "Always 1: the node's engine (redis, valkey) and version (INFO server; valkey_version on Valkey)",
            m.server_info.clone(),
        );
        r.register_with_unit(
            "node_uptime",
            "Seconds since the node's server started (INFO server)",
            prometheus_client::registry::Unit::Seconds,
            m.uptime.clone(),
        );
        r.register(
            "node_restarts",
            "Restarts of the node seen between INFO reads (run_id changed or uptime went back)",
            m.restarts.clone(),
        );
        r.register(
            "connected_clients",
            "Clients connected to the node (INFO clients)",
            m.connected_clients.clone(),
        );
        r.register(
            "max_clients",
            "The node's maxclients (INFO; CONFIG GET; else PROBE_MAXCLIENTS)",
            m.max_clients.clone(),
        );
        r.register(
            "rejected_connections",
            "Connections the node rejected for maxclients (INFO stats)",
            m.rejected_connections.clone(),
        );
        r.register(
            "connections_received",
            "Connections the node accepted since it started (INFO stats)",
            m.connections_received.clone(),
        );
        m.register_cluster(r);
        root.sub_registry_with_prefix("redis_probe").register(
            "info_failures",
            "Nodes whose INFO read failed, by reason (permission: the ACL user lacks INFO)",
            m.info_failures.clone(),
        );
        let r = root.sub_registry_with_prefix("redis");
        if let Some(range) = expected_shards {
            m.cluster_expected_shards_min.set(i64::from(range.min));
            m.cluster_expected_shards_max.set(i64::from(range.max));
            r.register(
                "cluster_expected_shards_min",
                "Fewest shards the cluster should have (PROBE_EXPECTED_SHARDS: N, or MIN of MIN..MAX)",
                m.cluster_expected_shards_min.clone(),
            );
            r.register(
                "cluster_expected_shards_max",
                "Most shards the cluster should have (PROBE_EXPECTED_SHARDS: N, or MAX of MIN..MAX)",
                m.cluster_expected_shards_max.clone(),
            );
        }
        m
    }

    /// The cluster's own view: absent from the exposition until CLUSTER INFO was read (cluster
    /// mode disabled, an ACL without `cluster|info`), where a 0 would read as a failed cluster
    /// or as a cluster scaled in to nothing.
    fn register_cluster(&self, r: &mut Registry) {
        let gauges = [
            (
                "cluster_state",
                "1 when CLUSTER INFO says cluster_state:ok",
                &self.cluster_state,
            ),
            (
                "cluster_slots_assigned",
                "Slots assigned to a shard",
                &self.cluster_slots_assigned,
            ),
            (
                "cluster_slots_ok",
                "Slots served by a healthy primary",
                &self.cluster_slots_ok,
            ),
            (
                "cluster_slots_pfail",
                "Slots whose primary is suspected down",
                &self.cluster_slots_pfail,
            ),
            (
                "cluster_slots_fail",
                "Slots whose primary is down",
                &self.cluster_slots_fail,
            ),
            (
                "cluster_known_nodes",
                "Nodes the cluster knows",
                &self.cluster_known_nodes,
            ),
            (
                "cluster_size",
                "Shards serving at least one slot",
                &self.cluster_size,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
    }

    /// INFO and CLUSTER INFO were read; nodes that did not answer keep no series.
    /// `restarts` are the restarts seen so far per node.
    pub fn record_info(
        &self,
        report: &InfoReport,
        maxclients_fallback: u64,
        restarts: &HashMap<String, u64>,
    ) {
        let mut server_labels = self.server_labels.lock().unwrap_or_else(|e| e.into_inner());
        self.nodes
            .replace(report.nodes.iter().map(|n| n.addr.to_string()), |l| {
                self.connected_clients.remove(l);
                self.max_clients.remove(l);
                self.rejected_connections.remove(l);
                self.connections_received.remove(l);
                self.uptime.remove(l);
                self.restarts.remove(l);
            });
        // Nodes that left take their server_info along.
        server_labels.retain(|node, labels| {
            let keep = report.nodes.iter().any(|n| n.addr.to_string() == *node);
            if !keep {
                self.server_info.remove(labels);
            }
            keep
        });
        for n in &report.nodes {
            let node = NodeLabel {
                node: n.addr.to_string(),
            };
            let info = &n.info;
            let id = &info.identity;
            if let (Some(engine), Some(version)) = (id.engine, &id.version) {
                let labels = NodeServerLabels {
                    node: node.node.clone(),
                    engine,
                    version: version.clone(),
                };
                if let Some(old) = server_labels.insert(node.node.clone(), labels.clone())
                    && old != labels
                {
                    self.server_info.remove(&old);
                }
                self.server_info.get_or_create(&labels).set(1);
            }
            if let Some(u) = id.uptime_seconds {
                self.uptime.get_or_create(&node).set(u as i64);
            }
            let seen = restarts.get(&node.node).copied().unwrap_or(0);
            self.restarts
                .get_or_create(&node)
                .inner()
                .store(seen, Ordering::Relaxed);
            if let Some(v) = info.connected_clients {
                self.connected_clients.get_or_create(&node).set(v as i64);
            }
            self.max_clients
                .get_or_create(&node)
                .set(info.maxclients.unwrap_or(maxclients_fallback) as i64);
            // Counters mirror the server's own totals (a restart of the node resets them, which
            // Prometheus' rate() handles).
            if let Some(v) = info.rejected_connections {
                let c = self.rejected_connections.get_or_create(&node);
                c.inner().store(v, Ordering::Relaxed);
            }
            if let Some(v) = info.total_connections_received {
                let c = self.connections_received.get_or_create(&node);
                c.inner().store(v, Ordering::Relaxed);
            }
        }
        for (_, reason) in &report.failures {
            let label = ReasonLabel {
                reason: reason.as_str(),
            };
            self.info_failures.get_or_create(&label).inc();
        }
        if let Some(c) = &report.cluster {
            self.record_cluster(c);
        }
    }

    fn record_cluster(&self, c: &ClusterInfo) {
        let set = |g: &Unread, v: Option<u64>| {
            if let Some(v) = v {
                g.set(v as i64);
            }
        };
        set(&self.cluster_state, c.state_ok.map(u64::from));
        set(&self.cluster_slots_assigned, c.slots_assigned);
        set(&self.cluster_slots_ok, c.slots_ok);
        set(&self.cluster_slots_pfail, c.slots_pfail);
        set(&self.cluster_slots_fail, c.slots_fail);
        set(&self.cluster_known_nodes, c.known_nodes);
        set(&self.cluster_size, c.size);
    }
}

/// A gauge with no sample, and no HELP or TYPE line, until it is first set: a value the server
/// never gave is no value, not 0.
#[derive(Clone, Debug, Default)]
struct Unread {
    gauge: Gauge,
    read: Arc<AtomicBool>,
}

impl Unread {
    fn set(&self, v: i64) {
        self.gauge.set(v);
        self.read.store(true, Ordering::Relaxed);
    }
}

impl TypedMetric for Unread {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Unread {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.gauge.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }

    fn is_empty(&self) -> bool {
        !self.read.load(Ordering::Relaxed)
    }
}
