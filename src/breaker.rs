//! The circuit breaker: a pure state machine over check results.
//!
//! States use the textbook meaning:
//! - **Closed**: Redis is considered healthy; checks run at the normal interval. Failed checks
//!   are counted; `failure_threshold` failures in a row open the breaker.
//! - **Open**: Redis is considered down. No check runs until the open duration has passed, so a
//!   fleet of sidecars does not hammer a struggling cluster with TLS handshakes. The open
//!   duration starts at `open_duration` and doubles each time a trial check fails, up to
//!   `open_duration_max`; each draw is shortened by up to `jitter` so pods spread out.
//! - **HalfOpen**: the open duration has passed; the next check is a trial. A failure reopens
//!   the breaker (with a longer duration), `success_threshold` successes in a row close it.
//!
//! The breaker owns no clock and does no I/O: the health loop passes `now` in, and asks
//! [`Breaker::open_until`] how long to wait.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::schedule::Jitter;

/// One of the three breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

impl Transition {
    /// The transitions the breaker can make (a check that ends after the open duration can take
    /// open straight to closed).
    pub const ALL: [Transition; 5] = [
        Transition::new(State::Closed, State::Open),
        Transition::new(State::Open, State::HalfOpen),
        Transition::new(State::Open, State::Closed),
        Transition::new(State::HalfOpen, State::Open),
        Transition::new(State::HalfOpen, State::Closed),
    ];

    const fn new(from: State, to: State) -> Self {
        Transition { from, to }
    }
}

/// Breaker thresholds and durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub open_duration: Duration,
    pub open_duration_max: Duration,
    pub jitter: f64,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Settings {
            failure_threshold: c.probe.failure_threshold,
            success_threshold: c.probe.success_threshold,
            open_duration: c.probe.open_duration,
            open_duration_max: c.probe.open_duration_max,
            jitter: c.probe.jitter,
        }
    }
}

/// The breaker itself. `J` supplies jitter for the open duration.
#[derive(Debug)]
pub struct Breaker<J> {
    settings: Settings,
    state: State,
    failures: u32,
    successes: u32,
    /// The open duration before jitter; doubles while trials fail.
    base_open: Duration,
    open_until: Option<Instant>,
    jitter: J,
}

// === impl Breaker ===

impl<J: Jitter> Breaker<J> {
    pub fn new(settings: Settings, jitter: J) -> Self {
        Self {
            settings,
            state: State::Closed,
            failures: 0,
            successes: 0,
            base_open: settings.open_duration,
            open_until: None,
            jitter,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Failed checks in a row while closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// When an open breaker lets the next trial through.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open => self.open_until,
            _ => None,
        }
    }

    /// The un-jittered open duration the breaker would use next time it opens from half-open.
    pub fn current_open_duration(&self) -> Duration {
        self.base_open
    }

