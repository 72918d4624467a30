//! The health loop's own series: checks, attempts, their reasons and what they cost Redis.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::labels::{ReasonLabel, ResultLabel};
use crate::probe::{Cost, Reason};

/// The `reason` of an interval whose check the open breaker skipped.
pub const CIRCUIT_OPEN: &str = "circuit_open";

pub struct HealthMetrics {
    health_checks: Counter,
    health_check_failed: Family<ReasonLabel, Counter>,
    health_check_attempts: Family<ResultLabel, Counter>,
    health_check_attempt_failures: Family<ReasonLabel, Counter>,
    health_check_duration: Histogram,
    up: Gauge,
    last_check_timestamp: Gauge<f64, AtomicU64>,
    connection_attempts: Counter,
    commands: Counter,
    connections: Gauge,
    /// Bumped by every record: a scrape body encoded before a change is not served after it.
    changes: std::sync::atomic::AtomicU64,
}

// === impl HealthMetrics ===

impl HealthMetrics {
    pub fn register(root: &mut Registry) -> Self {
        let m = HealthMetrics {
            health_checks: Counter::default(),
            health_check_failed: Family::default(),
            health_check_attempts: Family::default(),
            health_check_attempt_failures: Family::default(),
            health_check_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            up: Gauge::default(),
            last_check_timestamp: Gauge::default(),
            connection_attempts: Counter::default(),
            commands: Counter::default(),
            connections: Gauge::default(),
            changes: Default::default(),
        };
        let _ = m.health_check_failed.get_or_create(&ReasonLabel {
            reason: CIRCUIT_OPEN,
        });
        for reason in Reason::ALL {
            let reason = reason.as_str();
            let _ = m.health_check_failed.get_or_create(&ReasonLabel { reason });
            let _ = m
                .health_check_attempt_failures
                .get_or_create(&ReasonLabel { reason });
        }
        for result in ["success", "failure"] {
            let _ = m
                .health_check_attempts
                .get_or_create(&ResultLabel { result });
        }
        let r = root.sub_registry_with_prefix("redis");
        r.register(
            "health_checks",
            "Health checks run (each may make several attempts)",
            m.health_checks.clone(),
        );
        r.register(
            "health_check_failed",
            "Health checks whose every attempt failed, by the reason of the last attempt; circuit_open: an interval skipped while the breaker is open",
            m.health_check_failed.clone(),
        );
        r.register(
            "health_check_attempts",
            "Health check attempts, by result",
            m.health_check_attempts.clone(),
        );
        r.register(
            "health_check_attempt_failures",
            "Failed health check attempts, by reason, including those a retry absorbed",
            m.health_check_attempt_failures.clone(),
        );
        r.register_with_unit(
            "health_check_duration",
            "Duration of a whole health check, retries included",
            Unit::Seconds,
            m.health_check_duration.clone(),
        );
        r.register("up", "1 when the last health check passed", m.up.clone());
        m.register_probe_side(root);
        m
    }

    fn register_probe_side(&self, root: &mut Registry) {
        let r = root.sub_registry_with_prefix("redis_probe");
        r.register_with_unit(
            "last_check_timestamp",
            "Unix time the last health check finished",
            Unit::Seconds,
            self.last_check_timestamp.clone(),
        );
        r.register(
            "connection_attempts",
            "Connections to Redis nodes the probe tried to open (TCP, TLS and AUTH when the node is up)",
            self.connection_attempts.clone(),
        );
        r.register(
            "commands",
            "Commands the probe sent to Redis (PING, CLUSTER SHARDS, CLUSTER INFO)",
            self.commands.clone(),
        );
        r.register(
            "connections",
            "Connections to Redis nodes the probe holds open",
            self.connections.clone(),
        );
    }

    /// One attempt ended, having cost Redis `cost`.
    pub fn record_attempt(&self, result: Result<(), Reason>, cost: Cost) {
        self.record_cost(cost);
        self.connections.set(i64::from(cost.held));
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.health_check_attempts
            .get_or_create(&ResultLabel { result: outcome })
            .inc();
        if let Err(r) = result {
            self.health_check_attempt_failures
                .get_or_create(&ReasonLabel { reason: r.as_str() })
                .inc();
        }
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times the health loop has recorded something.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connections opened and commands sent, by a check or by an INFO read.
    pub fn record_cost(&self, cost: Cost) {
        self.changed();
        self.connection_attempts.inc_by(u64::from(cost.dials));
        self.commands.inc_by(u64::from(cost.commands));
    }

    /// An interval passed with the breaker open: counted as a failed check, no attempt made.
    pub fn record_skipped(&self, unix_now: f64) {
        self.changed();
        self.health_checks.inc();
        self.last_check_timestamp.set(unix_now);
        self.up.set(0);
        self.health_check_failed
            .get_or_create(&ReasonLabel {
                reason: CIRCUIT_OPEN,
            })
            .inc();
    }

    /// A whole check (all its attempts) ended at `unix_now` after `seconds`.
    pub fn record_check(&self, result: Result<(), Reason>, seconds: f64, unix_now: f64) {
        self.changed();
        self.health_checks.inc();
        self.health_check_duration.observe(seconds);
        self.last_check_timestamp.set(unix_now);
        self.up.set(i64::from(result.is_ok()));
        if let Err(r) = result {
            self.health_check_failed
                .get_or_create(&ReasonLabel { reason: r.as_str() })
                .inc();
        }
    }
}
