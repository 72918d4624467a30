//! The circuit breaker's state, its transitions and its next open duration.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{StateLabel, TransitionLabels};
use crate::breaker::{State, Transition};

pub struct BreakerMetrics {
    circuit_breaker_state: Family<StateLabel, Gauge>,
    circuit_breaker_transitions: Family<TransitionLabels, Counter>,
    circuit_breaker_open_duration: Gauge<f64, AtomicU64>,
}

// === impl BreakerMetrics ===

impl BreakerMetrics {
    pub fn register(root: &mut Registry) -> Self {
        let m = BreakerMetrics {
            circuit_breaker_state: Family::default(),
            circuit_breaker_transitions: Family::default(),
            circuit_breaker_open_duration: Gauge::default(),
        };
        for t in Transition::ALL {
            let _ = m.circuit_breaker_transitions.get_or_create(&labels(t));
        }
        m.set_state(State::Closed);
        let r = root.sub_registry_with_prefix("redis");
        r.register(
            "circuit_breaker_state",
            "1 for the breaker's current state",
            m.circuit_breaker_state.clone(),
        );
        r.register(
            "circuit_breaker_transitions",
            "Circuit breaker state changes",
            m.circuit_breaker_transitions.clone(),
        );
        r.register_with_unit(
            "circuit_breaker_open_duration",
            "How long the breaker stays open the next time it opens (before jitter); doubles while trials fail",
            Unit::Seconds,
            m.circuit_breaker_open_duration.clone(),
        );
        m
    }

    fn set_state(&self, current: State) {
        for s in State::ALL {
            self.circuit_breaker_state
                .get_or_create(&StateLabel { state: s.as_str() })
                .set(i64::from(s == current));
        }
    }

    pub fn record_transition(&self, t: Transition) {
        self.circuit_breaker_transitions
            .get_or_create(&labels(t))
            .inc();
        self.set_state(t.to);
    }

    /// The open duration the breaker would use next.
    pub fn set_open_duration(&self, d: std::time::Duration) {
        self.circuit_breaker_open_duration.set(d.as_secs_f64());
    }
}

fn labels(t: Transition) -> TransitionLabels {
    TransitionLabels {
        from: t.from.as_str(),
        to: t.to.as_str(),
    }
}
