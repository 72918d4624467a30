//! Node certificates' expiry, read by the certificate watcher.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::NodeSeries;
use super::labels::NodeLabel;

#[derive(Default)]
pub struct TlsMetrics {
    tls_cert_expiry_timestamp: Family<NodeLabel, Gauge>,
    tls_client_cert_expiry_timestamp: Gauge,
    nodes: NodeSeries,
}

// === impl TlsMetrics ===

impl TlsMetrics {
    /// The client certificate's expiry is exported only when one is configured (a 0 would
    /// read as long expired).
    pub fn register(root: &mut Registry, client_cert: bool) -> Self {
        let m = TlsMetrics::default();
        let r = root.sub_registry_with_prefix("redis");
        r.register_with_unit(
            "tls_cert_expiry_timestamp",
            "Unix time the node's TLS certificate expires (read every 6 hours)",
            Unit::Seconds,
            m.tls_cert_expiry_timestamp.clone(),
        );
        if client_cert {
            r.register_with_unit(
                "tls_client_cert_expiry_timestamp",
                "Unix time the client certificate (REDIS_TLS_CERT_FILE) expires, read from the file at start and every 6 hours",
                Unit::Seconds,
                m.tls_client_cert_expiry_timestamp.clone(),
            );
        }
        m
    }

    /// The client certificate, as its file holds it now, expires at Unix time `not_after`.
    pub fn record_client_expiry(&self, not_after: i64) {
        self.tls_client_cert_expiry_timestamp.set(not_after);
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
