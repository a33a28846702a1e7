//! Reading a room's backlog from the chat stream.

use std::time::Duration;

use bootstrap::room_tail::RoomTail;
use futures_util::StreamExt;
use schemas::client::ChatMessage;
use schemas::event::{self, Backlog};
use schemas::id::{RoomId, Seq};
use schemas::subject;

/// The status that ends a batched direct get ("end of batch").
const END_OF_BATCH: u16 = 204;
/// The status of a direct get that found nothing.
const NOT_FOUND: u16 = 404;
/// The status of a request nobody answered: no replica serves direct gets.
const NO_RESPONDERS: u16 = 503;

/// Reading the backlog failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The reply subscription could not be made.
    #[error("cannot subscribe for the batch: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// The request could not be sent.
    #[error("cannot ask for the batch: {0}")]
    Publish(#[from] async_nats::PublishError),
    /// The batch did not end within the request timeout.
    #[error("the batch did not arrive within {0:?}")]
    TimedOut(Duration),
    /// The reply subscription ended before the batch did: the NATS
    /// connection is closing.
    #[error("the reply subscription ended before the batch")]
    Ended,
    /// No replica answers direct gets now (one catching up stops until it
    /// has).
    #[error("no replica answers direct gets")]
    NoResponders,
    /// The server answered with an error status.
    #[error("the server answered {0}")]
    Status(u16),
    /// The replicas that answered lacked messages the leader has.
    #[error("the replica that answered is behind seq {0}")]
    Behind(Seq),
}

/// A retained message with what the moderator knew when it stored it.
#[derive(Clone, Debug, PartialEq)]
pub struct Retained {
    /// The message.
    pub chat: ChatMessage,
    /// The room seq stored right before it (`0`: none was retained then);
    /// `None` for messages stored without the header.
    pub prev: Option<Seq>,
}

impl Retained {
    /// Whether messages after `since` are missing right before this one,
    /// the first retained message after `since`.
    fn trimmed_before(&self, since: Seq) -> bool {
        match self.prev {
            // The message before it is gone; missed if it came after `since`.
            Some(prev) if prev > Seq(0) => prev > since,
            // Nothing was retained when it was stored: a client that saw
            // nothing, or saw the seq right before, missed nothing; for any
            // other it cannot be known, so say trimmed.
            Some(_) => since > Seq(0) && self.chat.seq > since.next(),
            // Stored without the header: judge by seqs alone.
            None => self.chat.seq > since.next(),
        }
    }
}

/// The retained messages of `room` from stream sequence `from` on, oldest
/// first, read with one batched direct get (at most `max` messages: the
/// stream keeps no more per room). From 1, that is all of them;
/// [`read_from`] says where to start for a query that needs only the last
/// few.
///
/// A direct get is answered by any replica without creating anything on
/// the server; a consumer per query, as before, is a cluster-wide operation
/// that made a mass rejoin (a gateway's clients moving at once) queue for
/// tens of seconds on a 3-node cluster.
pub async fn read_room(
    client: &async_nats::Client,
    room: &RoomId,
    from: u64,
    max: usize,
    timeout: Duration,
) -> Result<Vec<Retained>, ReadError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let inbox = client.new_inbox();
    let mut replies = tokio::time::timeout_at(deadline, client.subscribe(inbox.clone()))
        .await
        .map_err(|_| ReadError::TimedOut(timeout))??;
    let request = serde_json::json!({
        "seq": from.max(1),
        "next_by_subj": subject::chat_store(room),
        "batch": max,
    });
    let ask =
        client.publish_with_reply(subject::CHAT_DIRECT_GET, inbox, request.to_string().into());
    tokio::time::timeout_at(deadline, ask)
        .await
        .map_err(|_| ReadError::TimedOut(timeout))??;
    let mut messages = Vec::new();
    loop {
        let msg = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(ReadError::Ended),
            Err(_) => return Err(ReadError::TimedOut(timeout)),
        };
        match msg.status.map(|status| status.as_u16()) {
            Some(END_OF_BATCH | NOT_FOUND) => break,
            Some(NO_RESPONDERS) => return Err(ReadError::NoResponders),
            Some(status) if status >= 300 => return Err(ReadError::Status(status)),
            _ => {}
        }
        let prev = bootstrap::nats::previous_seq(msg.headers.as_ref());
        match event::decode::<ChatMessage>(&msg.payload) {
            Ok(chat) => messages.push(Retained { chat, prev }),
            Err(err) => tracing::warn!(cause = %err, %room, "skipping unreadable stored message"),
        }
        if messages.len() >= max {
            break;
        }
    }
    // Failing only when the connection is gone, which takes the
    // subscription with it.
    if let Err(err) = replies.unsubscribe().await {
        tracing::debug!(cause = %err, "cannot unsubscribe from a read batch");
    }
    Ok(messages)
}

