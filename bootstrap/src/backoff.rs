//! Randomised waits between retries.

use std::time::Duration;

/// A random duration between half of `ceiling` and `ceiling`. Contenders that
/// failed together (writers that lost the same race, clients of a gateway
/// that died) then retry spread out rather than in lockstep.
pub fn jittered(ceiling: Duration) -> Duration {
    ceiling.mul_f64(0.5 + random_fraction() / 2.0)
}

/// A random duration between zero and `ceiling`: for spreading many
/// clients' moves evenly over a period.
pub fn spread(ceiling: Duration) -> Duration {
    ceiling.mul_f64(random_fraction())
}

/// A random number in `[0, 1)`, in steps of 1/1000.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is seeded afresh: randomness enough for spreading
    // retries, without a dependency for it.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_between_half_and_all_of_the_ceiling_and_varies() {
        let ceiling = Duration::from_millis(100);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(ceiling)).collect();
        assert!(waits.iter().all(|w| *w >= ceiling / 2 && *w <= ceiling));
        let first = waits[0];
        assert!(
            waits.iter().any(|w| *w != first),
            "all 200 waits were {first:?}"
        );
    }

    #[test]
    fn spreads_over_the_whole_period() {
        let ceiling = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..500).map(|_| spread(ceiling)).collect();
        assert!(waits.iter().all(|w| *w <= ceiling));
        assert!(waits.iter().any(|w| *w < ceiling / 4), "none early");
        assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "none late");
    }
}
