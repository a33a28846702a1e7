//! A token bucket: events admitted at a steady rate, with a burst.
//!
//! Shared by the moderator's per-connection chat and signal limits and the
//! gateway's budget for invalid frames.

use tokio::time::Instant;

/// A rate with a burst.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    /// `per_minute` events per minute on average, up to `burst` at once.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
        }
    }
}

/// One bucket of tokens.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A bucket holding its whole burst.
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            updated: now,
        }
    }

    /// Takes one token; `false` means the event is over the rate.
    pub fn try_take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled to its burst by `now`: then it is the
    /// same as a new one, and may be dropped.
    pub fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * rate.per_second).min(rate.burst);
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let rate = Rate::per_minute(60, 3);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(rate, start);
        let admitted = (0..10).filter(|_| bucket.try_take(rate, start)).count();
        assert_eq!(admitted, 3, "the burst is admitted at once, nothing more");
        assert!(!bucket.try_take(rate, start + Duration::from_millis(500)));
        assert!(bucket.try_take(rate, start + Duration::from_millis(1001)));
        assert!(!bucket.try_take(rate, start + Duration::from_millis(1002)));
        assert!(!bucket.is_full(rate, start + Duration::from_secs(2)));
        assert!(bucket.is_full(rate, start + Duration::from_secs(5)));
    }
}
