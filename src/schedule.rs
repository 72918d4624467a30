//! Jitter and retry schedules.
//!
//! Every delay the sidecar sleeps is drawn here, so that 72 pods started by the same rollout do
//! not probe Redis in lockstep, and so that tests can turn randomness off. The jitter source is a
//! trait ([`Jitter`]); production code uses [`RandomJitter`], tests use [`NoJitter`].
//!
//! The retry schedule between attempts of one check is the only place that uses the `backoff`
//! crate (RUSTSEC-2025-0012 lists it as unmaintained; it has no known vulnerability). Keeping it
//! behind [`retry_delays`] means swapping it for `backon` touches one function.

use std::time::Duration;

use backoff::backoff::Backoff;

/// A source of random factors for spreading delays.
pub trait Jitter: Send + 'static {
    /// A uniformly distributed number in `[0, 1)`.
    fn unit(&mut self) -> f64;

    /// `d` scaled by a factor drawn from `[1 - spread, 1 + spread]`.
    fn spread(&mut self, d: Duration, spread: f64) -> Duration {
        let factor = 1.0 + spread * (2.0 * self.unit() - 1.0);
        d.mul_f64(factor.max(0.0))
    }

    /// When a task's first run starts: a random offset within `interval x spread`, so pods
    /// started together spread out.
    fn first_offset(&mut self, interval: Duration, spread: f64) -> Duration {
        interval.mul_f64(spread * self.unit())
    }

    /// `d` scaled by a factor drawn from `[1 - spread, 1]`: never longer than `d`, so a
    /// configured maximum stays a maximum.
    fn shorten(&mut self, d: Duration, spread: f64) -> Duration {
        d.mul_f64((1.0 - spread * self.unit()).max(0.0))
    }
}

/// Thread-local `rand` generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn unit(&mut self) -> f64 {
        rand::random::<f64>()
    }
}

/// No randomness at all: every factor is the midpoint (spread) or 1 (shorten).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJitter;

impl Jitter for NoJitter {
    fn unit(&mut self) -> f64 {
        0.5
    }

    fn shorten(&mut self, d: Duration, _spread: f64) -> Duration {
        d
    }
}

/// Delays to sleep between the attempts of one check: `initial`, then doubling, each with
/// `±jitter`, never more than `max`.
pub fn retry_delays(
    initial: Duration,
    max: Duration,
    jitter: f64,
) -> impl Iterator<Item = Duration> {
    let mut backoff = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(initial)
        .with_randomization_factor(jitter)
        .with_multiplier(2.0)
        .with_max_interval(max)
        // The check itself bounds the number of attempts; the crate's own elapsed-time limit
        // reads the wall clock and would ignore paused test time.
        .with_max_elapsed_time(None)
        .build();
    std::iter::from_fn(move || backoff.next_backoff().map(|d| d.min(max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&mut self) -> f64 {
            self.0
        }
    }

    #[test]
    fn spread_bounds() {
        let d = Duration::from_secs(5);
        assert_eq!(Fixed(0.0).spread(d, 0.2), Duration::from_secs(4));
        assert_eq!(Fixed(0.5).spread(d, 0.2), d);
        let hi = Fixed(0.999_999).spread(d, 0.2);
        assert!(hi < Duration::from_secs(6) && hi > Duration::from_millis(5999));
        for _ in 0..10_000 {
            let v = RandomJitter.spread(d, 0.2);
            assert!(
                v >= Duration::from_secs(4) && v <= Duration::from_secs(6),
                "{v:?}"
            );
        }
    }

    #[test]
    fn shorten_never_exceeds() {
        let d = Duration::from_secs(30);
        for _ in 0..10_000 {
            let v = RandomJitter.shorten(d, 0.2);
            assert!(v <= d && v >= Duration::from_secs(24), "{v:?}");
        }
        assert_eq!(NoJitter.shorten(d, 0.2), d);
    }

    #[test]
    fn retry_delays_double_without_jitter() {
        let got: Vec<_> = retry_delays(Duration::from_millis(500), Duration::from_secs(3), 0.0)
            .take(5)
            .collect();
        let ms: Vec<u128> = got.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 3000, 3000]);
    }

    #[test]
    fn retry_delays_jitter_bounds() {
        for _ in 0..1000 {
            let first = retry_delays(Duration::from_millis(500), Duration::from_secs(3), 0.2)
                .next()
                .unwrap();
            assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600));
        }
    }
}
