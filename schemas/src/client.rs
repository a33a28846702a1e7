//! The client protocol, version 1: JSON text frames over one WebSocket.
//!
//! `docs/protocol.md` describes the exchange with examples; the field names
//! here are the contract.

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;
use crate::id::{ClientMsgId, ConnId, GatewayId, RoomId, Seq, UserId};

/// A frame a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// The first frame: proves who the client is.
    Auth {
        /// A JWT.
        token: String,
    },
    /// A fresh token for the same user, before the current one expires:
    /// the connection's authentication then lasts until the new `exp`.
    Refresh {
        /// A JWT with the same `sub`.
        token: String,
    },
    /// Enter a room; `since` resumes after the last seq the client saw.
    Join {
        /// The room.
        room: RoomId,
        /// The last seq the client saw in this room, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Seq>,
        /// The client's previous connection, when it reconnects: that
        /// connection's seat in the room passes to this one at once, rather
        /// than after its gateway notices it is gone. Only a connection of
        /// the same user is replaced; the old one is closed with 4002.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<ConnId>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: RoomId,
    },
    /// Send a chat message to a joined room.
    Chat {
        /// The room.
        room: RoomId,
        /// The client's id for the message; resending it is idempotent.
        id: ClientMsgId,
        /// The message text; HTML is stripped.
        text: String,
    },
    /// WebRTC signaling to one member of a room; never stored.
    Signal {
        /// The room both peers are in.
        room: RoomId,
        /// The target connection.
        to: ConnId,
        /// What the payload is.
        kind: SignalKind,
        /// The payload (an SDP description, an ICE candidate, …), a JSON object.
        data: serde_json::Value,
        /// Ignored: the gateway sets the sender. Accepted so that clients
        /// which echo a received signal's fields are not refused.
        #[serde(default, skip_serializing)]
        from: Option<serde::de::IgnoredAny>,
        /// Ignored, like `from`.
        #[serde(default, skip_serializing)]
        user: Option<serde::de::IgnoredAny>,
    },
    /// Liveness check; answered with `pong`. A struct variant so that, like
    /// every other frame, it rejects unknown fields.
    Ping {},
    /// Asks for fresh ICE servers (new TURN credentials) before the ones in
    /// `welcome` expire; answered with `ice`.
    Ice {},
    /// Joins the call of a joined room through the media service (when
    /// `welcome` says there is one), or joins it again after `call_moved`:
    /// answered with `call_answer`. Later changes (other members' tracks
    /// arriving and leaving) are negotiated over the call's data channel.
    CallJoin {
        /// The room.
        room: RoomId,
        /// The browser's SDP offer: its own audio and video (none for a
        /// viewer) and a data channel.
        sdp: String,
    },
    /// Hangs up the room's call; not answered.
    CallLeave {
        /// The room.
        room: RoomId,
    },
}

/// The kind of a WebRTC signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// An SDP offer; `data` holds `sdp`.
    Offer,
    /// An SDP answer; `data` holds `sdp`.
    Answer,
    /// An ICE candidate; `data` holds `candidate`.
    Candidate,
    /// The peer hangs up.
    Bye,
    /// The sender's microphone and camera, on or off; `data` holds the
    /// booleans `audio` and `video`. Sent to each peer of a call when they
    /// change, so every tile can show it.
    Media,
}

/// Whether a member arrived or left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    /// The member joined the room.
    Join,
    /// The member left the room, or its connection or gateway went away.
    Leave,
}