/// How many stream sequences lie between the room's last message and the
/// one before it (other rooms' messages in between, plus one); 0 when it
/// is the room's first. How densely the room sits in the stream.
fn spacing(tail: &RoomTail) -> u64 {
    if tail.prev_stream_seq == 0 {
        0
    } else {
        tail.stream_seq.saturating_sub(tail.prev_stream_seq)
    }
}

/// Where in the stream to start reading a room whose tail is `tail`, to
/// get at least its last `wanted` messages, with a margin: rooms interleave
/// in the stream, so its messages are `spacing` apart on average if its
/// rate held. Starting from 1 reads the whole retained room, which for
/// a resume a few messages back can be thousands of messages: a gateway's
/// clients all rejoining at once then swamp history. If the estimate falls
/// short, [`covers`] says so and the read starts further back.
pub fn read_from(tail: Option<RoomTail>, wanted: u64) -> u64 {
    match tail {
        Some(tail) if spacing(&tail) > 0 => tail
            .stream_seq
            .saturating_sub(
                wanted
                    .saturating_add(1)
                    .saturating_mul(spacing(&tail))
                    .saturating_mul(2),
            )
            .max(1),
        _ => 1,
    }
}

/// Where to start reading again when a read from `from` fell short: four
/// times as far back from the tail.
pub fn further_back(tail: RoomTail, from: u64) -> u64 {
    tail.stream_seq
        .saturating_sub(tail.stream_seq.saturating_sub(from).saturating_mul(4))
        .max(1)
}

/// Whether `retained`, read from part-way into the room, holds all a
/// query needs: the message right after `since` (or one before it), or
/// `wanted` messages without `since`; or the room's first message, before
/// which there is nothing to read.
pub fn covers(retained: &[Retained], since: Option<Seq>, wanted: u64) -> bool {
    let Some(first) = retained.first() else {
        return false;
    };
    if first.prev == Some(Seq(0)) {
        return true;
    }
    let last = retained.last().map_or(Seq(0), |m| m.chat.seq);
    match since {
        Some(since) if since < last => first.chat.seq <= since.next(),
        _ => retained.len() as u64 >= wanted,
    }
}

/// Where a room ends, as the stream's leader says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomEnd {
    /// At this message.
    At(RoomTail),
    /// The room has no retained message.
    Empty,
    /// The leader did not say: it did not answer in time (an election) or
    /// failed.
    Unknown,
}

impl RoomEnd {
    /// The room's last message, if the leader named one.
    pub fn tail(self) -> Option<RoomTail> {
        match self {
            RoomEnd::At(tail) => Some(tail),
            RoomEnd::Empty | RoomEnd::Unknown => None,
        }
    }

    /// The room's last seq, if the leader named one.
    pub fn last_seq(self) -> Option<Seq> {
        self.tail().map(|tail| tail.seq)
    }
}

