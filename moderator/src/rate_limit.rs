//! Per-connection token buckets (the moderator keeps one limiter for chat
//! and one for signals) and the ICE-candidate budget.

use std::collections::HashMap;

use bootstrap::token_bucket::{Rate, TokenBucket};
use schemas::id::{ConnId, RoomId};
use tokio::time::Instant;

/// Fewest buckets kept before idle ones are swept.
const SWEEP_FLOOR: usize = 1024;

/// Counts each connection's events of one kind against a rate with a burst.
///
/// A bucket refilled to its burst is the same as no bucket, so idle ones are
/// dropped in a sweep whenever the map has doubled since the last one: memory
/// follows the connections active within one refill period.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: HashMap<ConnId, TokenBucket>,
    next_sweep: usize,
}

impl RateLimiter {
    /// A limiter that admits `per_minute` events per minute on average and
    /// up to `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            rate: Rate::per_minute(per_minute, burst),
            buckets: HashMap::new(),
            next_sweep: SWEEP_FLOOR,
        }
    }

    /// Takes one token for `conn`; `false` means the event is over the limit.
    pub fn try_acquire(&mut self, conn: &ConnId, now: Instant) -> bool {
        if self.buckets.len() >= self.next_sweep {
            self.sweep(now);
        }
        let rate = self.rate;
        self.buckets
            .entry(conn.clone())
            .or_insert_with(|| TokenBucket::full(rate, now))
            .try_take(rate, now)
    }

    /// How many connections are tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, bucket| !bucket.is_full(rate, now));
        self.next_sweep = (self.buckets.len() * 2).max(SWEEP_FLOOR);
    }
}

/// Counts the ICE candidates each connection sends per room, so a peer
/// cannot flood another with them. Counts end when the connection leaves
/// the room, so memory follows membership.
#[derive(Debug)]
pub struct CandidateBudget {
    max: u32,
    sent: HashMap<(ConnId, RoomId), u32>,
}

impl CandidateBudget {
    /// A budget of `max` candidates per connection and room.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            sent: HashMap::new(),
        }
    }

    /// Takes one candidate from the budget; `false` once it is spent.
    pub fn try_take(&mut self, conn: &ConnId, room: &RoomId) -> bool {
        let sent = self.sent.entry((conn.clone(), room.clone())).or_default();
        if *sent >= self.max {
            return false;
        }
        *sent += 1;
        true
    }

    /// Forgets the connection's count in the room (it left).
    pub fn clear(&mut self, conn: &ConnId, room: &RoomId) {
        self.sent.remove(&(conn.clone(), room.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut limiter = RateLimiter::new(60, 3);
        let conn = ConnId::from("c");
        let start = Instant::now();
        let admitted = (0..10)
            .filter(|_| limiter.try_acquire(&conn, start))
            .count();
        assert_eq!(admitted, 3, "the burst is admitted at once, nothing more");
        assert!(!limiter.try_acquire(&conn, start + Duration::from_millis(500)));
        assert!(limiter.try_acquire(&conn, start + Duration::from_millis(1001)));
        assert!(!limiter.try_acquire(&conn, start + Duration::from_millis(1002)));
    }

    #[test]
    fn sustained_flood_is_held_to_the_rate() {
        // 10x the limit for one minute: burst + one minute's worth get through.
        let mut limiter = RateLimiter::new(100, 10);
        let conn = ConnId::from("c");
        let start = Instant::now();
        let admitted = (0..1000)
            .filter(|i| limiter.try_acquire(&conn, start + Duration::from_millis(i * 60)))
            .count();
        assert!((105..=111).contains(&admitted), "admitted {admitted}");
    }

    #[test]
    fn connections_are_counted_apart() {
        let mut limiter = RateLimiter::new(60, 1);
        let now = Instant::now();
        assert!(limiter.try_acquire(&"a".into(), now));
        assert!(limiter.try_acquire(&"b".into(), now));
        assert!(!limiter.try_acquire(&"a".into(), now));
    }

    #[test]
    fn idle_buckets_are_swept() {
        let mut limiter = RateLimiter::new(60, 1);
        let start = Instant::now();
        for i in 0..SWEEP_FLOOR {
            limiter.try_acquire(&ConnId(format!("c{i}")), start);
        }
        assert_eq!(limiter.tracked(), SWEEP_FLOOR);
        limiter.try_acquire(&"late".into(), start + Duration::from_secs(1));
        assert_eq!(limiter.tracked(), 1, "refilled buckets were dropped");
    }
}

#[cfg(test)]
mod candidate_tests {
    use super::*;

    #[test]
    fn budget_is_per_connection_and_room_and_resets_on_leave() {
        let mut budget = CandidateBudget::new(2);
        let (a, b) = (ConnId::from("a"), ConnId::from("b"));
        let room = RoomId::from("r");
        assert!(budget.try_take(&a, &room) && budget.try_take(&a, &room));
        assert!(!budget.try_take(&a, &room));
        assert!(budget.try_take(&b, &room));
        assert!(budget.try_take(&a, &"other".into()));
        budget.clear(&a, &room);
        assert!(budget.try_take(&a, &room));
    }
}
