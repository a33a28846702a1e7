//! Archiver settings.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use bootstrap::service::{Common, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Everything the archiver binary reads (see [`bootstrap::config`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[nats]`, `[log]`, `[health]`
    #[serde(flatten)]
    pub common: Common,
    /// `[archiver]`
    pub archiver: ArchiverConfig,
}

/// Where the archive goes and how it reads the stream (`[archiver]`,
/// `CAVLO_ARCHIVER__…`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchiverConfig {
    /// Directory of the per-room files. Default `archive`.
    pub dir: PathBuf,
    /// Name of the durable JetStream consumer: it keeps the archiver's
    /// place in the stream across restarts. Two archivers with the same
    /// name would split the messages between them; give each its own name
    /// and directory. Default `cavlo-archiver`.
    pub durable: String,
    /// Messages read, written and acknowledged together (one fsync per
    /// room per batch). Default 256.
    pub batch: usize,
    /// Room files kept open at once; others are opened when their next
    /// message comes. Default 256.
    pub max_open_files: NonZeroUsize,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("archive"),
            durable: "cavlo-archiver".into(),
            batch: 256,
            max_open_files: NonZeroUsize::new(256).expect("not zero"),
        }
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &Common {
        &self.common
    }
}
