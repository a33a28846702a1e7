//! Living among other gateways: announce this one, notice dead ones, and
//! keep the lists of live moderators that chat is routed by
//! ([`crate::routing`]) and of live media nodes that calls are placed on
//! ([`crate::media`]).
//!
//! Every gateway publishes a heartbeat every `heartbeat_interval` and
//! listens to the others'. When a room this gateway serves lists members of
//! a gateway silent for `gateway_timeout`, it asks a moderator to remove
//! them; the moderator announces their `leave` to everyone and frees their
//! slots. (Rooms with no members left anywhere get their slots back at the
//! next join, which removes dead gateways' members first.)
//!
//! A gateway that cannot hear heartbeats must not serve: it would never
//! remove a dead peer's members, and without the moderators' heartbeats its
//! chat would not be routed by room. So both subscriptions are made before
//! the gateway serves ([`Cluster::join`]: failing, start-up fails, as it
//! does for the signal subscription), and if one ends while it runs (its
//! NATS client was closed for good) [`Cluster::run`] fails and the gateway
//! shuts down: `server::run` returns the error, the process exits non-zero
//! and its supervisor restarts it. A panic of the cluster task does the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bootstrap::liveness::Liveness;
use futures_util::StreamExt;
use schemas::call::MediaHeartbeat;
use schemas::client::{Member, User};
use schemas::event::{self, Action, Heartbeat, ModeratorHeartbeat};
use schemas::id::{ConnId, GatewayId, MediaNodeId, ModeratorId, RoomId, UserId};
use schemas::subject;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Requester};
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
    /// Silence after which a media node counts as dead and its calls move.
    pub media_timeout: Duration,
}

