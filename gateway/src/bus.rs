//! Requests from the gateway to the moderator and history over NATS.

use std::sync::Arc;
use std::time::Duration;

use async_nats::RequestErrorKind;
use async_nats::StatusCode;
use prometheus_client::metrics::histogram::Histogram;
use schemas::client::Member;
use schemas::event::{
    self, Action, Backlog, BacklogReply, BacklogRequest, ModerationReply, ModerationRequest,
    Verdict,
};
use schemas::id::{ClientMsgId, GatewayId, ModeratorId, RoomId, Seq};
use schemas::subject;

use crate::chat_acks::{Answer, ChatSlot};
use crate::routing::Moderators;

/// A chat's wait for its answer when the NATS client has no request
/// timeout (bootstrap always sets one).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

impl From<event::EventDecodeError> for BusError {
    fn from(_: event::EventDecodeError) -> Self {
        BusError::Malformed
    }
}

/// The gateway's side of the bus.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    gateway: GatewayId,
    /// Under which moderators reply to chat (see [`crate::chat_acks`]).
    chat_replies: String,
    /// How long a chat waits for its answer: the client's request timeout.
    request_timeout: Duration,
    moderators: Arc<Moderators>,
    backlog_seconds: Histogram,
}

impl Bus {
    /// Requests go out on `client` in the name of `gateway`.
    /// `backlog_seconds` records how long each backlog query waits.
    pub fn new(client: async_nats::Client, gateway: GatewayId, backlog_seconds: Histogram) -> Self {
        Self {
            chat_replies: format!("{}.chat", client.new_inbox()),
            request_timeout: client.timeout().unwrap_or(DEFAULT_REQUEST_TIMEOUT),
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

    /// Asks a moderator to admit `action` from `from`; for anything but
    /// chat (see [`Bus::chat`]).
    ///
    /// The request goes to `moderator`, the connection's sticky one: `None`
    /// sends to the queue group, and the answer sets it. If the chosen one is
    /// gone (no responders), the request goes to the group instead.
    pub async fn moderate(
        &self,
        moderator: &mut Option<ModeratorId>,
        from: &Member,
        action: Action,
    ) -> Result<Verdict, BusError> {
        let payload = self.request(from, action);
        let target = moderator.clone();
        let subject = moderate_subject(target.as_ref());
        let result = match (self.client.request(subject, payload.clone()).await, target) {
            (Err(err), Some(gone)) if err.kind() == RequestErrorKind::NoResponders => {
                self.forget(&gone, moderator);
                self.client.request(subject::MODERATE, payload).await
            }
            (other, _) => other,
        };
        let reply: ModerationReply = match result {
            Ok(msg) => event::decode(&msg.payload)?,
            Err(err) => {
                *moderator = None;
                return Err(err.into());
            }
        };
        *moderator = Some(reply.moderator);
        Ok(reply.verdict)
    }

    /// Sends chat `id` to the moderator that stores `room`
    /// ([`crate::routing`]), or while none is known to the connection's
    /// sticky `moderator` (so its rate limit is counted in one place), or
    /// to the queue group, and waits for the answer in `slot`: its
    /// delivery, or the moderator's reply (see [`crate::chat_acks`]). A
    /// target that is gone (no responders) is forgotten and the group
    /// asked instead. A timed-out chat may yet have been stored; the
    /// client's resend is idempotent.
    pub async fn chat(
        &self,
        moderator: &mut Option<ModeratorId>,
        from: &Member,
        slot: &ChatSlot,
        room: &RoomId,
        id: &ClientMsgId,
        text: &str,
    ) -> Result<Verdict, BusError> {
        let mut target = self.moderators.owner(room).or_else(|| moderator.clone());
        loop {
            let mut waiting = slot.wait_for(room.clone(), id.clone());
            let action = Action::Chat {
                room: room.clone(),
                id: id.clone(),
                text: text.to_owned(),
                acked_by_delivery: true,
            };
            let subject = moderate_subject(target.as_ref());
            let reply = subject::chat_reply(&self.chat_replies, &from.conn_id, waiting.attempt());
            self.client
                .publish_with_reply(subject, reply, self.request(from, action))
                .await
                .map_err(|_| BusError::TimedOut)?;
            let answer = tokio::time::timeout(self.request_timeout, &mut waiting.answer).await;
            let reply = match answer {
                Ok(Ok(Answer::Delivered { seq, text: stored })) => {
                    return Ok(Verdict::Stored {
                        seq: Some(seq),
                        text: (stored != text).then_some(stored),
                    });
                }
                Ok(Ok(Answer::Replied(reply))) => reply,
                Ok(Err(_)) | Err(_) => return Err(BusError::TimedOut),
            };
            if reply.status == Some(StatusCode::NO_RESPONDERS) {
                match target.take() {
                    Some(gone) => {
                        self.forget(&gone, moderator);
                        continue;
                    }
                    None => return Err(BusError::NoResponders),
                }
            }
            let reply: ModerationReply = event::decode(&reply.payload)?;
            return Ok(reply.verdict);
        }
    }

    /// The subject prefix moderators reply to this gateway's chat under.
    pub fn chat_replies(&self) -> &str {
        &self.chat_replies
    }

    /// `gone` did not answer (no responders): no room is routed to it any
    /// more, and it is no longer the connection's sticky `moderator`.
    fn forget(&self, gone: &ModeratorId, moderator: &mut Option<ModeratorId>) {
        self.moderators.forget(gone);
        if moderator.as_ref() == Some(gone) {
            *moderator = None;
        }
    }

    fn request(&self, from: &Member, action: Action) -> bytes::Bytes {
        event::encode(&ModerationRequest {
            from: from.clone(),
            gateway: self.gateway.clone(),
            action,
        })
        .into()
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

/// Where a moderation request for `target` goes: that moderator's own
/// subject, or with none the queue group.
fn moderate_subject(target: Option<&ModeratorId>) -> String {
    target.map_or_else(|| subject::MODERATE.to_owned(), subject::moderate_direct)
}
