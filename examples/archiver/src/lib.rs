//! The archiver: an example of a new kind of service added to a running
//! cavlo without changing or restarting anything else. It keeps every
//! room's full chat log in append-only files ([`archive`]), beyond the
//! bounded backlog that history serves.
//!
//! * [`config`]: settings and defaults.
//! * [`archive`]: the per-room files, each message written once.
//! * [`metrics`]: what the archiver counts for Prometheus.
//!
//! It reads the chat stream, the one place every accepted message is
//! stored, through its own durable JetStream consumer, so JetStream keeps
//! its place: after a restart it goes on from there and catches up on what
//! was stored meanwhile, as long as the backlog still holds it. A batch is
//! written and flushed to disk before it is acknowledged, and a message
//! delivered again is recognised by its room seq, so nothing is lost or
//! written twice. It needs a NATS user that may read the stream and manage
//! its own consumer, nothing else (docs/operations.md, "Adding a service").

pub mod archive;
pub mod config;
pub mod metrics;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, Message};
use futures_util::StreamExt;
use schemas::client::ChatMessage;
use schemas::id::Seq;
use schemas::subject;

use crate::archive::{Archive, ArchiveError};
use crate::config::ArchiverConfig;
use crate::metrics::ArchiverMetrics;

/// The archiver could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The durable consumer could not be created.
    #[error("cannot create the archiver's consumer: {0}")]
    Consumer(#[from] consumer::pull::BatchError),
    /// The consumer could not be created or found.
    #[error("cannot create the archiver's consumer: {0}")]
    Create(#[from] jetstream::stream::ConsumerError),
    /// The archive could not be written; what was read stays unacknowledged
    /// and comes again after a restart.
    #[error("cannot write the archive: {0}")]
    Archive(#[from] ArchiveError),
}

/// How long one read waits for messages when the stream has none new.
const READ_WAIT: Duration = Duration::from_secs(1);

/// The longest wait before reading again after a read failed.
const RETRY_WAIT: Duration = Duration::from_secs(2);

/// How long JetStream waits for a batch's acknowledgement before sending it
/// again: far more than writing and flushing a batch takes.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// An archiver whose consumer and directory are in place.
pub struct Running {
    consumer: PullConsumer,
    /// Shared with the blocking task that writes each batch.
    archive: Arc<Mutex<Archive>>,
    batch: usize,
    metrics: ArchiverMetrics,
}

/// Ready when NATS is connected and the chat stream exists.
pub fn readiness(client: &async_nats::Client) -> bootstrap::health::Check {
    bootstrap::health::streams_ready(client, &[subject::CHAT_STREAM])
}

/// Creates (or finds) the durable consumer and opens the archive directory.
pub async fn start(
    client: async_nats::Client,
    config: ArchiverConfig,
    metrics: &bootstrap::metrics::Metrics,
) -> Result<Running, RunError> {
    let js = jetstream::new(client);
    let batch = config.batch.max(1);
    let consumer_config = consumer::pull::Config {
        durable_name: Some(config.durable.clone()),
        description: Some("cavlo archiver: every room's full chat log".into()),
        deliver_policy: consumer::DeliverPolicy::All,
        // Acknowledging a batch's last message acknowledges the batch.
        ack_policy: consumer::AckPolicy::All,
        ack_wait: ACK_WAIT,
        max_ack_pending: i64::try_from(batch * 4).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let consumer = bootstrap::nats::set_up("creating the archiver's consumer", || {
        js.create_consumer_on_stream(consumer_config.clone(), subject::CHAT_STREAM)
    })
    .await?;
    let archive = Archive::open(&config.dir, config.max_open_files)?;
    tracing::info!(dir = %config.dir.display(), durable = config.durable, "archiver ready");
    Ok(Running {
        consumer,
        archive: Arc::new(Mutex::new(archive)),
        batch,
        metrics: ArchiverMetrics::register(metrics),
    })
}

impl Running {
    /// Archives the stream until `shutdown` resolves; a batch being written
    /// is finished first. Returns an error only if the archive cannot be
    /// written.
    pub async fn run(self, shutdown: impl Future) -> Result<(), RunError> {
        tokio::pin!(shutdown);
        loop {
            let read = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                read = self.read() => read,
            };
            match read {
                Ok(messages) => self.write(messages).await?,
                Err(err) => {
                    // NATS away, or the stream's leader moving: read again
                    // once it is back; nothing was acknowledged.
                    tracing::warn!(cause = %err, "reading the chat stream failed");
                    tokio::time::sleep(bootstrap::backoff::jittered(RETRY_WAIT)).await;
                }
            }
        }
    }

    /// Up to one batch of messages, or none after [`READ_WAIT`].
    async fn read(&self) -> Result<Vec<Message>, consumer::pull::BatchError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(self.batch)
            .expires(READ_WAIT)
            .messages()
            .await?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => messages.push(message),
                // What came before it is still good to write.
                Err(err) => {
                    tracing::warn!(cause = %err, "a read ended early");
                    break;
                }
            }
        }
        Ok(messages)
    }

    /// Writes `messages` to their rooms' files, flushes them to disk, then
    /// acknowledges the batch.
    async fn write(&self, messages: Vec<Message>) -> Result<(), RunError> {
        let Some(last) = messages.last() else {
            return Ok(());
        };
        let chats: Vec<(ChatMessage, Seq)> = messages
            .iter()
            .filter_map(|message| match rmp_serde::from_slice(&message.payload) {
                // A missing or unreadable header counts as "none before", so
                // that no gap is reported that cannot be shown.
                Ok(chat) => Some((
                    chat,
                    bootstrap::nats::previous_seq(message.headers.as_ref()).unwrap_or(Seq(0)),
                )),
                Err(err) => {
                    tracing::warn!(subject = %message.subject, cause = %err, "not a chat message; skipped");
                    self.metrics.malformed();
                    None
                }
            })
            .collect();
        let (archive, metrics) = (self.archive.clone(), self.metrics.clone());
        tokio::task::spawn_blocking(move || {
            let mut archive = archive.lock().unwrap_or_else(|e| e.into_inner());
            for (chat, previous) in &chats {
                let appended = archive.append(chat, *previous)?;
                if let archive::Appended::AfterGap { previous } = appended {
                    tracing::warn!(room = %chat.room, seq = %chat.seq, %previous, "messages up to the previous seq left the backlog before they were archived");
                }
                metrics.appended(appended);
            }
            archive.sync()
        })
        .await
        .expect("writing the archive does not panic")?;
        if let Ok(info) = last.info() {
            self.metrics
                .pending
                .set(i64::try_from(info.pending).unwrap_or(i64::MAX));
        }
        // A lost acknowledgement only means the batch comes again, and its
        // messages are recognised as archived.
        if let Err(err) = last.ack().await {
            tracing::warn!(cause = %err, "acknowledging a batch failed; it will come again");
        }
        Ok(())
    }
}
