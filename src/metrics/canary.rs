//! The idle canary's series (`crate::canary`): the learned idle-cut age per node and each
//! canary's outcome. Series leave with their node.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{NodeLabel, NodeResultLabels};

#[derive(Default)]
pub struct CanaryMetrics {
    idle_cut: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    idle_canary: Family<NodeResultLabels, Counter>,
}

// === impl CanaryMetrics ===

impl CanaryMetrics {
    pub fn register(root: &mut Registry) -> Self {
        let m = CanaryMetrics::default();
        let r = root.sub_registry_with_prefix("redis");
        r.register_with_unit(
            "idle_cut",
            "The shortest idle age at which a connection to the node was cut (the idle canary); absent until one is",
            Unit::Seconds,
            m.idle_cut.clone(),
        );
        r.register(
            "idle_canary",
            "Idle canaries by result: survived (answered after the idle), cut (reset or closed)",
            m.idle_canary.clone(),
        );
        m
    }

    /// One canary answered (`survived`) or not after its idle.
    pub fn record(&self, node: &str, survived: bool) {
        let labels = NodeResultLabels {
            node: node.to_string(),
            result: if survived { "survived" } else { "cut" },
        };
        self.idle_canary.get_or_create(&labels).inc();
    }

    /// The learned cut age changed; `None` removes it.
    pub fn set_cut(&self, node: &str, cut: Option<Duration>) {
        let label = NodeLabel {
            node: node.to_string(),
        };
        match cut {
            Some(c) => {
                self.idle_cut.get_or_create(&label).set(c.as_secs_f64());
            }
            None => {
                self.idle_cut.remove(&label);
            }
        }
    }

    /// The node left the topology.
    pub fn forget(&self, node: &str) {
        self.set_cut(node, None);
        for result in ["survived", "cut"] {
            self.idle_canary.remove(&NodeResultLabels {
                node: node.to_string(),
                result,
            });
        }
    }
}
