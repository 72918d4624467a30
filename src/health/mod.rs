//! The health loop: the only task that waits on Redis for readiness (the certificate watcher
//! makes its own short TLS connections, on a cadence of hours).
//!
//! It runs a check at a jittered interval (the first one at a random offset, so pods started
//! together spread out), retries failed attempts with backoff, feeds the breaker, updates
//! metrics, logs changes (not repetitions) and publishes a [`Health`] snapshot on a `watch`
//! channel. HTTP handlers only read that snapshot.
//!
//! The next check is scheduled from the end of the previous one, so checks never overlap.
//! While the breaker is open no check runs: each interval is counted as a failed check with
//! reason `circuit_open`, and the trial check runs when the open duration ends.

mod changes;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::breaker::{Breaker, State};
use crate::config::Config;
use crate::events::EventLog;
use crate::metrics::{Metrics, ParseSource};
use crate::probe::{CheckReport, NodeReport, Probe, Reason};
use crate::schedule::{Jitter, retry_delays};

/// What the loop last published.
#[derive(Debug, Clone)]
pub struct Health {
    pub breaker: State,
    /// Set by the first check that passed; before it the pod is not ready.
    pub seen_success: bool,
    /// The last check's result; `None` before the first check.
    pub last: Option<Result<(), Reason>>,
    /// Per-node results of the last attempt of the last check.
    pub nodes: Arc<[NodeReport]>,
    /// When the loop is overdue: past this instant it is considered stuck.
    pub stall_deadline: Instant,
}

impl Health {
    fn initial(stall_deadline: Instant) -> Self {
        Health {
            breaker: State::Closed,
            seen_success: false,
            last: None,
            nodes: Arc::from([]),
            stall_deadline,
        }
    }

    pub fn stalled(&self, now: Instant) -> bool {
        now > self.stall_deadline
    }

    /// `Ok` when Redis counts as healthy, else the reason to show.
    pub fn redis_status(&self, now: Instant) -> Result<(), &'static str> {
        if self.stalled(now) {
            return Err("health loop stalled");
        }
        let reason = || self.last.and_then(Result::err).map(Reason::as_str);
        match self.breaker {
            State::Closed if self.seen_success => Ok(()),
            State::Closed => Err(reason().unwrap_or("no check has passed yet")),
            State::Open | State::HalfOpen => Err(reason().unwrap_or("circuit breaker open")),
        }
    }
}

/// The loop's timing: how often, how many attempts, how long each may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub interval: Duration,
    pub jitter: f64,
    pub attempts: u32,
    pub attempt_timeout: Duration,
    pub retry_backoff: Duration,
}

impl Timing {
    pub fn from_config(c: &Config) -> Self {
        Timing {
            interval: c.probe.interval,
            jitter: c.probe.jitter,
            attempts: c.probe.attempts,
            attempt_timeout: c.probe.attempt_timeout,
            retry_backoff: c.probe.retry_backoff,
        }
    }

    /// The loop is stuck if it has not published by `wake` plus a whole check, plus one
    /// interval of grace.
    fn stall_deadline(&self, wake: Instant) -> Instant {
        wake + self.check_budget() + self.interval.max(MIN_STALL_GRACE)
    }

    /// Cap on one retry delay.
    fn max_retry_delay(&self) -> Duration {
        self.retry_backoff.max(self.attempt_timeout)
    }

    /// The longest one check can take: every attempt times out, every delay is at its most.
    pub fn check_budget(&self) -> Duration {
        let delays: Duration = retry_delays(self.retry_backoff, self.max_retry_delay(), 0.0)
            .take(self.attempts.saturating_sub(1) as usize)
            .map(|d| d.mul_f64(1.0 + self.jitter))
            .sum();
        (self.attempt_timeout + ATTEMPT_GUARD) * self.attempts + delays
    }
}

/// How long past its deadline an attempt (or an INFO read) may run before the loop gives up
/// on it: the probe returns by its deadline, this only guards against a probe that does not.
const ATTEMPT_GUARD: Duration = Duration::from_millis(50);

/// Slack before the loop counts as stalled, beyond its own schedule: a busy machine can delay
/// a wake-up by more than a short test interval.
const MIN_STALL_GRACE: Duration = Duration::from_secs(1);

/// Channel halves for the published health.
pub type Rx = watch::Receiver<Health>;

/// The loop and everything it owns.
pub struct HealthLoop<P, J> {
    probe: P,
    timing: Timing,
    breaker: Breaker<J>,
    jitter: J,
    metrics: Arc<Metrics>,
    tx: watch::Sender<Health>,
    /// What changed since the last check, logged and recorded as events.
    changes: changes::Changes,
    /// INFO / CLUSTER INFO cadence and the maxclients to assume; `None` to skip.
    info: Option<(Duration, u64)>,
    next_info: Instant,
}