    /// Moves Open to HalfOpen once the open duration has passed.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        match (self.state, self.open_until) {
            (State::Open, Some(until)) if now >= until => {
                self.successes = 0;
                Some(self.go(State::HalfOpen))
            }
            _ => None,
        }
    }

    /// Feeds the result of one check.
    pub fn observe(&mut self, now: Instant, ok: bool) -> Option<Transition> {
        // A check that finished after the open duration ran out counts as the trial.
        let polled = self.poll(now);
        let t = match (self.state, ok) {
            (State::Closed, true) => {
                self.failures = 0;
                None
            }
            (State::Closed, false) => {
                self.failures += 1;
                if self.failures >= self.settings.failure_threshold {
                    self.base_open = self.settings.open_duration;
                    Some(self.open(now))
                } else {
                    None
                }
            }
            (State::HalfOpen, true) => {
                self.successes += 1;
                if self.successes >= self.settings.success_threshold {
                    self.failures = 0;
                    self.base_open = self.settings.open_duration;
                    Some(self.go(State::Closed))
                } else {
                    None
                }
            }
            (State::HalfOpen, false) => {
                self.base_open = (self.base_open * 2).min(self.settings.open_duration_max);
                Some(self.open(now))
            }
            // The loop does not check while open; a result that still arrives (a check that
            // started just before the breaker opened) changes nothing.
            (State::Open, _) => None,
        };
        match (polled, t) {
            (Some(a), Some(b)) => Some(Transition {
                from: a.from,
                to: b.to,
            }),
            (a, b) => b.or(a),
        }
    }

    fn open(&mut self, now: Instant) -> Transition {
        let d = self.jitter.shorten(self.base_open, self.settings.jitter);
        self.open_until = Some(now + d);
        self.go(State::Open)
    }

    fn go(&mut self, to: State) -> Transition {
        let from = std::mem::replace(&mut self.state, to);
        Transition { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::NoJitter;

    fn settings() -> Settings {
        Settings {
            failure_threshold: 3,
            success_threshold: 1,
            open_duration: Duration::from_secs(5),
            open_duration_max: Duration::from_secs(30),
            jitter: 0.0,
        }
    }

    fn t(from: State, to: State) -> Option<Transition> {
        Some(Transition { from, to })
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn opens_after_threshold_and_not_before() {
        let mut b = Breaker::new(settings(), NoJitter);
        let now = Instant::now();
        assert_eq!(b.observe(now, false), None);
        assert_eq!(b.observe(now, false), None);
        // A success in between resets the count: transient faults never open it.
        assert_eq!(b.observe(now, true), None);
        assert_eq!(b.observe(now, false), None);
        assert_eq!(b.observe(now, false), None);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.observe(now, false), t(State::Closed, State::Open));
        assert_eq!(b.open_until(), Some(now + Duration::from_secs(5)));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn half_open_after_duration_then_closes() {
        let mut b = Breaker::new(settings(), NoJitter);
        let start = Instant::now();
        for _ in 0..3 {
            b.observe(start, false);
        }
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert_eq!(b.poll(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.poll(Instant::now()), t(State::Open, State::HalfOpen));
        assert_eq!(
            b.observe(Instant::now(), true),
            t(State::HalfOpen, State::Closed)
        );
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn open_duration_doubles_up_to_max_and_resets() {
        let mut b = Breaker::new(settings(), NoJitter);
        for _ in 0..3 {
            b.observe(Instant::now(), false);
        }
        let mut seen = vec![];
        for _ in 0..6 {
            let until = b.open_until().unwrap();
            seen.push((until - Instant::now()).as_secs());
            tokio::time::advance(until - Instant::now()).await;
            assert_eq!(b.poll(Instant::now()), t(State::Open, State::HalfOpen));
            assert_eq!(
                b.observe(Instant::now(), false),
                t(State::HalfOpen, State::Open)
            );
        }
        assert_eq!(seen, vec![5, 10, 20, 30, 30, 30]);
        // Recovery resets the duration for the next outage.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            b.observe(Instant::now(), true),
            t(State::Open, State::Closed)
        );
        for _ in 0..3 {
            b.observe(Instant::now(), false);
        }
        assert_eq!(
            b.open_until().unwrap() - Instant::now(),
            Duration::from_secs(5)
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn success_threshold_needs_consecutive_successes() {
        let mut b = Breaker::new(
            Settings {
                success_threshold: 2,
                ..settings()
            },
            NoJitter,
        );
        for _ in 0..3 {
            b.observe(Instant::now(), false);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            b.observe(Instant::now(), true),
            t(State::Open, State::HalfOpen)
        );
        assert_eq!(
            b.observe(Instant::now(), true),
            t(State::HalfOpen, State::Closed)
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn results_while_open_are_ignored() {
        let mut b = Breaker::new(settings(), NoJitter);
        for _ in 0..3 {
            b.observe(Instant::now(), false);
        }
        assert_eq!(b.observe(Instant::now(), true), None);
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn jitter_only_shortens() {
        let s = Settings {
            jitter: 0.2,
            ..settings()
        };
        for _ in 0..200 {
            let mut b = Breaker::new(s, crate::schedule::RandomJitter);
            for _ in 0..3 {
                b.observe(Instant::now(), false);
            }
            let d = b.open_until().unwrap() - Instant::now();
            assert!(
                d <= Duration::from_secs(5) && d >= Duration::from_secs(4),
                "{d:?}"
            );
        }
    }
}
