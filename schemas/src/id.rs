//! Identifier newtypes, so that a room can never be passed where a connection belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A room's name as the client gave it. The moderator decides whether it is
    /// acceptable; [`RoomId::is_subject_safe`] is the hard floor every rule keeps.
    RoomId
);
string_id!(
    /// One WebSocket connection, unique across all gateways.
    ConnId
);
string_id!(
    /// The authenticated user (the token's `sub` claim).
    UserId
);
string_id!(
    /// The id a client gives a chat message so that resending it is idempotent.
    ClientMsgId
);
string_id!(
    /// One attempt of a connection to join a room, so that the leave which
    /// undoes a join the gateway gave up on can also cancel it if it arrives
    /// late (see `Action::Leave`).
    JoinId
);
string_id!(
    /// One gateway process.
    GatewayId
);
string_id!(
    /// One moderator process; gateways stick each connection to one of them.
    ModeratorId
);
string_id!(
    /// One media node: the process that forwards the media of the calls
    /// placed on it.
    MediaNodeId
);

/// Longest room name any configuration may allow: it becomes a NATS subject token.
pub const MAX_ROOM_LEN: usize = 128;

/// Longest client message id: it is part of the JetStream deduplication key.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;

impl RoomId {
    /// Whether the name can be one NATS subject token: non-empty, at most
    /// [`MAX_ROOM_LEN`] bytes, and free of `.`, `*`, `>` and whitespace, which
    /// would let a room name address other subjects.
    pub fn is_subject_safe(&self) -> bool {
        !self.0.is_empty()
            && self.0.len() <= MAX_ROOM_LEN
            && !self
                .0
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    }
}

impl ClientMsgId {
    /// Whether the id is acceptable: 1 to [`MAX_CLIENT_MSG_ID_LEN`] bytes of
    /// printable characters without whitespace.
    pub fn is_valid(&self) -> bool {
        !self.0.is_empty()
            && self.0.len() <= MAX_CLIENT_MSG_ID_LEN
            && !self.0.chars().any(|c| c.is_whitespace() || c.is_control())
    }
}

/// A room's message sequence number. Within a room every stored chat message
/// has one, and they grow by exactly one; `Seq(0)` means "nothing yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number that follows this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_safety() {
        const CASES: &[(&str, bool)] = &[
            ("lobby", true),
            ("a-b_c", true),
            ("ünïcode", true),
            ("", false),
            ("a.b", false),
            ("a*", false),
            (">", false),
            ("a b", false),
            ("a\tb", false),
        ];
        for (name, safe) in CASES {
            assert_eq!(
                RoomId::from(*name).is_subject_safe(),
                *safe,
                "room {name:?}"
            );
        }
        assert!(!RoomId("x".repeat(MAX_ROOM_LEN + 1)).is_subject_safe());
    }

    #[test]
    fn client_msg_id_validity() {
        const CASES: &[(&str, bool)] = &[
            ("m1", true),
            ("550e8400-e29b-41d4-a716-446655440000", true),
            ("", false),
            ("has space", false),
            ("new\nline", false),
        ];
        for (id, valid) in CASES {
            assert_eq!(ClientMsgId::from(*id).is_valid(), *valid, "id {id:?}");
        }
        assert!(!ClientMsgId("x".repeat(MAX_CLIENT_MSG_ID_LEN + 1)).is_valid());
    }
}
