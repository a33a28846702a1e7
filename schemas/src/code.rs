//! Codes a client can see: error codes in `error` frames and WebSocket close codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame. Errors never close the connection; only the
/// situations listed in [`CloseCode`] do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The token is missing, malformed, expired or not for this service.
    Unauthorized,
    /// The frame is malformed: not JSON, binary, an unknown `type`, a missing
    /// or unknown field, a bad message id, chat text empty once markup is
    /// removed, or signal data without what its kind needs.
    InvalidMessage,
    /// The room name breaks the room-name rule.
    InvalidRoom,
    /// The frame names a room this connection has not joined.
    NotInRoom,
    /// The payload is over its size limit.
    TooLarge,
    /// The connection sends faster than its rate limit; retry later.
    RateLimited,
    /// The connection already is in as many rooms as it may be.
    TooManyRooms,
    /// The room has as many members as it may have.
    RoomFull,
    /// The signal's target is not a member of that room.
    PeerNotFound,
    /// A service behind the gateway did not answer in time; retry later.
    Unavailable,
    /// The token does not allow this (a viewer's offer to send media).
    Forbidden,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::PeerNotFound => "peer_not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the gateway sends.
///
/// Codes 4000–4099 are terminal: reconnecting with the same credentials will
/// fail again. Codes 4100–4199 ask the client to reconnect (to any gateway,
/// with backoff) and resume each room with `since`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCode {
    /// Authentication failed or did not happen within the auth timeout.
    Unauthorized,
    /// A newer connection of the same user took this one's seat in a room
    /// (its join named this connection in `replaces`).
    Replaced,
    /// The client sent more invalid frames than its budget allows: it is
    /// broken or hostile, and reconnecting would not fix it.
    InvalidFrames,
    /// The user has as many connections on this gateway as allowed.
    TooManyConnections,
    /// The client did not read its frames fast enough and its send queue filled.
    SlowConsumer,
    /// The gateway is shutting down.
    ShuttingDown,
    /// The gateway is at its connection limit.
    GatewayFull,
    /// The connection missed room messages it could not recover in order.
    Resync,
    /// The connection may no longer be a member of a room it joined: its
    /// gateway was cut off from the cluster (stopped, or without NATS)
    /// longer than the gateway timeout, so the others may have removed its
    /// members, or the room's members were changed without it (another
    /// service took the gateway for dead). The client rejoins its rooms.
    Reset,
    /// The token expired and no `refresh` replaced it: reconnect with a
    /// fresh token.
    TokenExpired,
    /// The client's address has as many unauthenticated sockets open as
    /// allowed: retry after backoff.
    TooManyUnauthenticated,
    /// Nothing came from the client, not even an answer to the gateway's
    /// pings, for the idle timeout: the connection is most likely dead
    /// (half-open). A client that is still there reconnects and resumes.
    Idle,
}

