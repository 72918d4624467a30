//! Node certificates' expiry, read by the certificate watcher.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::NodeLabel;

#[derive(Default)]
pub struct TlsMetrics {
    tls_cert_expiry_timestamp: Family<NodeLabel, Gauge>,
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

    /// The certificate `node` presented expires at Unix time `not_after`.
    pub fn record_expiry(&self, node: &str, not_after: i64) {
        self.tls_cert_expiry_timestamp
            .get_or_create(&NodeLabel {
                node: node.to_string(),
            })
            .set(not_after);
    }
}
