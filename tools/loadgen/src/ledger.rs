//! Correctness accounting: what each receiver got, against what was acked.
//!
//! Within a room every receiver must get every seq acked to *another*
//! sender exactly once, in increasing order. A receiver records what it
//! got; at the end, the acked seqs tell what it lost, and which it missed
//! live: an acked seq between two seqs one connection delivered one after
//! the other (a gap skipped instead of filled).

use std::collections::{BTreeSet, HashSet};

/// What one receiver got in one room.
#[derive(Debug, Default)]
pub struct Received {
    seen: HashSet<u64>,
    highest: u64,
    /// Seqs that arrived more than once.
    pub duplicated: u64,
    /// Seqs that arrived after a higher one.
    pub reordered: u64,
    /// What each connection delivered, in order: backlog, then live.
    runs: Vec<Vec<u64>>,
}

impl Received {
    /// Starts the record of a new connection.
    pub fn reconnected(&mut self) {
        self.runs.push(Vec::new());
    }

    /// Records a delivered seq.
    pub fn record(&mut self, seq: u64) {
        match self.runs.last_mut() {
            Some(run) => run.push(seq),
            None => self.runs.push(vec![seq]),
        }
        if !self.seen.insert(seq) {
            self.duplicated += 1;
            return;
        }
        if seq < self.highest {
            self.reordered += 1;
        }
        self.highest = self.highest.max(seq);
    }

    /// The highest seq received, `0` before any.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// How many of `expected` (the seqs acked to other senders in the
    /// room) never arrived.
    pub fn lost<'a>(&self, expected: impl IntoIterator<Item = &'a u64>) -> u64 {
        expected
            .into_iter()
            .filter(|seq| !self.seen.contains(seq))
            .count() as u64
    }

    /// How many of `expected` one connection skipped: each lies between two
    /// seqs that connection delivered one right after the other.
    pub fn live_gaps(&self, expected: &BTreeSet<u64>) -> u64 {
        self.runs
            .iter()
            .flat_map(|run| run.windows(2))
            .filter(|pair| pair[0] < pair[1])
            .map(|pair| expected.range(pair[0] + 1..pair[1]).count() as u64)
            .sum()
    }
}

/// The correctness counters, summed over receivers; all must be 0. A seq
/// that came late counts both as reordered and as a live gap (its
/// connection went past it first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Correctness {
    /// Acked messages a receiver never got.
    pub lost: u64,
    /// Deliveries of a seq a receiver already had.
    pub duplicated: u64,
    /// Deliveries that came after a higher seq.
    pub reordered: u64,
    /// Acked seqs a connection skipped between two it delivered.
    pub live_gaps: u64,
}

impl Correctness {
    /// Adds one receiver's counts, given the seqs it should have got.
    pub fn add<'a>(&mut self, received: &Received, expected: impl IntoIterator<Item = &'a u64>) {
        let expected: BTreeSet<u64> = expected.into_iter().copied().collect();
        self.live_gaps += received.live_gaps(&expected);
        self.lost += received.lost(&expected);
        self.duplicated += received.duplicated;
        self.reordered += received.reordered;
    }

    /// Whether nothing was lost, duplicated, reordered or skipped live.
    pub fn is_clean(&self) -> bool {
        *self == Correctness::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(seqs: &[u64]) -> Received {
        let mut received = Received::default();
        for seq in seqs {
            received.record(*seq);
        }
        received
    }

    #[test]
    fn counts_each_kind_of_fault() {
        struct Case {
            name: &'static str,
            got: &'static [u64],
            expected: &'static [u64],
            want: Correctness,
        }
        let cases = [
            Case {
                name: "clean",
                got: &[3, 4, 5],
                expected: &[3, 4, 5],
                want: Correctness::default(),
            },
            Case {
                name: "gap",
                got: &[3, 5],
                expected: &[3, 4, 5],
                want: Correctness {
                    lost: 1,
                    live_gaps: 1,
                    ..Default::default()
                },
            },
            Case {
                name: "duplicate",
                got: &[3, 4, 4, 5],
                expected: &[3, 4, 5],
                want: Correctness {
                    duplicated: 1,
                    ..Default::default()
                },
            },
            Case {
                name: "reorder",
                got: &[3, 5, 4],
                expected: &[3, 4, 5],
                want: Correctness {
                    reordered: 1,
                    live_gaps: 1,
                    ..Default::default()
                },
            },
            Case {
                name: "own messages are not expected",
                got: &[3, 5],
                expected: &[3, 5],
                want: Correctness::default(),
            },
            Case {
                name: "all at once",
                got: &[10, 12, 11, 12],
                expected: &[10, 11, 12, 13],
                want: Correctness {
                    lost: 1,
                    duplicated: 1,
                    reordered: 1,
                    live_gaps: 1,
                },
            },
        ];
        for case in cases {
            let mut total = Correctness::default();
            total.add(&received(case.got), case.expected);
            assert_eq!(total, case.want, "{}", case.name);
            assert_eq!(
                total.is_clean(),
                case.want == Correctness::default(),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn counters_sum_over_receivers() {
        let mut total = Correctness::default();
        total.add(&received(&[1, 2]), &[1, 2, 3]);
        total.add(&received(&[1, 1]), &[1]);
        assert_eq!(
            total,
            Correctness {
                lost: 1,
                duplicated: 1,
                reordered: 0,
                live_gaps: 0,
            }
        );
    }

    #[test]
    fn a_gap_counts_as_live_only_within_one_connection() {
        let expected: BTreeSet<u64> = [1, 2, 3, 4, 5, 6].into();
        let mut received = Received::default();
        for seq in [1, 2] {
            received.record(seq);
        }
        // Reconnected, and resumed from 4: 3 came by no connection, but no
        // connection skipped it live.
        received.reconnected();
        for seq in [4, 6] {
            received.record(seq);
        }
        assert_eq!(received.live_gaps(&expected), 1, "5 was skipped live");
        assert_eq!(received.lost(&expected), 2, "3 and 5 never came");
    }
}
