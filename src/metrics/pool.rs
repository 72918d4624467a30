//! The pod's connections to the cluster, counted from `/proc/net/tcp`, and its ceiling.

use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::NodeSeries;
use super::labels::{KindLabel, NodeLabel};

/// The pod's ceiling: in all, and per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub pod: u64,
    pub per_node: u64,
}

#[derive(Default)]
pub struct PoolMetrics {
    pool_current_conns: Gauge,
    pool_node_conns: Family<NodeLabel, Gauge>,
    pool_max_conns: Gauge,
    pool_max_conns_per_node: Gauge,
    pod_tcp_resets: Family<KindLabel, Counter>,
    nodes: NodeSeries,
}

// === impl PoolMetrics ===

impl PoolMetrics {
    /// Registers the counts when they can be taken, the ceiling when it is known: a series that
    /// would only ever say 0 is not exported.
    pub fn register(root: &mut Registry, counts: bool, ceiling: bool) -> Self {
        let m = PoolMetrics::default();
        let r = root.sub_registry_with_prefix("redis");
        if counts {
            r.register(
                "pool_current_conns",
                "The pod's established connections to the cluster's nodes, the sidecar's own excluded",
                m.pool_current_conns.clone(),
            );
            r.register(
                "pool_node_conns",
                "The pod's established connections to each node",
                m.pool_node_conns.clone(),
            );
            r.register(
                "pod_tcp_resets",
                "The pod network namespace's TCP resets and aborts, by kind (/proc/net/snmp EstabResets, OutRsts; /proc/net/netstat TCPAbortOn*): the app's connections included",
                m.pod_tcp_resets.clone(),
            );
        }
        if ceiling {
            r.register(
                "pool_max_conns",
                "The pod's connection ceiling: REDIS_POOL_SIZE x nodes the app may use (or PROBE_POOL_MAX_CONNS)",
                m.pool_max_conns.clone(),
            );
            r.register(
                "pool_max_conns_per_node",
                "The pod's ceiling per node (REDIS_POOL_SIZE: go-redis sizes a cluster pool per node)",
                m.pool_max_conns_per_node.clone(),
            );
        }
        m
    }

    /// The pod's sockets were counted: `per_node` connections to each node.
    pub fn record_counts(&self, per_node: &[(String, u64)], ceiling: Option<Ceiling>) {
        self.pool_current_conns
            .set(per_node.iter().map(|(_, n)| *n as i64).sum());
        self.nodes
            .replace(per_node.iter().map(|(n, _)| n.clone()), |l| {
                self.pool_node_conns.remove(l);
            });
        for (node, n) in per_node {
            self.pool_node_conns
                .get_or_create(&NodeLabel { node: node.clone() })
                .set(*n as i64);
        }
        if let Some(c) = ceiling {
            self.pool_max_conns.set(c.pod as i64);
            self.pool_max_conns_per_node.set(c.per_node as i64);
        }
    }

    /// The namespace's reset counters, as the kernel's totals.
    pub fn record_tcp_resets(&self, counters: &[(&'static str, u64)]) {
        for (kind, v) in counters {
            let c = self.pod_tcp_resets.get_or_create(&KindLabel { kind });
            c.inner().store(*v, Ordering::Relaxed);
        }
    }
}
