//! The media nodes this gateway hears, by their heartbeats: which one a
//! room's new call goes to, and which calls must move because their node
//! died or is draining.
//!
//! The cluster task ([`crate::cluster`]) records each heartbeat here and
//! drops the nodes silent for `media_timeout`. Connections with a call watch
//! the view: when their call's node is no longer usable they are told
//! `call_moved`, and their next `call_join` goes to a usable node, which
//! takes the room's call over (see the media service's placement).
//!
//! Gateways need not agree on which nodes are alive: a node that one
//! gateway still hears may be taken for dead by another node, which takes
//! its calls over. So the view also follows the calls bucket
//! ([`crate::placements`]), and a connection whose call's room was placed
//! on another node after its own join moves as well: a room's call never
//! stays split between two nodes.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemas::call::MediaHeartbeat;
use schemas::id::{MediaNodeId, RoomId};
use tokio::sync::watch;

/// What a node said of itself in its last heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLoad {
    /// Participants connected to it.
    pub participants: u32,
    /// It is stopping.
    pub draining: bool,
}

/// A room's entry in the calls bucket: the node that holds its call, by
/// the entry of this revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The node.
    pub node: MediaNodeId,
    /// The entry's revision in the calls bucket.
    pub revision: u64,
}

/// The live media nodes, as this gateway heard them, and where each room's
/// call is placed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    nodes: BTreeMap<MediaNodeId, NodeLoad>,
    placed: BTreeMap<RoomId, Placed>,
}

impl NodeView {
    /// Whether some node can take a call.
    pub fn available(&self) -> bool {
        self.nodes.values().any(|load| !load.draining)
    }

    /// Whether `node` can hold a call: live and not draining.
    pub fn usable(&self, node: &MediaNodeId) -> bool {
        self.nodes.get(node).is_some_and(|load| !load.draining)
    }

    /// The usable nodes, least loaded first (ties by id, so that gateways
    /// hearing the same loads agree).
    pub fn by_load(&self) -> Vec<MediaNodeId> {
        let mut usable: Vec<(&MediaNodeId, &NodeLoad)> = self
            .nodes
            .iter()
            .filter(|(_, load)| !load.draining)
            .collect();
        usable.sort_by_key(|(id, load)| (load.participants, *id));
        usable.into_iter().map(|(id, _)| id.clone()).collect()
    }

    /// Whether a call in `room` that `node` answered by the placement of
    /// revision `since` must move: the node is gone or draining, or a later
    /// placement gave the room's call to another node. A `since` of 0 (a
    /// node that does not say, during an upgrade) moves only with its node.
    pub fn must_move(&self, room: &RoomId, node: &MediaNodeId, since: u64) -> bool {
        !self.usable(node)
            || (since > 0
                && self
                    .placed
                    .get(room)
                    .is_some_and(|placed| placed.revision > since && placed.node != *node))
    }

    /// The usable node the calls bucket last named for `room`'s call.
    pub fn holder(&self, room: &RoomId) -> Option<&MediaNodeId> {
        self.placed
            .get(room)
            .map(|placed| &placed.node)
            .filter(|node| self.usable(node))
    }

    /// The same nodes usable, whatever their loads.
    fn same_usable(&self, other: &NodeView) -> bool {
        let usable = |view: &NodeView| -> Vec<MediaNodeId> {
            view.nodes
                .iter()
                .filter(|(_, load)| !load.draining)
                .map(|(id, _)| id.clone())
                .collect()
        };
        usable(self) == usable(other)
    }
}

/// The shared view, and its watchers.
#[derive(Debug)]
pub struct MediaNodes {
    view: watch::Sender<Arc<NodeView>>,
}

impl Default for MediaNodes {
    fn default() -> Self {
        Self {
            view: watch::Sender::new(Arc::default()),
        }
    }
}

impl MediaNodes {
    /// The nodes as heard now.
    pub fn view(&self) -> Arc<NodeView> {
        self.view.borrow().clone()
    }

    /// A receiver told each time the usable nodes change (a node arrived,
    /// died, or started draining); load changes alone tell nobody.
    pub fn subscribe(&self) -> watch::Receiver<Arc<NodeView>> {
        self.view.subscribe()
    }

    /// Records a node's heartbeat.
    pub fn heard(&self, beat: &MediaHeartbeat) {
        self.change(|nodes| {
            nodes.insert(
                beat.node.clone(),
                NodeLoad {
                    participants: beat.participants,
                    draining: beat.draining,
                },
            );
        });
    }

    /// Keeps only the nodes `alive` accepts.
    pub fn retain(&self, alive: impl Fn(&MediaNodeId) -> bool) {
        self.change(|nodes| nodes.retain(|id, _| alive(id)));
    }

