//! Every NATS subject cavlo uses. No other crate writes a subject string.
//!
//! Room names become subject tokens, so builders take a [`RoomId`] that the
//! caller has checked with [`RoomId::is_subject_safe`].

use crate::id::{ConnId, GatewayId, MediaNodeId, ModeratorId, RoomId};

/// Gateways send [`ModerationRequest`](crate::event::ModerationRequest)s here
/// (request/reply) for a connection not yet tied to a moderator. Every
/// moderator listens in queue group [`MODERATOR_QUEUE`], so exactly one
/// answers. Not stored.
pub const MODERATE: &str = "cavlo.moderate";

/// Queue group of the moderators on [`MODERATE`].
pub const MODERATOR_QUEUE: &str = "moderator";

/// One moderator's own request subject. Gateways send a connection's later
/// requests here so one moderator sees all of a connection's traffic and its
/// rate limit holds however many moderators run. Not stored.
pub fn moderate_direct(moderator: &ModeratorId) -> String {
    format!("{MODERATE}.{moderator}")
}

/// Name of the JetStream stream that holds chat backlogs. History creates and
/// configures it; the moderator is its only writer.
pub const CHAT_STREAM: &str = "CAVLO_CHAT";

/// JetStream's direct-get API for [`CHAT_STREAM`]: history reads a room's
/// backlog with one batched request here, answered by any replica.
pub const CHAT_DIRECT_GET: &str = "$JS.API.DIRECT.GET.CAVLO_CHAT";

/// A header on every stored chat message: the room seq of the message the
/// moderator stored right before it, or `0` when the room had no retained
/// message then (a new room, or one whose backlog had all expired). With it,
/// history tells a trimmed backlog from a room whose seqs simply do not
/// start at 1.
pub const PREV_SEQ_HEADER: &str = "Cavlo-Prev-Seq";

/// The subjects [`CHAT_STREAM`] captures.
pub const CHAT_STORE_ALL: &str = "cavlo.chat.*";

/// Where the moderator stores a room's accepted chat messages (MessagePack
/// [`ChatMessage`](crate::client::ChatMessage)), each with its per-room seq.
/// Stored in [`CHAT_STREAM`]; published with an expected last subject
/// sequence, so seqs are gap-free and ordered even with many moderators.
pub fn chat_store(room: &RoomId) -> String {
    format!("cavlo.chat.{room}")
}

/// Where a chat message is announced once JetStream has stored it: the
/// stream republishes each stored message here itself ([`CHAT_REPUBLISH`]),
/// payload and headers ([`PREV_SEQ_HEADER`] included), so no moderator
/// publishes a second copy. Gateways subscribe (via [`room_deliveries`])
/// while the room has local members. Not stored (core NATS, at most once);
/// a gateway that misses one finds it in the backlog.
pub fn chat_deliver(room: &RoomId) -> String {
    format!("cavlo.deliver.{room}.chat")
}

/// The republish destination of [`CHAT_STREAM`]: `cavlo.chat.<room>` maps to
/// [`chat_deliver`]`(<room>)`. Only the stream's leader republishes, once
/// per stored message, in stream order (checked on a 3-node cluster).
pub const CHAT_REPUBLISH: &str = "cavlo.deliver.{{wildcard(1)}}.chat";

/// Where the moderator announces a membership change
/// ([`PresenceChange`](crate::event::PresenceChange)) after writing it to
/// [`ROOMS_BUCKET`]. Not stored; ordered by the change's revision.
pub fn presence(room: &RoomId) -> String {
    format!("cavlo.deliver.{room}.presence")
}

/// Everything a gateway delivers for a room: [`chat_deliver`] and [`presence`].
pub fn room_deliveries(room: &RoomId) -> String {
    format!("cavlo.deliver.{room}.*")
}

/// The last token of a delivery subject, telling chat from presence.
pub const CHAT_TOKEN: &str = "chat";

/// Where the moderator hands a gateway the signals for its connections
/// ([`SignalDelivery`](crate::event::SignalDelivery)). Each gateway subscribes
/// to its own for its whole life. Never stored.
pub fn signals(gateway: &GatewayId) -> String {
    format!("cavlo.signal.{gateway}")
}

/// Where a moderator replies to a connection's chat, when it replies at all
/// (see [`Action::Chat`](crate::event::Action::Chat)): under the gateway's
/// reply `prefix` (an inbox of its own, which it subscribes to as
/// `{prefix}.*.*`), naming the connection and the attempt, so a late reply
/// to an earlier attempt is not taken for the current one. Never stored.
pub fn chat_reply(prefix: &str, conn: &ConnId, attempt: u64) -> String {
    format!("{prefix}.{conn}.{attempt}")
}

