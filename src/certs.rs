//! The certificate watcher: exports each node's TLS certificate expiry
//! (`redis_tls_cert_expiry_timestamp_seconds`), after the first check that found nodes, then
//! every [`CERT_CHECK_INTERVAL`]. Only certificates that verify are exported, and a node that
//! left the topology takes its series along. One short TLS connection per node each time, no AUTH, no
//! command ([`crate::probe::tls::inspect`]).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{HostPort, TlsConfig};
use crate::health;
use crate::metrics::Metrics;
use crate::probe::tls;

/// How often node certificates are read: their expiry changes only when they are replaced.
pub const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// Runs until the health loop ends or the task is dropped; `timeout` bounds each handshake.
pub async fn watch(
    mut health: health::Rx,
    metrics: Arc<Metrics>,
    tls: TlsConfig,
    timeout: Duration,
) {
    let record_client = || {
        if let Some(not_after) = tls::client_cert_expiry(&tls) {
            metrics.tls.record_client_expiry(not_after);
        }
    };
    record_client();
    loop {
        let nodes: Vec<HostPort> = health
            .borrow()
            .nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect();
        if nodes.is_empty() {
            if health.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut verified = Vec::with_capacity(nodes.len());
        for addr in nodes {
            // An expiry read from a certificate that does not verify says nothing about the
            // one the probe trusts: not exported.
            if let Ok(info) = tls::inspect(&addr, &tls, timeout).await
                && info.verified
            {
                verified.push((addr.to_string(), info.not_after));
            }
        }
        metrics.tls.record_expiries(&verified);
        tokio::time::sleep(CERT_CHECK_INTERVAL).await;
        record_client();
    }
}
