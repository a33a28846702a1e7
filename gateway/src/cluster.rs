//! Living among other gateways: announce this one, notice dead ones.
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
use schemas::event::{self, Action, Heartbeat};
use schemas::id::{ConnId, GatewayId, RoomId, UserId};
use schemas::subject;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::hub::Hub;

/// How often rooms are checked for members of dead gateways.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// How long before the same removal is asked for again, if the first
/// request changed nothing yet (the moderator's own view may lag by a beat).
const REAP_RETRY: Duration = Duration::from_secs(2);

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
    let beat: bytes::Bytes = event::encode(&Heartbeat {
        gateway: me.clone(),
    })
    .into();
    let mut liveness = Liveness::new(timing.gateway_timeout, Instant::now());
    let mut announce = tokio::time::interval(timing.heartbeat_interval);
    let mut scan = tokio::time::interval(SCAN_INTERVAL);
    let mut asked: HashMap<(RoomId, GatewayId), Instant> = HashMap::new();
    let mut reaps = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = announce.tick() => {
                if let Err(err) = client.publish(subject::GATEWAY_HEARTBEAT, beat.clone()).await {
                    tracing::warn!(cause = %err, "heartbeat not sent");
                }
            }
            Some(msg) = heartbeats.next() => {
                if let Ok(heartbeat) = event::decode::<Heartbeat>(&msg.payload) {
                    liveness.heard(heartbeat.gateway, Instant::now());
                }
            }
            Some(_) = reaps.join_next() => {}
            _ = scan.tick() => {
                let now = Instant::now();
                liveness.forget_dead(now);
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
