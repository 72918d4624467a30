//! What a scrape costs, kept small so a client hammering `/metrics` leaves the CPU (100m in the
//! shipped manifests) to the kubelet's probes:
//! - [`ScrapeCache`]: the encoded body, reused for [`SCRAPE_REUSE`] while `/readyz`'s answer is
//!   the same and the health loop has recorded nothing new. Prometheus scrapes every 15-60 s, so
//!   nobody can tell.
//! - [`ScrapePacer`]: under a CPU limit, at most [`SCRAPES_PER_CPU_SECOND`] scrapes a second
//!   per core of the limit are answered, in the order they came; one over waits its turn (a
//!   timer, no CPU). Under a CFS quota a hammer served at full speed spends the period's quota
//!   in its first milliseconds, and a probe arriving after that waits for the next period
//!   (78 ms p50 under 100m before the pacer): paced, the hammer leaves most of the quota to the
//!   probes, which never meet the throttle. Probes are never paced; without a limit nothing is.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long one encoding of `/metrics` is served again.
pub const SCRAPE_REUSE: Duration = Duration::from_millis(100);

/// Scrapes answered per second of the CPU limit, all clients together: 100 a second under
/// 100m, 1,000 under one core, unpaced without a limit (`crate::cpulimit`). A scrape costs
/// about 26 µs of CPU here (HTTP and the kernel's share included), so the pace leaves scrapes a
/// quarter of the limit at most. 2 Prometheus replicas scraping every 15 s ask for 0.13 a
/// second; at 100 a second [`super::MAX_CONNECTIONS`] clients asking at once wait 2.6 s at the
/// longest, inside Prometheus's default 10 s scrape timeout.
pub const SCRAPES_PER_CPU_SECOND: f64 = 1000.0;

/// Spaces scrapes apart when the CPU is limited, first come first served.
#[derive(Default)]
pub(super) struct ScrapePacer {
    /// Nanoseconds between two scrapes; 0 for no pace.
    interval_ns: AtomicU64,
    /// When the next scrape may be answered; the lock is the queue (tokio's is fair).
    next: tokio::sync::Mutex<Option<Instant>>,
}

impl ScrapePacer {
    /// Paces for a CPU limit of `cores` ([`SCRAPES_PER_CPU_SECOND`] each); `None` for none.
    pub fn set_limit(&self, cores: Option<f64>) {
        let ns = cores
            .filter(|c| *c > 0.0)
            .map_or(0, |c| (1e9 / (SCRAPES_PER_CPU_SECOND * c)) as u64);
        self.interval_ns.store(ns, Ordering::Relaxed);
    }

    /// Scrapes a second at most, `None` when unpaced.
    pub fn rate(&self) -> Option<f64> {
        match self.interval_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(1e9 / ns as f64),
        }
    }

    /// Returns when this scrape's turn has come: at once when unpaced, or when the last one
    /// was answered an interval ago or more. A scrape dropped while waiting (its client went
    /// away) leaves the queue and takes no turn.
    pub async fn turn(&self) {
        let ns = self.interval_ns.load(Ordering::Relaxed);
        if ns == 0 {
            return;
        }
        let mut next = self.next.lock().await;
        if let Some(at) = *next {
            tokio::time::sleep_until(at).await;
        }
        *next = Some(Instant::now() + Duration::from_nanos(ns));
    }
}

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
    async fn scrapes_are_spaced_in_order_and_a_dropped_one_takes_no_turn() {
        let pacer = std::sync::Arc::new(ScrapePacer::default());
        let t0 = Instant::now();
        for _ in 0..100 {
            pacer.turn().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "no limit: no pace");
        pacer.set_limit(Some(0.1));
        assert_eq!(pacer.rate(), Some(100.0));
        pacer.turn().await;
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "an idle pacer answers at once"
        );
        let order = std::sync::Arc::new(Mutex::new(vec![]));
        let mut waiting = vec![];
        for i in 0..5 {
            let (pacer, order) = (pacer.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                pacer.turn().await;
                order.lock().unwrap().push((i, t0.elapsed()));
            }));
            tokio::task::yield_now().await;
        }
        // The client of the third went away while it waited.
        waiting[2].abort();
        for w in waiting {
            let _ = w.await;
        }
        let step = Duration::from_millis(10);
        assert_eq!(
            *order.lock().unwrap(),
            vec![(0, step), (1, step * 2), (3, step * 3), (4, step * 4)]
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t1 = Instant::now();
        pacer.turn().await;
        assert_eq!(t1.elapsed(), Duration::ZERO, "idle again: at once");
        pacer.set_limit(None);
        assert_eq!(pacer.rate(), None);
    }

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
