//! Storing a room's chat messages with gap-free per-room sequence numbers.
//!
//! JetStream numbers messages per stream, not per room, so the writer keeps
//! the room's *tail* (the stream sequence and room seq of its last message,
//! [`bootstrap::room_tail`]) and publishes each message with
//! `Nats-Expected-Last-Subject-Sequence` set to that tail. If another
//! moderator wrote in between, JetStream refuses the publish, the writer
//! re-reads the tail and tries again: seqs stay gap-free and ordered however
//! many moderators run.
//!
//! A room with no retained message starts at the stream's last sequence + 1,
//! not at 1: a room whose backlog expired must never hand out a seq a client
//! has already seen.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use bootstrap::room_tail::{self, ReadTailError};
use bytes::Bytes;
use schemas::client::{ChatMessage, Member};
use schemas::event;
use schemas::id::{ClientMsgId, RoomId, Seq};
use schemas::subject;
use tokio::time::Instant;

use crate::metrics::ModeratorMetrics;
use crate::race::{self, Race};

/// How long a publish keeps retrying after losing the race for the room's
/// tail. A budget in time, not in attempts: a writer that just stored holds
/// a fresh tail and wins again while its queue lasts, so another moderator
/// writing the same room can lose many times in a row during a burst, yet
/// gets its turn within milliseconds once the burst is stored. Well within
/// the gateway's request timeout.
const TAIL_RACE_BUDGET: Duration = Duration::from_secs(1);

