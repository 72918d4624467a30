//! Node certificates' expiry, read by the certificate watcher.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::NodeSeries;
use super::labels::NodeLabel;

#[derive(Default)]
pub struct TlsMetrics {
    tls_cert_expiry_timestamp: Family<NodeLabel, Gauge>,
    nodes: NodeSeries,
}

// === impl TlsMetrics ===

impl TlsMetrics {
    pub fn register(root: &mut Registry) -> Self {
        let m = TlsMetrics::default();
        root.sub_registry_with_prefix("redis").register_with_unit(
            "tls_cert_expiry_timestamp",
            "Unix time the node's TLS certificate expires (read every 6 hours)",
            Unit::Seconds,
            m.tls_cert_expiry_timestamp.clone(),
        );
        m
    }

    /// A round of the certificate watcher read these verified certificates: `(node, Unix
    /// time it expires)`. Nodes not among them (gone, or not verifiable) lose their series.
    pub fn record_expiries(&self, certs: &[(String, i64)]) {
        self.nodes
            .replace(certs.iter().map(|(n, _)| n.clone()), |l| {
                self.tls_cert_expiry_timestamp.remove(l);
            });
        for (node, not_after) in certs {
            self.tls_cert_expiry_timestamp
                .get_or_create(&NodeLabel { node: node.clone() })
                .set(*not_after);
        }
    }
}
