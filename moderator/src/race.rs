//! Telling a lost race from a failure when JetStream refuses a
//! compare-and-set write.
//!
//! Both of the moderator's writers expect a subject's last sequence
//! (`Nats-Expected-Last-Subject-Sequence`): the room writer the room's
//! tail, membership the revision of the room's entry, which the key-value
//! API sends the same way. A write refused because another writer came
//! first is worth another try after reading again; any other refusal (a
//! permission, a timeout, a lost connection) is not, and ends the write.

use std::error::Error;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv::{CreateError, CreateErrorKind, UpdateError, UpdateErrorKind};
use async_nats::jetstream::{self, ErrorCode};

/// Why JetStream refused a write that another writer came before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Race {
    /// The subject's last sequence is not the one expected any more:
    /// another write landed since it was read.
    Lost,
    /// The stream's leader holds another write to the subject that it has
    /// not applied yet, so it cannot check the expected sequence now
    /// (nats-server error 10163; only on a cluster).
    InFlight,
}

/// The race that refused the write failing with `err`, if a race did.
///
/// The server's answer is looked for along the whole chain of sources:
/// async-nats wraps it once per layer (a key-value create wraps the update
/// it tried, which wraps the publish), and gives a kind of its own only to
/// the older code of a lost race, 10071. nats-server 2.12 and later answer
/// a stale expected sequence with 10164, which async-nats calls "other";
/// missing it turned every lost race of the room writer into an
/// `unavailable` for the client.
pub fn race(err: &(dyn Error + 'static)) -> Option<Race> {
    std::iter::successors(Some(err), |&err| err.source()).find_map(race_in)
}

/// The race `err` itself (not its sources) reports, if any.
fn race_in(err: &(dyn Error + 'static)) -> Option<Race> {
    if let Some(answer) = err.downcast_ref::<jetstream::Error>() {
        return match answer.error_code() {
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE
            | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT => Some(Race::Lost),
            ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY => Some(Race::InFlight),
            _ => None,
        };
    }
    let lost = err
        .downcast_ref::<PublishError>()
        .is_some_and(|err| err.kind() == PublishErrorKind::WrongLastSequence)
        || err
            .downcast_ref::<UpdateError>()
            .is_some_and(|err| err.kind() == UpdateErrorKind::WrongLastRevision)
        // A create finds the key there: another writer created it first.
        || err
            .downcast_ref::<CreateError>()
            .is_some_and(|err| err.kind() == CreateErrorKind::AlreadyExists);
    lost.then_some(Race::Lost)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// JetStream's answer with error `code`, as the server sends it.
    pub(crate) fn refusal(code: u64) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": code,
            "description": "refused",
        }))
        .expect("a JetStream error decodes")
    }

    /// A publish refused with `code`, as async-nats returns it.
    pub(crate) fn refused_publish(code: u64) -> PublishError {
        let kind = if code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE.0 {
            PublishErrorKind::WrongLastSequence
        } else {
            PublishErrorKind::Other
        };
        PublishError::with_source(kind, refusal(code))
    }

    #[test]
    fn races_are_found_in_any_layer() {
        let cases: Vec<(&str, Box<dyn Error + 'static>, Option<Race>)> = vec![
            (
                "publish, wrong last sequence (10071)",
                Box::new(refused_publish(10071)),
                Some(Race::Lost),
            ),
            (
                "publish, wrong last sequence (10164)",
                Box::new(refused_publish(10164)),
                Some(Race::Lost),
            ),
            (
                "publish, a write in flight (10163)",
                Box::new(refused_publish(10163)),
                Some(Race::InFlight),
            ),
            (
                "key-value update, wrong last revision",
                Box::new(UpdateError::from(refused_publish(10071))),
                Some(Race::Lost),
            ),
            (
                "key-value update, 10164",
                Box::new(UpdateError::from(refused_publish(10164))),
                Some(Race::Lost),
            ),
            (
                "key-value create, the key exists",
                Box::new(CreateError::new(CreateErrorKind::AlreadyExists)),
                Some(Race::Lost),
            ),
            (
                "key-value create, its update refused with 10164",
                Box::new(CreateError::from(UpdateError::from(refused_publish(10164)))),
                Some(Race::Lost),
            ),
            (
                "publish, timed out (as when NATS permissions refuse it)",
                Box::new(PublishError::new(PublishErrorKind::TimedOut)),
                None,
            ),
            (
                "publish, no stream",
                Box::new(PublishError::new(PublishErrorKind::StreamNotFound)),
                None,
            ),
            (
                "publish, another refusal (10077, too large)",
                Box::new(refused_publish(10077)),
                None,
            ),
            (
                "key-value update, timed out",
                Box::new(UpdateError::from(PublishError::new(
                    PublishErrorKind::TimedOut,
                ))),
                None,
            ),
            (
                "key-value update, connection lost",
                Box::new(UpdateError::from(PublishError::new(
                    PublishErrorKind::BrokenPipe,
                ))),
                None,
            ),
            (
                "key-value create, publish failed",
                Box::new(CreateError::new(CreateErrorKind::Publish)),
                None,
            ),
        ];
        for (name, err, expected) in &cases {
            assert_eq!(race(err.as_ref()), *expected, "{name}");
        }
    }
}
