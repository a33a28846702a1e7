//! What a [`Client`](crate::Client) tells its application: the answers
//! to its requests, and the events it hears.

use schemas::client::{
    ChatMessage, ErrorFrame, Member, PresenceEvent, ServerFrame, SignalKind, User,
};
use schemas::id::{ClientMsgId, ConnId, RoomId, Seq};
use tokio::sync::mpsc;

use crate::connection::Welcome;
use crate::error::TokenError;

/// Events the task may hold for the application. When the application
/// reads none, the task waits, stops reading its socket, and the gateway
/// eventually closes it as a slow consumer (4100); the client then
/// reconnects and resumes with `since`, so nothing is lost but time.
pub const EVENTS_CAPACITY: usize = 256;

/// The answer to [`Client::join`](crate::Client::join).
#[derive(Clone, Debug, PartialEq)]
pub struct Joined {
    /// The room.
    pub room: RoomId,
    /// Every member, this connection included, in joining order.
    pub members: Vec<Member>,
    /// The backlog, oldest first: the last messages, or those after the
    /// seq the client had seen when it joined again.
    pub history: Vec<ChatMessage>,
    /// The room's latest seq (`0` when it has none).
    pub last_seq: Seq,
    /// Whether some of the backlog asked for was trimmed already.
    pub truncated: bool,
}

/// The answer to [`Client::send_chat`](crate::Client::send_chat): the message is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The id the client gave the message.
    pub id: ClientMsgId,
    /// Its seq; absent only for a resend whose original has already left
    /// the backlog.
    pub seq: Option<Seq>,
    /// The text as stored, which every other member receives: what was sent,
    /// unless sanitizing changed it. Show the sender's own line with it.
    pub text: String,
}

/// Something the client heard or did, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Welcomed by a gateway, and every room's join and every unacked chat
    /// sent again: after the first connect, and after every reconnect.
    Connected(Welcome),
    /// The connection ended, with the gateway's close code if it sent
    /// one; the client reconnects.
    Disconnected {
        /// The close code (docs/protocol.md), if any.
        close_code: Option<u16>,
    },
    /// A chat message from another connection. Each seq of a room comes
    /// once and in order, across reconnects too.
    Chat(ChatMessage),
    /// A room joined before was joined again after a reconnect; the
    /// messages missed meanwhile came just before as [`Event::Chat`](crate::Event::Chat).
    Rejoined {
        /// The room.
        room: RoomId,
        /// Its members now.
        members: Vec<Member>,
        /// Whether some missed messages were trimmed already: show a gap.
        truncated: bool,
    },
    /// Someone joined or left a room.
    Presence {
        /// The room.
        room: RoomId,
        /// Join or leave.
        event: PresenceEvent,
        /// Who.
        member: Member,
    },
    /// A WebRTC signal from another member.
    Signal {
        /// The room.
        room: RoomId,
        /// The sending connection.
        from: ConnId,
        /// The sending user.
        user: User,
        /// What the payload is.
        kind: SignalKind,
        /// The payload.
        data: serde_json::Value,
    },
    /// The media node's SDP answer to [`Client::call_join`](crate::Client::call_join).
    CallAnswer {
        /// The room.
        room: RoomId,
        /// The SDP answer.
        sdp: String,
    },
    /// The room's call moved to another media node: join it again with a
    /// fresh offer.
    CallMoved {
        /// The room.
        room: RoomId,
    },
    /// An error frame about none of the client's requests: a refused
    /// signal, a refused `refresh`, a room that could not be joined again
    /// after a reconnect.
    Error(ErrorFrame),
    /// An `ack` or `error` for a message id this client is not waiting
    /// for: a gateway that answers what was never asked, or twice.
    Unmatched(ServerFrame),
    /// The token source failed; the client goes on with the token it has,
    /// and tries again at the next connect.
    TokenFailed(TokenError),
    /// The client stopped for good; no event follows.
    Stopped(Stop),
}

/// Why a client stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// [`Client::close`](crate::Client::close) was called, or every handle dropped.
    Closed,
    /// The gateway closed the connection, or refused a new one, with a
    /// terminal code (4000–4099: 4002 replaced by a newer connection of the
    /// user, 4003 too many invalid frames, 4004 too many connections of the
    /// user, …); reconnecting would not help.
    Terminal(u16),
    /// A gateway refused the token for good: a fixed token, or a token
    /// function whose fresh token was refused too.
    Refused(String),
    /// [`Options::max_attempts`](crate::Options::max_attempts) attempts failed in a row; the last error.
    GaveUp(String),
}

/// What the client hears, in order; `None` once it has stopped.
#[derive(Debug)]
pub struct Events {
    pub(crate) receiver: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` after [`Event::Stopped`](crate::Event::Stopped).
    pub async fn next(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }
}
