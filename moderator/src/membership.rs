//! Room membership, kept in a JetStream key-value bucket.
//!
//! Each room is one key holding its members. Every change reads the entry,
//! applies the change and writes it back only if the entry's revision is
//! still the one read (compare-and-set); a writer that lost the race reads
//! again. So a room's capacity holds exactly under concurrent joins through
//! any number of moderators, and each change gets a revision that orders it.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use schemas::event::{self, CancelledJoin, RoomMember, RoomState};
use schemas::id::{ConnId, GatewayId, JoinId, RoomId};
use schemas::subject;

use crate::command::now_ms;

/// How often a change is retried after losing the race for a room's entry.
const MAX_RACES: usize = 32;

/// How long the marker of an emptied room stays before the server drops it,
/// so rooms that were used once do not take space forever.
const EMPTY_ROOM_MARKER_TTL: Duration = Duration::from_secs(3600);

/// The bucket could not be created or opened.
pub type OpenError = jetstream::context::CreateKeyValueError;

/// A membership change could not be made; the client gets `unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The room's entry could not be read.
    #[error("cannot read room: {0}")]
    Read(#[from] kv::EntryError),
    /// The room's entry holds something that is not a room state.
    #[error("room entry is malformed: {0}")]
    Malformed(#[from] event::DecodeError),
    /// Other moderators kept changing the room first, or writes failed.
    #[error("could not write the room after {MAX_RACES} attempts")]
    Contended,
}

/// What a change did.
#[derive(Debug, Default)]
pub struct Change {
    /// The member that joined, if one did.
    pub joined: Option<RoomMember>,
    /// Members that left (or were removed as their gateway died).
    pub left: Vec<RoomMember>,
    /// The member whose seat the joining connection took.
    pub replaced: Option<RoomMember>,
    /// Every member after the change.
    pub members: Vec<RoomMember>,
    /// The room's revision after the change.
    pub revision: u64,
}

/// A join the room does not take.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The room is at capacity.
    RoomFull,
    /// A leave cancelled this join attempt before it arrived.
    Cancelled,
}

/// How long a cancelled join attempt is remembered. A join request delayed
/// longer than this (held in a client's buffer through an outage) could
/// still add a member nobody holds; NATS clients give up on requests long
/// before.
const CANCELLED_JOIN_TTL: Duration = Duration::from_secs(600);

/// Cancelled join attempts kept per room; the oldest goes first.
const MAX_CANCELLED_JOINS: usize = 64;

/// A connection asking to enter a room.
#[derive(Debug)]
pub struct Joining {
    /// The member and its gateway.
    pub member: RoomMember,
    /// This join attempt.
    pub attempt: JoinId,
    /// The same user's previous connection, whose seat this one takes.
    pub replaces: Option<ConnId>,
}

/// The rooms bucket.
#[derive(Clone)]
pub struct Membership {
    kv: kv::Store,
    capacity: usize,
}