/// Why the gateway cannot take part in the cluster. Either way it must not
/// serve: its peers would count it dead and remove its members while it
/// kept them, or it would never notice a dead peer's members.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A heartbeat subject could not be subscribed at start-up.
    #[error("cannot listen to {subject}")]
    Subscribe {
        /// The subject.
        subject: &'static str,
        /// Why.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// A heartbeat subscription ended while the gateway ran: its NATS client
    /// was closed, and will not reconnect.
    #[error("the subscription to {0} ended")]
    Ended(&'static str),
}

/// This gateway's part in the cluster: its heartbeat, the other gateways'
/// and the moderators' heartbeats, and removing dead gateways' members.
pub struct Cluster {
    hub: Arc<Hub>,
    bus: Bus,
    me: GatewayId,
    timing: Timing,
    heartbeats: async_nats::Subscriber,
    moderator_beats: async_nats::Subscriber,
    media_beats: async_nats::Subscriber,
}

impl Cluster {
    /// Listens to the gateways', the moderators' and the media nodes'
    /// heartbeats. The gateway serves nobody until the subscriptions stand;
    /// see [`ClusterError`].
    pub async fn join(
        hub: Arc<Hub>,
        bus: Bus,
        me: GatewayId,
        timing: Timing,
    ) -> Result<Self, ClusterError> {
        let heartbeats = subscribe(bus.client(), subject::GATEWAY_HEARTBEAT).await?;
        let moderator_beats = subscribe(bus.client(), subject::MODERATOR_HEARTBEAT).await?;
        let media_beats = subscribe(bus.client(), subject::MEDIA_HEARTBEAT).await?;
        Ok(Self {
            hub,
            bus,
            me,
            timing,
            heartbeats,
            moderator_beats,
            media_beats,
        })
    }

    /// Announces this gateway and removes dead gateways' members from its
    /// rooms until `shutdown`; fails if a subscription ends before.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ClusterError> {
        let now = Instant::now();
        let mut watch = Watch {
            gateways: Liveness::new(self.timing.gateway_timeout, now),
            moderators: Liveness::new(self.timing.gateway_timeout, now),
            media: Liveness::new(self.timing.media_timeout, now),
            contact: Contact::new(self.timing.gateway_timeout, now),
            asked: HashMap::new(),
            reaps: JoinSet::new(),
        };
        let beat: bytes::Bytes = event::encode(&Heartbeat {
            gateway: self.me.clone(),
        })
        .into();
        let mut announce = tokio::time::interval(self.timing.heartbeat_interval);
        let mut scan = tokio::time::interval(SCAN_INTERVAL);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = announce.tick() => self.announce(&mut watch, beat.clone()).await,
                msg = self.heartbeats.next() => match msg {
                    Some(msg) => watch.heard_gateway(&msg),
                    None => break Err(ClusterError::Ended(subject::GATEWAY_HEARTBEAT)),
                },
                msg = self.moderator_beats.next() => match msg {
                    Some(msg) => watch.heard_moderator(&self.bus, &msg),
                    None => break Err(ClusterError::Ended(subject::MODERATOR_HEARTBEAT)),
                },
                msg = self.media_beats.next() => match msg {
                    Some(msg) => watch.heard_media(&self.bus, &msg),
                    None => break Err(ClusterError::Ended(subject::MEDIA_HEARTBEAT)),
                },
                Some(_) = watch.reaps.join_next() => {}
                _ = scan.tick() => self.scan(&mut watch),
            }
        };
        watch.reaps.shutdown().await;
        let _ = self.heartbeats.unsubscribe().await;
        let _ = self.moderator_beats.unsubscribe().await;
        let _ = self.media_beats.unsubscribe().await;
        result
    }

    /// Publishes this gateway's heartbeat, once its contact is checked.
    async fn announce(&self, watch: &mut Watch, beat: bytes::Bytes) {
        self.check_contact(watch);
        if let Err(err) = self
            .bus
            .client()
            .publish(subject::GATEWAY_HEARTBEAT, beat)
            .await
        {
            tracing::warn!(cause = %err, "heartbeat not sent");
        }
    }

    /// Checks whether this gateway was out of touch for longer than the
    /// timeout, before anything acts on its view of the others (the tick and
    /// the scan each check first, whichever runs first after a pause). If
    /// so, every connection is reset (the others may have removed their
    /// members) and the other gateways' silences are forgotten: measured
    /// across this gateway's own pause, they say nothing about them. The
    /// hub learns each moment the gateway is in touch, so that connections
    /// stop on their own when the checks stop coming (see
    /// [`Hub::in_touch`]).
    fn check_contact(&self, watch: &mut Watch) {
        let now = Instant::now();
        let connected =
            self.bus.client().connection_state() == async_nats::connection::State::Connected;
        if watch.contact.lost(now, connected) {
            tracing::warn!(
                "out of touch with the cluster longer than the gateway timeout; resetting every connection"
            );
            self.hub.reset();
            watch.gateways = Liveness::new(self.timing.gateway_timeout, now);
            watch.asked.clear();
        }
        if connected {
            self.hub.touched(now);
        }
    }

    /// Forgets the dead, and asks a moderator to remove the members of dead
    /// gateways from this gateway's rooms (once per [`REAP_RETRY`]).
    fn scan(&self, watch: &mut Watch) {
        self.check_contact(watch);
        let now = Instant::now();
        watch.gateways.forget_dead(now);
        watch.moderators.forget_dead(now);
        self.bus
            .moderators()
            .set(watch.moderators.alive(now).cloned());
        watch.media.forget_dead(now);
        self.bus
            .media()
            .retain(|node| !watch.media.is_dead(node, now));
        watch
            .asked
            .retain(|_, at| now.duration_since(*at) < REAP_RETRY);
        let dead = self.hub.members_of_dead_gateways(|gateway| {
            *gateway != self.me && watch.gateways.is_dead(gateway, now)
        });
        for (room, gateway) in dead {
            if watch.asked.contains_key(&(room.clone(), gateway.clone())) {
                continue;
            }
            tracing::info!(%room, %gateway, "asking to remove a dead gateway's members");
            watch.asked.insert((room.clone(), gateway.clone()), now);
            let bus = self.bus.clone();
            watch.reaps.spawn(async move {
                let action = Action::Reap { room, gateway };
                if let Err(err) = bus.moderate(&mut Requester::new(reaper()), action).await {
                    tracing::warn!(cause = %err, "removal request failed; will ask again");
                }
            });
        }
    }
}

