//! Requests from the gateway to the moderator and history over NATS.

use std::sync::Arc;
use std::time::Duration;

use async_nats::RequestErrorKind;
use prometheus_client::metrics::histogram::Histogram;
use schemas::call::{CallJoin, CallLeave, CallReply};
use schemas::client::Member;
use schemas::event::{
    self, Action, Backlog, BacklogReply, BacklogRequest, ModerationReply, ModerationRequest,
    Verdict,
};
use schemas::id::{ClientMsgId, ConnId, GatewayId, MediaNodeId, ModeratorId, RoomId, Seq};
use schemas::subject;

use crate::chat_acks::{self, ChatSlot, Settled};
use crate::media::MediaNodes;
use crate::routing::Moderators;

/// A chat's wait for its answer when the NATS client has no request
/// timeout (bootstrap always sets one).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request got no usable answer, with its cause. Clients see
/// `unavailable` for every kind; the log gets the cause.
#[derive(Debug)]
pub struct BusError {
    kind: BusErrorKind,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The kind, then the cause, as one line for the log.
impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for BusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl BusError {
    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: BusErrorKind,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            source: Some(Box::new(source)),
        }
    }

    /// What kind of answer was lacking.
    pub fn kind(&self) -> BusErrorKind {
        self.kind
    }
}

impl From<BusErrorKind> for BusError {
    fn from(kind: BusErrorKind) -> Self {
        Self { kind, source: None }
    }
}

/// What kind of answer a request lacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusErrorKind {
    /// Nobody listens: the service is not running.
    #[error("no service is listening")]
    NoResponders,
    /// The service did not answer within the request timeout.
    #[error("the service did not answer in time")]
    TimedOut,
    /// The request could not be sent: NATS is unreachable or the client
    /// closed.
    #[error("the request could not be sent")]
    NotSent,
    /// The service answered that it cannot serve the request now.
    #[error("the service is unavailable")]
    Unavailable,
    /// The answer could not be decoded.
    #[error("malformed answer")]
    Malformed,
}

impl From<async_nats::RequestError> for BusError {
    fn from(err: async_nats::RequestError) -> Self {
        let kind = match err.kind() {
            RequestErrorKind::NoResponders => BusErrorKind::NoResponders,
            RequestErrorKind::TimedOut => BusErrorKind::TimedOut,
            RequestErrorKind::InvalidSubject
            | RequestErrorKind::MaxPayloadExceeded
            | RequestErrorKind::Other => BusErrorKind::NotSent,
        };
        BusError::with_source(kind, err)
    }
}

impl From<event::EventDecodeError> for BusError {
    fn from(err: event::EventDecodeError) -> Self {
        BusError::with_source(BusErrorKind::Malformed, err)
    }
}

/// A connection as the bus sees it: who asks, the moderator its requests
/// stick to, and where its chat's answer arrives.
#[derive(Debug)]
pub struct Requester {
    /// Who asks.
    pub member: Member,
    /// The sticky moderator: `None` sends to the queue group, and each
    /// answer sets it, so that a connection's rate limits are counted in
    /// one place.
    pub moderator: Option<ModeratorId>,
    /// The wait for the chat under way (see [`crate::chat_acks`]).
    chat: ChatSlot,
}

impl Requester {
    /// `member`, with no moderator yet and no chat under way.
    pub fn new(member: Member) -> Self {
        Self {
            member,
            moderator: None,
            chat: ChatSlot::default(),
        }
    }

    /// Where its chat's answer arrives: the hub answers it from deliveries
    /// and replies (see [`crate::hub::MemberHandle`]).
    pub fn chat_slot(&self) -> &ChatSlot {
        &self.chat
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
    media: Arc<MediaNodes>,
    backlog_seconds: Histogram,
}

impl Bus {
    /// Requests go out on `client` in the name of `gateway`.
    /// `backlog_seconds` records how long each backlog query waits.
    pub fn new(client: async_nats::Client, gateway: GatewayId, backlog_seconds: Histogram) -> Self {
        Self {
            chat_replies: subject::chat_reply_prefix(&client.new_inbox()),
            request_timeout: client.timeout().unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            client,
            gateway,
            moderators: Arc::default(),
            media: Arc::default(),
            backlog_seconds,
        }
    }

