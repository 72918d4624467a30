//! The encoded `/metrics` body, reused for [`SCRAPE_REUSE`] while `/readyz`'s answer is the
//! same and the health loop has recorded nothing new. Prometheus scrapes every 15-60 s, so nobody can tell; a client hammering `/metrics`,
//! or pipelining hundreds of scrapes, costs a copy of a reference instead of an encoding each,
//! and leaves the CPU (100m in the shipped manifests) to the kubelet's probes.

use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Bytes;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long one encoding of `/metrics` is served again.
pub const SCRAPE_REUSE: Duration = Duration::from_millis(100);

/// One encoding per format: Prometheus text, OpenMetrics.
#[derive(Default)]
pub(super) struct ScrapeCache {
    slots: Mutex<[Option<Encoded>; 2]>,
}

struct Encoded {
    at: Instant,
    ready: bool,
    changes: u64,
    body: Bytes,
}

impl ScrapeCache {
    /// The body for `ready` (what `/readyz` answers now) in the asked format, encoded again
    /// when the last one is older than [`SCRAPE_REUSE`] or said another `ready`.
    pub fn body(&self, metrics: &Metrics, openmetrics: bool, ready: bool, now: Instant) -> Bytes {
        // Held while encoding (some microseconds): concurrent scrapes wait for one encoding
        // instead of each making its own.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[usize::from(openmetrics)];
        let changes = metrics.health.changes();
        if let Some(e) = slot
            && e.ready == ready
            && e.changes == changes
            && now.saturating_duration_since(e.at) < SCRAPE_REUSE
        {
            return e.body.clone();
        }
        metrics.set_ready(ready);
        let mut text = String::with_capacity(8 * 1024);
        if openmetrics {
            metrics.encode_openmetrics(&mut text);
        } else {
            metrics.encode_prometheus(&mut text);
        }
        let body = Bytes::from(text);
        *slot = Some(Encoded {
            at: now,
            ready,
            changes,
            body: body.clone(),
        });
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reused_briefly_and_never_across_a_readiness_change() {
        let m = Metrics::new();
        let cache = ScrapeCache::default();
        let t0 = Instant::now();
        let first = cache.body(&m, false, true, t0);
        let again = cache.body(&m, false, true, t0 + Duration::from_millis(50));
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same encoding");
        m.health.record_check(Ok(()), 0.01, 0.0);
        let recorded = cache.body(&m, false, true, t0 + Duration::from_millis(55));
        assert!(String::from_utf8_lossy(&recorded).contains("redis_health_checks_total 1"));
        let flipped = cache.body(&m, false, false, t0 + Duration::from_millis(60));
        assert!(String::from_utf8_lossy(&flipped).contains("redis_probe_ready 0"));
        m.tls.record_expiries(&[("n:1".into(), 5)]);
        let later = cache.body(&m, false, false, t0 + Duration::from_millis(200));
        assert!(String::from_utf8_lossy(&later).contains("node=\"n:1\""));
        let other_format = cache.body(&m, true, false, t0 + Duration::from_millis(200));
        assert!(String::from_utf8_lossy(&other_format).ends_with("# EOF\n"));
    }
}
