//! Which media node holds each room's call: one entry per room in the calls
//! bucket, naming the node, changed only by compare-and-set.
//!
//! A node takes a room's call when the room has no entry, or when the node
//! named there is dead or draining (by its heartbeats); otherwise it sends
//! the gateway there. Two nodes that try to take the same room at once both
//! write with the revision they read, so only one succeeds; the other reads
//! again and sends its gateway to the winner. A node deletes the entry when
//! the room's last participant leaves, with the revision it read, so a
//! takeover in between is never undone.

use async_nats::jetstream::{self, kv};
use schemas::id::{MediaNodeId, RoomId};
use schemas::subject;

/// Where a room's call is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// On this node (it was free, or this node took it over), by the
    /// entry of this revision.
    Mine(u64),
    /// On another live node.
    Elsewhere(MediaNodeId),
}

/// The calls bucket could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// Reading the room's entry failed.
    #[error("cannot read the room's call placement: {0}")]
    Read(#[from] kv::EntryError),
    /// Writing it failed for another reason than a lost race.
    #[error("cannot record the room's call placement: {0}")]
    Write(String),
    /// Every try lost a race (many nodes at once).
    #[error("the room's call placement kept changing")]
    Contended,
}

/// How often a claim reads and writes again after losing a race.
const TRIES: usize = 3;

/// The calls bucket, as one node uses it.
#[derive(Clone, Debug)]
pub struct Placement {
    kv: kv::Store,
    me: MediaNodeId,
}

impl Placement {
    /// Opens (or creates) the calls bucket for node `me`.
    pub async fn open(
        js: &jetstream::Context,
        me: MediaNodeId,
        replicas: usize,
    ) -> Result<Self, jetstream::context::CreateKeyValueError> {
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: subject::CALLS_BUCKET.into(),
                description: "cavlo calls: the media node holding each room's call".into(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        Ok(Self { kv, me })
    }

    /// Takes `room`'s call for this node, unless a node that `usable`
    /// accepts (alive, not draining) holds it.
    pub async fn claim(
        &self,
        room: &RoomId,
        usable: impl Fn(&MediaNodeId) -> bool,
    ) -> Result<Claim, PlacementError> {
        let key = subject::room_key(room);
        let me = bytes::Bytes::from(self.me.as_str().to_owned());
        for _ in 0..TRIES {
            let entry = self.kv.entry(key.clone()).await?;
            let written = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let holder = MediaNodeId(String::from_utf8_lossy(&entry.value).into_owned());
                    if holder == self.me {
                        return Ok(Claim::Mine(entry.revision));
                    }
                    if usable(&holder) {
                        return Ok(Claim::Elsewhere(holder));
                    }
                    tracing::info!(%room, from = %holder, "taking over a call from a node gone or draining");
                    match self.kv.update(&key, me.clone(), entry.revision).await {
                        Ok(revision) => Some(revision),
                        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                        Err(err) => return Err(PlacementError::Write(err.to_string())),
                    }
                }
                _ => match self.kv.create(&key, me.clone()).await {
                    Ok(revision) => Some(revision),
                    Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => None,
                    Err(err) => return Err(PlacementError::Write(err.to_string())),
                },
            };
            if let Some(revision) = written {
                return Ok(Claim::Mine(revision));
            }
        }
        Err(PlacementError::Contended)
    }

    /// Deletes `room`'s entry if it still names this node: its call here
    /// has ended.
    pub async fn release(&self, room: &RoomId) -> Result<(), PlacementError> {
        let key = subject::room_key(room);
        let Some(entry) = self.kv.entry(key.clone()).await? else {
            return Ok(());
        };
        if entry.operation != kv::Operation::Put
            || entry.value.as_ref() != self.me.as_str().as_bytes()
        {
            return Ok(());
        }
        match self
            .kv
            .delete_expect_revision(&key, Some(entry.revision))
            .await
        {
            Ok(()) => Ok(()),
            // Taken over meanwhile: the entry is no longer this node's.
            Err(err) if err.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(err) => Err(PlacementError::Write(err.to_string())),
        }
    }
}
