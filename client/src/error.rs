//! One error type per operation, each with a kind to match on.
//!
//! The shape is async-nats's: `Error<Kind>` with [`Error::kind`] and the
//! underlying cause as its `source`, so a caller matches on the kind and
//! logs the whole chain, and never reads error text.

use std::error::Error as StdError;
use std::fmt;

use schemas::client::ErrorFrame;
use schemas::code::ErrorCode;

/// An error of one operation: what kind it is, and the cause, if any.
pub struct Error<K> {
    kind: K,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl<K: Copy> Error<K> {
    /// What went wrong, to match on.
    pub fn kind(&self) -> K {
        self.kind
    }
}

impl<K> Error<K> {
    pub(crate) fn new(kind: K) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with_source(kind: K, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }
}

impl<K> From<K> for Error<K> {
    fn from(kind: K) -> Self {
        Self::new(kind)
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: fmt::Debug + fmt::Display> StdError for Error<K> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

/// Opening a connection and authenticating failed.
pub type ConnectError = Error<ConnectErrorKind>;

/// Why a connection could not be opened or authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectErrorKind {
    /// The URL is not a `ws://` URL with a host.
    #[error("invalid gateway URL")]
    InvalidUrl,
    /// The host did not resolve, or the TCP connection failed.
    #[error("connect")]
    Io,
    /// The WebSocket upgrade failed: the gateway answered with an HTTP
    /// error (403 for a refused origin, 503 while draining) or not at all.
    #[error("websocket handshake")]
    Handshake,
    /// The gateway refused the token (`unauthorized`, then close 4001).
    #[error("token refused")]
    Unauthorized,
    /// The gateway closed the socket before `welcome`, with this close code
    /// if it sent one (4102 when full, 4106 with too many unauthenticated
    /// sockets from this address).
    #[error("closed by the gateway (close code {0:?})")]
    Closed(Option<u16>),
    /// No `welcome` came in time.
    #[error("no welcome in time")]
    TimedOut,
    /// The gateway sent something other than `welcome` or an error.
    #[error("unexpected frame")]
    Unexpected,
    /// The token source failed.
    #[error("no token")]
    Token,
}

/// Sending a frame failed.
pub type SendError = Error<SendErrorKind>;

/// Why a frame could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendErrorKind {
    /// The socket is closed.
    #[error("socket closed")]
    Closed,
    /// Writing to the socket failed.
    #[error("websocket")]
    Socket,
}

/// Receiving a frame failed.
pub type RecvError = Error<RecvErrorKind>;

/// Why no frame was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvErrorKind {
    /// The gateway closed the socket, with this close code if its close
    /// frame had one; `None` also when the socket ended without a close
    /// frame. docs/protocol.md lists the codes and which to reconnect on.
    #[error("closed by the gateway (close code {0:?})")]
    Closed(Option<u16>),
    /// Reading from the socket failed.
    #[error("websocket")]
    Socket,
    /// No frame came before the deadline.
    #[error("no frame in time")]
    TimedOut,
    /// A text frame that is not a server frame of this protocol version.
    #[error("malformed frame")]
    Malformed,
}

/// A request of the [`Client`](crate::Client) (join, leave, chat, signal)
/// failed.
pub type RequestError = Error<RequestErrorKind>;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestErrorKind {
    /// The server answered with this error code; the error's source is the
    /// whole error frame.
    #[error("refused ({0})")]
    Refused(ErrorCode),
    /// The client stopped (closed, or a terminal close code) before an
    /// answer came.
    #[error("client stopped")]
    Stopped,
    /// The room was left before an answer came.
    #[error("room left")]
    Left,
    /// The client is between connections; only signals, which are never
    /// stored or resent, fail this way.
    #[error("not connected")]
    NotConnected,
}

/// An error frame as the cause of a refused request.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.message)]
pub(crate) struct Refusal(pub ErrorFrame);

impl RequestError {
    /// The server's refusal of a request.
    pub(crate) fn refused(frame: ErrorFrame) -> Self {
        Self::with_source(RequestErrorKind::Refused(frame.code), Refusal(frame))
    }
}

/// The token source could not give a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

impl TokenError {
    /// A failure to get a token, described for logs.
    pub fn new(description: impl fmt::Display) -> Self {
        Self(description.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind_then_the_cause() {
        let plain = ConnectError::new(ConnectErrorKind::TimedOut);
        assert_eq!(plain.to_string(), "no welcome in time");
        let refused = RequestError::refused(ErrorFrame::new(ErrorCode::RoomFull, "room is full"));
        assert_eq!(
            refused.kind(),
            RequestErrorKind::Refused(ErrorCode::RoomFull)
        );
        assert_eq!(refused.to_string(), "refused (room_full): room is full");
        assert!(refused.source().is_some());
    }
}
