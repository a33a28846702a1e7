//! Calls through a media node: what gateways and media nodes tell each
//! other, encoded as MessagePack with [`crate::event::encode`].
//!
//! A room's call lives on one media node at a time, recorded in
//! [`CALLS_BUCKET`](crate::subject::CALLS_BUCKET). A gateway sends a
//! connection's [`CallJoin`] to the node it believes holds the room's call
//! (or the least loaded one, when none does); the node checks the room's
//! placement and the connection's membership, and answers with a
//! [`CallReply`]. The browser's later renegotiations (tracks of members who
//! arrive or leave) go over the call's data channel, between the browser and
//! the node only.

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;
use crate::id::{ConnId, GatewayId, MediaNodeId, RoomId, UserId};

/// A media node's periodic sign of life and load: gateways choose where a
/// new call goes by it, and move the calls of a node that stops sending it
/// or says it is draining.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaHeartbeat {
    /// The node.
    pub node: MediaNodeId,
    /// Participants connected to the node's calls: its load.
    pub participants: u32,
    /// The node is stopping: it takes no new call, and its calls move.
    pub draining: bool,
}

/// A gateway asks a media node to join a connection to its room's call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallJoin {
    /// The room whose call to join.
    pub room: RoomId,
    /// The joining connection; the node checks it is a member of the room.
    pub conn: ConnId,
    /// Its user.
    pub user: UserId,
    /// The gateway holding the connection.
    pub gateway: GatewayId,
    /// Whether the connection may send media (its token says so); a
    /// viewer's offer that sends anything is refused.
    pub publish: bool,
    /// The browser's SDP offer.
    pub offer: String,
}

/// A media node's answer to a [`CallJoin`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallReply {
    /// Joined: the node's SDP answer for the browser.
    Answer {
        /// The SDP answer.
        sdp: String,
        /// The revision of the calls bucket entry by which the node holds
        /// the room's call: a later entry naming another node means the
        /// call was taken over (the gateway then moves the connection). 0
        /// from a node that does not say.
        #[serde(default)]
        placed: u64,
    },
    /// The room's call is on another live node: ask it there.
    Elsewhere {
        /// The node holding the call.
        node: MediaNodeId,
    },
    /// Not joined, for a reason the client is told.
    Refused {
        /// What went wrong, as the client sees it.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
}

/// A gateway tells the node that a connection left a call: it hung up,
/// left the room, or closed. Published, not requested: the node also drops a
/// participant whose media stops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLeave {
    /// The room.
    pub room: RoomId,
    /// The connection that left.
    pub conn: ConnId,
}
