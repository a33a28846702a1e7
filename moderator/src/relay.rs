//! Relaying WebRTC signals between two members of a room. Signals are never
//! stored: they go to the gateway that holds the target's connection.

use schemas::client::{Member, SignalKind};
use schemas::code::ErrorCode;
use schemas::event::{self, SignalDelivery, Verdict};
use schemas::id::{ConnId, RoomId};
use schemas::subject;

use crate::roster::{self, Roster};

/// A signal from one member of a room to another, as the gateway sent it.
#[derive(Debug)]
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

/// Hands `signal` to the target's gateway if sender and target are both
/// members of the room.
pub async fn relay(roster: &Roster, from: Member, signal: Signal) -> Verdict {
    let members = match roster.membership.members(&signal.room).await {
        Ok(members) => members,
        Err(err) => return roster::failed(&signal.room, err),
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
    match roster
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
            Verdict::unavailable("signal not relayed")
        }
    }
}
