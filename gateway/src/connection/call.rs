//! `call_join` and `call_leave`: a room's call through the media service,
//! and telling the connection when its call must move to another node.
//!
//! The gateway checks only that the connection joined the room and is
//! within its rate; the node checks membership against the rooms bucket
//! (the moderators' word) and records where the room's call lives. A join
//! goes first to the node that holds the connection's call, else to the
//! least loaded node; a node that holds the room's call elsewhere says so,
//! and one that is full, draining or gone is passed over for the next.

use std::collections::HashSet;

use hyper_tungstenite::HyperWebsocketStream;
use schemas::call::{CallJoin, CallReply};
use schemas::client::{ErrorFrame, ServerFrame};
use schemas::code::ErrorCode;
use schemas::id::{MediaNodeId, RoomId};
use tokio::time::Instant;

use super::{Connection, Exit, Failure};
use crate::media::Placed;

/// Nodes one `call_join` may be sent to: enough for a hop to the room's
/// node and a few that are full or gone.
const MAX_HOPS: usize = 4;

impl Connection {
    /// Joins the room's call on a media node with the browser's offer.
    pub(super) async fn call_join(
        &mut self,
        room: RoomId,
        sdp: String,
    ) -> Result<ServerFrame, Failure> {
        let fail = |code, message: &str| ErrorFrame::new(code, message).in_room(&room);
        if !self.rooms.contains(&room) {
            return Err(fail(ErrorCode::NotInRoom, "join the room before its call"));
        }
        let rate = self.shared.config.call_join_rate();
        if !self.call_joins.try_take(rate, Instant::now()) {
            return Err(fail(ErrorCode::RateLimited, "too many call joins; wait"));
        }
        let view = self.shared.bus.media().view();
        if !view.available() {
            return Err(fail(ErrorCode::Unavailable, "no media service is running"));
        }
        let join = CallJoin {
            room: room.clone(),
            conn: self.requester.member.conn_id.clone(),
            user: self.requester.member.user.id.clone(),
            gateway: self.shared.id.clone(),
            publish: !self.viewer,
            offer: sdp,
        };
        let mut tried = HashSet::new();
        let untried = |tried: &HashSet<MediaNodeId>| {
            view.by_load()
                .into_iter()
                .find(|node| !tried.contains(node))
        };
        // The node holding its call, else the one the calls bucket names
        // (so a call moved off a node is not taken back by the least
        // loaded one), else the least loaded.
        let mut next = self
            .calls
            .get(&room)
            .map(|call| &call.node)
            .filter(|node| view.usable(node))
            .or_else(|| view.holder(&room))
            .cloned()
            .or_else(|| untried(&tried));
        for _ in 0..MAX_HOPS {
            let Some(node) = next.take() else {
                break;
            };
            tried.insert(node.clone());
            match self.shared.bus.join_call(&node, &join).await {
                Ok(CallReply::Answer { sdp, placed }) => {
                    let call = Placed {
                        node: node.clone(),
                        revision: placed,
                    };
                    if let Some(old) = self.calls.insert(room.clone(), call)
                        && old.node != node
                    {
                        self.shared
                            .bus
                            .leave_call(&old.node, room.clone(), join.conn.clone());
                    }
                    return Ok(ServerFrame::CallAnswer { room, sdp });
                }
                Ok(CallReply::Elsewhere { node: holder }) if !tried.contains(&holder) => {
                    next = Some(holder);
                }
                Ok(CallReply::Refused {
                    code: ErrorCode::Unavailable,
                    message,
                }) => {
                    tracing::info!(%node, %message, "a media node could not take the call");
                    next = untried(&tried);
                }
                Ok(CallReply::Refused { code, message }) => return Err(fail(code, &message)),
                Ok(CallReply::Elsewhere { node: holder }) => {
                    tracing::warn!(%node, %holder, "media nodes send the call to each other");
                    next = untried(&tried);
                }
                Err(err) => {
                    tracing::warn!(%node, cause = %err, "media node did not answer a join");
                    next = untried(&tried);
                }
            }
        }
        Err(fail(
            ErrorCode::Unavailable,
            "no media node could take the call; retry",
        ))
    }

    /// Hangs up the room's call, if the connection is in it.
    pub(super) fn call_leave(&mut self, room: &RoomId) {
        if let Some(call) = self.calls.remove(room) {
            self.shared.bus.leave_call(
                &call.node,
                room.clone(),
                self.requester.member.conn_id.clone(),
            );
        }
    }

    /// Tells the connection `call_moved` for each call whose node died or
    /// drains, or whose room another node took over: its next `call_join`
    /// goes to a node that can hold the call.
    pub(super) async fn move_calls(
        &mut self,
        socket: &mut HyperWebsocketStream,
    ) -> Result<(), Exit> {
        let view = self.shared.bus.media().view();
        let moved: Vec<RoomId> = self
            .calls
            .iter()
            .filter(|(room, call)| view.must_move(room, &call.node, call.revision))
            .map(|(room, _)| room.clone())
            .collect();
        for room in moved {
            // A draining node waits for its participants to leave.
            self.call_leave(&room);
            tracing::info!(%room, "the call's media node is gone, draining or no longer holds it; moving");
            self.reply(socket, ServerFrame::CallMoved { room }).await?;
        }
        Ok(())
    }
}
