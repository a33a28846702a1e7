//! `chat`: a message sent to the moderator that stores its room, and
//! answered with its ack once stored.

use schemas::client::{ErrorFrame, ServerFrame};
use schemas::code::ErrorCode;
use schemas::event::Verdict;
use schemas::id::{ClientMsgId, RoomId};

use super::{Connection, Failure, MODERATOR_UNAVAILABLE, unexpected};

impl Connection {
    pub(super) async fn chat(
        &mut self,
        room: RoomId,
        id: ClientMsgId,
        text: String,
    ) -> Result<ServerFrame, Failure> {
        let fail = |code, message: &str| {
            ErrorFrame::new(code, message)
                .in_room(&room)
                .for_message(&id)
        };
        if !self.rooms.contains(&room) {
            return Err(fail(ErrorCode::NotInRoom, "join the room first"));
        }
        let sent = self
            .shared
            .bus
            .chat(&mut self.requester, &room, &id, &text)
            .await;
        if let Err(err) = &sent {
            tracing::warn!(cause = %err, "chat request failed");
        }
        match sent {
            Ok(Verdict::Stored { seq, text }) => Ok(ServerFrame::Ack {
                id,
                room,
                seq,
                text,
            }),
            Ok(Verdict::Rejected { code, message }) => Err(fail(code, &message)),
            Ok(other) => {
                unexpected(&other, "chat");
                Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE))
            }
            // Logged where it happened.
            Err(_) => Err(fail(ErrorCode::Unavailable, MODERATOR_UNAVAILABLE)),
        }
    }
}
