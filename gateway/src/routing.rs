//! Which moderator stores a room's chat.
//!
//! Any moderator stores any room's chat correctly: the room writer's
//! compare-and-set on the room's tail keeps seqs gap-free however many
//! write. But two moderators writing one room race for its tail, and the
//! loser retries, so under load (or after an outage, when every client
//! resends at once) they slow each other down. So every gateway sends a
//! room's chat to the same moderator: of the moderators it heard within the
//! timeout, the one with the highest rendezvous score for the room.
//! Gateways that hear the same moderators agree without talking, and when a
//! moderator comes or goes only its share of rooms moves.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

use schemas::id::{ModeratorId, RoomId};

/// The live moderators, as this gateway heard them.
#[derive(Debug, Default)]
pub struct Moderators {
    live: RwLock<Arc<[ModeratorId]>>,
    /// Moderators that stopped answering; left out until their own next
    /// heartbeat, though they still count as heard within the timeout.
    gone: Mutex<HashSet<ModeratorId>>,
}

impl Moderators {
    /// Replaces the live set with the moderators heard within the timeout,
    /// less those found gone since.
    pub fn set(&self, heard: impl IntoIterator<Item = ModeratorId>) {
        let heard: Vec<ModeratorId> = heard.into_iter().collect();
        let mut gone = self.gone.lock().expect("moderators lock poisoned");
        // Once no longer heard at all, a gone moderator needs no entry.
        gone.retain(|m| heard.contains(m));
        let live = heard.into_iter().filter(|m| !gone.contains(m)).collect();
        *self.live.write().expect("moderators lock poisoned") = live;
    }

    /// Notes a heartbeat of `moderator`: it answers again.
    pub fn heard(&self, moderator: &ModeratorId) {
        self.gone
            .lock()
            .expect("moderators lock poisoned")
            .remove(moderator);
    }

    /// Drops a moderator that no longer answers, until it is heard again.
    pub fn forget(&self, gone: &ModeratorId) {
        self.gone
            .lock()
            .expect("moderators lock poisoned")
            .insert(gone.clone());
        let mut live = self.live.write().expect("moderators lock poisoned");
        *live = live.iter().filter(|m| *m != gone).cloned().collect();
    }

    /// How many moderators are live.
    pub fn count(&self) -> usize {
        self.live.read().expect("moderators lock poisoned").len()
    }

    /// The moderator that stores `room`'s chat, if any is known.
    pub fn owner(&self, room: &RoomId) -> Option<ModeratorId> {
        let live = self.live.read().expect("moderators lock poisoned").clone();
        live.iter().max_by_key(|m| score(room, m)).cloned()
    }
}

/// The rendezvous score of `moderator` for `room`: FNV-1a over both names,
/// a stable hash, so that every gateway computes the same one whatever it
/// was built with.
fn score(room: &RoomId, moderator: &ModeratorId) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = room
        .as_str()
        .bytes()
        .chain([0xff])
        .chain(moderator.as_str().bytes());
    let hash = bytes.fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    // FNV's low bits mix poorly for similar inputs; a final avalanche step
    // spreads rooms evenly.
    let hash = (hash ^ (hash >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moderators(ids: &[&str]) -> Moderators {
        let moderators = Moderators::default();
        moderators.set(ids.iter().map(|id| ModeratorId::from(*id)));
        moderators
    }

    fn rooms() -> impl Iterator<Item = RoomId> {
        (0..3000).map(|n| RoomId::from(format!("room-{n}").as_str()))
    }

    #[test]
    fn no_moderator_known_means_no_owner() {
        assert_eq!(Moderators::default().owner(&"lobby".into()), None);
    }

    #[test]
    fn the_owner_does_not_depend_on_the_order_moderators_were_heard() {
        let (a, b) = (
            moderators(&["m1", "m2", "m3"]),
            moderators(&["m3", "m1", "m2"]),
        );
        for room in rooms() {
            assert_eq!(a.owner(&room), b.owner(&room));
        }
    }

    #[test]
    fn a_gone_moderator_stays_out_until_its_own_heartbeat() {
        let moderators = moderators(&["m1", "m2"]);
        moderators.forget(&"m2".into());
        moderators.set(["m1".into(), "m2".into()]);
        assert_eq!(moderators.count(), 1, "still heard, but gone");
        moderators.heard(&"m2".into());
        moderators.set(["m1".into(), "m2".into()]);
        assert_eq!(moderators.count(), 2);
    }

    #[test]
    fn rooms_spread_evenly_and_only_a_gone_moderators_rooms_move() {
        let three = moderators(&["m1", "m2", "m3"]);
        let two = moderators(&["m1", "m2", "m3"]);
        two.forget(&"m3".into());
        let mut per_moderator = std::collections::HashMap::new();
        for room in rooms() {
            let owner = three.owner(&room).unwrap();
            *per_moderator.entry(owner.clone()).or_insert(0) += 1;
            if owner != ModeratorId::from("m3") {
                assert_eq!(two.owner(&room), Some(owner), "{room} moved");
            }
        }
        for (moderator, count) in per_moderator {
            assert!(
                (800..1200).contains(&count),
                "{moderator} owns {count} of 3000"
            );
        }
    }
}
