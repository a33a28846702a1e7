//! Living among other gateways: announce this one, notice dead ones, and
//! keep the list of live moderators that chat is routed by
//! ([`crate::routing`]).
//!
//! Every gateway publishes a heartbeat every `heartbeat_interval` and
//! listens to the others'. When a room this gateway serves lists members of
//! a gateway silent for `gateway_timeout`, it asks a moderator to remove
//! them; the moderator announces their `leave` to everyone and frees their
//! slots. (Rooms with no members left anywhere get their slots back at the
//! next join, which removes dead gateways' members first.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bootstrap::liveness::Liveness;
use futures_util::StreamExt;
use schemas::client::{Member, User};
use schemas::event::{self, Action, Heartbeat, ModeratorHeartbeat};
use schemas::id::{ConnId, GatewayId, ModeratorId, RoomId, UserId};
use schemas::subject;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::hub::Hub;

/// How often rooms are checked for members of dead gateways.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How long before the same removal is asked for again, if the first
/// request changed nothing yet (the moderator's own view may lag by a beat).
pub const REAP_RETRY: Duration = Duration::from_secs(2);

/// Heartbeat and liveness settings.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often this gateway announces itself.
    pub heartbeat_interval: Duration,
    /// Silence after which another gateway counts as dead.
    pub gateway_timeout: Duration,
}

/// Announces this gateway and removes dead gateways' members from its rooms
/// until `shutdown`.
pub async fn run(
    hub: Arc<Hub>,
    bus: Bus,
    me: GatewayId,
    timing: Timing,
    shutdown: CancellationToken,
) {
    let client = bus.client().clone();
    let mut heartbeats = match client.subscribe(subject::GATEWAY_HEARTBEAT).await {
        Ok(subscriber) => subscriber,
        Err(err) => {
            tracing::error!(cause = %err, "cannot listen to heartbeats; dead gateways' members stay listed");
            return;
        }
    };
    // Without it, chat goes to the moderators' queue group: still correct,
    // only with moderators racing for rooms' tails.
    let mut moderator_beats = match client.subscribe(subject::MODERATOR_HEARTBEAT).await {
        Ok(subscriber) => Some(subscriber),
        Err(err) => {
            tracing::error!(cause = %err, "cannot listen to moderators' heartbeats; chat is not routed by room");
            None
        }
    };
    let mut moderators: Liveness<ModeratorId> =
        Liveness::new(timing.gateway_timeout, Instant::now());
    let beat: bytes::Bytes = event::encode(&Heartbeat {
        gateway: me.clone(),
    })
    .into();
    let mut liveness = Liveness::new(timing.gateway_timeout, Instant::now());
    let mut announce = tokio::time::interval(timing.heartbeat_interval);
    let mut scan = tokio::time::interval(SCAN_INTERVAL);
    let mut asked: HashMap<(RoomId, GatewayId), Instant> = HashMap::new();
    let mut reaps = JoinSet::new();
    let mut contact = Contact::new(timing.gateway_timeout, Instant::now());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = announce.tick() => {
                let connected = client.connection_state() == async_nats::connection::State::Connected;
                if contact.lost(Instant::now(), connected) {
                    tracing::warn!("out of touch with the cluster longer than the gateway timeout; resetting every connection");
                    hub.reset();
                }
                if let Err(err) = client.publish(subject::GATEWAY_HEARTBEAT, beat.clone()).await {
                    tracing::warn!(cause = %err, "heartbeat not sent");
                }
            }
            Some(msg) = heartbeats.next() => {
                if let Ok(heartbeat) = event::decode::<Heartbeat>(&msg.payload) {
                    liveness.heard(heartbeat.gateway, Instant::now());
                }
            }
            Some(msg) = next(&mut moderator_beats) => {
                if let Ok(beat) = event::decode::<ModeratorHeartbeat>(&msg.payload) {
                    let now = Instant::now();
                    bus.moderators().heard(&beat.moderator);
                    moderators.heard(beat.moderator, now);
                    bus.moderators().set(moderators.alive(now).cloned());
                }
            }
            Some(_) = reaps.join_next() => {}
            _ = scan.tick() => {
                let now = Instant::now();
                liveness.forget_dead(now);
                moderators.forget_dead(now);
                bus.moderators().set(moderators.alive(now).cloned());
                asked.retain(|_, at| now.duration_since(*at) < REAP_RETRY);
                let dead = hub.members_of_dead_gateways(|gateway| *gateway != me && liveness.is_dead(gateway, now));
                for (room, gateway) in dead {
                    if asked.contains_key(&(room.clone(), gateway.clone())) {
                        continue;
                    }
                    tracing::info!(%room, %gateway, "asking to remove a dead gateway's members");
                    asked.insert((room.clone(), gateway.clone()), now);
                    let bus = bus.clone();
                    reaps.spawn(async move {
                        let action = Action::Reap { room, gateway };
                        if let Err(err) = bus.moderate(&mut None, &reaper(), action).await {
                            tracing::warn!(cause = %err, "removal request failed; will ask again");
                        }
                    });
                }
            }
        }
    }
    reaps.shutdown().await;
    let _ = heartbeats.unsubscribe().await;
    if let Some(mut beats) = moderator_beats {
        let _ = beats.unsubscribe().await;
    }
}

