//! Internal events between cavlo services, encoded as MessagePack with field
//! names (`rmp_serde::to_vec_named`) so services of different versions can add
//! optional fields without breaking each other.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::client::{ChatMessage, Member, PresenceEvent, SignalKind};
use crate::code::ErrorCode;
use crate::id::{ClientMsgId, ConnId, GatewayId, JoinId, ModeratorId, RoomId, Seq};

/// A gateway asks a moderator to admit a client event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModerationRequest {
    /// The connection the event came from, as the gateway authenticated it.
    pub from: Member,
    /// The gateway holding that connection.
    pub gateway: GatewayId,
    /// What the client asks for.
    pub action: Action,
}

/// A client event that needs the moderator's approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Enter a room (counts against its capacity).
    Join {
        /// The room.
        room: RoomId,
        /// This attempt; a leave naming it cancels it if it comes first.
        attempt: JoinId,
        /// The same user's previous connection, whose seat this one takes.
        #[serde(default)]
        replaces: Option<ConnId>,
    },
    /// Leave a room, by request, because the connection closed, or because
    /// the gateway gave up on a join.
    Leave {
        /// The room.
        room: RoomId,
        /// The connection's last join attempt in the room. If that join was
        /// not applied yet (a request delayed by an outage can arrive after
        /// the leave that undoes it), it never will be.
        attempt: Option<JoinId>,
    },
    /// Relay a WebRTC signal to another member.
    Signal {
        /// The room.
        room: RoomId,
        /// The target connection.
        to: ConnId,
        /// What the payload is.
        signal: SignalKind,
        /// The payload as the client gave it.
        data: serde_json::Value,
    },
    /// Remove a dead gateway's members from a room. Sent by a gateway that
    /// noticed the other stopped sending heartbeats; the moderator only
    /// acts if it also considers that gateway dead.
    Reap {
        /// The room.
        room: RoomId,
        /// The gateway that stopped.
        gateway: GatewayId,
    },
    /// Store and deliver a chat message.
    Chat {
        /// The room.
        room: RoomId,
        /// The client's id for the message.
        id: ClientMsgId,
        /// The text as the client sent it, before sanitizing.
        text: String,
        /// The gateway takes the ack from the stored message's delivery
        /// (the stream republishes it to the room's gateways, the sender's
        /// among them), so the moderator answers only a chat it does not
        /// store now: a rejection, a failure or a duplicate. Absent from an
        /// older gateway, which needs the answer every time.
        #[serde(default)]
        acked_by_delivery: bool,
    },
}

/// A moderator's answer to a [`ModerationRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModerationReply {
    /// The moderator that answered; the gateway sends this connection's next
    /// requests to it, so that its rate limit is counted in one place.
    pub moderator: ModeratorId,
    /// The verdict.
    pub verdict: Verdict,
}

/// The outcome of moderation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Verdict {
    /// The join is allowed; the room's members after it.
    Admitted {
        /// Every member, this connection included.
        members: Vec<RoomMember>,
        /// The room's membership revision after the join. Presence events
        /// with a higher revision are newer than `members`.
        revision: u64,
    },
    /// The leave or reap is done.
    Done,
    /// The signal was handed to the target's gateway.
    Relayed,
    /// The chat message is stored under `seq` (see [`crate::client::ServerFrame::Ack`]).
    Stored {
        /// Its seq, if known.
        seq: Option<Seq>,
        /// The stored text, when sanitizing changed what the client sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// The event was refused.
    Rejected {
        /// Why, as the client will see it.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
}

impl Verdict {
    /// The one `unavailable` verdict: the moderator could not do it now and
    /// the client may retry. `what` says what failed, for people.
    pub fn unavailable(what: &str) -> Self {
        Verdict::Rejected {
            code: ErrorCode::Unavailable,
            message: format!("{what}; retry"),
        }
    }
}

/// A member of a room, with the gateway that holds its connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMember {
    /// The member.
    pub member: Member,
    /// Where its connection lives.
    pub gateway: GatewayId,
}

/// A room's membership as the moderators keep it in the rooms bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    /// Current members, in joining order.
    pub members: Vec<RoomMember>,
    /// Join attempts that a leave cancelled before they were applied; a
    /// late join naming one is refused. Each is kept until `until_ms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<CancelledJoin>,
}

/// A join attempt cancelled before it was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelledJoin {
    /// The attempt.
    pub attempt: JoinId,
    /// Until when it is remembered, ms since the Unix epoch.
    pub until_ms: u64,
}

/// A membership change, announced to the room's gateways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PresenceChange {
    /// The room.
    pub room: RoomId,
    /// Join or leave.
    pub event: PresenceEvent,
    /// Who joined or left.
    pub member: RoomMember,
    /// Every member after the change.
    pub members: Vec<RoomMember>,
    /// The membership revision after the change; changes are ordered by it.
    pub revision: u64,
    /// For a leave: the member's seat passed to a newer connection of the
    /// same user, so its gateway closes the old connection if it still
    /// holds it.
    #[serde(default)]
    pub replaced: bool,
}

