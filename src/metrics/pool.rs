//! The pod's connections to the cluster, counted from `/proc/net/tcp`, and its ceiling.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

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
    pool_rtt: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    pool_idle: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    pool_retransmits: Family<NodeLabel, Counter>,
    /// Each app socket's retransmissions when last seen, to count only what is new.
    seen_retransmits: Mutex<HashMap<u64, u32>>,
    tcp_nodes: NodeSeries,
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
            r.register_with_unit(
                "pool_rtt",
                "Mean smoothed round-trip time of the app's connections to the node (tcp_info, netlink sock_diag)",
                Unit::Seconds,
                m.pool_rtt.clone(),
            );
            r.register_with_unit(
                "pool_idle",
                "The longest time since one of the app's connections to the node last received data",
                Unit::Seconds,
                m.pool_idle.clone(),
            );
            r.register(
                "pool_retransmits",
                "Segments the app's connections to the node retransmitted",
                m.pool_retransmits.clone(),
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

    /// What `tcp_info` said of the app's connections, per node (nothing on the `/proc`
    /// fallback: those series are then absent).
    pub fn record_tcp(&self, tcp: &[crate::tcpstats::NodeTcp]) {
        self.tcp_nodes
            .replace(tcp.iter().map(|t| t.node.clone()), |l| {
                self.pool_rtt.remove(l);
                self.pool_idle.remove(l);
                self.pool_retransmits.remove(l);
            });
        let mut seen = self
            .seen_retransmits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut now = HashMap::new();
        for t in tcp {
            let node = NodeLabel {
                node: t.node.clone(),
            };
            self.pool_rtt.get_or_create(&node).set(t.rtt.as_secs_f64());
            self.pool_idle
                .get_or_create(&node)
                .set(t.idle_max.as_secs_f64());
            let new: u64 = t
                .sockets
                .iter()
                .map(|(inode, r)| {
                    u64::from(r.saturating_sub(seen.get(inode).copied().unwrap_or(0)))
                })
                .sum();
            self.pool_retransmits.get_or_create(&node).inc_by(new);
            now.extend(t.sockets.iter().copied());
        }
        *seen = now;
    }

    /// The namespace's reset counters, as the kernel's totals.
    pub fn record_tcp_resets(&self, counters: &[(&'static str, u64)]) {
        for (kind, v) in counters {
            let c = self.pod_tcp_resets.get_or_create(&KindLabel { kind });
            c.inner().store(*v, Ordering::Relaxed);
        }
    }
}