async fn subscribe(
    client: &async_nats::Client,
    subject: &'static str,
) -> Result<async_nats::Subscriber, ClusterError> {
    client
        .subscribe(subject)
        .await
        .map_err(|source| ClusterError::Subscribe { subject, source })
}

/// What [`Cluster::run`] keeps track of.
struct Watch {
    gateways: Liveness<GatewayId>,
    moderators: Liveness<ModeratorId>,
    media: Liveness<MediaNodeId>,
    contact: Contact,
    /// Removals asked for, and when.
    asked: HashMap<(RoomId, GatewayId), Instant>,
    reaps: JoinSet<()>,
}

impl Watch {
    fn heard_gateway(&mut self, msg: &async_nats::Message) {
        if let Ok(heartbeat) = event::decode::<Heartbeat>(&msg.payload) {
            self.gateways.heard(heartbeat.gateway, Instant::now());
        }
    }

    fn heard_moderator(&mut self, bus: &Bus, msg: &async_nats::Message) {
        if let Ok(beat) = event::decode::<ModeratorHeartbeat>(&msg.payload) {
            let now = Instant::now();
            bus.moderators().heard(&beat.moderator);
            self.moderators.heard(beat.moderator, now);
            bus.moderators().set(self.moderators.alive(now).cloned());
        }
    }

    fn heard_media(&mut self, bus: &Bus, msg: &async_nats::Message) {
        match event::decode::<MediaHeartbeat>(&msg.payload) {
            Ok(beat) => {
                self.media.heard(beat.node.clone(), Instant::now());
                bus.media().heard(&beat);
            }
            Err(err) => tracing::warn!(cause = %err, "dropping a malformed media heartbeat"),
        }
    }
}

/// Notices when this gateway itself was out of touch with the cluster for
/// longer than the gateway timeout, by its own monotonic clock: stopped or
/// starved (its checks came that far apart), or without NATS. The other
/// gateways and the moderators then counted it dead and may have removed
/// its members.
struct Contact {
    timeout: Duration,
    last_check: Instant,
    disconnected_since: Option<Instant>,
    /// A stall seen while NATS was still away: reported once it is back,
    /// however short the disconnection itself looks.
    stalled: bool,
}

impl Contact {
    fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            last_check: now,
            disconnected_since: None,
            stalled: false,
        }
    }

    /// Called at each heartbeat tick and scan: whether contact was lost for
    /// longer than the timeout and has just come back (a gateway still
    /// without NATS cannot rejoin anybody yet).
    fn lost(&mut self, now: Instant, connected: bool) -> bool {
        self.stalled |= now.saturating_duration_since(self.last_check) > self.timeout;
        self.last_check = now;
        if !connected {
            self.disconnected_since.get_or_insert(now);
            return false;
        }
        let cut_off = self
            .disconnected_since
            .take()
            .is_some_and(|since| now.saturating_duration_since(since) > self.timeout);
        std::mem::take(&mut self.stalled) || cut_off
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

    /// Paused past the timeout: NATS dropped the stale connection during
    /// the pause, so the first tick after it finds NATS not connected, and
    /// the reconnect a moment later is too short to count as a cut. The
    /// pause must still count (issue 26: it was forgotten, and the gateway
    /// kept members its peers had removed).
    #[test]
    fn a_pause_is_not_forgotten_when_the_first_tick_after_it_finds_nats_gone() {
        let start = Instant::now();
        let mut contact = Contact::new(TIMEOUT, start);
        let woke = start + BEAT + Duration::from_secs(20);
        assert!(!contact.lost(woke, false), "still without NATS");
        assert!(
            contact.lost(woke + Duration::from_millis(100), true),
            "back in touch after the pause: contact was lost"
        );
        assert!(!contact.lost(woke + BEAT, true), "reported once");
    }

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