/// A signal on its way to the target's gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalDelivery {
    /// The room.
    pub room: RoomId,
    /// The target connection.
    pub to: ConnId,
    /// The sender, as authenticated by its gateway.
    pub from: Member,
    /// What the payload is.
    pub signal: SignalKind,
    /// The payload.
    pub data: serde_json::Value,
}

/// A gateway's periodic sign of life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The gateway.
    pub gateway: GatewayId,
}

/// A moderator's periodic sign of life; gateways route each room's chat to
/// one of the moderators they hear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeratorHeartbeat {
    /// The moderator.
    pub moderator: ModeratorId,
}

/// A gateway asks history for a room's backlog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BacklogRequest {
    /// The room.
    pub room: RoomId,
    /// Return messages after this seq; `None` asks for the last `limit`.
    pub since: Option<Seq>,
    /// At most this many messages when `since` is `None`.
    pub limit: usize,
}

/// History's answer to a [`BacklogRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BacklogReply {
    /// The backlog.
    Backlog(Backlog),
    /// History could not read the stream.
    Unavailable,
}

/// A room's retained messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Backlog {
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
    /// The room's latest seq, `Seq(0)` if it has none.
    pub last_seq: Seq,
    /// Whether messages after `since` were already trimmed.
    pub truncated: bool,
}

/// An internal event that arrived malformed.
#[derive(Debug, thiserror::Error)]
#[error("malformed internal event")]
pub struct EventDecodeError(#[from] rmp_serde::decode::Error);

/// Encodes an internal event.
pub fn encode<T: Serialize>(event: &T) -> Vec<u8> {
    // Internal events hold only strings, integers, bools, options and nested
    // structs of those, all of which MessagePack can represent.
    rmp_serde::to_vec_named(event).expect("internal events always serialize")
}

/// Decodes an internal event.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EventDecodeError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::User;

    fn member() -> Member {
        Member {
            conn_id: "c1".into(),
            user: User {
                id: "u1".into(),
                name: "Ann".into(),
            },
        }
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        assert_eq!(decode::<T>(&encode(&value)).unwrap(), value);
    }

    /// A chat request from a gateway that predates `acked_by_delivery`
    /// wants its answer whatever happens.
    #[test]
    fn an_older_gateways_chat_asks_for_an_answer() {
        #[derive(Serialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum OlderAction {
            Chat {
                room: RoomId,
                id: ClientMsgId,
                text: String,
            },
        }
        #[derive(Serialize)]
        struct OlderRequest {
            from: Member,
            gateway: GatewayId,
            action: OlderAction,
        }
        let older = encode(&OlderRequest {
            from: member(),
            gateway: "g1".into(),
            action: OlderAction::Chat {
                room: "lobby".into(),
                id: "m1".into(),
                text: "hi".into(),
            },
        });
        let request: ModerationRequest = decode(&older).unwrap();
        assert!(matches!(
            request.action,
            Action::Chat {
                acked_by_delivery: false,
                ..
            }
        ));
    }

    #[test]
    fn events_round_trip() {
        round_trip(ModerationRequest {
            from: member(),
            gateway: "g1".into(),
            action: Action::Chat {
                room: "lobby".into(),
                id: "m1".into(),
                text: "<b>hi</b>".into(),
                acked_by_delivery: true,
            },
        });
        round_trip(ModerationRequest {
            from: member(),
            gateway: "g1".into(),
            action: Action::Join {
                room: "lobby".into(),
                attempt: "j1".into(),
                replaces: Some("c0".into()),
            },
        });
        round_trip(ModerationRequest {
            from: member(),
            gateway: "g1".into(),
            action: Action::Signal {
                room: "lobby".into(),
                to: "c2".into(),
                signal: SignalKind::Offer,
                data: serde_json::json!({"sdp": "v=0", "nested": {"n": [1, 2.5, null, true]}}),
            },
        });
        round_trip(PresenceChange {
            room: "lobby".into(),
            event: PresenceEvent::Leave,
            member: RoomMember {
                member: member(),
                gateway: "g1".into(),
            },
            members: vec![],
            revision: 7,
            replaced: true,
        });
        for verdict in [
            Verdict::Admitted {
                members: vec![RoomMember {
                    member: member(),
                    gateway: "g1".into(),
                }],
                revision: 3,
            },
            Verdict::Done,
            Verdict::Relayed,
            Verdict::Stored {
                seq: Some(Seq(3)),
                text: None,
            },
            Verdict::Stored {
                seq: None,
                text: Some("hello bob".into()),
            },
            Verdict::Rejected {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
            },
        ] {
            round_trip(ModerationReply {
                moderator: "m".into(),
                verdict,
            });
        }
        round_trip(BacklogRequest {
            room: "lobby".into(),
            since: Some(Seq(9)),
            limit: 50,
        });
        round_trip(BacklogReply::Backlog(Backlog {
            messages: vec![ChatMessage {
                room: "lobby".into(),
                seq: Seq(10),
                id: "m1".into(),
                from: member(),
                text: "hi".into(),
                ts: 1,
            }],
            last_seq: Seq(10),
            truncated: true,
        }));
        round_trip(BacklogReply::Unavailable);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode::<ModerationRequest>(b"\xc1garbage").is_err());
        assert!(decode::<Backlog>(&encode(&"a string")).is_err());
    }
}
