//! Who is in each room: joins, leaves and the removal of dead gateways'
//! members. Each change is made in the rooms bucket ([`Membership`]) and
//! then announced to every gateway as presence.
//!
//! These run as their own tasks, so one slow bucket write does not hold up
//! other rooms. A connection sends its next request only after the answer
//! to the last, so running them concurrently keeps each connection's order.

use std::sync::{Arc, Mutex};

use async_nats::Client;
use bootstrap::liveness::Liveness;
use schemas::client::PresenceEvent;
use schemas::code::ErrorCode;
use schemas::event::{self, PresenceChange, RoomMember, Verdict};
use schemas::id::{ConnId, GatewayId, JoinId, RoomId};
use schemas::subject;
use tokio::time::Instant;

use crate::membership::{
    Admission, Change, JoinRefusal, Joining, Membership, MembershipError, MembershipErrorKind,
};

/// What membership tasks share.
pub struct Roster {
    /// For publishing presence and signals.
    pub client: Client,
    /// The rooms bucket.
    pub membership: Membership,
    /// Which gateways are alive, from their heartbeats and requests.
    pub liveness: Mutex<Liveness>,
}

impl Roster {
    /// Notes that `gateway` is alive.
    pub fn heard(&self, gateway: GatewayId) {
        self.liveness().heard(gateway, Instant::now());
    }

    /// Forgets gateways dead for long enough that none of their members can
    /// be left anywhere, so the table does not grow with every restart.
    pub fn forget_dead(&self) {
        self.liveness().forget_dead(Instant::now());
    }

    fn is_dead(&self, gateway: &GatewayId) -> bool {
        self.liveness().is_dead(gateway, Instant::now())
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().expect("liveness lock poisoned")
    }

    /// Admits `member` to `room` if it has space, removing dead gateways'
    /// members and the connection it `replaces` first, and announces the
    /// changes.
    pub async fn join(
        self: Arc<Self>,
        room: RoomId,
        member: RoomMember,
        attempt: JoinId,
        replaces: Option<ConnId>,
    ) -> Verdict {
        let joining = Joining {
            member,
            attempt,
            replaces,
        };
        match self
            .membership
            .join(&room, joining, |gateway| self.is_dead(gateway))
            .await
        {
            Ok(Admission::Admitted(change)) => {
                self.announce(&room, &change).await;
                Verdict::Admitted {
                    members: change.members,
                    revision: change.revision,
                }
            }
            Ok(Admission::Refused(JoinRefusal::RoomFull)) => Verdict::Rejected {
                code: ErrorCode::RoomFull,
                message: "the room is full".into(),
            },
            // Nobody waits for this answer any more: the gateway gave up on
            // the join and has left in its place.
            Ok(Admission::Refused(JoinRefusal::Cancelled)) => {
                Verdict::unavailable("join cancelled")
            }
            Err(err) => failed(&room, err),
        }
    }

    /// Removes a connection from `room` and announces it.
    pub async fn leave(
        self: Arc<Self>,
        room: RoomId,
        conn: ConnId,
        attempt: Option<JoinId>,
    ) -> Verdict {
        match self.membership.leave(&room, &conn, attempt).await {
            Ok(change) => {
                self.announce(&room, &change).await;
                Verdict::Done
            }
            Err(err) => failed(&room, err),
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
            Err(err) => failed(&room, err),
        }
    }

    /// Publishes one presence change per member who left or joined.
    async fn announce(&self, room: &RoomId, change: &Change) {
        let left = change.left.iter().map(|m| (PresenceEvent::Leave, m, false));
        let replaced = change
            .replaced
            .iter()
            .map(|m| (PresenceEvent::Leave, m, true));
        let joined = change
            .joined
            .iter()
            .map(|m| (PresenceEvent::Join, m, false));
        for (event, member, replaced) in left.chain(replaced).chain(joined) {
            let presence = PresenceChange {
                room: room.clone(),
                event,
                member: member.clone(),
                members: change.members.clone(),
                revision: change.revision,
                replaced,
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

/// The answer to a request whose membership read or change failed, and
/// its one log line: the one place a [`MembershipError`] becomes what the
/// client is told. No client code says more than `unavailable` (retry
/// later) for any kind; the log says which kind it was.
pub fn failed(room: &RoomId, err: MembershipError) -> Verdict {
    let kind = err.kind();
    tracing::warn!(cause = %err, ?kind, %room, "room membership unavailable");
    match kind {
        MembershipErrorKind::Read
        | MembershipErrorKind::Malformed
        | MembershipErrorKind::Write
        | MembershipErrorKind::Contended => Verdict::unavailable("room membership unavailable"),
    }
}