/// A frame the gateway sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication succeeded.
    Welcome {
        /// This connection's id.
        conn_id: ConnId,
        /// Who the token says the client is.
        user: User,
        /// The gateway that holds the connection.
        gateway: GatewayId,
        /// The limits this gateway applies.
        limits: Limits,
        /// Seconds until the token expires and the gateway closes the
        /// connection with 4105, unless a `refresh` comes first. Relative,
        /// so a client's clock does not need to agree with the gateway's.
        expires_in: u64,
        /// STUN and TURN servers for this user's calls.
        ice: IceServers,
        /// Whether a media service holds calls (`call_join`); without
        /// one, calls are a mesh of `signal`s between members.
        #[serde(default)]
        media: bool,
    },
    /// A `refresh` was accepted.
    Refreshed {
        /// Seconds until the new token expires.
        expires_in: u64,
    },
    /// The join succeeded; carries the backlog.
    Joined {
        /// The room.
        room: RoomId,
        /// Every member of the room, on every gateway, this connection included.
        members: Vec<Member>,
        /// Backlog: the last messages, or those after `since`, oldest first.
        history: Vec<ChatMessage>,
        /// The room's latest seq (`0` when it has no messages).
        last_seq: Seq,
        /// Whether messages after `since` were already trimmed from the backlog.
        truncated: bool,
    },
    /// The leave succeeded.
    Left {
        /// The room.
        room: RoomId,
    },
    /// A chat message from another connection.
    Chat(ChatMessage),
    /// A chat message of this connection was stored.
    Ack {
        /// The client's id for the message.
        id: ClientMsgId,
        /// The room.
        room: RoomId,
        /// The seq the message was stored under. Absent only for a resend whose
        /// original has already been trimmed from the backlog.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        /// The text as stored, present only when sanitizing changed what the
        /// client sent: the sender shows this, as everyone else sees it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    /// A signal from another member of a room.
    Signal {
        /// The room.
        room: RoomId,
        /// The sending connection, set by the server.
        from: ConnId,
        /// The sending user, set by the server.
        user: User,
        /// What the payload is.
        kind: SignalKind,
        /// The payload as the sender gave it.
        data: serde_json::Value,
    },
    /// Someone joined or left a room this connection is in.
    Presence {
        /// The room.
        room: RoomId,
        /// Join or leave.
        event: PresenceEvent,
        /// Who.
        member: Member,
    },
    /// Answer to `ping`.
    Pong,
    /// The gateway is shutting down: move to another gateway after
    /// `reconnect_in_ms` (resuming with `since` and `replaces`, as after any
    /// reconnect). The connection works until then; a client still here
    /// when draining ends is closed with 4101.
    Draining {
        /// When to move, in milliseconds from now: spread by the gateway so
        /// its clients do not all arrive at once elsewhere.
        reconnect_in_ms: u64,
    },
    /// Fresh ICE servers, the answer to `ice`.
    Ice(IceServers),
    /// The media node's answer to `call_join`.
    CallAnswer {
        /// The room.
        room: RoomId,
        /// The SDP answer.
        sdp: String,
    },
    /// The room's call moved to another media node (its node died or is
    /// draining): send `call_join` again with a fresh offer.
    CallMoved {
        /// The room.
        room: RoomId,
    },
    /// A request failed; the connection stays usable.
    Error(ErrorFrame),
}

/// ICE servers for a WebRTC call, with how long their credentials last.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServers {
    /// For `RTCPeerConnection`'s `iceServers`, as they are.
    pub servers: Vec<IceServer>,
    /// Seconds until the TURN credentials expire (0 when there are none):
    /// ask again with `ice` before then. Relative, like `expires_in`.
    pub expires_in: u64,
}

/// One entry of `RTCPeerConnection`'s `iceServers`, in the browser's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` or `turn:` URLs.
    pub urls: Vec<String>,
    /// For TURN: `<expiry>:<user id>`, the expiry in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// For TURN: base64(HMAC-SHA1(shared secret, username)), which the TURN
    /// server recomputes (coturn's `use-auth-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The body of an `error` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What went wrong, machine-readable.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The client message id the error is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ClientMsgId>,
    /// The room the error is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomId>,
    /// The `type` of the client frame the error answers, once the frame
    /// was understood: a client waiting on one request (a `call_join`)
    /// must not take another's refusal in the same room (a `signal`'s)
    /// for its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

impl ErrorFrame {
    /// An error frame about no particular message or room.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
            room: None,
            request: None,
        }
    }

    /// Names the type of client frame the error answers.
    pub fn answering(mut self, request: &str) -> Self {
        self.request = Some(request.to_owned());
        self
    }

    /// Names the room the error is about.
    pub fn in_room(mut self, room: &RoomId) -> Self {
        self.room = Some(room.clone());
        self
    }

    /// Names the client message the error is about.
    pub fn for_message(mut self, id: &ClientMsgId) -> Self {
        self.id = Some(id.clone());
        self
    }
}

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id (the token's `sub`).
    pub id: UserId,
    /// Display name (the token's `name`, or the id).
    pub name: String,
}

