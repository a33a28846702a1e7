//! Correctness accounting, by message: what each sender was acked, and
//! what each receiver got, matched by the message's client id, never by
//! counting.
//!
//! Within a room every receiver must get every message acked to *another*
//! sender exactly once, from that sender, under the seq its ack named, in
//! increasing seq order. A receiver records each delivery as it came (one
//! run per connection); at the end the room's [`Sent`] book tells what it
//! lost, what it got that nobody sent or that does not match its ack, and
//! which acked seqs a connection skipped live (a gap passed over instead of
//! filled).

use std::collections::{BTreeSet, HashMap, HashSet};

use schemas::id::ClientMsgId;

/// What an ack said of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    /// Not acked (yet).
    No,
    /// Acked without a seq: only for a resend whose original was trimmed.
    WithoutSeq,
    /// Acked as stored under this seq.
    Seq(u64),
}

/// One message a sender sent, as the room's book holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender's index in the room.
    pub sender: usize,
    /// The sender's user id, which deliveries must name.
    pub user: String,
    /// What its ack said.
    pub acked: Acked,
}

/// Every message the senders of one room sent, by client id.
#[derive(Debug, Default)]
pub struct Sent {
    messages: HashMap<ClientMsgId, Message>,
}

impl Sent {
    /// Records message `id`, and what its ack said.
    pub fn insert(&mut self, id: ClientMsgId, message: Message) {
        self.messages.insert(id, message);
    }

    /// The acked messages of senders other than `receiver`: what it must get.
    fn expected_by(&self, receiver: usize) -> impl Iterator<Item = (&ClientMsgId, &Message)> {
        self.messages
            .iter()
            .filter(move |(_, m)| m.sender != receiver && m.acked != Acked::No)
    }
}

/// One chat delivery as a receiver saw it.
#[derive(Clone, Debug)]
pub struct Delivered {
    /// The client id it carried.
    pub id: ClientMsgId,
    /// The user it said sent it.
    pub from: String,
    /// Its seq.
    pub seq: u64,
}

/// What one receiver got in one room, connection by connection.
#[derive(Debug, Default)]
pub struct Received {
    /// What each connection delivered, in order: backlog, then live.
    runs: Vec<Vec<Delivered>>,
    highest: u64,
}

impl Received {
    /// Starts the record of a new connection.
    pub fn reconnected(&mut self) {
        self.runs.push(Vec::new());
    }

    /// Records a delivery.
    pub fn record(&mut self, delivered: Delivered) {
        self.highest = self.highest.max(delivered.seq);
        match self.runs.last_mut() {
            Some(run) => run.push(delivered),
            None => self.runs.push(vec![delivered]),
        }
    }

    /// The highest seq received, `0` before any.
    pub fn highest(&self) -> u64 {
        self.highest
    }
}

/// The correctness counters, summed over receivers; all must be 0. A seq
/// that came late counts both as reordered and as a live gap (its
/// connection went past it first); so does an expected message delivered
/// wrong (lost, misdelivered, and a live gap where it should have been).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Correctness {
    /// Acked messages (by id) a receiver never got.
    pub lost: u64,
    /// Deliveries of a message a receiver already had.
    pub duplicated: u64,
    /// Deliveries that came after a higher seq.
    pub reordered: u64,
    /// Acked seqs a connection skipped between two it delivered.
    pub live_gaps: u64,
    /// Deliveries nobody should have had: into a room the receiver is not
    /// in, of an id no member of the room sent, from another user than its
    /// sender, or under another seq than its ack named.
    pub misdelivered: u64,
}