    /// Records that `room`'s call is placed on `placed.node`; watchers are
    /// told when the room is newly placed or moved to another node.
    pub fn placed(&self, room: RoomId, placed: Placed) {
        self.update(|_, next| {
            let node = placed.node.clone();
            let before = next.placed.insert(room, placed);
            before.is_none_or(|before| before.node != node)
        });
    }

    /// Forgets `room`'s placement: its call ended.
    pub fn unplaced(&self, room: &RoomId) {
        self.update(|_, next| {
            next.placed.remove(room);
            false
        });
    }

    fn change(&self, edit: impl FnOnce(&mut BTreeMap<MediaNodeId, NodeLoad>)) {
        self.update(|view, next| {
            edit(&mut next.nodes);
            !next.same_usable(view)
        });
    }

    /// Replaces the view with a copy `edit` changed; watchers are told if
    /// `edit` (given the view as it was, and the copy) says so.
    fn update(&self, edit: impl FnOnce(&NodeView, &mut NodeView) -> bool) {
        self.view.send_if_modified(|view| {
            let mut next = NodeView::clone(view);
            let tell = edit(view, &mut next);
            *view = Arc::new(next);
            tell
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str, participants: u32, draining: bool) -> MediaHeartbeat {
        MediaHeartbeat {
            node: node.into(),
            participants,
            draining,
        }
    }

    #[test]
    fn new_calls_go_to_the_least_loaded_node_that_is_not_draining() {
        let nodes = MediaNodes::default();
        assert!(!nodes.view().available());
        nodes.heard(&beat("a", 5, false));
        nodes.heard(&beat("b", 2, false));
        nodes.heard(&beat("c", 0, true));
        let view = nodes.view();
        assert!(view.available());
        assert_eq!(view.by_load(), ["b".into(), "a".into()] as [MediaNodeId; 2]);
        assert!(!view.usable(&"c".into()));
        assert!(!view.usable(&"unknown".into()));
    }

    #[test]
    fn watchers_hear_of_nodes_that_come_go_or_drain_not_of_load() {
        let nodes = MediaNodes::default();
        let mut watcher = nodes.subscribe();
        nodes.heard(&beat("a", 0, false));
        assert!(watcher.has_changed().unwrap(), "a node arrived");
        watcher.borrow_and_update();
        nodes.heard(&beat("a", 7, false));
        assert!(!watcher.has_changed().unwrap(), "only its load changed");
        assert_eq!(nodes.view().nodes[&"a".into()].participants, 7);
        nodes.heard(&beat("b", 0, false));
        watcher.borrow_and_update();
        nodes.heard(&beat("a", 7, true));
        assert!(watcher.has_changed().unwrap(), "a drains");
        watcher.borrow_and_update();
        nodes.retain(|id| *id != MediaNodeId::from("b"));
        assert!(watcher.has_changed().unwrap(), "b died");
        assert!(!nodes.view().available());
    }

    fn placed(node: &str, revision: u64) -> Placed {
        Placed {
            node: node.into(),
            revision,
        }
    }

    #[test]
    fn a_call_moves_only_for_a_later_placement_on_another_node() {
        let nodes = MediaNodes::default();
        nodes.heard(&beat("a", 1, false));
        nodes.heard(&beat("b", 1, false));
        let room = RoomId::from("r");
        let mut watcher = nodes.subscribe();
        watcher.borrow_and_update();
        nodes.placed(room.clone(), placed("a", 5));
        assert!(watcher.has_changed().unwrap(), "a room placed");
        watcher.borrow_and_update();
        let view = nodes.view();
        assert!(!view.must_move(&room, &"a".into(), 5), "its own placement");
        assert_eq!(view.holder(&room), Some(&"a".into()));
        nodes.placed(room.clone(), placed("a", 6));
        assert!(!watcher.has_changed().unwrap(), "the same node again");
        nodes.placed(room.clone(), placed("b", 7));
        assert!(watcher.has_changed().unwrap(), "taken over");
        let view = nodes.view();
        assert!(
            view.must_move(&room, &"a".into(), 5),
            "a later one elsewhere"
        );
        assert!(
            !view.must_move(&room, &"b".into(), 7),
            "joined the new holder"
        );
        assert!(
            !view.must_move(&room, &"b".into(), 9),
            "an older change heard late"
        );
        assert!(
            !view.must_move(&room, &"a".into(), 0),
            "a node that does not say"
        );
        nodes.unplaced(&room);
        assert_eq!(nodes.view().holder(&room), None);
        nodes.retain(|id| *id != MediaNodeId::from("a"));
        assert!(
            nodes.view().must_move(&room, &"a".into(), 0),
            "its node died"
        );
    }
}
