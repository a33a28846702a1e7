//! Membership and signaling requests, which need the rooms bucket and run
//! as their own tasks so one slow bucket write does not hold up other rooms.
//!
//! A connection sends its next request only after the answer to the last,
//! so running these concurrently keeps each connection's order.

use std::sync::{Arc, Mutex};

use async_nats::Client;
use bootstrap::liveness::Liveness;
use schemas::client::{Member, PresenceEvent, SignalKind};
use schemas::code::ErrorCode;
use schemas::event::{self, PresenceChange, RoomMember, SignalDelivery, Verdict};
use schemas::id::{ConnId, GatewayId, ModeratorId, RoomId};
use schemas::subject;
use tokio::time::Instant;

use crate::membership::{Change, Membership, MembershipError, RoomFull};

/// What membership tasks share.
pub struct Rooms {
    /// The moderator's id, for replies.
    pub moderator: ModeratorId,
    /// For publishing presence, signals and replies.
    pub client: Client,
    /// The rooms bucket.
    pub membership: Membership,
    /// Which gateways are alive.
    pub liveness: Mutex<Liveness>,
}

/// A signal that passed the checks, on its way to the target.
pub struct Signal {
    /// The room.
    pub room: RoomId,
    /// The target connection.
    pub to: ConnId,
    /// What the payload is.
    pub kind: SignalKind,
    /// The payload.
    pub data: serde_json::Value,
}

impl Rooms {
    fn is_dead(&self, gateway: &GatewayId) -> bool {
        self.liveness
            .lock()
            .expect("liveness lock poisoned")
            .is_dead(gateway, Instant::now())
    }

    /// Admits `member` to `room` if it has space, removing dead gateways'
    /// members first, and announces the changes.
    pub async fn join(self: Arc<Self>, room: RoomId, member: RoomMember) -> Verdict {
        match self
            .membership
            .join(&room, member, |gateway| self.is_dead(gateway))
            .await
        {
            Ok(Ok(change)) => {
                self.announce(&room, &change).await;
                Verdict::Admitted {
                    members: change.members,
                    revision: change.revision,
                }
            }
            Ok(Err(RoomFull)) => Verdict::Rejected {
                code: ErrorCode::RoomFull,
                message: "the room is full".into(),
            },
            Err(err) => unavailable(err),
        }
    }

    /// Removes a connection from `room` and announces it.
    pub async fn leave(self: Arc<Self>, room: RoomId, conn: ConnId) -> Verdict {
        match self.membership.leave(&room, &conn).await {
            Ok(change) => {
                self.announce(&room, &change).await;
                Verdict::Done
            }
            Err(err) => unavailable(err),
        }
    }

    /// Removes a dead gateway's members from `room`, if this moderator also
    /// considers it dead; a live gateway's members stay.
    pub async fn reap(self: Arc<Self>, room: RoomId, gateway: GatewayId) -> Verdict {
        if !self.is_dead(&gateway) {
            return Verdict::Done;
        }
        match self.membership.reap(&room, &gateway).await {
            Ok(change) => {
                if !change.left.is_empty() {
                    tracing::info!(%room, %gateway, removed = change.left.len(), "removed a dead gateway's members");
                }
                self.announce(&room, &change).await;
                Verdict::Done
            }
            Err(err) => unavailable(err),
        }
    }

    /// Hands a signal to the target's gateway if sender and target are both
    /// in the room.
    pub async fn relay(self: Arc<Self>, from: Member, signal: Signal) -> Verdict {
        let members = match self.membership.members(&signal.room).await {
            Ok(members) => members,
            Err(err) => return unavailable(err),
        };
        if !members.iter().any(|m| m.member.conn_id == from.conn_id) {
            return Verdict::Rejected {
                code: ErrorCode::NotInRoom,
                message: "join the room first".into(),
            };
        }
        let Some(target) = members.iter().find(|m| m.member.conn_id == signal.to) else {
            return Verdict::Rejected {
                code: ErrorCode::PeerNotFound,
                message: "no such member in this room".into(),
            };
        };
        let delivery = SignalDelivery {
            room: signal.room,
            to: signal.to,
            from,
            signal: signal.kind,
            data: signal.data,
        };
        match self
            .client
            .publish(
                subject::signals(&target.gateway),
                event::encode(&delivery).into(),
            )
            .await
        {
            Ok(()) => Verdict::Relayed,
            Err(err) => {
                tracing::warn!(cause = %err, "signal not relayed");
                Verdict::Rejected {
                    code: ErrorCode::Unavailable,
                    message: "signal not relayed; retry".into(),
                }
            }
        }
    }

    /// Publishes one presence change per member who left or joined.
    async fn announce(&self, room: &RoomId, change: &Change) {
        let left = change.left.iter().map(|m| (PresenceEvent::Leave, m));
        let joined = change.joined.iter().map(|m| (PresenceEvent::Join, m));
        for (event, member) in left.chain(joined) {
            let presence = PresenceChange {
                room: room.clone(),
                event,
                member: member.clone(),
                members: change.members.clone(),
                revision: change.revision,
            };
            if let Err(err) = self
                .client
                .publish(subject::presence(room), event::encode(&presence).into())
                .await
            {
                tracing::warn!(cause = %err, %room, "presence change not announced");
            }
        }
    }
}

fn unavailable(err: MembershipError) -> Verdict {
    tracing::warn!(cause = %err, "membership change failed");
    Verdict::Rejected {
        code: ErrorCode::Unavailable,
        message: "room membership unavailable; retry".into(),
    }
}
