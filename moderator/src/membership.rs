//! Room membership, kept in a JetStream key-value bucket.
//!
//! Each room is one key holding its members. Every change reads the entry,
//! applies the change and writes it back only if the entry's revision is
//! still the one read (compare-and-set); a writer that lost the race reads
//! again. So a room's capacity holds exactly under concurrent joins through
//! any number of moderators, and each change gets a revision that orders it.
//! A write refused for any other reason ends the change at once.

use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, kv};
use schemas::event::{self, CancelledJoin, RoomMember, RoomState};
use schemas::id::{ConnId, GatewayId, JoinId, RoomId};
use schemas::subject;
use schemas::time::now_ms;

use crate::race;

/// How long a change keeps trying after losing the race for a room's
/// entry. Ten members joining a room at once on a 3-node cluster lost 32
/// back-to-back races in a row (each winning write takes a replication
/// round, and the leader refuses a write while another to the same key is
/// in flight, [`race::Race::InFlight`]), so the budget is time, with waits
/// between tries.
const RACE_BUDGET: Duration = Duration::from_secs(2);

/// The first wait after a lost race; it doubles up to [`MAX_RACE_PAUSE`],
/// jittered so that the losers do not all come back together.
const FIRST_RACE_PAUSE: Duration = Duration::from_millis(2);
const MAX_RACE_PAUSE: Duration = Duration::from_millis(100);

/// How long the marker of an emptied room stays before the server drops it,
/// so rooms that were used once do not take space forever.
const EMPTY_ROOM_MARKER_TTL: Duration = Duration::from_secs(3600);

/// The bucket could not be created or opened.
pub type OpenError = jetstream::context::CreateKeyValueError;

/// A membership change could not be made; the client gets `unavailable`
/// ([`roster::failed`](crate::roster::failed) chooses what it is told).
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The room's entry could not be read from the stream's leader.
    #[error("cannot read room: {0}")]
    Read(#[from] jetstream::stream::LastRawMessageError),
    /// The room's entry holds something that is not a room state.
    #[error("room entry is malformed: {0}")]
    Malformed(#[from] event::EventDecodeError),
    /// JetStream refused the write for another reason than a lost race (a
    /// permission, a timeout, a lost connection): reading again would not
    /// mend it, so it is not retried.
    #[error("cannot write the room: {0}")]
    Write(#[from] WriteError),
    /// Other moderators kept changing the room first.
    #[error("kept losing the race for the room for {RACE_BUDGET:?}")]
    Contended,
}

/// What kind of failure a [`MembershipError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipErrorKind {
    /// See [`MembershipError::Read`].
    Read,
    /// See [`MembershipError::Malformed`].
    Malformed,
    /// See [`MembershipError::Write`].
    Write,
    /// See [`MembershipError::Contended`].
    Contended,
}

impl MembershipError {
    /// What kind of failure this is.
    pub fn kind(&self) -> MembershipErrorKind {
        match self {
            MembershipError::Read(_) => MembershipErrorKind::Read,
            MembershipError::Malformed(_) => MembershipErrorKind::Malformed,
            MembershipError::Write(_) => MembershipErrorKind::Write,
            MembershipError::Contended => MembershipErrorKind::Contended,
        }
    }
}

/// JetStream refused a write of a room's entry.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Updating the entry, or emptying it (a purge is an update).
    #[error(transparent)]
    Update(#[from] kv::UpdateError),
    /// Creating the room's first entry.
    #[error(transparent)]
    Create(#[from] kv::CreateError),
}

impl WriteError {
    /// Whether another writer changed the entry first, or is changing it
    /// now: only then is the change worth trying again.
    pub fn lost_race(&self) -> bool {
        // The inner error itself, not `self`: being transparent, `self`
        // hands out the inner error's sources only, and a create that found
        // the key there has none.
        let race = match self {
            WriteError::Update(err) => race::race(err),
            WriteError::Create(err) => race::race(err),
        };
        race.is_some()
    }
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

/// What a join came to.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per join and matched at once: a box would only add an allocation"
)]
pub enum Admission {
    /// The member is in the room (it may have been already).
    Admitted(Change),
    /// The room does not take it; nothing changed.
    Refused(JoinRefusal),
}

/// Why a room does not take a join.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinRefusal {
    /// The room is at capacity.
    RoomFull,
    /// A leave cancelled this join attempt before it arrived.
    Cancelled,
}

