//! A room's tail: its last stored chat message, as the chat stream's
//! leader knows it.
//!
//! The moderator stores a room's next message right after its tail, and
//! history reads a room's backlog up to it. Both ask the leader: a direct
//! get may be answered by a replica that is behind.

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::{self, stream};
use schemas::client::ChatMessage;
use schemas::event;
use schemas::id::{RoomId, Seq};
use schemas::subject;

/// A room's last stored chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomTail {
    /// Its room seq.
    pub seq: Seq,
    /// Its stream sequence.
    pub stream_seq: u64,
    /// The stream sequence of the room's message before it, which the
    /// moderator expected when it stored this one; 0 when this one was
    /// the room's first retained message (or was stored without the
    /// expectation).
    pub prev_stream_seq: u64,
}

/// Reading a room's tail failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadTailError {
    /// The stream's leader did not answer, or answered with an error.
    #[error("cannot read the room's last message from the chat stream's leader: {0}")]
    Leader(#[from] stream::LastRawMessageError),
    /// The room's last message is not a chat message.
    #[error("the room's last message is unreadable: {0}")]
    Malformed(#[from] event::EventDecodeError),
}

/// `room`'s tail, or `None` when the room has no retained message.
pub async fn read(
    js: &jetstream::Context,
    room: &RoomId,
) -> Result<Option<RoomTail>, ReadTailError> {
    // This only checks the name, a valid constant: it sends nothing and
    // cannot fail.
    let stream = js
        .get_stream_no_info(subject::CHAT_STREAM)
        .await
        .expect("the chat stream's name is valid");
    match stream
        .get_last_raw_message_by_subject(&subject::chat_store(room))
        .await
    {
        Ok(last) => Ok(Some(RoomTail {
            seq: event::decode::<ChatMessage>(&last.payload)?.seq,
            stream_seq: last.sequence,
            prev_stream_seq: last
                .headers
                .get(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE)
                .and_then(|value| value.as_str().parse().ok())
                .unwrap_or(0),
        })),
        Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(err.into()),
    }
}
