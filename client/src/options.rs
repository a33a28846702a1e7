//! What a [`Client`](crate::Client) connects to, and how.

use crate::backoff::Backoff;
use crate::connection::Dialer;
use crate::token::TokenSource;

/// What a [`Client`](crate::Client) connects to, and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Gateway URLs (`ws://host:8080/ws`). The client starts with the first
    /// and moves to the next after every failed attempt or lost connection.
    pub urls: Vec<String>,
    /// The token for `auth`, or how to get fresh ones.
    pub token: TokenSource,
    /// Waits between failed attempts.
    pub backoff: Backoff,
    /// Failed attempts in a row after which the client stops; `None`
    /// (the default) retries for ever, as a service that waits for the
    /// system to come back should.
    pub max_attempts: Option<u32>,
    /// How to open the TCP connections.
    pub dialer: Dialer,
}

impl Options {
    /// Options for `urls` and `token`, with default backoff and no limit of
    /// attempts.
    pub fn new(
        urls: impl IntoIterator<Item = impl Into<String>>,
        token: impl Into<TokenSource>,
    ) -> Options {
        Options {
            urls: urls.into_iter().map(Into::into).collect(),
            token: token.into(),
            backoff: Backoff::default(),
            max_attempts: None,
            dialer: Dialer::default(),
        }
    }
}