/// One connection in a room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The connection.
    pub conn_id: ConnId,
    /// Its user.
    pub user: User,
}

/// A stored chat message, as clients see it and as JetStream stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The room.
    pub room: RoomId,
    /// Its place in the room.
    pub seq: Seq,
    /// The sender's id for it.
    pub id: ClientMsgId,
    /// Who sent it, as authenticated by the gateway.
    pub from: Member,
    /// The sanitized text.
    pub text: String,
    /// When the moderator accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
}

/// Limits a gateway announces in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest WebSocket message the gateway accepts, in bytes.
    pub max_frame_bytes: usize,
    /// How many rooms one connection may be in at once.
    pub max_rooms: usize,
    /// How many messages `joined.history` holds when `since` is absent.
    pub history_limit: usize,
}

/// Why a text frame is not a [`ClientFrame`].
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct FrameDecodeError {
    syntax: bool,
    /// The frame's `id` field, when it had one, so the error can name it.
    pub id: Option<ClientMsgId>,
    /// The frame's `room` field, when it had one.
    pub room: Option<RoomId>,
}

impl FrameDecodeError {
    /// A description for the client that does not leak parser internals.
    pub fn message(&self) -> &'static str {
        if self.syntax {
            "frame is not valid JSON"
        } else {
            "frame has an unknown type, a missing field or a field of the wrong type"
        }
    }
}

impl ClientFrame {
    /// Parses one text frame. On failure, still picks out `id` and `room` when
    /// they are present so the error frame can name them.
    pub fn decode(text: &str) -> Result<Self, FrameDecodeError> {
        serde_json::from_str(text).map_err(|err| {
            #[derive(Deserialize)]
            struct Echo {
                id: Option<ClientMsgId>,
                room: Option<RoomId>,
            }
            let echo = serde_json::from_str::<Echo>(text).ok();
            FrameDecodeError {
                syntax: err.is_syntax() || err.is_eof(),
                id: echo.as_ref().and_then(|e| e.id.clone()),
                room: echo.and_then(|e| e.room),
            }
        })
    }
}

impl ServerFrame {
    /// Serializes the frame as the JSON text sent to clients.
    pub fn to_json(&self) -> String {
        // Every field is a string, a number, a bool or a nested struct of those,
        // so serialization to a String cannot fail.
        serde_json::to_string(self).expect("server frames always serialize")
    }

    /// The JSON of `ServerFrame::Chat(chat)`, without taking `chat`: a
    /// gateway serializes each delivered message once and still reads it.
    pub fn chat_json(chat: &ChatMessage) -> String {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Borrowed<'a> {
            Chat(&'a ChatMessage),
        }
        serde_json::to_string(&Borrowed::Chat(chat)).expect("server frames always serialize")
    }

    /// Its `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Refreshed { .. } => "refreshed",
            ServerFrame::Joined { .. } => "joined",
            ServerFrame::Left { .. } => "left",
            ServerFrame::Chat(_) => "chat",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Signal { .. } => "signal",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Pong => "pong",
            ServerFrame::Draining { .. } => "draining",
            ServerFrame::Ice(_) => "ice",
            ServerFrame::CallAnswer { .. } => "call_answer",
            ServerFrame::CallMoved { .. } => "call_moved",
            ServerFrame::Error(_) => "error",
        }
    }
}

impl ClientFrame {
    /// Its `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Refresh { .. } => "refresh",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Chat { .. } => "chat",
            ClientFrame::Signal { .. } => "signal",
            ClientFrame::Ping {} => "ping",
            ClientFrame::Ice {} => "ice",
            ClientFrame::CallJoin { .. } => "call_join",
            ClientFrame::CallLeave { .. } => "call_leave",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kind_is_the_type_on_the_wire() {
        let frames = [
            ServerFrame::Pong,
            ServerFrame::Left { room: "r".into() },
            ServerFrame::Error(ErrorFrame::new(ErrorCode::RoomFull, "full")),
        ];
        for frame in frames {
            let json: serde_json::Value = serde_json::from_str(&frame.to_json()).unwrap();
            assert_eq!(json["type"], frame.kind());
        }
        for text in [
            r#"{"type":"ping"}"#,
            r#"{"type":"leave","room":"r"}"#,
            r#"{"type":"auth","token":"t"}"#,
        ] {
            let frame = ClientFrame::decode(text).unwrap();
            let json: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(json["type"], frame.kind());
        }
    }

