//! How long to wait before the next connection attempt.

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// Exponential backoff with full jitter, as the browser SDK does: attempt
/// `n` (0 for the first retry) waits a random time between zero and
/// `min(max_delay, base_delay · 2ⁿ)`. The randomness spreads the clients of
/// a gateway that went away over the others instead of bringing them all
/// back at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base_delay: Duration,
    /// The ceiling of every wait.
    pub max_delay: Duration,
}

impl Default for Backoff {
    /// 500 ms doubling up to 30 s, the browser SDK's defaults.
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.max_delay);
        ceiling.mul_f64(unit_random())
    }
}

/// A random number in `[0, 1]`. Each `RandomState` has fresh random keys:
/// enough to spread retries, with no dependency for it.
fn unit_random() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    bits as f64 / u64::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_under_a_doubling_ceiling_and_vary() {
        let backoff = Backoff {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        // (attempt, ceiling)
        const CASES: &[(u32, u64)] = &[(0, 100), (1, 200), (3, 800), (4, 1000), (40, 1000)];
        for &(attempt, ceiling) in CASES {
            let waits: Vec<Duration> = (0..200).map(|_| backoff.delay(attempt)).collect();
            assert!(
                waits.iter().all(|w| *w <= Duration::from_millis(ceiling)),
                "attempt {attempt}: {waits:?}"
            );
            assert!(
                waits.iter().any(|w| *w != waits[0]),
                "attempt {attempt}: always {:?}",
                waits[0]
            );
        }
    }
}
