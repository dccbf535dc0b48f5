//! Token buckets for `rate_limiting`, `bytes_limiting` and `composite`, driven by the time the
//! caller passes in (never the clock).

use std::time::Duration;

/// A token bucket: `rate` tokens per second, at most `capacity` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Duration>,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(rate_per_sec: f64, capacity: f64) -> Self {
        assert!(
            rate_per_sec >= 0.0 && capacity >= 0.0,
            "validated rates are non-negative"
        );
        TokenBucket {
            rate_per_sec,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    fn refill(&mut self, now: Duration) {
        if let Some(last) = self.last
            && now > last
        {
            self.tokens = (self.tokens
                + now.saturating_sub(last).as_secs_f64() * self.rate_per_sec)
                .min(self.capacity);
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    /// Takes `n` tokens if available.
    pub fn try_take(&mut self, n: f64, now: Duration) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// The most tokens it holds.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// The tokens available at `now` (refilled up to it).
    pub fn tokens_at(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Returns tokens taken for something that did not happen after all.
    pub fn give_back(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.capacity);
    }

    /// Changes the rate (a cluster member's share changes with membership), keeping the
    /// fill level proportional.
    pub fn rescale(&mut self, rate_per_sec: f64, capacity: f64) {
        let fill = if self.capacity > 0.0 {
            self.tokens / self.capacity
        } else {
            1.0
        };
        self.rate_per_sec = rate_per_sec;
        self.capacity = capacity;
        self.tokens = capacity * fill;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_rate_up_to_capacity() {
        let mut b = TokenBucket::new(10.0, 10.0);
        let t0 = Duration::from_secs(100);
        assert!(b.try_take(10.0, t0));
        assert!(!b.try_take(1.0, t0));
        assert!(b.try_take(5.0, t0 + Duration::from_millis(500)));
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(500)));
        assert!(
            b.try_take(10.0, t0 + Duration::from_secs(60)),
            "capacity caps the refill"
        );
        assert!(!b.try_take(0.5, t0 + Duration::from_secs(60)));
    }
}