/// What a change to a room's entry came to.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per change and matched at once: a box would only add an allocation"
)]
enum Modified<R> {
    /// Written, or there was nothing to change.
    Applied(Change),
    /// The change refused itself, for this reason; nothing was written.
    Refused(R),
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
        Ok(self.read(room, false).await?.0.members)
    }

    /// The room's members now, read again from the stream's leader if the
    /// first read lacks one of `expected`: that read may come from a replica
    /// that lags behind a join, and a member must not be refused for it.
    pub async fn members_expecting(
        &self,
        room: &RoomId,
        expected: &[ConnId],
    ) -> Result<Vec<RoomMember>, MembershipError> {
        let members = self.members(room).await?;
        let listed = |conn: &ConnId| members.iter().any(|m| m.member.conn_id == *conn);
        if expected.iter().all(listed) {
            return Ok(members);
        }
        Ok(self.read(room, true).await?.0.members)
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
    ) -> Result<Admission, MembershipError> {
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
        let modified = self.modify(room, |state, change| {
            if state.cancelled.iter().any(|c| c.attempt == attempt) {
                return Err(JoinRefusal::Cancelled);
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
                return Err(JoinRefusal::RoomFull);
            }
            state.members.push(member.clone());
            change.joined = Some(member.clone());
            Ok(())
        });
        Ok(match modified.await? {
            Modified::Applied(change) => Admission::Admitted(change),
            Modified::Refused(refusal) => Admission::Refused(refusal),
        })
    }

    /// Removes the connection `conn`. If it is not a member, its join
    /// `attempt` may still be on its way: it is cancelled.
    pub async fn leave(
        &self,
        room: &RoomId,
        conn: &ConnId,
        attempt: Option<JoinId>,
    ) -> Result<Change, MembershipError> {
        let Modified::Applied(change) = self
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
                Ok::<(), Infallible>(())
            })
            .await?;
        Ok(change)
    }

    /// Removes every member held by `gateway`.
    pub async fn reap(
        &self,
        room: &RoomId,
        gateway: &GatewayId,
    ) -> Result<Change, MembershipError> {
        let Modified::Applied(change) = self
            .modify(room, |state, change| {
                change.left = take(&mut state.members, |m| m.gateway == *gateway);
                Ok::<(), Infallible>(())
            })
            .await?;
        Ok(change)
    }

    /// The room's state and the revision it was read at (`None`: no entry).
    ///
    /// The first read is a direct get, which any replica may answer. A
    /// replica can be behind (a restarted NATS node catching up), and a
    /// compare-and-set against its revision then fails however often it is
    /// retried: in the fault suite 32 reads in a row came from one such
    /// replica and joins were refused. So a read after a refused write, or
    /// after a direct get that failed, asks the stream's leader, whose
    /// revision is the one a write is checked against.
    async fn read(
        &self,
        room: &RoomId,
        from_leader: bool,
    ) -> Result<(RoomState, Option<u64>), MembershipError> {
        let key = subject::room_key(room);
        if !from_leader {
            match self.kv.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    return Ok((event::decode(&entry.value)?, Some(entry.revision)));
                }
                Ok(Some(marker)) => return Ok((RoomState::default(), Some(marker.revision))),
                Ok(None) => return Ok((RoomState::default(), None)),
                Err(err) => {
                    tracing::debug!(cause = %err, %room, "direct read failed; asking the leader")
                }
            }
        }
        let subject = format!("{}{key}", self.kv.prefix);
        match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) if is_put(&message.headers) => {
                Ok((event::decode(&message.payload)?, Some(message.sequence)))
            }
            Ok(marker) => Ok((RoomState::default(), Some(marker.sequence))),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                Ok((RoomState::default(), None))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Applies `apply` to the room's state with compare-and-set, retrying
    /// on conflicts. Nothing is written if `apply` changes nothing or
    /// refuses.
    async fn modify<R>(
        &self,
        room: &RoomId,
        mut apply: impl FnMut(&mut RoomState, &mut Change) -> Result<(), R>,
    ) -> Result<Modified<R>, MembershipError> {
        let key = subject::room_key(room);
        let deadline = tokio::time::Instant::now() + RACE_BUDGET;
        let mut pause = FIRST_RACE_PAUSE;
        for attempt in 0.. {
            if attempt > 0 {
                if tokio::time::Instant::now() + pause > deadline {
                    break;
                }
                tokio::time::sleep(bootstrap::backoff::jittered(pause)).await;
                pause = (pause * 2).min(MAX_RACE_PAUSE);
            }
            let (mut state, revision) = self.read(room, attempt > 0).await?;
            let now = now_ms();
            state.cancelled.retain(|c| c.until_ms > now);
            let before = state.clone();
            let mut change = Change::default();
            if let Err(refusal) = apply(&mut state, &mut change) {
                return Ok(Modified::Refused(refusal));
            }
            if state == before {
                change.members = state.members;
                change.revision = revision.unwrap_or(0);
                return Ok(Modified::Applied(change));
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
                    .map_err(WriteError::from),
                (_, Some(revision)) => self
                    .kv
                    .update(&key, event::encode(&state).into(), revision)
                    .await
                    .map_err(WriteError::from),
                (_, None) => self
                    .kv
                    .create(&key, event::encode(&state).into())
                    .await
                    .map_err(WriteError::from),
            };
            match written {
                Ok(revision) => {
                    change.members = state.members;
                    change.revision = revision;
                    return Ok(Modified::Applied(change));
                }
                Err(err) if err.lost_race() => {
                    tracing::debug!(cause = %err, %room, "lost the race for the room; reading again")
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(MembershipError::Contended)
    }
}

/// Whether a stored message of the bucket holds a value, rather than being
/// a delete or purge marker (written by a client, or by the server when a
/// marker's TTL ran out).
fn is_put(headers: &async_nats::HeaderMap) -> bool {
    let operation = headers.get("KV-Operation").map(|op| op.as_str());
    matches!(operation, None | Some("PUT"))
        && headers
            .get(async_nats::header::NATS_MARKER_REASON)
            .is_none()
}

/// Removes the members matching `pred`, returning them.
fn take(members: &mut Vec<RoomMember>, pred: impl Fn(&RoomMember) -> bool) -> Vec<RoomMember> {
    let (taken, kept) = members.drain(..).partition(|m| pred(m));
    *members = kept;
    taken
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    use async_nats::jetstream::kv::{CreateError, CreateErrorKind, UpdateError};

    use super::*;
    use crate::race::tests::refused_publish;

    /// Only a write another moderator came before is tried again; any
    /// other refusal ends the change with its own kind, keeping its cause.
    /// (A system test could show the same end to end: a moderator whose
    /// NATS user may read the rooms bucket but not write it answers a join
    /// `unavailable` after one publish timeout, not after the race budget;
    /// tests/system/permissions.rs runs NATS with per-service users.)
    #[test]
    fn only_a_lost_race_is_retried() {
        let cases: [(&str, WriteError, bool); 6] = [
            (
                "update, wrong last revision",
                UpdateError::from(refused_publish(10071)).into(),
                true,
            ),
            (
                "update, wrong last sequence (10164)",
                UpdateError::from(refused_publish(10164)).into(),
                true,
            ),
            (
                "update, another write in flight (10163)",
                UpdateError::from(refused_publish(10163)).into(),
                true,
            ),
            (
                "create, the key exists",
                CreateError::new(CreateErrorKind::AlreadyExists).into(),
                true,
            ),
            (
                "update, timed out",
                UpdateError::from(PublishError::new(PublishErrorKind::TimedOut)).into(),
                false,
            ),
            (
                "create, publish failed",
                CreateError::new(CreateErrorKind::Publish).into(),
                false,
            ),
        ];
        for (name, err, lost_race) in cases {
            assert_eq!(err.lost_race(), lost_race, "{name}");
            if !lost_race {
                let err = MembershipError::from(err);
                assert_eq!(err.kind(), MembershipErrorKind::Write, "{name}");
                assert!(
                    std::error::Error::source(&err).is_some(),
                    "{name}: the cause is kept"
                );
            }
        }
    }

    #[test]
    fn only_puts_hold_a_room() {
        /// A stored message's KV headers, and whether it holds a value.
        type Case = (&'static str, Option<(&'static str, &'static str)>, bool);
        const CASES: &[Case] = &[
            ("plain put", None, true),
            ("put", Some(("KV-Operation", "PUT")), true),
            ("delete", Some(("KV-Operation", "DEL")), false),
            ("purge", Some(("KV-Operation", "PURGE")), false),
            (
                "expired marker",
                Some(("Nats-Marker-Reason", "MaxAge")),
                false,
            ),
        ];
        for &(name, header, put) in CASES {
            let mut headers = async_nats::HeaderMap::new();
            if let Some((key, value)) = header {
                headers.insert(key, value);
            }
            assert_eq!(is_put(&headers), put, "{name}");
        }
    }
}