    #[test]
    fn chat_json_is_the_chat_frame() {
        let chat = ChatMessage {
            room: "r".into(),
            seq: Seq(7),
            id: "m1".into(),
            from: member(),
            text: "a \"quoted\" <b>text</b>".into(),
            ts: 1,
        };
        assert_eq!(
            ServerFrame::chat_json(&chat),
            ServerFrame::Chat(chat).to_json()
        );
    }

    fn member() -> Member {
        Member {
            conn_id: "c1".into(),
            user: User {
                id: "u1".into(),
                name: "Ann".into(),
            },
        }
    }

    #[test]
    fn client_frames_parse_from_documented_json() {
        let cases = [
            (
                json!({"type": "auth", "token": "t"}),
                ClientFrame::Auth { token: "t".into() },
            ),
            (
                json!({"type": "refresh", "token": "t2"}),
                ClientFrame::Refresh { token: "t2".into() },
            ),
            (
                json!({"type": "join", "room": "lobby", "since": 42, "replaces": "c0"}),
                ClientFrame::Join {
                    room: "lobby".into(),
                    since: Some(Seq(42)),
                    replaces: Some("c0".into()),
                },
            ),
            (
                json!({"type": "join", "room": "lobby"}),
                ClientFrame::Join {
                    room: "lobby".into(),
                    since: None,
                    replaces: None,
                },
            ),
            (
                json!({"type": "leave", "room": "lobby"}),
                ClientFrame::Leave {
                    room: "lobby".into(),
                },
            ),
            (
                json!({"type": "chat", "room": "lobby", "id": "m1", "text": "hi"}),
                ClientFrame::Chat {
                    room: "lobby".into(),
                    id: "m1".into(),
                    text: "hi".into(),
                },
            ),
            (json!({"type": "ping"}), ClientFrame::Ping {}),
            (
                json!({"type": "call_join", "room": "lobby", "sdp": "v=0"}),
                ClientFrame::CallJoin {
                    room: "lobby".into(),
                    sdp: "v=0".into(),
                },
            ),
            (
                json!({"type": "call_leave", "room": "lobby"}),
                ClientFrame::CallLeave {
                    room: "lobby".into(),
                },
            ),
        ];
        for (value, frame) in cases {
            let text = value.to_string();
            assert_eq!(
                ClientFrame::decode(&text).unwrap(),
                frame,
                "decoding {text}"
            );
            assert_eq!(
                serde_json::to_value(&frame).unwrap(),
                value,
                "encoding {frame:?}"
            );
        }
    }