/// A gateway's [`chat_reply`] prefix, under `inbox`, one of its NATS
/// client's own inboxes (which its permissions let it subscribe to).
pub fn chat_reply_prefix(inbox: &str) -> String {
    format!("{inbox}.chat")
}

/// What a gateway subscribes to for every [`chat_reply`] under `prefix`.
pub fn chat_replies(prefix: &str) -> String {
    format!("{prefix}.*.*")
}

/// The connection and attempt a [`chat_reply`] subject names.
pub fn parse_chat_reply(subject: &str) -> Option<(ConnId, u64)> {
    let (rest, attempt) = subject.rsplit_once('.')?;
    let (_, conn) = rest.rsplit_once('.')?;
    Some((ConnId(conn.to_owned()), attempt.parse().ok()?))
}

/// Gateways announce they are alive here ([`Heartbeat`](crate::event::Heartbeat));
/// moderators and gateways listen, and consider a gateway gone after
/// missing its heartbeats for a while. Not stored.
pub const GATEWAY_HEARTBEAT: &str = "cavlo.gateway.heartbeat";

/// Moderators announce they are alive here
/// ([`ModeratorHeartbeat`](crate::event::ModeratorHeartbeat)); gateways
/// listen, to send each room's chat to one live moderator. Not stored.
pub const MODERATOR_HEARTBEAT: &str = "cavlo.moderator.heartbeat";

/// The JetStream key-value bucket where moderators keep each room's members
/// ([`RoomState`](crate::event::RoomState)), changed only by compare-and-set
/// so a room's capacity holds under concurrent joins.
pub const ROOMS_BUCKET: &str = "CAVLO_ROOMS";

/// The JetStream stream behind [`ROOMS_BUCKET`] (key-value buckets are
/// streams named `KV_<bucket>`).
pub const ROOMS_STREAM: &str = "KV_CAVLO_ROOMS";

/// A room's key in [`ROOMS_BUCKET`]. Names made of `[A-Za-z0-9_-]` are used
/// as they are; any other name is hex-encoded behind `=`, a character plain
/// keys never contain, since bucket keys allow only a few characters.
pub fn room_key(room: &RoomId) -> String {
    let plain = room
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        room.as_str().to_owned()
    } else {
        let hex: String = room.as_str().bytes().map(|b| format!("{b:02x}")).collect();
        format!("={hex}")
    }
}

/// The room whose key in [`ROOMS_BUCKET`] is `key`: the inverse of
/// [`room_key`], for those who watch the bucket. `None` for a key
/// [`room_key`] never makes.
pub fn room_of_key(key: &str) -> Option<RoomId> {
    let room = match key.strip_prefix('=') {
        None => RoomId::from(key),
        Some(hex) => {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            RoomId(String::from_utf8(bytes).ok()?)
        }
    };
    // Only the one key room_key makes for it: not upper-case hex, `+`,
    // a hex-encoded plain name or a plain key with other characters.
    (room_key(&room) == key).then_some(room)
}

/// Gateways ask history for a room's backlog here (request/reply,
/// [`BacklogRequest`](crate::event::BacklogRequest)). History instances share
/// the load in queue group [`HISTORY_QUEUE`]. Not stored.
pub const HISTORY_BACKLOG: &str = "cavlo.history.backlog";

/// Queue group of the history instances on [`HISTORY_BACKLOG`].
pub const HISTORY_QUEUE: &str = "history";

/// Media nodes announce they are alive, their load and whether they are
/// draining here ([`MediaHeartbeat`](crate::call::MediaHeartbeat)); gateways
/// and the other nodes listen. Not stored.
pub const MEDIA_HEARTBEAT: &str = "cavlo.media.heartbeat";

/// Where a gateway asks one media node to join a connection to a room's call
/// (request/reply, [`CallJoin`](crate::call::CallJoin)). Not stored.
pub fn media_join(node: &MediaNodeId) -> String {
    format!("cavlo.media.{node}.join")
}

/// Where a gateway tells one media node that a connection left a call
/// ([`CallLeave`](crate::call::CallLeave)). Not stored.
pub fn media_leave(node: &MediaNodeId) -> String {
    format!("cavlo.media.{node}.leave")
}

/// What a media node subscribes to for its own [`media_join`] and
/// [`media_leave`].
pub fn media_node(node: &MediaNodeId) -> String {
    format!("cavlo.media.{node}.*")
}

/// The JetStream key-value bucket recording which media node holds each
/// room's call (the key is [`room_key`], the value the node's id), written
/// only by media nodes and only by compare-and-set, so two nodes never hold
/// one room's call.
pub const CALLS_BUCKET: &str = "CAVLO_CALLS";