// === impl HealthLoop ===

impl<P: Probe, J: Jitter + Clone> HealthLoop<P, J> {
    pub fn new(
        probe: P,
        timing: Timing,
        breaker: crate::breaker::Settings,
        jitter: J,
        metrics: Arc<Metrics>,
    ) -> (Self, Rx) {
        // The first check runs within one interval (its jittered offset).
        let first_deadline = timing.stall_deadline(Instant::now() + timing.interval);
        let (tx, rx) = watch::channel(Health::initial(first_deadline));
        metrics.breaker.set_open_duration(breaker.open_duration);
        let me = HealthLoop {
            probe,
            timing,
            breaker: Breaker::new(breaker, jitter.clone()),
            jitter,
            metrics,
            tx,
            changes: changes::Changes::new(None),
            info: None,
            next_info: Instant::now(),
        };
        (me, rx)
    }

    /// Also publishes INFO (and the check's CLUSTER INFO) every `interval` (jittered), after
    /// a check; the first read follows the first check, so the server-side metrics never start
    /// as fake zeros for long.
    pub fn with_info(mut self, interval: Duration, maxclients: u64) -> Self {
        self.info = Some((interval, maxclients));
        self
    }

    /// Records what happens (nodes, connections, the breaker, restarts) in `events`.
    pub fn with_events(mut self, events: EventLog) -> Self {
        self.changes = changes::Changes::new(Some(events));
        self
    }

    async fn maybe_read_info(&mut self) {
        let Some((interval, maxclients)) = self.info else {
            return;
        };
        if Instant::now() < self.next_info {
            return;
        }
        let deadline = Instant::now() + self.timing.attempt_timeout;
        if let Ok(Some(report)) =
            tokio::time::timeout_at(deadline + ATTEMPT_GUARD, self.probe.info(deadline)).await
        {
            let restarts = self.changes.on_info(&report);
            self.metrics
                .server_view
                .record_info(&report, maxclients, restarts);
            self.metrics.health.record_cost(report.cost);
            let errors = u64::from(report.parse_errors);
            self.metrics.record_parse_errors(ParseSource::Info, errors);
        }
        self.next_info = Instant::now() + self.jitter.spread(interval, self.timing.jitter);
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let s = self.timing;
        let first = self.jitter.first_offset(s.interval, s.jitter);
        self.set_deadline(Instant::now() + first);
        tokio::time::sleep(first).await;
        loop {
            if let Some(t) = self.breaker.poll(Instant::now()) {
                self.on_transition(t, None);
            }
            if self.breaker.state() == State::Open {
                // The interval's check is skipped, and counted as a failed check: a sustained
                // outage keeps one failure per interval, so a rate of failed checks means the
                // same whether the breaker is open or not.
                self.record_skipped();
                let wake = self.next_wake();
                self.set_deadline(wake);
                sleep_until(wake).await;
                continue;
            }
            let report = self.check().await;
            let ok = report.result.is_ok();
            if let Some(t) = self.breaker.observe(Instant::now(), ok) {
                self.on_transition(t, report.result.err());
            }
            let failures = self.breaker.consecutive_failures();
            self.changes.on_check(&report, failures);
            let wake = self.next_wake();
            self.publish(report, wake);
            self.maybe_read_info().await;
            sleep_until(wake).await;
        }
    }

    /// The next interval, or the end of the open duration when that comes first.
    fn next_wake(&mut self) -> Instant {
        let s = self.timing;
        let next = Instant::now() + self.jitter.spread(s.interval, s.jitter);
        match self.breaker.open_until() {
            Some(until) => until.min(next),
            None => next,
        }
    }

    fn record_skipped(&self) {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.health.record_skipped(unix);
    }