    /// The live moderators, kept up to date from their heartbeats.
    pub fn moderators(&self) -> &Moderators {
        &self.moderators
    }

    /// How long a request waits for its answer.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The live media nodes, kept up to date from their heartbeats.
    pub fn media(&self) -> &MediaNodes {
        &self.media
    }

    /// Asks media node `node` to join a connection to a room's call.
    pub async fn join_call(
        &self,
        node: &MediaNodeId,
        join: &CallJoin,
    ) -> Result<CallReply, BusError> {
        let answer = self
            .client
            .request(subject::media_join(node), event::encode(join).into())
            .await?;
        Ok(event::decode(&answer.payload)?)
    }

    /// Tells media node `node` that `conn` left `room`'s call. Sent in the
    /// background: the node also drops a participant whose media stops.
    pub fn leave_call(&self, node: &MediaNodeId, room: RoomId, conn: ConnId) {
        let client = self.client.clone();
        let subject = subject::media_leave(node);
        let payload = event::encode(&CallLeave { room, conn });
        tokio::spawn(async move {
            if let Err(err) = client.publish(subject, payload.into()).await {
                tracing::warn!(cause = %err, "call leave not sent");
            }
        });
    }

    /// The NATS client requests go out on.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Asks a moderator to admit `action` from `from`; for anything but
    /// chat (see [`Bus::chat`]).
    ///
    /// The request goes to the requester's sticky moderator, and the answer
    /// sets it. If that one is gone (no responders), the request goes to
    /// the group instead.
    pub async fn moderate(
        &self,
        from: &mut Requester,
        action: Action,
    ) -> Result<Verdict, BusError> {
        let payload = self.request(&from.member, action);
        let moderator = &mut from.moderator;
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
    /// ([`crate::routing`]), or while none is known to the requester's
    /// sticky moderator, or to the queue group, and waits for the answer
    /// (see [`chat_acks::settle`]). A target that is gone (no responders)
    /// is forgotten and the group asked instead. A timed-out chat may yet
    /// have been stored; the client's resend is idempotent.
    pub async fn chat(
        &self,
        from: &mut Requester,
        room: &RoomId,
        id: &ClientMsgId,
        text: &str,
    ) -> Result<Verdict, BusError> {
        let mut target = self
            .moderators
            .owner(room)
            .or_else(|| from.moderator.clone());
        loop {
            let mut waiting = from.chat.wait_for(room.clone(), id.clone());
            let action = Action::Chat {
                room: room.clone(),
                id: id.clone(),
                text: text.to_owned(),
                acked_by_delivery: true,
            };
            let subject = moderate_subject(target.as_ref());
            let reply =
                subject::chat_reply(&self.chat_replies, &from.member.conn_id, waiting.attempt());
            self.client
                .publish_with_reply(subject, reply, self.request(&from.member, action))
                .await
                .map_err(|err| BusError::with_source(BusErrorKind::NotSent, err))?;
            let answer = tokio::time::timeout(self.request_timeout, &mut waiting.answer)
                .await
                .ok()
                .and_then(Result::ok);
            match chat_acks::settle(answer, text, target.is_some()) {
                Settled::Answered(verdict) => return Ok(verdict),
                Settled::NoResponders => return Err(BusErrorKind::NoResponders.into()),
                Settled::TimedOut => return Err(BusErrorKind::TimedOut.into()),
                Settled::Malformed(err) => return Err(err.into()),
                Settled::Gone => {
                    if let Some(gone) = target.take() {
                        self.forget(&gone, &mut from.moderator);
                    }
                }
            }
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
            BacklogReply::Unavailable => Err(BusErrorKind::Unavailable.into()),
        }
    }
}

/// Where a moderation request for `target` goes: that moderator's own
/// subject, or with none the queue group.
fn moderate_subject(target: Option<&ModeratorId>) -> String {
    target.map_or_else(|| subject::MODERATE.to_owned(), subject::moderate_direct)
}