impl Correctness {
    /// Adds what receiver `me` of a room got, judged against the room's
    /// book `sent`.
    pub fn add(&mut self, me: usize, received: &Received, sent: &Sent) {
        let mut seen: HashSet<&ClientMsgId> = HashSet::new();
        let mut highest = 0;
        // The seqs each connection delivered, of the deliveries that match
        // a message: a misdelivery is counted as one, not as a gap too.
        let mut runs: Vec<Vec<u64>> = Vec::new();
        for run in &received.runs {
            let mut seqs = Vec::with_capacity(run.len());
            for delivered in run {
                // The receiver's own messages come too, in a rejoin's
                // backlog, and live to a new connection when an earlier
                // one sent them: not expected, but no misdelivery.
                let matches = sent.messages.get(&delivered.id).is_some_and(|m| {
                    m.user == delivered.from
                        && match m.acked {
                            Acked::Seq(seq) => seq == delivered.seq,
                            Acked::No | Acked::WithoutSeq => true,
                        }
                });
                if !matches {
                    self.misdelivered += 1;
                    continue;
                }
                seqs.push(delivered.seq);
                if !seen.insert(&delivered.id) {
                    self.duplicated += 1;
                    continue;
                }
                if delivered.seq < highest {
                    self.reordered += 1;
                }
                highest = highest.max(delivered.seq);
            }
            runs.push(seqs);
        }
        let mut expected_seqs = BTreeSet::new();
        for (id, message) in sent.expected_by(me) {
            if !seen.contains(id) {
                self.lost += 1;
            }
            if let Acked::Seq(seq) = message.acked {
                expected_seqs.insert(seq);
            }
        }
        self.live_gaps += runs
            .iter()
            .flat_map(|run| run.windows(2))
            .filter(|pair| pair[0] < pair[1])
            .map(|pair| expected_seqs.range(pair[0] + 1..pair[1]).count() as u64)
            .sum::<u64>();
    }

    /// Adds deliveries into a room the receiver is not in.
    pub fn add_misdelivered(&mut self, count: u64) {
        self.misdelivered += count;
    }

