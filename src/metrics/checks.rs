//! The checks beside Redis (the app's readiness, the OTLP collector).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::labels::{CheckLabel, CheckReasonLabels};

#[derive(Default)]
pub struct CheckMetrics {
    check_up: Family<CheckLabel, Gauge>,
    check_failures: Family<CheckReasonLabels, Counter>,
}

// === impl CheckMetrics ===

impl CheckMetrics {
    pub fn register(root: &mut Registry) -> Self {
        let m = CheckMetrics::default();
        let r = root.sub_registry_with_prefix("redis_probe");
        r.register(
            "check_up",
            "1 when a check beside Redis passes (app: after its threshold)",
            m.check_up.clone(),
        );
        r.register(
            "check_failures",
            "Failed polls of a check beside Redis, by reason",
            m.check_failures.clone(),
        );
        m
    }

    /// A check was configured: its series exist from now on, at 0, one per reason it can fail
    /// for.
    pub fn add_check(&self, check: &'static str, reasons: impl IntoIterator<Item = &'static str>) {
        self.check_up.get_or_create(&CheckLabel { check }).set(0);
        for reason in reasons {
            let _ = self
                .check_failures
                .get_or_create(&CheckReasonLabels { check, reason });
        }
    }

    /// A poll of `check` ended; `failure` is its reason when it failed.
    pub fn record_poll(&self, check: &'static str, failure: Option<&'static str>) {
        if let Some(reason) = failure {
            self.check_failures
                .get_or_create(&CheckReasonLabels { check, reason })
                .inc();
        }
    }

    /// `check` passes (after its threshold) or not.
    pub fn set_up(&self, check: &'static str, up: bool) {
        self.check_up
            .get_or_create(&CheckLabel { check })
            .set(i64::from(up));
    }
}
