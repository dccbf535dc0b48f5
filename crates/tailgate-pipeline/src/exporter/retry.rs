//! Exponential backoff with jitter, as the collector's `retry_on_failure` does it, drawing
//! jitter from a seeded RNG so a run can be replayed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailgate_config::components::RetryConfig;

/// The wait before each retry of one batch.
#[derive(Debug)]
pub struct Backoff {
    enabled: bool,
    initial: Duration,
    max: Duration,
    max_elapsed: Duration,
    multiplier: f64,
    randomization: f64,
    current: Duration,
    rng: StdRng,
}

impl Backoff {
    pub fn new(cfg: &RetryConfig, seed: u64) -> Self {
        Backoff {
            enabled: cfg.enabled,
            initial: cfg.initial_interval.0,
            max: cfg.max_interval.0,
            max_elapsed: cfg.max_elapsed_time.0,
            multiplier: cfg.multiplier,
            randomization: cfg.randomization_factor,
            current: cfg.initial_interval.0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Starts over for a new batch.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// How long to wait before the next attempt, or `None` to give up. `throttle` is the
    /// server's own hint (gRPC RetryInfo, HTTP Retry-After) and wins when longer.
    pub fn next_wait(&mut self, elapsed: Duration, throttle: Option<Duration>) -> Option<Duration> {
        if !self.enabled {
            return None;
        }
        let base = self.current.as_secs_f64();
        let delta = self.randomization * base;
        let jittered = if delta > 0.0 {
            self.rng.random_range((base - delta)..=(base + delta))
        } else {
            base
        };
        let mut wait = Duration::from_secs_f64(jittered.max(0.0));
        if let Some(t) = throttle {
            wait = wait.max(t);
        }
        self.current =
            Duration::from_secs_f64((base * self.multiplier).min(self.max.as_secs_f64()));
        if !self.max_elapsed.is_zero() && elapsed + wait > self.max_elapsed {
            return None;
        }
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailgate_config::GoDuration;

    fn cfg() -> RetryConfig {
        RetryConfig {
            enabled: true,
            initial_interval: GoDuration::from_secs(1),
            max_interval: GoDuration::from_secs(4),
            max_elapsed_time: GoDuration::from_secs(20),
            multiplier: 2.0,
            randomization_factor: 0.5,
        }
    }

    #[test]
    fn grows_caps_and_jitters_within_bounds() {
        let mut b = Backoff::new(&cfg(), 7);
        let bases = [1.0, 2.0, 4.0, 4.0, 4.0];
        for base in bases {
            let w = b.next_wait(Duration::ZERO, None).unwrap().as_secs_f64();
            assert!(
                w >= base * 0.5 - 1e-9 && w <= base * 1.5 + 1e-9,
                "{w} outside jitter of {base}"
            );
        }
    }

    #[test]
    fn same_seed_same_waits() {
        let waits = |seed| {
            let mut b = Backoff::new(&cfg(), seed);
            (0..5)
                .map(|_| b.next_wait(Duration::ZERO, None))
                .collect::<Vec<_>>()
        };
        assert_eq!(waits(3), waits(3));
        assert_ne!(waits(3), waits(4));
    }

    #[test]
    fn gives_up_after_max_elapsed_and_honours_throttle() {
        let mut b = Backoff::new(&cfg(), 1);
        assert_eq!(b.next_wait(Duration::from_secs(19), None), None);
        let mut b = Backoff::new(&cfg(), 1);
        assert_eq!(
            b.next_wait(Duration::ZERO, Some(Duration::from_secs(9))),
            Some(Duration::from_secs(9))
        );
        let mut off = cfg();
        off.enabled = false;
        assert_eq!(Backoff::new(&off, 1).next_wait(Duration::ZERO, None), None);
    }
}
