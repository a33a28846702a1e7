//! The chat stream's configuration, which history owns.

use async_nats::jetstream::{self, stream};
use schemas::subject;

use crate::config::HistoryConfig;

/// The stream could not be created or updated.
pub type EnsureStreamError = jetstream::context::CreateStreamError;

/// The stream configuration for `config`. Trimming is per room
/// (`max_messages_per_subject`), so one busy room never pushes out another
/// room's backlog; `max_bytes` bounds the whole. The stream republishes
/// every message it stores to the room's delivery subject, so gateways get
/// it without the moderator publishing it a second time.
pub fn chat_stream(config: &HistoryConfig) -> stream::Config {
    stream::Config {
        name: subject::CHAT_STREAM.into(),
        description: Some("cavlo chat backlogs, one subject per room".into()),
        subjects: vec![subject::CHAT_STORE_ALL.into()],
        max_messages_per_subject: config.backlog_size,
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        num_replicas: config.replicas,
        duplicate_window: config.duplicate_window,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subject::CHAT_STORE_ALL.into(),
            destination: subject::CHAT_REPUBLISH.into(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// Creates the stream, or brings an existing one to `config`.
pub async fn ensure(
    js: &jetstream::Context,
    config: &HistoryConfig,
) -> Result<(), EnsureStreamError> {
    js.create_or_update_stream(chat_stream(config)).await?;
    Ok(())
}