    /// Whether nothing was lost, duplicated, reordered, skipped live or
    /// misdelivered.
    pub fn is_clean(&self) -> bool {
        *self == Correctness::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A room of senders 0 (the receiver), 1 and 2: each entry is (client
    /// id, sender, what its ack said); user ids are "u{sender}".
    fn book(messages: &[(&str, usize, Acked)]) -> Sent {
        let mut sent = Sent::default();
        for (id, sender, acked) in messages {
            sent.insert(
                ClientMsgId::from(*id),
                Message {
                    sender: *sender,
                    user: format!("u{sender}"),
                    acked: *acked,
                },
            );
        }
        sent
    }

    /// A delivery as (client id, sender, seq).
    type Delivery = (&'static str, usize, u64);

    /// Deliveries, one connection each slice.
    fn received(runs: &[&[Delivery]]) -> Received {
        let mut received = Received::default();
        for run in runs {
            received.reconnected();
            for (id, sender, seq) in *run {
                received.record(Delivered {
                    id: ClientMsgId::from(*id),
                    from: format!("u{sender}"),
                    seq: *seq,
                });
            }
        }
        received
    }

    fn judge(sent: &Sent, received: &Received) -> Correctness {
        let mut total = Correctness::default();
        total.add(0, received, sent);
        total
    }

    /// a, b, c from sender 1 acked as 3, 4, 5; d from the receiver itself.
    fn three_and_own() -> Sent {
        book(&[
            ("a", 1, Acked::Seq(3)),
            ("b", 1, Acked::Seq(4)),
            ("c", 2, Acked::Seq(5)),
            ("d", 0, Acked::Seq(6)),
        ])
    }

    #[test]
    fn counts_each_kind_of_fault() {
        let sent = three_and_own();
        let cases: [(&str, &[Delivery], Correctness); 9] = [
            (
                "clean",
                &[("a", 1, 3), ("b", 1, 4), ("c", 2, 5)],
                Correctness::default(),
            ),
            (
                "gap",
                &[("a", 1, 3), ("c", 2, 5)],
                Correctness {
                    lost: 1,
                    live_gaps: 1,
                    ..Default::default()
                },
            ),
            (
                "duplicate",
                &[("a", 1, 3), ("b", 1, 4), ("b", 1, 4), ("c", 2, 5)],
                Correctness {
                    duplicated: 1,
                    ..Default::default()
                },
            ),
            (
                "reorder",
                &[("a", 1, 3), ("c", 2, 5), ("b", 1, 4)],
                Correctness {
                    reordered: 1,
                    live_gaps: 1,
                    ..Default::default()
                },
            ),
            (
                "an id nobody sent",
                &[("a", 1, 3), ("b", 1, 4), ("c", 2, 5), ("x", 1, 7)],
                Correctness {
                    misdelivered: 1,
                    ..Default::default()
                },
            ),
            (
                "another sender's name",
                &[("a", 1, 3), ("b", 2, 4), ("c", 2, 5)],
                Correctness {
                    lost: 1,
                    live_gaps: 1,
                    misdelivered: 1,
                    ..Default::default()
                },
            ),
            (
                "another seq than the ack's",
                &[("a", 1, 3), ("b", 1, 9), ("c", 2, 5)],
                Correctness {
                    lost: 1,
                    live_gaps: 1,
                    misdelivered: 1,
                    ..Default::default()
                },
            ),
            (
                "its own message, as a rejoin's backlog has it",
                &[("a", 1, 3), ("b", 1, 4), ("c", 2, 5), ("d", 0, 6)],
                Correctness::default(),
            ),
            (
                "the same seq under two ids",
                &[("a", 1, 3), ("b", 1, 3), ("c", 2, 5)],
                Correctness {
                    lost: 1,
                    live_gaps: 1,
                    misdelivered: 1,
                    ..Default::default()
                },
            ),
        ];
        for (name, got, want) in cases {
            let total = judge(&sent, &received(&[got]));
            assert_eq!(total, want, "{name}");
            assert_eq!(total.is_clean(), want == Correctness::default(), "{name}");
        }
    }

    /// An ack that lost its seq still makes the message expected, by id:
    /// a run whose acks all lack their seq cannot pass with nothing
    /// delivered.
    #[test]
    fn a_message_acked_without_seq_is_still_expected_by_id() {
        let sent = book(&[("a", 1, Acked::WithoutSeq), ("b", 1, Acked::WithoutSeq)]);
        assert_eq!(judge(&sent, &received(&[])).lost, 2);
        assert!(judge(&sent, &received(&[&[("a", 1, 3), ("b", 1, 4)]])).is_clean());
    }

    /// A message stored whose ack never came (the run ended first) may be
    /// delivered; it is not expected.
    #[test]
    fn an_unacked_message_may_arrive_but_need_not() {
        let sent = book(&[("a", 1, Acked::Seq(3)), ("b", 1, Acked::No)]);
        assert!(judge(&sent, &received(&[&[("a", 1, 3)]])).is_clean());
        assert!(judge(&sent, &received(&[&[("a", 1, 3), ("b", 1, 4)]])).is_clean());
    }

    #[test]
    fn counters_sum_over_receivers() {
        let sent = three_and_own();
        let mut total = Correctness::default();
        total.add(0, &received(&[&[("a", 1, 3), ("b", 1, 4)]]), &sent);
        total.add(1, &received(&[&[("c", 2, 5), ("c", 2, 5)]]), &sent);
        assert_eq!(
            total,
            Correctness {
                lost: 2,
                duplicated: 1,
                ..Default::default()
            },
            "0 lost c; 1 lost d and got c twice"
        );
    }

    #[test]
    fn a_gap_counts_as_live_only_within_one_connection() {
        let sent = book(&[
            ("a", 1, Acked::Seq(1)),
            ("b", 1, Acked::Seq(2)),
            ("c", 1, Acked::Seq(3)),
            ("d", 1, Acked::Seq(4)),
            ("e", 1, Acked::Seq(5)),
            ("f", 1, Acked::Seq(6)),
        ]);
        // Reconnected, and resumed from 4: 3 came by no connection, but no
        // connection skipped it live.
        let received = received(&[&[("a", 1, 1), ("b", 1, 2)], &[("d", 1, 4), ("f", 1, 6)]]);
        let total = judge(&sent, &received);
        assert_eq!(total.live_gaps, 1, "5 was skipped live");
        assert_eq!(total.lost, 2, "3 and 5 never came");
    }
}