impl CloseCode {
    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Unauthorized => 4001,
            CloseCode::Replaced => 4002,
            CloseCode::InvalidFrames => 4003,
            CloseCode::TooManyConnections => 4004,
            CloseCode::SlowConsumer => 4100,
            CloseCode::ShuttingDown => 4101,
            CloseCode::GatewayFull => 4102,
            CloseCode::Resync => 4103,
            CloseCode::Reset => 4104,
            CloseCode::TokenExpired => 4105,
            CloseCode::TooManyUnauthenticated => 4106,
            CloseCode::Idle => 4107,
        }
    }

    /// The reason text sent with the code (a close reason is capped at 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Replaced => "replaced by a newer connection of this user",
            CloseCode::InvalidFrames => "too many invalid frames",
            CloseCode::TooManyConnections => "too many connections for this user",
            CloseCode::SlowConsumer => "slow consumer: reconnect and resume",
            CloseCode::ShuttingDown => "gateway shutting down: reconnect",
            CloseCode::GatewayFull => "gateway full: reconnect elsewhere",
            CloseCode::Resync => "missed messages: reconnect and resume",
            CloseCode::Reset => "no longer a member of a room: reconnect and resume",
            CloseCode::TokenExpired => "token expired: reconnect with a fresh token and resume",
            CloseCode::TooManyUnauthenticated => {
                "too many unauthenticated sockets from this address: retry later"
            }
            CloseCode::Idle => "no answer to pings: reconnect and resume",
        }
    }

    /// Whether the client should reconnect and resume.
    pub fn should_reconnect(self) -> bool {
        self.code() >= 4100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_sit_in_their_documented_ranges() {
        const CASES: &[(CloseCode, u16, bool)] = &[
            (CloseCode::Unauthorized, 4001, false),
            (CloseCode::Replaced, 4002, false),
            (CloseCode::InvalidFrames, 4003, false),
            (CloseCode::TooManyConnections, 4004, false),
            (CloseCode::SlowConsumer, 4100, true),
            (CloseCode::ShuttingDown, 4101, true),
            (CloseCode::GatewayFull, 4102, true),
            (CloseCode::Resync, 4103, true),
            (CloseCode::Reset, 4104, true),
            (CloseCode::TokenExpired, 4105, true),
            (CloseCode::TooManyUnauthenticated, 4106, true),
            (CloseCode::Idle, 4107, true),
        ];
        for (code, number, reconnect) in CASES {
            assert_eq!(code.code(), *number, "{code:?}");
            assert_eq!(code.should_reconnect(), *reconnect, "{code:?}");
            assert!(
                code.reason().len() <= 123,
                "{code:?}: a close reason fits in a control frame"
            );
        }
    }

    /// Every error code, in order. A new variant does not compile here
    /// until it is given a place, so the documentation check covers it.
    fn every_error_code() -> Vec<ErrorCode> {
        use ErrorCode::*;
        let after = |code: Option<ErrorCode>| match code {
            None => Some(Unauthorized),
            Some(Unauthorized) => Some(InvalidMessage),
            Some(InvalidMessage) => Some(InvalidRoom),
            Some(InvalidRoom) => Some(NotInRoom),
            Some(NotInRoom) => Some(TooLarge),
            Some(TooLarge) => Some(RateLimited),
            Some(RateLimited) => Some(TooManyRooms),
            Some(TooManyRooms) => Some(RoomFull),
            Some(RoomFull) => Some(PeerNotFound),
            Some(PeerNotFound) => Some(Unavailable),
            Some(Unavailable) => Some(Forbidden),
            Some(Forbidden) => None,
        };
        std::iter::successors(after(None), |code| after(Some(*code))).collect()
    }

    /// Every close code, as [`every_error_code`].
    fn every_close_code() -> Vec<CloseCode> {
        use CloseCode::*;
        let after = |code: Option<CloseCode>| match code {
            None => Some(Unauthorized),
            Some(Unauthorized) => Some(Replaced),
            Some(Replaced) => Some(InvalidFrames),
            Some(InvalidFrames) => Some(TooManyConnections),
            Some(TooManyConnections) => Some(SlowConsumer),
            Some(SlowConsumer) => Some(ShuttingDown),
            Some(ShuttingDown) => Some(GatewayFull),
            Some(GatewayFull) => Some(Resync),
            Some(Resync) => Some(Reset),
            Some(Reset) => Some(TokenExpired),
            Some(TokenExpired) => Some(TooManyUnauthenticated),
            Some(TooManyUnauthenticated) => Some(Idle),
            Some(Idle) => None,
        };
        std::iter::successors(after(None), |code| after(Some(*code))).collect()
    }

    /// The first column of the table under `heading` in docs/protocol.md.
    fn documented(heading: &str) -> Vec<String> {
        include_str!("../../docs/protocol.md")
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("docs/protocol.md has no {heading:?}"))
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2)
            .map(|row| {
                row.split('|')
                    .nth(1)
                    .unwrap()
                    .trim()
                    .trim_matches('`')
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn error_codes_are_the_documented_ones() {
        let wire: Vec<String> = every_error_code()
            .into_iter()
            .map(|code| {
                let json = serde_json::to_value(code).unwrap();
                assert_eq!(json, code.as_str(), "{code:?}");
                code.as_str().to_owned()
            })
            .collect();
        assert_eq!(wire, documented("\n## Errors\n"));
    }

    #[test]
    fn close_codes_are_the_documented_ones() {
        let sent: Vec<String> = every_close_code()
            .into_iter()
            .map(|code| code.code().to_string())
            .collect();
        let mut documented = documented("\n## Close codes\n");
        // The WebSocket standard's own codes: the echo of a client's close,
        // invalid UTF-8, message too big.
        documented.retain(|code| !["1000", "1007", "1009"].contains(&code.as_str()));
        assert_eq!(sent, documented);
    }
}
