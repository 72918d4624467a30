//! Per-node results of the last check. Series follow the topology: a node that leaves the
//! cluster has its series removed. The role is an info metric (`redis_node_info{node,role}`),
//! so a failover changes one info series and leaves the value series whole; join with
//! `* on (node) group_left (role) redis_node_info` where the role matters.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{NodeLabel, NodeLabels};
use crate::probe::NodeReport;

pub struct NodeMetrics {
    node_up: Family<NodeLabel, Gauge>,
    node_ping: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    node_info: Family<NodeLabels, Gauge>,
    /// The label sets exported now, to remove stale ones. Held only while series are updated,
    /// never across an await.
    exported: Mutex<HashSet<NodeLabels>>,
}

// === impl NodeMetrics ===

impl NodeMetrics {
    pub fn register(root: &mut Registry) -> Self {
        let m = NodeMetrics {
            node_up: Family::default(),
            node_ping: Family::default(),
            node_info: Family::default(),
            exported: Mutex::default(),
        };
        let r = root.sub_registry_with_prefix("redis");
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
            "node_info",
            "Always 1; the node's role in the last health check is a label",
            m.node_info.clone(),
        );
        m
    }

    /// The last attempt of a check reached `nodes`; none at all keeps every known node at 0.
    pub fn record(&self, nodes: &[NodeReport]) {
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        if nodes.is_empty() {
            for labels in exported.iter() {
                self.node_up.get_or_create(&node_label(labels)).set(0);
            }
            return;
        }
        let current: HashSet<NodeLabels> = nodes.iter().map(labels).collect();
        for stale in exported.difference(&current) {
            self.node_info.remove(stale);
            if !current.iter().any(|c| c.node == stale.node) {
                self.node_up.remove(&node_label(stale));
                self.node_ping.remove(&node_label(stale));
            }
        }
        for n in nodes {
            let labels = labels(n);
            self.node_info.get_or_create(&labels).set(1);
            let node = node_label(&labels);
            self.node_up
                .get_or_create(&node)
                .set(i64::from(n.result.is_ok()));
            if let Ok(rtt) = n.result {
                self.node_ping.get_or_create(&node).set(rtt.as_secs_f64());
            }
        }
        *exported = current;
    }
}

fn labels(n: &NodeReport) -> NodeLabels {
    NodeLabels {
        node: n.addr.to_string(),
        role: n.role.as_str(),
    }
}

fn node_label(l: &NodeLabels) -> NodeLabel {
    NodeLabel {
        node: l.node.clone(),
    }
}
