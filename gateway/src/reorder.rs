//! Putting a room's chat back in seq order for one connection.
//!
//! Seqs are gap-free per room and the chat stream republishes each stored
//! message in order, but at most once (core NATS), and while moderators of
//! an older version still announce chat themselves, twice and out of
//! order. A connection therefore delivers seq n only right after n − 1 (or,
//! for a member who joined the room empty and so has no seq, the room's
//! first message): a later seq is held until the gap is filled, live or,
//! once the gap is older than the reorder timeout, from history. Every
//! member gets every stored message once, in order; a gap history cannot
//! fill either ends the connection with a resync close.

use std::collections::BTreeMap;

use schemas::id::Seq;
use tokio::time::Instant;

/// Items of one room, released in seq order.
#[derive(Debug)]
pub struct Reorder<T> {
    /// The last seq released (or already in the client's backlog).
    last: Seq,
    /// How many items may wait behind gaps.
    max_held: usize,
    /// Items after a gap, waiting for it to be filled.
    held: BTreeMap<Seq, T>,
    /// Since when the oldest open gap has been waiting.
    gap_since: Option<Instant>,
}

/// More items are held than the bound allows: the connection must resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl<T> Reorder<T> {
    /// Starts after `last`, the last seq the client already has; at most
    /// `max_held` items wait behind gaps.
    pub fn new(last: Seq, max_held: usize) -> Self {
        Self {
            last,
            max_held,
            held: BTreeMap::new(),
            gap_since: None,
        }
    }

    /// Starts over right before `first`, dropping what is held: for a client
    /// that had no seq to count from, once history says where the room starts.
    pub fn restart_before(&mut self, first: Seq) {
        *self = Self::new(Seq(first.0.saturating_sub(1)), self.max_held);
    }

    /// The last seq released.
    pub fn last(&self) -> Seq {
        self.last
    }

    /// Since when a gap has been open, if one is.
    pub fn gap_since(&self) -> Option<Instant> {
        self.gap_since
    }

    /// Offers the item with `seq`; whatever is now in order is pushed to
    /// `ready`, oldest first. A seq already released is dropped; one after a
    /// gap is held, at most `max_held` of them.
    ///
    /// `prev`, the seq stored right before this one if known, marks a
    /// room's first message (`Seq(0)`: nothing was retained when it was
    /// stored): it starts the room for a member who joined it empty and so
    /// has `last` 0. Only that case: a `prev` naming any other seq proves
    /// nothing a seq one above `last` does not.
    pub fn offer(
        &mut self,
        seq: Seq,
        prev: Option<Seq>,
        item: T,
        now: Instant,
        ready: &mut Vec<T>,
    ) -> Result<(), Overflow> {
        if seq <= self.last {
            return Ok(());
        }
        let starts_room = self.last == Seq(0) && prev == Some(Seq(0));
        if seq != self.last.next() && !starts_room {
            if self.held.len() >= self.max_held && !self.held.contains_key(&seq) {
                return Err(Overflow);
            }
            self.held.insert(seq, item);
            self.gap_since.get_or_insert(now);
            return Ok(());
        }
        ready.push(item);
        self.last = seq;
        while let Some(item) = self.held.remove(&self.last.next()) {
            ready.push(item);
            self.last = self.last.next();
        }
        // A copy of a released seq (the same message announced twice while
        // moderators of an older version still announce) must not stay held.
        self.held = self.held.split_off(&self.last.next());
        // Anything still held sits after a new gap, which starts waiting now.
        self.gap_since = (!self.held.is_empty()).then_some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer_all(order: &mut Reorder<u64>, seqs: &[u64]) -> Vec<u64> {
        let mut ready = Vec::new();
        for &seq in seqs {
            order
                .offer(Seq(seq), None, seq, Instant::now(), &mut ready)
                .expect("within the bound");
        }
        ready
    }

    /// Name, last seq before, seqs offered, seqs released, last seq after.
    type Case = (&'static str, u64, &'static [u64], &'static [u64], u64);

    #[test]
    fn releases_in_seq_order_once() {
        const CASES: &[Case] = &[
            ("in order", 0, &[1, 2, 3], &[1, 2, 3], 3),
            ("swapped", 0, &[2, 1, 3], &[1, 2, 3], 3),
            ("reversed", 10, &[14, 13, 12, 11], &[11, 12, 13, 14], 14),
            ("duplicates and old seqs", 5, &[3, 6, 6, 5, 7], &[6, 7], 7),
            ("a gap stays open", 0, &[1, 3, 4], &[1], 1),
        ];
        for (name, start, offered, released, last) in CASES {
            let mut order = Reorder::new(Seq(*start), 16);
            assert_eq!(offer_all(&mut order, offered), *released, "{name}");
            assert_eq!(order.last(), Seq(*last), "{name}");
        }
    }

    #[test]
    fn a_rooms_first_message_starts_a_member_who_joined_it_empty() {
        // Name, last seq before, (seq, prev) offered, seqs released.
        type PrevCase = (
            &'static str,
            u64,
            &'static [(u64, Option<u64>)],
            &'static [u64],
        );
        const CASES: &[PrevCase] = &[
            (
                "a room's first message starts a member who joined it empty",
                0,
                &[(500, Some(0)), (501, Some(500))],
                &[500, 501],
            ),
            (
                "what was held behind it follows",
                0,
                &[(501, Some(500)), (500, Some(0))],
                &[500, 501],
            ),
            (
                "without a prev it waits for the gap",
                0,
                &[(500, None)],
                &[],
            ),
            (
                "a room's first message is no start for a member with a seq",
                7,
                &[(500, Some(0))],
                &[],
            ),
            ("a prev further back is a gap", 0, &[(502, Some(501))], &[]),
            (
                "a prev naming the last seq is no reason to skip a gap",
                7,
                &[(500, Some(7))],
                &[],
            ),
            (
                "a held copy of the room's first message goes once it is released",
                0,
                &[(500, None), (500, Some(0))],
                &[500],
            ),
        ];
        for (name, start, offered, released) in CASES {
            let mut order = Reorder::new(Seq(*start), 16);
            let mut ready = Vec::new();
            for &(seq, prev) in *offered {
                order
                    .offer(Seq(seq), prev.map(Seq), seq, Instant::now(), &mut ready)
                    .unwrap();
            }
            assert_eq!(ready, *released, "{name}");
            // Whatever was not released waits behind a gap, and nothing else.
            let waiting = offered.iter().any(|(seq, _)| Seq(*seq) > order.last());
            assert_eq!(order.gap_since().is_some(), waiting, "{name}");
        }
    }

    #[test]
    fn a_gap_is_timed_from_when_it_opened_and_closes_when_filled() {
        let mut order = Reorder::new(Seq(0), 16);
        let mut ready = Vec::new();
        let opened = Instant::now();
        order.offer(Seq(2), None, 2, opened, &mut ready).unwrap();
        order
            .offer(
                Seq(3),
                None,
                3,
                opened + std::time::Duration::from_secs(1),
                &mut ready,
            )
            .unwrap();
        assert_eq!(order.gap_since(), Some(opened), "the oldest gap counts");
        order
            .offer(Seq(1), None, 1, Instant::now(), &mut ready)
            .unwrap();
        assert_eq!(ready, [1, 2, 3]);
        assert_eq!(order.gap_since(), None);
    }

    #[test]
    fn holding_more_than_the_bound_overflows() {
        let mut order = Reorder::new(Seq(0), 2);
        let mut ready = Vec::new();
        for seq in 2..4 {
            order
                .offer(Seq(seq), None, seq, Instant::now(), &mut ready)
                .unwrap();
        }
        assert_eq!(
            order.offer(Seq(9), None, 9, Instant::now(), &mut ready),
            Err(Overflow)
        );
        assert!(ready.is_empty());
    }
}
