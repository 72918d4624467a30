//! The idle canary's series (the `canary` module): the learned idle-cut age per node and each
//! canary's outcome. Series leave with their node.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{NodeByLabels, NodeResultLabels};

/// Who cuts an idle connection: the server (its `timeout`) or the path.
const BY: [&str; 2] = ["server", "path"];
/// What became of one canary.
const RESULTS: [&str; 3] = ["survived", "cut", "explained"];

#[derive(Default)]
pub struct CanaryMetrics {
    idle_cut: Family<NodeByLabels, Gauge<f64, AtomicU64>>,
    idle_canary: Family<NodeResultLabels, Counter>,
}

// === impl CanaryMetrics ===

impl CanaryMetrics {
    pub fn register(root: &mut Registry) -> Self {
        let m = CanaryMetrics::default();
        let r = root.sub_registry_with_prefix("redis");
        r.register_with_unit(
            "idle_cut",
            "The shortest idle age at which a connection to the node was cut twice (the idle canary), and by whom (server: its timeout; path: a reset on first use); absent until one is",
            Unit::Seconds,
            m.idle_cut.clone(),
        );
        r.register(
            "idle_canary",
            "Idle canaries by result: survived (answered after the idle), cut (lost to an idle cut), explained (lost to a server event: redis_probe_disconnects_total says which)",
            m.idle_canary.clone(),
        );
        m
    }

    /// What became of one canary: `survived`, `cut` or `explained`.
    pub fn record(&self, node: &str, result: &'static str) {
        let labels = NodeResultLabels {
            node: node.to_string(),
            result,
        };
        self.idle_canary.get_or_create(&labels).inc();
    }

    /// The learned cut age changed (`by` whom); `None` removes it.
    pub fn set_cut(&self, node: &str, cut: Option<Duration>, by: &'static str) {
        for other in BY {
            self.idle_cut.remove(&NodeByLabels {
                node: node.to_string(),
                by: other,
            });
        }
        if let Some(c) = cut {
            let label = NodeByLabels {
                node: node.to_string(),
                by,
            };
            self.idle_cut.get_or_create(&label).set(c.as_secs_f64());
        }
    }

    /// The node left the topology.
    pub fn forget(&self, node: &str) {
        self.set_cut(node, None, "");
        for result in RESULTS {
            self.idle_canary.remove(&NodeResultLabels {
                node: node.to_string(),
                result,
            });
        }
    }
}
