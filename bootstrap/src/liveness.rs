//! Which gateways (or moderators) are alive, judged by their heartbeats.
//!
//! Gateways publish a heartbeat every few seconds; moderators and other
//! gateways record them here. Moderators do too, and gateways track them the
//! same way to route each room's chat to one of them. A gateway not heard from for `timeout` is
//! dead. Until this process has itself listened for `timeout`, it has no
//! grounds to call anyone dead, so it does not; and when it hears again
//! after hearing nobody for `timeout` (it was cut off from NATS, or NATS
//! restarted), it starts listening afresh rather than call everyone dead.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use schemas::id::GatewayId;
use tokio::time::Instant;

/// Last-heard times of gateways, or of other processes named by `Id`.
#[derive(Debug)]
pub struct Liveness<Id = GatewayId> {
    timeout: Duration,
    listening_since: Instant,
    last_heard: HashMap<Id, Instant>,
    /// The last heartbeat from anyone.
    last_any: Option<Instant>,
}

impl<Id: Eq + Hash> Liveness<Id> {
    /// A tracker that declares a gateway dead after `timeout` of silence.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            listening_since: now,
            last_heard: HashMap::new(),
            last_any: None,
        }
    }

    /// Records a heartbeat.
    pub fn heard(&mut self, gateway: Id, now: Instant) {
        if self
            .last_any
            .is_some_and(|any| now.saturating_duration_since(any) >= self.timeout)
        {
            self.listening_since = now;
        }
        self.last_any = Some(now);
        self.last_heard.insert(gateway, now);
    }

    /// Whether `gateway` is dead as far as this process can tell.
    pub fn is_dead(&self, gateway: &Id, now: Instant) -> bool {
        if now.saturating_duration_since(self.listening_since) < self.timeout {
            return false;
        }
        self.last_heard
            .get(gateway)
            .is_none_or(|heard| now.saturating_duration_since(*heard) >= self.timeout)
    }

    /// The processes heard from within the timeout.
    pub fn alive(&self, now: Instant) -> impl Iterator<Item = &Id> {
        self.last_heard
            .iter()
            .filter(move |(_, heard)| now.saturating_duration_since(**heard) < self.timeout)
            .map(|(id, _)| id)
    }

    /// Forgets dead gateways, keeping memory bounded as gateways come and
    /// go. Safe because a gateway never heard from counts as dead anyway.
    pub fn forget_dead(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.last_heard
            .retain(|_, heard| now.saturating_duration_since(*heard) < timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn nobody_is_dead_before_a_full_timeout_of_listening() {
        let start = Instant::now();
        let liveness: Liveness = Liveness::new(TIMEOUT, start);
        assert!(!liveness.is_dead(&"never-heard".into(), start + Duration::from_secs(9)));
        assert!(liveness.is_dead(&"never-heard".into(), start + TIMEOUT));
    }

    #[test]
    fn silence_for_the_timeout_means_dead() {
        let start = Instant::now();
        let mut liveness: Liveness = Liveness::new(TIMEOUT, start);
        let gw = GatewayId::from("gw");
        liveness.heard(gw.clone(), start + Duration::from_secs(5));
        assert!(!liveness.is_dead(&gw, start + Duration::from_secs(14)));
        assert!(liveness.is_dead(&gw, start + Duration::from_secs(15)));
    }

    #[test]
    fn hearing_again_after_total_silence_restarts_the_listening_period() {
        let start = Instant::now();
        let mut liveness: Liveness = Liveness::new(TIMEOUT, start);
        liveness.heard("a".into(), start);
        liveness.heard("b".into(), start);
        // Nothing heard for 30 s (NATS was down), then only "a" is back.
        let back = start + Duration::from_secs(30);
        liveness.heard("a".into(), back);
        assert!(
            !liveness.is_dead(&"b".into(), back + Duration::from_secs(5)),
            "b gets a fresh timeout"
        );
        assert!(liveness.is_dead(&"b".into(), back + TIMEOUT));
    }

    #[test]
    fn alive_lists_those_heard_within_the_timeout() {
        let start = Instant::now();
        let mut liveness: Liveness = Liveness::new(TIMEOUT, start);
        liveness.heard("a".into(), start);
        liveness.heard("b".into(), start + Duration::from_secs(5));
        let alive = |at| {
            let mut ids: Vec<GatewayId> = liveness.alive(start + at).cloned().collect();
            ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
            ids
        };
        assert_eq!(alive(Duration::from_secs(9)), ["a".into(), "b".into()]);
        assert_eq!(alive(TIMEOUT), [GatewayId::from("b")]);
    }

    #[test]
    fn forgotten_gateways_stay_dead() {
        let start = Instant::now();
        let mut liveness: Liveness = Liveness::new(TIMEOUT, start);
        liveness.heard("a".into(), start);
        liveness.heard("b".into(), start + Duration::from_secs(8));
        let now = start + Duration::from_secs(11);
        liveness.forget_dead(now);
        assert_eq!(liveness.last_heard.len(), 1);
        assert!(liveness.is_dead(&"a".into(), now));
        assert!(!liveness.is_dead(&"b".into(), now));
    }
}