    /// One check: up to `attempts` attempts with backoff in between.
    async fn check(&mut self) -> CheckReport {
        let s = self.timing;
        let started = Instant::now();
        let mut delays = retry_delays(s.retry_backoff, s.max_retry_delay(), s.jitter);
        let mut attempt = 1;
        let report = loop {
            let deadline = Instant::now() + s.attempt_timeout;
            let report =
                match tokio::time::timeout_at(deadline + ATTEMPT_GUARD, self.probe.check(deadline))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => CheckReport::failed(
                        Reason::Timeout,
                        "attempt did not finish by its deadline",
                    ),
                };
            self.metrics
                .health
                .record_attempt(report.result, report.cost);
            self.changes.on_attempt(&report);
            if report.result.is_ok() || attempt >= s.attempts {
                break report;
            }
            attempt += 1;
            let delay = delays.next().unwrap_or(s.retry_backoff);
            // Keep the stall deadline ahead of a check that is still retrying.
            self.set_deadline(Instant::now() + delay);
            tokio::time::sleep(delay).await;
        };
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .health
            .record_check(report.result, seconds, unix);
        self.metrics.nodes.record(&report.nodes);
        report
    }

    fn set_deadline(&self, wake: Instant) {
        let deadline = self.timing.stall_deadline(wake);
        self.tx.send_modify(|h| h.stall_deadline = deadline);
    }

    fn publish(&mut self, report: CheckReport, wake: Instant) {
        let deadline = self.timing.stall_deadline(wake);
        let state = self.breaker.state();
        self.metrics
            .breaker
            .set_open_duration(self.breaker.current_open_duration());
        let nodes: Arc<[NodeReport]> = report.nodes.into();
        self.tx.send_modify(|h| {
            h.breaker = state;
            h.seen_success |= report.result.is_ok();
            h.last = Some(report.result);
            if !nodes.is_empty() {
                h.nodes = nodes;
            }
            h.stall_deadline = deadline;
        });
    }

    fn on_transition(&mut self, t: crate::breaker::Transition, reason: Option<Reason>) {
        self.metrics.breaker.record_transition(t);
        self.changes.on_transition(t, reason);
        let reason = reason.map(Reason::as_str).unwrap_or("");
        let open_for_ms = self
            .breaker
            .open_until()
            .map(|u| (u - Instant::now()).as_millis() as u64)
            .unwrap_or(0);
        // One warning when Redis goes down and one line when it comes back; the trial checks
        // in between (open -> half_open -> open, every open duration) are debug lines, so a long
        // outage does not repeat itself in the logs.
        match (t.from, t.to) {
            (State::Closed, State::Open) => {
                tracing::warn!(from = %t.from, to = %t.to, reason, open_for_ms, "circuit breaker opened: Redis is considered down")
            }
            (_, State::Open) => {
                tracing::debug!(from = %t.from, to = %t.to, reason, open_for_ms, "trial check failed: circuit breaker stays open")
            }
            (_, State::HalfOpen) => {
                tracing::debug!(from = %t.from, to = %t.to, "circuit breaker half-open: trying Redis again")
            }
            (_, State::Closed) => {
                tracing::info!(from = %t.from, to = %t.to, "circuit breaker closed: Redis is healthy again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::breaker::Settings;
    use crate::schedule::NoJitter;

    /// Answers from a script, then repeats the last answer; records when each attempt ran.
    struct Scripted {
        answers: VecDeque<Result<(), Reason>>,
        last: Result<(), Reason>,
        calls: Arc<Mutex<Vec<Instant>>>,
    }

    impl Probe for Scripted {
        async fn check(&mut self, _deadline: Instant) -> CheckReport {
            self.calls.lock().unwrap().push(Instant::now());
            if let Some(a) = self.answers.pop_front() {
                self.last = a;
            }
            CheckReport {
                result: self.last,
                ..CheckReport::passed()
            }
        }
    }

    fn timing() -> Timing {
        Timing {
            interval: Duration::from_secs(5),
            jitter: 0.0,
            attempts: 3,
            attempt_timeout: Duration::from_secs(2),
            retry_backoff: Duration::from_millis(500),
        }
    }

    fn breaker() -> Settings {
        Settings {
            failure_threshold: 3,
            success_threshold: 1,
            open_duration: Duration::from_secs(5),
            open_duration_max: Duration::from_secs(30),
            jitter: 0.0,
        }
    }

    fn start(answers: Vec<Result<(), Reason>>) -> (Rx, Arc<Mutex<Vec<Instant>>>, Arc<Metrics>) {
        let calls = Arc::new(Mutex::new(vec![]));
        let probe = Scripted {
            answers: answers.into(),
            last: Ok(()),
            calls: calls.clone(),
        };
        let metrics = Arc::new(Metrics::new());
        let (l, rx) = HealthLoop::new(probe, timing(), breaker(), NoJitter, metrics.clone());
        tokio::spawn(l.run());
        (rx, calls, metrics)
    }

    async fn wait_until(rx: &mut Rx, f: impl Fn(&Health) -> bool) -> Instant {
        loop {
            if f(&rx.borrow_and_update()) {
                return Instant::now();
            }
            rx.changed().await.unwrap();
        }
    }

    const DOWN: Result<(), Reason> = Err(Reason::ConnectionRefused);

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn ready_after_first_success() {
        let (mut rx, _, _) = start(vec![Ok(())]);
        assert!(
            rx.borrow().redis_status(Instant::now()).is_err(),
            "not ready before any check"
        );
        wait_until(&mut rx, |h| h.redis_status(Instant::now()).is_ok()).await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn retries_absorb_a_transient_failure() {
        let (mut rx, calls, m) = start(vec![Ok(()), DOWN, DOWN, Ok(()), DOWN, Ok(())]);
        wait_until(&mut rx, |h| h.last.is_some()).await;
        while calls.lock().unwrap().len() < 6 {
            rx.changed().await.unwrap();
            assert!(
                rx.borrow().redis_status(Instant::now()).is_ok(),
                "a transient fault flipped readiness"
            );
        }
        let c = calls.lock().unwrap().clone();
        // Check 2 retried after 500 ms and then 1 s.
        assert_eq!(c[2] - c[1], Duration::from_millis(500));
        assert_eq!(c[3] - c[2], Duration::from_millis(1000));
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(
            s.contains("redis_health_check_failed_total{reason=\"connection_refused\"} 0"),
            "{s}"
        );
        assert!(
            s.contains(
                "redis_health_check_attempt_failures_total{reason=\"connection_refused\"} 3"
            ),
            "{s}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn outage_opens_breaker_and_recovery_closes_it() {
        let mut answers = vec![Ok(())];
        answers.extend(std::iter::repeat_n(DOWN, 3 * 3));
        let (mut rx, calls, m) = start(answers);
        let ready = wait_until(&mut rx, |h| h.redis_status(Instant::now()).is_ok()).await;
        let unready = wait_until(&mut rx, |h| h.breaker == State::Open).await;
        assert_eq!(
            rx.borrow().redis_status(Instant::now()),
            Err("connection_refused")
        );
        // 3 checks, each 3 attempts with 1.5 s of backoff, 5 s apart.
        assert_eq!(unready - ready, Duration::from_millis(3 * 5000 + 3 * 1500));
        // The breaker holds checks off for the open duration, then tries once (still down).
        let n = calls.lock().unwrap().len();
        rx.changed().await.unwrap();
        let trial = calls.lock().unwrap()[n];
        assert_eq!(trial - unready, Duration::from_secs(5));
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(
            s.contains("redis_circuit_breaker_transitions_total{from=\"closed\",to=\"open\"} 1"),
            "{s}"
        );
        assert!(
            s.contains("redis_health_check_failed_total{reason=\"connection_refused\"} 3"),
            "{s}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn recovery_within_open_duration_plus_one_check() {
        let mut answers = vec![Ok(())];
        answers.extend(std::iter::repeat_n(DOWN, 3 * 3 + 3));
        answers.push(Ok(()));
        let (mut rx, _, m) = start(answers);
        wait_until(&mut rx, |h| h.breaker == State::Open).await;
        let open_at = Instant::now();
        // Trial fails (3 attempts): reopen for 10 s; next trial passes.
        let closed = wait_until(&mut rx, |h| {
            h.breaker == State::Closed && h.last == Some(Ok(()))
        })
        .await;
        assert_eq!(
            closed - open_at,
            Duration::from_millis(5000 + 1500 + 10_000)
        );
        assert!(rx.borrow().redis_status(Instant::now()).is_ok());
        let mut s = String::new();
        m.encode_openmetrics(&mut s);
        assert!(
            s.contains("redis_circuit_breaker_transitions_total{from=\"half_open\",to=\"open\"} 1"),
            "{s}"
        );
        assert!(
            s.contains(
                "redis_circuit_breaker_transitions_total{from=\"half_open\",to=\"closed\"} 1"
            ),
            "{s}"
        );
        // The second open duration (10 s) spans two intervals: the one skipped at 5 s counts
        // as a failed check, so the failure rate stays one per interval while open.
        assert!(
            s.contains("redis_health_check_failed_total{reason=\"circuit_open\"} 1"),
            "{s}"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn stall_is_detected() {
        let (mut rx, _, _) = start(vec![Ok(())]);
        wait_until(&mut rx, |h| h.last.is_some()).await;
        let h = rx.borrow().clone();
        assert!(!h.stalled(Instant::now()));
        let budget = timing().check_budget();
        assert!(
            h.stalled(Instant::now() + Duration::from_secs(10) + budget + Duration::from_secs(1))
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn first_check_is_spread_by_jitter() {
        struct Fixed(f64);
        impl Jitter for Fixed {
            fn unit(&mut self) -> f64 {
                self.0
            }
        }
        impl Clone for Fixed {
            fn clone(&self) -> Self {
                Fixed(self.0)
            }
        }
        let calls = Arc::new(Mutex::new(vec![]));
        let probe = Scripted {
            answers: VecDeque::new(),
            last: Ok(()),
            calls: calls.clone(),
        };
        let s = Timing {
            jitter: 0.2,
            ..timing()
        };
        let t0 = Instant::now();
        let (l, mut rx) =
            HealthLoop::new(probe, s, breaker(), Fixed(0.5), Arc::new(Metrics::new()));
        tokio::spawn(l.run());
        wait_until(&mut rx, |h| h.last.is_some()).await;
        assert_eq!(calls.lock().unwrap()[0] - t0, Duration::from_millis(500));
    }
}
