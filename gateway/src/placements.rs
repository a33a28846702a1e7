//! Following the calls bucket: which media node holds each room's call, as
//! the nodes recorded it (see the media service's placement), so that a
//! connection whose call was taken over by another node moves there
//! ([`crate::media::NodeView::must_move`]).
//!
//! A node takes a room's call over when it no longer hears the node that
//! held it. This gateway may still hear that node, and would otherwise
//! leave its connections there: the room's call split in two. A connection
//! compares each entry with the placement its own join was answered by, so
//! entries heard again do no harm: the watch first reads every current
//! entry, and a watch opened again starts after the last change heard, so
//! no takeover is missed while it was closed. It opens once a media node
//! is heard: without one the bucket may not exist yet.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use schemas::id::MediaNodeId;
use schemas::subject;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::media::{MediaNodes, Placed};

/// How long to wait before opening the watch again after it failed.
const RETRY: Duration = Duration::from_secs(2);

/// Why the watch could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// The bucket cannot be found (no media node made it yet) or read.
    #[error("cannot open the calls bucket: {0}")]
    Bucket(#[from] jetstream::context::KeyValueError),
    /// The watch's consumer cannot be made.
    #[error("cannot watch the calls bucket: {0}")]
    Watch(#[from] kv::WatchError),
}

/// Records every change of the calls bucket in the bus's view of the media
/// nodes until `shutdown`.
pub async fn follow(bus: Bus, shutdown: CancellationToken) {
    let js = jetstream::new(bus.client().clone());
    let media = bus.media();
    let mut nodes = media.subscribe();
    // The last revision heard: a watch opened again starts after it.
    let mut heard = 0;
    loop {
        if !nodes.borrow_and_update().available() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = nodes.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let watch = match open(&js, heard).await {
            Ok(watch) => watch,
            Err(cause) => {
                tracing::debug!(%cause, "cannot watch the calls bucket yet; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = record(watch, media, &mut heard) => {
                tracing::warn!("the calls bucket's watch ended; watching it again");
            }
        }
    }
}

/// Opens the watch at the change after revision `heard` (every current
/// entry first, if none was heard).
async fn open(js: &jetstream::Context, heard: u64) -> Result<kv::Watch, OpenError> {
    let bucket = js.get_key_value(subject::CALLS_BUCKET).await?;
    Ok(match heard {
        0 => bucket.watch_with_history(">").await?,
        heard => bucket.watch_all_from_revision(heard + 1).await?,
    })
}

/// Records the watch's changes until it ends.
async fn record(mut watch: kv::Watch, media: &MediaNodes, heard: &mut u64) {
    while let Some(change) = watch.next().await {
        let entry = match change {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(cause = %err, "a calls bucket change not read");
                continue;
            }
        };
        *heard = (*heard).max(entry.revision);
        let Some(room) = subject::room_of_key(&entry.key) else {
            continue;
        };
        match entry.operation {
            kv::Operation::Put => media.placed(
                room,
                Placed {
                    node: MediaNodeId(String::from_utf8_lossy(&entry.value).into_owned()),
                    revision: entry.revision,
                },
            ),
            kv::Operation::Delete | kv::Operation::Purge => media.unplaced(&room),
        }
    }
}
