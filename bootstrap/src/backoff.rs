//! Randomised waits between retries.

use std::time::Duration;

/// A random duration between half of `ceiling` and `ceiling`. Contenders that
/// failed together (writers that lost the same race, clients of a gateway
/// that died) then retry spread out rather than in lockstep.
pub fn jittered(ceiling: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is seeded afresh: randomness enough for spreading
    // retries, without a dependency for it.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    ceiling.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
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
}
