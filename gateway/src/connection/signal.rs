//! `signal`: WebRTC signaling relayed to another member of the room,
//! through a moderator, which checks both are members.

use schemas::client::{ErrorFrame, SignalKind};
use schemas::code::ErrorCode;
use schemas::event::{Action, Verdict};
use schemas::id::{ConnId, RoomId};

use super::{Connection, Failure, MODERATOR_UNAVAILABLE, unexpected};

impl Connection {
    /// Relays a signal; success has no reply, the target simply gets it.
    pub(super) async fn signal(
        &mut self,
        room: RoomId,
        to: ConnId,
        kind: SignalKind,
        data: serde_json::Value,
    ) -> Result<(), Failure> {
        let fail = |code, message: &str| ErrorFrame::new(code, message).in_room(&room);
        if !self.rooms.contains(&room) {
            return Err(fail(ErrorCode::NotInRoom, "join the room first"));
        }
        let action = Action::Signal {
            room: room.clone(),
            to,
            signal: kind,
            data,
        };
        match self.moderate(action).await {
            Ok(Verdict::Relayed) => Ok(()),
            Ok(Verdict::Rejected { code, message }) => Err(fail(code, &message)),
            Ok(other) => {
                unexpected(&other, "signal");
                Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE))
            }
            // Logged where it happened.
            Err(_) => Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE)),
        }
    }
}
