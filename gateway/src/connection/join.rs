//! `join` and `leave`: a room's seat on the moderator, its subscription
//! in the hub and its backlog, and giving them up again.

use schemas::client::{ErrorFrame, ServerFrame};
use schemas::code::ErrorCode;
use schemas::event::{Action, Verdict};
use schemas::id::{ConnId, JoinId, RoomId, Seq};
use tokio::sync::oneshot;

use super::{Connection, Failure, HISTORY_UNAVAILABLE, MODERATOR_UNAVAILABLE, unexpected};
use crate::departures::Departure;

impl Connection {
    /// Joins: subscribe, then the moderator's admission (capacity, members),
    /// then the backlog, in that order so that no chat message or presence
    /// change falls between what `joined` lists and what arrives live.
    pub(super) async fn join(
        &mut self,
        room: RoomId,
        since: Option<Seq>,
        replaces: Option<ConnId>,
    ) -> Result<ServerFrame, Failure> {
        let fail = |code, message: &str| ErrorFrame::new(code, message).in_room(&room);
        if !room.is_subject_safe() {
            return Err(fail(ErrorCode::InvalidRoom, "room name is not allowed"));
        }
        let rejoin = self.rooms.contains(&room);
        if !rejoin && self.rooms.len() >= self.shared.config.max_rooms_per_connection {
            return Err(fail(
                ErrorCode::TooManyRooms,
                "already in as many rooms as allowed",
            ));
        }
        // The connection's own leave of the room, if still on its way,
        // goes first: applied after this join, it would undo it.
        let timeout = self.shared.bus.request_timeout();
        if !self.rooms.departed(&room, timeout).await {
            return Err(fail(
                ErrorCode::Unavailable,
                "still leaving the room; retry",
            ));
        }
        // Recorded before the hub knows the member (see `JoinedRooms::begin`).
        let attempt = JoinId(nuid::next().to_string());
        self.rooms.begin(&room, &attempt);
        let conn_id = self.requester.member.conn_id.clone();
        if let Err(err) = self
            .shared
            .hub
            .join(&room, conn_id, self.handle.clone())
            .await
        {
            tracing::warn!(cause = %err, %room, "join failed");
            self.forget(&room);
            return Err(fail(
                ErrorCode::Unavailable,
                "cannot subscribe to room; retry",
            ));
        }
        let join = Action::Join {
            room: room.clone(),
            attempt: attempt.clone(),
            // Naming itself would only make the connection give up its own seat.
            replaces: replaces.filter(|old| *old != self.requester.member.conn_id),
        };
        let (members, revision) = match self.moderate(join).await {
            Ok(Verdict::Admitted { members, revision }) => (members, revision),
            // An `unavailable` join may have been admitted all the same: a
            // rooms-bucket write whose ack timed out can still be stored.
            Ok(Verdict::Rejected {
                code: ErrorCode::Unavailable,
                message,
            }) => {
                self.depart(room.clone()).await;
                return Err(fail(ErrorCode::Unavailable, &message));
            }
            Ok(Verdict::Rejected { code, message }) => {
                self.forget(&room);
                return Err(fail(code, &message));
            }
            other => {
                if let Ok(verdict) = &other {
                    unexpected(verdict, "join");
                }
                // The join may have been admitted without our hearing of it.
                self.depart(room.clone()).await;
                return Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE));
            }
        };
        self.shared.hub.admitted(&room, members.clone(), revision);
        let limit = self.shared.config.history_limit;
        let backlog = match self.shared.bus.backlog(&room, since, limit).await {
            Ok(backlog) => backlog,
            Err(err) => {
                tracing::warn!(cause = %err, %room, "backlog unavailable");
                self.depart(room.clone()).await;
                return Err(fail(ErrorCode::Unavailable, HISTORY_UNAVAILABLE));
            }
        };
        self.rooms
            .joined(room.clone(), attempt, backlog.last_seq, revision);
        Ok(ServerFrame::Joined {
            room,
            members: members.into_iter().map(|m| m.member).collect(),
            history: backlog.messages,
            last_seq: backlog.last_seq,
            truncated: backlog.truncated,
        })
    }

    /// Leaves on the moderator first, so a rejoin right after cannot be
    /// undone by a late leave; if the moderator cannot be reached, the
    /// departure is retried in the background.
    pub(super) async fn leave(&mut self, room: RoomId) -> Result<ServerFrame, Failure> {
        if !self.rooms.contains(&room) {
            return Err(ErrorFrame::new(ErrorCode::NotInRoom, "not in this room").in_room(&room));
        }
        let leave = Action::Leave {
            room: room.clone(),
            attempt: self.rooms.attempt(&room),
        };
        match self.moderate(leave).await {
            Ok(Verdict::Done) => self.forget(&room),
            // Retried in the background until a moderator applies it.
            Ok(Verdict::Rejected { .. }) | Err(_) => self.depart(room.clone()).await,
            Ok(other) => {
                unexpected(&other, "leave");
                self.depart(room.clone()).await;
            }
        }
        Ok(ServerFrame::Left { room })
    }

    /// Leaves `room` here and queues the moderator's side of it.
    pub(super) async fn depart(&mut self, room: RoomId) {
        let attempt = self.rooms.attempt(&room);
        let (over, departed) = oneshot::channel();
        let departure = Departure {
            member: self.requester.member.clone(),
            room: room.clone(),
            attempt,
            moderator: self.requester.moderator.clone(),
            over,
        };
        // Queued before the room is forgotten: a full queue makes this
        // wait, and if the connection ends meanwhile (this step cancelled),
        // the room is still listed, so its end departs it again.
        self.shared.departures.send(departure).await;
        self.forget(&room);
        self.rooms.departing(room, departed);
    }

    /// Leaves `room` locally and in the hub, and its call.
    pub(super) fn forget(&mut self, room: &RoomId) {
        self.call_leave(room);
        self.rooms.remove(room);
        self.shared.hub.leave(room, &self.requester.member.conn_id);
    }
}
