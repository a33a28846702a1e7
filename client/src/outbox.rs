//! Chat sent and not yet answered, each found again by its id.

use std::collections::VecDeque;

use schemas::id::{ClientMsgId, RoomId};

/// Chat messages waiting for their `ack` or `error`, in sending order.
///
/// An answer is matched by room and client message id (ids are unique per
/// user and room), never by arrival order: order is what a gateway happens
/// to keep today, an id is what the protocol promises. What stays here
/// after a reconnect is resent, in order; resending an id is idempotent.
///
/// A client has a few messages in flight, so a scan finds one faster than
/// a map would.
#[derive(Debug)]
pub struct Outbox<T> {
    entries: VecDeque<(RoomId, ClientMsgId, T)>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<T> Outbox<T> {
    /// Keeps a message sent to `room` under `id`.
    pub fn push(&mut self, room: RoomId, id: ClientMsgId, message: T) {
        self.entries.push_back((room, id, message));
    }

    /// The message an answer names, removed: `None` for an id that is not
    /// waiting (answered already, or never sent by this client).
    pub fn take(&mut self, room: &RoomId, id: &ClientMsgId) -> Option<T> {
        let at = self.position(room, id)?;
        self.entries.remove(at).map(|(_, _, message)| message)
    }

    /// The message an answer names, kept.
    pub fn get_mut(&mut self, room: &RoomId, id: &ClientMsgId) -> Option<&mut T> {
        let at = self.position(room, id)?;
        self.entries.get_mut(at).map(|(_, _, message)| message)
    }

    /// The oldest message waiting.
    pub fn oldest(&self) -> Option<&T> {
        self.entries.front().map(|(_, _, message)| message)
    }

    /// Every message waiting, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomId, &ClientMsgId, &T)> {
        self.entries
            .iter()
            .map(|(room, id, message)| (room, id, message))
    }

    /// Every message waiting, oldest first, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&RoomId, &ClientMsgId, &mut T)> {
        self.entries
            .iter_mut()
            .map(|(room, id, message)| (&*room, &*id, message))
    }

    /// Removes and returns the messages to `room`, oldest first.
    pub fn take_room(&mut self, room: &RoomId) -> Vec<T> {
        let (taken, kept) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(to, _, _)| to == room);
        self.entries = kept;
        taken.into_iter().map(|(_, _, message)| message).collect()
    }

    /// Removes and returns every message, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.entries.drain(..).map(|(_, _, message)| message)
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, room: &RoomId, id: &ClientMsgId) -> Option<usize> {
        self.entries
            .iter()
            .position(|(to, sent, _)| to == room && sent == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_matched_by_room_and_id_in_any_order() {
        let (lobby, attic) = (RoomId::from("lobby"), RoomId::from("attic"));
        let mut outbox = Outbox::default();
        outbox.push(lobby.clone(), "m1".into(), 1);
        outbox.push(lobby.clone(), "m2".into(), 2);
        outbox.push(attic.clone(), "m1".into(), 3);
        assert_eq!(outbox.take(&lobby, &"m2".into()), Some(2), "newest first");
        assert_eq!(outbox.take(&lobby, &"m2".into()), None, "answered once");
        assert_eq!(outbox.take(&lobby, &"m9".into()), None, "never sent");
        assert_eq!(outbox.oldest(), Some(&1));
        assert_eq!(
            outbox.take(&attic, &"m1".into()),
            Some(3),
            "ids are per room"
        );
        let left: Vec<_> = outbox.iter().map(|(_, id, n)| (id.as_str(), *n)).collect();
        assert_eq!(left, [("m1", 1)]);
    }

    #[test]
    fn a_rooms_messages_leave_together_in_order() {
        let (lobby, attic) = (RoomId::from("lobby"), RoomId::from("attic"));
        let mut outbox = Outbox::default();
        for (n, room) in [&lobby, &attic, &lobby].into_iter().enumerate() {
            outbox.push(room.clone(), ClientMsgId(format!("m{n}")), n);
        }
        assert_eq!(outbox.take_room(&lobby), [0, 2]);
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox.drain().collect::<Vec<_>>(), [1]);
        assert!(outbox.is_empty());
    }
}