/// Whether a read lacks messages the stream has. A read that does not
/// reach the room's `end`, as the stream's leader knows it, came from a
/// replica that is behind (by a few ms, or by a partition's worth just
/// after it healed). Without the leader's word, a read that ends before
/// `since`, which the client has seen, is behind too.
pub fn is_behind(retained: &[Retained], end: RoomEnd, since: Option<Seq>) -> bool {
    let read_to = retained.last().map(|m| m.chat.seq);
    match end {
        RoomEnd::At(tail) => read_to.is_none_or(|read_to| read_to < tail.seq),
        RoomEnd::Empty => false,
        RoomEnd::Unknown => since
            .is_some_and(|since| since > Seq(0) && read_to.is_none_or(|read_to| read_to < since)),
    }
}

/// Picks what a client asked for from a room's retained messages.
///
/// Without `since`: the last `limit`. With `since`: every message after it,
/// `truncated` when the first of them is not `since + 1`. A `since` beyond
/// the room's last seq means the stream was reset: the client gets the last
/// `limit` and `truncated`. A room with nothing retained for a client that
/// saw some of it lost every message to `max_age` or `max_bytes`: whether
/// the client had seen the last of them cannot be known any more, so that
/// is `truncated` too, rather than a silent miss.
pub fn select(mut retained: Vec<Retained>, since: Option<Seq>, limit: usize) -> Backlog {
    let last_seq = retained.last().map_or(Seq(0), |m| m.chat.seq);
    let keep_last = |mut messages: Vec<Retained>, limit: usize| {
        let skip = messages.len().saturating_sub(limit);
        messages.drain(..skip);
        messages.into_iter().map(|m| m.chat).collect()
    };
    match since {
        None => Backlog {
            messages: keep_last(retained, limit),
            last_seq,
            truncated: false,
        },
        Some(since) if since > last_seq && last_seq > Seq(0) => Backlog {
            messages: keep_last(retained, limit),
            last_seq,
            truncated: true,
        },
        Some(since) if retained.is_empty() => Backlog {
            messages: Vec::new(),
            last_seq,
            truncated: since > Seq(0),
        },
        Some(since) => {
            retained.retain(|m| m.chat.seq > since);
            let truncated = retained.first().is_some_and(|m| m.trimmed_before(since));
            Backlog {
                messages: retained.into_iter().map(|m| m.chat).collect(),
                last_seq,
                truncated,
            }
        }
    }
}

/// Drops the oldest messages until the encoded backlog fits in `max_bytes`
/// (NATS's payload limit), marking it truncated if any had to go.
pub fn fit(mut backlog: Backlog, max_bytes: usize) -> Backlog {
    while !backlog.messages.is_empty() && event::encode(&backlog).len() > max_bytes {
        let drop = backlog.messages.len().div_ceil(10);
        backlog.messages.drain(..drop);
        backlog.truncated = true;
    }
    backlog
}

#[cfg(test)]
mod tests {
    use schemas::client::{Member, User};

    use super::*;

    /// Retained messages `seqs`, each stored right after the seq before it.
    fn messages(seqs: std::ops::RangeInclusive<u64>) -> Vec<Retained> {
        seqs.map(|seq| Retained {
            chat: chat(seq),
            prev: Some(Seq(seq - 1)),
        })
        .collect()
    }

    #[test]
    fn a_read_starts_near_the_tail_by_the_room_s_spacing() {
        let tail = RoomTail {
            seq: Seq(300),
            stream_seq: 600,
            prev_stream_seq: 598,
        };
        // 3 wanted, 2 apart, twice over: 16 stream sequences back.
        assert_eq!(read_from(Some(tail), 3), 584);
        assert_eq!(read_from(Some(tail), 1_000), 1, "never before the stream");
        let first = RoomTail {
            prev_stream_seq: 0,
            ..tail
        };
        assert_eq!(read_from(Some(first), 3), 1, "spacing unknown: all of it");
        assert_eq!(read_from(None, 3), 1, "no word from the leader: all of it");
        assert_eq!(further_back(tail, 584), 536);
        assert_eq!(further_back(tail, 200), 1);
    }