/// A subject nobody subscribes to, unique per call. A request to it comes
/// back from the server as "no responders" only after the server has
/// processed everything sent before it on the same connection, which makes
/// it a round trip that proves earlier subscriptions are in place.
pub fn round_trip(token: &str) -> String {
    format!("cavlo.roundtrip.{token}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn chat_replies_name_the_connection_and_attempt() {
        let prefix = chat_reply_prefix("_INBOX.abc");
        let subject = chat_reply(&prefix, &ConnId("c1".into()), 42);
        assert_eq!(subject, "_INBOX.abc.chat.c1.42");
        assert_eq!(chat_replies(&prefix), "_INBOX.abc.chat.*.*");
        assert_eq!(parse_chat_reply(&subject), Some((ConnId("c1".into()), 42)));
        assert_eq!(parse_chat_reply("_INBOX.abc.chat.c1.x"), None);
    }

    #[test]
    fn room_subjects_keep_the_room_in_one_token() {
        let room = RoomId::from("lobby");
        assert_eq!(chat_store(&room), "cavlo.chat.lobby");
        assert_eq!(chat_deliver(&room), "cavlo.deliver.lobby.chat");
        assert_eq!(presence(&room), "cavlo.deliver.lobby.presence");
        assert!(chat_deliver(&room).ends_with(CHAT_TOKEN));
        assert_eq!(moderate_direct(&"m1".into()), "cavlo.moderate.m1");
        assert!(CHAT_STORE_ALL.starts_with("cavlo.chat."));
        assert_eq!(
            CHAT_REPUBLISH.replace("{{wildcard(1)}}", room.as_str()),
            chat_deliver(&room),
            "the stream republishes where gateways listen"
        );
    }

    /// The subject table of docs/architecture.md, first column.
    fn documented_subjects() -> BTreeSet<String> {
        include_str!("../../docs/architecture.md")
            .lines()
            .filter_map(|line| line.strip_prefix("| `cavlo."))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(subject, _)| format!("cavlo.{subject}"))
            .collect()
    }

    #[test]
    fn every_subject_is_the_documented_one() {
        let (room, gateway) = (RoomId::from("<room>"), GatewayId::from("<gateway>"));
        let code: BTreeSet<String> = [
            MODERATE.to_owned(),
            moderate_direct(&"<moderator>".into()),
            chat_store(&room),
            chat_deliver(&room),
            presence(&room),
            signals(&gateway),
            GATEWAY_HEARTBEAT.to_owned(),
            MODERATOR_HEARTBEAT.to_owned(),
            HISTORY_BACKLOG.to_owned(),
            MEDIA_HEARTBEAT.to_owned(),
            media_join(&"<node>".into()),
            media_leave(&"<node>".into()),
            round_trip("<id>"),
        ]
        .into();
        assert_eq!(code, documented_subjects());
        assert_eq!(room_deliveries(&room), "cavlo.deliver.<room>.*");
        assert_eq!(media_node(&"n1".into()), "cavlo.media.n1.*");
        assert_eq!(CHAT_STORE_ALL, "cavlo.chat.*");
        let table = include_str!("../../docs/architecture.md");
        for documented in [
            format!("queue group `{MODERATOR_QUEUE}`"),
            format!("queue group `{HISTORY_QUEUE}`"),
            format!("stream `{CHAT_STREAM}`"),
        ] {
            assert!(
                table.contains(&documented),
                "{documented} is not documented"
            );
        }
    }

    #[test]
    fn the_rooms_stream_is_the_buckets() {
        assert_eq!(ROOMS_STREAM, format!("KV_{ROOMS_BUCKET}"));
        assert_eq!(CHAT_DIRECT_GET, format!("$JS.API.DIRECT.GET.{CHAT_STREAM}"));
    }

    #[test]
    fn room_keys_are_valid_and_distinct() {
        const CASES: &[(&str, &str)] = &[
            ("lobby", "lobby"),
            ("a-b_C9", "a-b_C9"),
            ("ü", "=c3bc"),
            ("a:b", "=613a62"),
        ];
        for (room, key) in CASES {
            assert_eq!(room_key(&RoomId::from(*room)), *key);
            assert_eq!(room_of_key(key), Some(RoomId::from(*room)), "{key}");
        }
        for never_made in ["=6", "=zz", "=ff", "=+f", "=C3BC", "=61", "=", "a:b"] {
            assert_eq!(room_of_key(never_made), None, "{never_made}");
        }
        assert_ne!(room_key(&"=61".into()), room_key(&"a".into()));
    }
}
