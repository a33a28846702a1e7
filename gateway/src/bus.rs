//! Requests from the gateway to the moderator and history over NATS.

use std::sync::Arc;

use async_nats::RequestErrorKind;
use prometheus_client::metrics::histogram::Histogram;
use schemas::client::Member;
use schemas::event::{
    self, Action, Backlog, BacklogReply, BacklogRequest, ModerationReply, ModerationRequest,
    Verdict,
};
use schemas::id::{GatewayId, ModeratorId, RoomId, Seq};
use schemas::subject;

use crate::routing::Moderators;

/// A request got no usable answer. Clients see `unavailable` for every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Nobody listens: the service is not running.
    #[error("no service is listening")]
    NoResponders,
    /// The service did not answer within the request timeout, or NATS is down.
    #[error("the service did not answer in time")]
    TimedOut,
    /// The service answered that it cannot serve the request now.
    #[error("the service is unavailable")]
    Unavailable,
    /// The answer could not be decoded.
    #[error("malformed answer")]
    Malformed,
}

impl From<async_nats::RequestError> for BusError {
    fn from(err: async_nats::RequestError) -> Self {
        match err.kind() {
            RequestErrorKind::NoResponders => BusError::NoResponders,
            _ => BusError::TimedOut,
        }
    }
}

impl From<event::DecodeError> for BusError {
    fn from(_: event::DecodeError) -> Self {
        BusError::Malformed
    }
}

/// The gateway's side of the bus.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    gateway: GatewayId,
    moderators: Arc<Moderators>,
    backlog_seconds: Histogram,
}

impl Bus {
    /// Requests go out on `client` in the name of `gateway`.
    /// `backlog_seconds` records how long each backlog query waits.
    pub fn new(client: async_nats::Client, gateway: GatewayId, backlog_seconds: Histogram) -> Self {
        Self {
            client,
            gateway,
            moderators: Arc::default(),
            backlog_seconds,
        }
    }

    /// The live moderators, kept up to date from their heartbeats.
    pub fn moderators(&self) -> &Moderators {
        &self.moderators
    }

    /// The NATS client requests go out on.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Asks a moderator to admit `action` from `from`.
    ///
    /// Chat goes to the moderator that stores its room ([`crate::routing`]).
    /// Other requests go to `moderator`, the connection's sticky one: `None`
    /// sends to the queue group, and the answer sets it. If the chosen one is
    /// gone (no responders), the request goes to the group instead; after a
    /// timeout the next request does, since a timed-out chat may yet have
    /// been stored and must not be sent twice here (the client's resend is
    /// idempotent).
    pub async fn moderate(
        &self,
        moderator: &mut Option<ModeratorId>,
        from: &Member,
        action: Action,
    ) -> Result<Verdict, BusError> {
        let chat_room = match &action {
            Action::Chat { room, .. } => Some(room.clone()),
            _ => None,
        };
        let payload: bytes::Bytes = event::encode(&ModerationRequest {
            from: from.clone(),
            gateway: self.gateway.clone(),
            action,
        })
        .into();
        let target = chat_room
            .as_ref()
            .and_then(|room| self.moderators.owner(room))
            .or_else(|| moderator.clone());
        let subject = match target.as_ref() {
            Some(id) => subject::moderate_direct(id),
            None => subject::MODERATE.to_owned(),
        };
        let result = match (self.client.request(subject, payload.clone()).await, target) {
            (Err(err), Some(gone)) if err.kind() == RequestErrorKind::NoResponders => {
                self.moderators.forget(&gone);
                if moderator.as_ref() == Some(&gone) {
                    *moderator = None;
                }
                self.client.request(subject::MODERATE, payload).await
            }
            (other, _) => other,
        };
        // Only the connection's own requests choose its sticky moderator:
        // a chat's answer comes from its room's moderator, and following it
        // would spread the connection's signal budgets over several.
        let routed_chat = chat_room.is_some();
        let reply: ModerationReply = match result {
            Ok(msg) => event::decode(&msg.payload)?,
            Err(err) => {
                if !routed_chat {
                    *moderator = None;
                }
                return Err(err.into());
            }
        };
        if !routed_chat {
            *moderator = Some(reply.moderator);
        }
        Ok(reply.verdict)
    }

    /// Asks history for `room`'s backlog.
    pub async fn backlog(
        &self,
        room: &RoomId,
        since: Option<Seq>,
        limit: usize,
    ) -> Result<Backlog, BusError> {
        let request = BacklogRequest {
            room: room.clone(),
            since,
            limit,
        };
        let asked = std::time::Instant::now();
        let answer = self
            .client
            .request(subject::HISTORY_BACKLOG, event::encode(&request).into())
            .await;
        self.backlog_seconds.observe(asked.elapsed().as_secs_f64());
        match event::decode(&answer?.payload)? {
            BacklogReply::Backlog(backlog) => Ok(backlog),
            BacklogReply::Unavailable => Err(BusError::Unavailable),
        }
    }
}