/// The next message of a subscription that may not exist (then never).
async fn next(subscriber: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match subscriber {
        Some(subscriber) => subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// Notices when this gateway itself was out of touch with the cluster for
/// longer than the gateway timeout: stopped or starved (its heartbeat ticks
/// came that far apart), or without NATS. The other gateways and the
/// moderators then counted it dead and may have removed its members.
struct Contact {
    timeout: Duration,
    last_tick: Instant,
    disconnected_since: Option<Instant>,
}

impl Contact {
    fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            last_tick: now,
            disconnected_since: None,
        }
    }

    /// Called at each heartbeat tick: whether contact was lost for longer
    /// than the timeout and has just come back (a gateway still without NATS
    /// cannot rejoin anybody yet).
    fn lost(&mut self, now: Instant, connected: bool) -> bool {
        let stalled = now.duration_since(self.last_tick) > self.timeout;
        self.last_tick = now;
        if !connected {
            self.disconnected_since.get_or_insert(now);
            return false;
        }
        let cut_off = self
            .disconnected_since
            .take()
            .is_some_and(|since| now.duration_since(since) > self.timeout);
        stalled || cut_off
    }
}

/// Who a reap request is from: the gateway itself, not a client.
fn reaper() -> Member {
    Member {
        conn_id: ConnId::from("gateway"),
        user: User {
            id: UserId::from("gateway"),
            name: "gateway".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(9);
    const BEAT: Duration = Duration::from_secs(3);

    #[test]
    fn contact_is_lost_after_a_stall_or_a_long_disconnect_only() {
        let start = Instant::now();
        let mut contact = Contact::new(TIMEOUT, start);
        assert!(!contact.lost(start + BEAT, true), "a tick on time");
        assert!(
            contact.lost(start + BEAT + TIMEOUT * 2, true),
            "ticks further apart than the timeout: the process was stopped"
        );
        let now = start + BEAT + TIMEOUT * 2;
        assert!(!contact.lost(now + BEAT, false), "disconnected");
        assert!(!contact.lost(now + BEAT * 2, false), "still disconnected");
        assert!(
            !contact.lost(now + BEAT * 3, true),
            "back within the timeout"
        );
        let now = now + BEAT * 3;
        for i in 1..=4 {
            assert!(!contact.lost(now + BEAT * i, false), "disconnected");
        }
        assert!(
            contact.lost(now + BEAT * 5, true),
            "back after longer than the timeout"
        );
    }
}