/// Storing a chat message failed; the client gets `unavailable` and may resend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// JetStream did not store the message.
    #[error("publish to JetStream failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    /// The room's tail could not be read.
    #[error(transparent)]
    Tail(#[from] ReadTailError),
    /// The chat stream's info, which gives a room with no retained message
    /// its first seq, could not be read.
    #[error("cannot read the chat stream: {0}")]
    Stream(#[from] jetstream::context::GetStreamError),
    /// A resend's original could not be read for its seq. The resend is
    /// not acked without one: the client is told to retry, and the retry
    /// reads it again.
    #[error("cannot read a resend's original: {0}")]
    Original(#[from] stream::RawMessageError),
    /// Other moderators kept winning the race for the tail.
    #[error("kept losing the race for the room's tail for {TAIL_RACE_BUDGET:?}")]
    Contended,
}

/// What became of a message given to [`RoomWriter::store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now under this seq; the stream delivers it.
    New(Seq),
    /// A resend of a message stored before: the original's seq (`None` if
    /// it has left the backlog already). Nothing is delivered.
    Duplicate(Option<Seq>),
}

/// A message that passed moderation, ready to be stored.
#[derive(Debug)]
pub struct Accepted {
    /// Who sent it.
    pub from: Member,
    /// The client's id for it.
    pub id: ClientMsgId,
    /// Sanitized text.
    pub text: String,
    /// Acceptance time, ms since the Unix epoch.
    pub ts: u64,
}

/// What the room's next message is stored after: its tail, or, with no
/// message retained, the floor its seqs go on from.
#[derive(Clone, Copy, Debug)]
struct Predecessor {
    /// Stream sequence of the room's last message, 0 when it has none.
    stream_seq: u64,
    /// That message's room seq (or the floor to start from).
    seq: Seq,
}

/// Writes one room's messages, one at a time, in arrival order.
pub struct RoomWriter {
    js: jetstream::Context,
    room: RoomId,
    store_subject: String,
    predecessor: Option<Predecessor>,
    metrics: ModeratorMetrics,
}

impl RoomWriter {
    /// A writer for `room`; it reads the tail on first use, and records
    /// its publishes in `metrics`.
    pub fn new(js: jetstream::Context, room: RoomId, metrics: ModeratorMetrics) -> Self {
        Self {
            js,
            metrics,
            store_subject: subject::chat_store(&room),
            room,
            predecessor: None,
        }
    }

    /// Stores `msg`, which the stream then delivers to gateways, unless it
    /// is a resend of a message stored before.
    pub async fn store(&mut self, msg: Accepted) -> Result<Stored, StoreError> {
        let dedupe_key = dedupe_key(&self.room, &msg);
        let mut chat = ChatMessage {
            room: self.room.clone(),
            seq: Seq(0),
            id: msg.id,
            from: msg.from,
            text: msg.text,
            ts: msg.ts,
        };
        let give_up = Instant::now() + TAIL_RACE_BUDGET;
        while Instant::now() < give_up {
            let predecessor = match self.predecessor {
                Some(predecessor) => predecessor,
                None => self.read_predecessor().await?,
            };
            chat.seq = predecessor.seq.next();
            // With no retained message the floor is not a message.
            let prev = if predecessor.stream_seq == 0 {
                0
            } else {
                predecessor.seq.0
            };
            let publish = PublishMessage::build()
                .payload(Bytes::from(event::encode(&chat)))
                .message_id(&dedupe_key)
                .header(subject::PREV_SEQ_HEADER, prev.to_string().as_str())
                .expected_last_subject_sequence(predecessor.stream_seq);
            let sent = Instant::now();
            let result = match self
                .js
                .send_publish(self.store_subject.clone(), publish)
                .await
            {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            self.metrics.store.observe(sent.elapsed().as_secs_f64());
            match result {
                Ok(ack) if ack.duplicate => {
                    return Ok(Stored::Duplicate(self.original_seq(ack.sequence).await?));
                }
                Ok(ack) => {
                    // Stored: the stream republishes it to the room's
                    // gateways (subject::CHAT_REPUBLISH); any they miss, they
                    // and their clients find in the backlog.
                    self.metrics.stored.inc();
                    self.predecessor = Some(Predecessor {
                        stream_seq: ack.sequence,
                        seq: chat.seq,
                    });
                    return Ok(Stored::New(chat.seq));
                }
                // Another writer stored a message for the room since the
                // tail was read. (A write of theirs still in flight,
                // `Race::InFlight`, fails the store: the client resends.)
                Err(err) if race::race(&err) == Some(Race::Lost) => {
                    self.metrics.tail_races.inc();
                    self.predecessor = None;
                }
                Err(err) => {
                    self.predecessor = None;
                    return Err(err.into());
                }
            }
        }
        Err(StoreError::Contended)
    }

    async fn read_predecessor(&mut self) -> Result<Predecessor, StoreError> {
        let predecessor = match room_tail::read(&self.js, &self.room).await? {
            Some(tail) => Predecessor {
                stream_seq: tail.stream_seq,
                seq: tail.seq,
            },
            // No seq is above its message's stream sequence, so the
            // stream's last one is at or past every seq the room had. Read
            // after the tail: a message the room got in between fails the
            // publish as a lost race, and the tail is read again.
            None => Predecessor {
                stream_seq: 0,
                seq: Seq(self.stream().await?.cached_info().state.last_sequence),
            },
        };
        self.predecessor = Some(predecessor);
        Ok(predecessor)
    }

    /// The seq of the message stored at `stream_seq`, which a resend
    /// duplicates; `None` once it has left the backlog, the one case where
    /// a resend is acked without its seq (docs/protocol.md).
    async fn original_seq(&self, stream_seq: u64) -> Result<Option<Seq>, StoreError> {
        let stream = self.stream().await?;
        match stream.get_raw_message(stream_seq).await {
            Ok(original) => match event::decode::<ChatMessage>(&original.payload) {
                Ok(chat) => Ok(Some(chat.seq)),
                // Not a chat message: nothing a retry would change, and the
                // stream holds nothing else, so this is a bug; logged.
                Err(err) => {
                    tracing::error!(cause = %err, room = %self.room, stream_seq, "a resend's original is malformed");
                    Ok(None)
                }
            },
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn stream(
        &self,
    ) -> Result<stream::Stream<stream::Info>, jetstream::context::GetStreamError> {
        self.js.get_stream(subject::CHAT_STREAM).await
    }
}

/// The JetStream deduplication id: one per user, room and client message id,
/// encoded as a JSON array so no user id can make two keys collide.
fn dedupe_key(room: &RoomId, msg: &Accepted) -> String {
    // A tuple of strings always serializes.
    serde_json::to_string(&(room, &msg.from.user.id, &msg.id)).expect("strings serialize")
}
