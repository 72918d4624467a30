//! The certificate watcher: exports each node's TLS certificate expiry
//! (`redis_tls_cert_expiry_timestamp_seconds`), after the first check that found nodes, then
//! every [`CERT_CHECK_INTERVAL`]; a node that joins the topology is read when it joins, and one
//! that leaves takes its series along at once. Only certificates that verify are exported. One
//! short TLS connection per node each time, no AUTH, no command
//! ([`crate::probe::tls::inspect`]). The client certificate's expiry is read again whenever its
//! file changes (one `stat` per check), as the probe takes a rotated certificate up at the next
//! check: the exported expiry is always the one in use.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

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
    let mut client_file = client_file_stamp(&tls);
    // Each node of the topology, and its verified certificate's expiry when it has one.
    let mut seen: HashMap<HostPort, Option<i64>> = HashMap::new();
    let mut next_round = Instant::now();
    loop {
        let stamp = client_file_stamp(&tls);
        if stamp != client_file {
            client_file = stamp;
            record_client();
        }
        let nodes: HashSet<HostPort> = health
            .borrow_and_update()
            .nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect();
        let round = !nodes.is_empty() && Instant::now() >= next_round;
        if round {
            seen.clear();
            next_round = Instant::now() + CERT_CHECK_INTERVAL;
            record_client();
        }
        // Departed nodes take their series along at once; nodes that joined are read now,
        // the others at the next round.
        let before = seen.len();
        seen.retain(|addr, _| nodes.contains(addr));
        let mut changed = round || seen.len() != before;
        for addr in nodes {
            if seen.contains_key(&addr) {
                continue;
            }
            // An expiry read from a certificate that does not verify says nothing about the
            // one the probe trusts: not exported.
            let expiry = match tls::inspect(&addr, &tls, timeout).await {
                Ok(info) if info.verified => Some(info.not_after),
                _ => None,
            };
            seen.insert(addr, expiry);
            changed = true;
        }
        if changed {
            let verified: Vec<(String, i64)> = seen
                .iter()
                .filter_map(|(addr, e)| Some((addr.to_string(), (*e)?)))
                .collect();
            metrics.tls.record_expiries(&verified);
        }
        tokio::select! {
            changed = health.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(next_round), if !seen.is_empty() => {}
        }
    }
}

/// What tells a new client certificate file from the one read before: the inode and the
/// modification time of the file its path leads to now (a mounted Secret swaps a symlink).
/// `None` without a file or when it cannot be read.
fn client_file_stamp(tls: &TlsConfig) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(tls.files.cert.as_ref()?).ok()?;
    Some((m.ino(), m.mtime(), m.mtime_nsec()))
}