impl Membership {
    /// Creates the bucket if needed and opens it.
    pub async fn open(
        js: &jetstream::Context,
        capacity: usize,
        replicas: usize,
    ) -> Result<Self, OpenError> {
        let kv = js
            .create_or_update_key_value(kv::Config {
                bucket: subject::ROOMS_BUCKET.into(),
                description: "cavlo room members, one key per room".into(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                limit_markers: Some(EMPTY_ROOM_MARKER_TTL),
                ..Default::default()
            })
            .await?;
        Ok(Self { kv, capacity })
    }

    /// The room's members now.
    pub async fn members(&self, room: &RoomId) -> Result<Vec<RoomMember>, MembershipError> {
        Ok(self.read(room).await?.0.members)
    }

    /// Adds the joining member, first removing members whose gateway
    /// `is_dead` and the connection it replaces (only if that connection is
    /// the same user's: nobody can take another user's seat). A member
    /// already in the room stays once; an attempt a leave cancelled is
    /// refused.
    pub async fn join(
        &self,
        room: &RoomId,
        joining: Joining,
        is_dead: impl Fn(&GatewayId) -> bool,
    ) -> Result<Result<Change, Refusal>, MembershipError> {
        let capacity = self.capacity;
        let Joining {
            member,
            attempt,
            replaces,
        } = joining;
        let replaced = |m: &RoomMember| {
            replaces.as_ref() == Some(&m.member.conn_id)
                && m.member.user.id == member.member.user.id
        };
        self.modify(room, |state, change| {
            if state.cancelled.iter().any(|c| c.attempt == attempt) {
                return Err(Refusal::Cancelled);
            }
            change.replaced = take(&mut state.members, replaced).pop();
            change.left = take(&mut state.members, |m| is_dead(&m.gateway));
            if state
                .members
                .iter()
                .any(|m| m.member.conn_id == member.member.conn_id)
            {
                return Ok(());
            }
            if state.members.len() >= capacity {
                return Err(Refusal::RoomFull);
            }
            state.members.push(member.clone());
            change.joined = Some(member.clone());
            Ok(())
        })
        .await
    }

    /// Removes the connection `conn`. If it is not a member, its join
    /// `attempt` may still be on its way: it is cancelled.
    pub async fn leave(
        &self,
        room: &RoomId,
        conn: &ConnId,
        attempt: Option<JoinId>,
    ) -> Result<Change, MembershipError> {
        let change = self
            .modify(room, |state, change| {
                change.left = take(&mut state.members, |m| m.member.conn_id == *conn);
                if let (true, Some(attempt)) = (change.left.is_empty(), &attempt) {
                    if state.cancelled.len() >= MAX_CANCELLED_JOINS {
                        state.cancelled.remove(0);
                    }
                    state.cancelled.push(CancelledJoin {
                        attempt: attempt.clone(),
                        until_ms: now_ms() + CANCELLED_JOIN_TTL.as_millis() as u64,
                    });
                }
                Ok::<(), Refusal>(())
            })
            .await?;
        Ok(change.unwrap_or_default())
    }

    /// Removes every member held by `gateway`.
    pub async fn reap(
        &self,
        room: &RoomId,
        gateway: &GatewayId,
    ) -> Result<Change, MembershipError> {
        let change = self
            .modify(room, |state, change| {
                change.left = take(&mut state.members, |m| m.gateway == *gateway);
                Ok::<(), Refusal>(())
            })
            .await?;
        Ok(change.unwrap_or_default())
    }

    async fn read(&self, room: &RoomId) -> Result<(RoomState, Option<u64>), MembershipError> {
        match self.kv.entry(subject::room_key(room)).await? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok((event::decode(&entry.value)?, Some(entry.revision)))
            }
            Some(marker) => Ok((RoomState::default(), Some(marker.revision))),
            None => Ok((RoomState::default(), None)),
        }
    }

    /// Applies `apply` to the room's state with compare-and-set, retrying
    /// on conflicts. Nothing is written if `apply` changes nothing.
    async fn modify<R>(
        &self,
        room: &RoomId,
        mut apply: impl FnMut(&mut RoomState, &mut Change) -> Result<(), R>,
    ) -> Result<Result<Change, R>, MembershipError> {
        let key = subject::room_key(room);
        for _ in 0..MAX_RACES {
            let (mut state, revision) = self.read(room).await?;
            let now = now_ms();
            state.cancelled.retain(|c| c.until_ms > now);
            let before = state.clone();
            let mut change = Change::default();
            if let Err(refusal) = apply(&mut state, &mut change) {
                return Ok(Err(refusal));
            }
            if state == before {
                change.members = state.members;
                change.revision = revision.unwrap_or(0);
                return Ok(Ok(change));
            }
            let empty = state.members.is_empty() && state.cancelled.is_empty();
            let written = match (empty, revision) {
                // An emptied room leaves a marker that expires; its revision
                // is not returned, but nobody is left to order events for.
                (true, Some(revision)) => self
                    .kv
                    .purge_expect_revision_with_ttl(&key, revision, EMPTY_ROOM_MARKER_TTL)
                    .await
                    .map(|()| revision + 1)
                    .map_err(|err| err.to_string()),
                (_, Some(revision)) => self
                    .kv
                    .update(&key, event::encode(&state).into(), revision)
                    .await
                    .map_err(|err| err.to_string()),
                (_, None) => self
                    .kv
                    .create(&key, event::encode(&state).into())
                    .await
                    .map_err(|err| err.to_string()),
            };
            match written {
                Ok(revision) => {
                    change.members = state.members;
                    change.revision = revision;
                    return Ok(Ok(change));
                }
                // Usually a lost race (wrong last revision, key exists);
                // reading again tells. A real failure exhausts the retries.
                Err(err) => {
                    tracing::debug!(cause = %err, %room, "room write refused; reading again")
                }
            }
        }
        Err(MembershipError::Contended)
    }
}

/// Removes the members matching `pred`, returning them.
fn take(members: &mut Vec<RoomMember>, pred: impl Fn(&RoomMember) -> bool) -> Vec<RoomMember> {
    let (taken, kept) = members.drain(..).partition(|m| pred(m));
    *members = kept;
    taken
}