    #[test]
    fn a_partial_read_covers_a_query_only_with_what_it_needs() {
        let read = messages(290..=300);
        // since 295 needs 296 on: present, and 289 or later reached.
        assert!(covers(&read, Some(Seq(295)), 5));
        assert!(covers(&read, Some(Seq(289)), 11));
        assert!(!covers(&read, Some(Seq(288)), 12), "289 may be missing");
        // Without since: as many as wanted.
        assert!(covers(&read, None, 11));
        assert!(!covers(&read, None, 12));
        // A `since` at or past the end asks for the last `limit`.
        assert!(covers(&read, Some(Seq(300)), 5));
        assert!(!covers(&read, Some(Seq(400)), 50));
        // The room's first message: nothing before it to read.
        let mut from_start = messages(290..=300);
        from_start[0].prev = Some(Seq(0));
        assert!(covers(&from_start, Some(Seq(10)), 290));
        assert!(covers(&from_start, None, 50));
        assert!(!covers(&[], None, 1), "an empty read covers nothing");
    }

    fn chat(seq: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq: Seq(seq),
            id: format!("m{seq}").as_str().into(),
            from: Member {
                conn_id: "c".into(),
                user: User {
                    id: "u".into(),
                    name: "U".into(),
                },
            },
            text: "x".repeat(100),
            ts: 0,
        }
    }

    fn seqs(backlog: &Backlog) -> Vec<u64> {
        backlog.messages.iter().map(|m| m.seq.0).collect()
    }

    #[test]
    fn selection() {
        struct Case {
            name: &'static str,
            retained: std::ops::RangeInclusive<u64>,
            since: Option<u64>,
            limit: usize,
            expect: Vec<u64>,
            truncated: bool,
        }
        let cases = [
            Case {
                name: "last n",
                retained: 1..=10,
                since: None,
                limit: 3,
                expect: vec![8, 9, 10],
                truncated: false,
            },
            Case {
                name: "fewer than n",
                retained: 1..=2,
                since: None,
                limit: 5,
                expect: vec![1, 2],
                truncated: false,
            },
            Case {
                name: "resume",
                retained: 1..=10,
                since: Some(7),
                limit: 3,
                expect: vec![8, 9, 10],
                truncated: false,
            },
            Case {
                name: "resume ignores limit",
                retained: 1..=10,
                since: Some(2),
                limit: 3,
                expect: (3..=10).collect(),
                truncated: false,
            },
            Case {
                name: "up to date",
                retained: 1..=10,
                since: Some(10),
                limit: 3,
                expect: vec![],
                truncated: false,
            },
            Case {
                name: "trimmed",
                retained: 6..=10,
                since: Some(2),
                limit: 3,
                expect: (6..=10).collect(),
                truncated: true,
            },
            Case {
                name: "just kept",
                retained: 6..=10,
                since: Some(5),
                limit: 3,
                expect: (6..=10).collect(),
                truncated: false,
            },
            Case {
                name: "stream reset",
                retained: 1..=4,
                since: Some(9),
                limit: 3,
                expect: vec![2, 3, 4],
                truncated: true,
            },
        ];
        for case in cases {
            let backlog = select(messages(case.retained), case.since.map(Seq), case.limit);
            assert_eq!(seqs(&backlog), case.expect, "{}", case.name);
            assert_eq!(backlog.truncated, case.truncated, "{}", case.name);
        }
        // Emptied by max_age or max_bytes: a client that saw some of the
        // room may have missed its last messages.
        let emptied = select(Vec::new(), Some(Seq(3)), 5);
        assert_eq!((emptied.last_seq, emptied.truncated), (Seq(0), true));
        let never_used = select(Vec::new(), Some(Seq(0)), 5);
        assert_eq!((never_used.last_seq, never_used.truncated), (Seq(0), false));
    }

    /// Rooms start at the stream's sequence, not at 1: whether messages
    /// after `since` were trimmed comes from what the moderator recorded
    /// as each message's predecessor.
    #[test]
    fn truncated_follows_the_recorded_predecessor() {
        // (name, first retained seq and its recorded prev, since, truncated)
        const CASES: &[(&str, u64, Option<u64>, u64, bool)] = &[
            ("new room, client saw nothing", 58, Some(0), 0, false),
            (
                "new room, client saw the seq before",
                58,
                Some(0),
                57,
                false,
            ),
            (
                "backlog had expired, client saw older",
                58,
                Some(0),
                30,
                true,
            ),
            (
                "first one trimmed, client saw nothing",
                59,
                Some(58),
                0,
                true,
            ),
            ("first one trimmed, client saw it", 59, Some(58), 58, false),
            ("stored without the header, a gap", 58, None, 0, true),
            ("stored without the header, no gap", 58, None, 57, false),
        ];
        for &(name, first, prev, since, truncated) in CASES {
            let retained = vec![Retained {
                chat: chat(first),
                prev: prev.map(Seq),
            }];
            let backlog = select(retained, Some(Seq(since)), 10);
            assert_eq!(seqs(&backlog), [first], "{name}");
            assert_eq!(backlog.truncated, truncated, "{name}");
        }
    }

    #[test]
    fn a_read_is_behind_when_it_lacks_the_leaders_last_message() {
        struct Case {
            name: &'static str,
            retained: &'static [u64],
            leader: RoomEnd,
            since: Option<u64>,
            behind: bool,
        }
        let at = |seq| {
            RoomEnd::At(RoomTail {
                seq: Seq(seq),
                stream_seq: seq,
                prev_stream_seq: seq - 1,
            })
        };
        const FOUR: &[u64] = &[1, 2, 3, 4];
        let cases = [
            Case {
                name: "reaches the leader",
                retained: FOUR,
                leader: at(4),
                since: None,
                behind: false,
            },
            Case {
                name: "ahead of the leader's answer",
                retained: FOUR,
                leader: at(3),
                since: None,
                behind: false,
            },
            Case {
                name: "short of the leader",
                retained: FOUR,
                leader: at(6),
                since: Some(2),
                behind: true,
            },
            Case {
                name: "short of the leader, no since",
                retained: FOUR,
                leader: at(6),
                since: None,
                behind: true,
            },
            Case {
                name: "holds nothing, leader has",
                retained: &[],
                leader: at(3),
                since: None,
                behind: true,
            },
            Case {
                name: "room empty at the leader",
                retained: &[],
                leader: RoomEnd::Empty,
                since: Some(3),
                behind: false,
            },
            Case {
                name: "reset: since past the leader's end",
                retained: FOUR,
                leader: at(4),
                since: Some(9),
                behind: false,
            },
            Case {
                name: "no leader, ends before since",
                retained: FOUR,
                leader: RoomEnd::Unknown,
                since: Some(9),
                behind: true,
            },
            Case {
                name: "no leader, reaches since",
                retained: FOUR,
                leader: RoomEnd::Unknown,
                since: Some(4),
                behind: false,
            },
            Case {
                name: "no leader, no since",
                retained: FOUR,
                leader: RoomEnd::Unknown,
                since: None,
                behind: false,
            },
            Case {
                name: "no leader, holds nothing",
                retained: &[],
                leader: RoomEnd::Unknown,
                since: Some(3),
                behind: true,
            },
        ];
        for case in cases {
            let retained: Vec<Retained> = case
                .retained
                .iter()
                .map(|&seq| Retained {
                    chat: chat(seq),
                    prev: Some(Seq(seq - 1)),
                })
                .collect();
            assert_eq!(
                is_behind(&retained, case.leader, case.since.map(Seq)),
                case.behind,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn fitting_drops_oldest_first() {
        let backlog = select(messages(1..=100), None, 100);
        let full = event::encode(&backlog).len();
        let fitted = fit(backlog.clone(), full / 2);
        assert!(event::encode(&fitted).len() <= full / 2);
        assert!(fitted.truncated);
        assert_eq!(fitted.messages.last().unwrap().seq, Seq(100));
        assert_eq!(
            fit(backlog.clone(), full),
            backlog,
            "a backlog that fits is untouched"
        );
    }
}