    #[test]
    fn signals_ignore_a_client_supplied_sender() {
        let text = r#"{"type":"signal","room":"r","to":"c2","kind":"offer","data":{"sdp":"v=0"},
                      "from":"c9","user":{"id":"mallory","name":"M"}}"#;
        match ClientFrame::decode(text).unwrap() {
            ClientFrame::Signal {
                room,
                to,
                kind,
                data,
                ..
            } => {
                assert_eq!(
                    (room.as_str(), to.as_str(), kind),
                    ("r", "c2", SignalKind::Offer)
                );
                assert_eq!(data, json!({"sdp": "v=0"}));
            }
            other => panic!("decoded as {other:?}"),
        }
        let signal = ServerFrame::Signal {
            room: "r".into(),
            from: "c1".into(),
            user: member().user,
            kind: SignalKind::Candidate,
            data: json!({"candidate": null}),
        };
        assert_eq!(
            serde_json::to_value(&signal).unwrap(),
            json!({"type": "signal", "room": "r", "from": "c1", "user": {"id": "u1", "name": "Ann"},
                   "kind": "candidate", "data": {"candidate": null}})
        );
        let presence = ServerFrame::Presence {
            room: "r".into(),
            event: PresenceEvent::Leave,
            member: member(),
        };
        assert_eq!(
            serde_json::to_value(&presence).unwrap(),
            json!({"type": "presence", "room": "r", "event": "leave",
                   "member": {"conn_id": "c1", "user": {"id": "u1", "name": "Ann"}}})
        );
    }

    #[test]
    fn bad_client_frames_are_rejected_with_their_ids() {
        const CASES: &[(&str, bool)] = &[
            ("{not json", true),
            ("", true),
            (r#"{"type":"shout","room":"lobby","id":"m1"}"#, false),
            (r#"{"type":"chat","room":"lobby","id":"m1"}"#, false),
            (
                r#"{"type":"chat","room":"lobby","id":"m1","text":7}"#,
                false,
            ),
            (r#"{"type":"ping","from":"someone-else"}"#, false),
            (
                r#"{"type":"chat","room":"lobby","id":"m1","text":"x","from":"spoof"}"#,
                false,
            ),
        ];
        for (text, syntax) in CASES {
            let err = ClientFrame::decode(text).unwrap_err();
            assert_eq!(err.syntax, *syntax, "case {text:?}");
            if !syntax {
                assert_eq!(
                    err.room,
                    text.contains("lobby").then(|| RoomId::from("lobby")),
                    "case {text:?}"
                );
                assert_eq!(
                    err.id,
                    text.contains("m1").then(|| ClientMsgId::from("m1")),
                    "case {text:?}"
                );
            }
        }
    }

    #[test]
    fn server_frames_match_documented_json() {
        let chat = ChatMessage {
            room: "lobby".into(),
            seq: Seq(58),
            id: "m1".into(),
            from: member(),
            text: "hi".into(),
            ts: 1_700_000_000_000,
        };
        let cases = [
            (
                ServerFrame::Chat(chat.clone()),
                json!({"type": "chat", "room": "lobby", "seq": 58, "id": "m1",
                       "from": {"conn_id": "c1", "user": {"id": "u1", "name": "Ann"}},
                       "text": "hi", "ts": 1_700_000_000_000u64}),
            ),
            (
                ServerFrame::Ack {
                    id: "m1".into(),
                    room: "lobby".into(),
                    seq: Some(Seq(58)),
                    text: None,
                },
                json!({"type": "ack", "id": "m1", "room": "lobby", "seq": 58}),
            ),
            (
                ServerFrame::Ack {
                    id: "m2".into(),
                    room: "lobby".into(),
                    seq: Some(Seq(59)),
                    text: Some("hello bob".into()),
                },
                json!({"type": "ack", "id": "m2", "room": "lobby", "seq": 59, "text": "hello bob"}),
            ),
            (
                ServerFrame::Joined {
                    room: "lobby".into(),
                    members: vec![member()],
                    history: vec![chat],
                    last_seq: Seq(58),
                    truncated: false,
                },
                json!({"type": "joined", "room": "lobby",
                       "members": [{"conn_id": "c1", "user": {"id": "u1", "name": "Ann"}}],
                       "history": [{"room": "lobby", "seq": 58, "id": "m1",
                                    "from": {"conn_id": "c1", "user": {"id": "u1", "name": "Ann"}},
                                    "text": "hi", "ts": 1_700_000_000_000u64}],
                       "last_seq": 58, "truncated": false}),
            ),
            (
                ServerFrame::Error(
                    ErrorFrame::new(ErrorCode::NotInRoom, "join first").in_room(&"lobby".into()),
                ),
                json!({"type": "error", "code": "not_in_room", "message": "join first", "room": "lobby"}),
            ),
            (ServerFrame::Pong, json!({"type": "pong"})),
            (
                ServerFrame::Refreshed { expires_in: 600 },
                json!({"type": "refreshed", "expires_in": 600}),
            ),
        ];
        for (frame, value) in cases {
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&frame.to_json()).unwrap(),
                value
            );
            assert_eq!(serde_json::from_value::<ServerFrame>(value).unwrap(), frame);
        }
    }
}
