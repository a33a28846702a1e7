//! Authentication: the `auth` frame that must come first, the token's
//! lifetime on this process's clock, and `refresh`, which extends it.

use std::time::Duration;

use hyper_tungstenite::HyperWebsocketStream;
use schemas::client::{ClientFrame, ErrorFrame, ServerFrame};
use schemas::code::{CloseCode, ErrorCode};
use tokio::time::Instant;

use super::socket::{CLOSED_WITHOUT_FRAME, close, end, next_text, send};
use super::{Connection, Failure};
use crate::Shared;
use crate::auth::{AuthError, Verified};

/// Why a socket did not authenticate.
#[derive(Debug, thiserror::Error)]
enum AuthFailure {
    /// The first frame was something other than `auth`.
    #[error("first frame is not auth")]
    NotAuth,
    /// No frame came within the auth timeout.
    #[error("auth timeout")]
    TimedOut,
    /// The token was refused.
    #[error(transparent)]
    Token(#[from] AuthError),
}

/// Waits for the `auth` frame and verifies it; on failure sends an
/// `unauthorized` error and closes with 4001.
pub(super) async fn authenticate(
    socket: &mut HyperWebsocketStream,
    shared: &Shared,
) -> Option<Verified> {
    let token = match tokio::time::timeout(shared.config.auth_timeout, next_text(socket)).await {
        Ok(Ok(text)) => match ClientFrame::decode(&text) {
            Ok(ClientFrame::Auth { token }) => {
                shared.metrics.received("auth");
                Ok(token)
            }
            Ok(other) => {
                shared.metrics.received(other.kind());
                Err(AuthFailure::NotAuth)
            }
            Err(_) => {
                shared.metrics.received("invalid");
                Err(AuthFailure::NotAuth)
            }
        },
        Ok(Err(exit)) => {
            end(socket, exit, shared).await;
            return None;
        }
        Err(_) => Err(AuthFailure::TimedOut),
    };
    let user = match token {
        Ok(token) => shared.auth.verify(&token).await.map_err(AuthFailure::from),
        Err(failure) => Err(failure),
    };
    match user {
        Ok(verified) => Some(verified),
        Err(reason) => {
            tracing::info!(%reason, "authentication failed");
            let error = ServerFrame::Error(ErrorFrame::new(
                ErrorCode::Unauthorized,
                "authentication failed",
            ));
            if send(socket, error.to_json().into(), shared.config.write_timeout)
                .await
                .is_ok()
            {
                shared.metrics.sent(&error);
                close(socket, CloseCode::Unauthorized, shared).await;
            } else {
                shared.metrics.closed(CLOSED_WITHOUT_FRAME);
            }
            None
        }
    }
}

/// When a connection's token expires, on this process's clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expiry {
    pub(super) deadline: Instant,
    /// The token's `exp`, seconds since the Unix epoch.
    pub(super) exp: u64,
}

impl Expiry {
    /// The moment `exp` (seconds since the Unix epoch) comes.
    pub(super) fn at(exp: u64) -> Self {
        let now_ms = schemas::time::now_ms();
        // Capped: an `Instant` cannot hold an arbitrarily far future, and a
        // token forged with a huge `exp` must not overflow it.
        let left = Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms))
            .min(Duration::from_secs(10 * 365 * 24 * 3600));
        Self {
            deadline: Instant::now() + left,
            exp,
        }
    }

    /// Whole seconds left, rounded down, as the client is told.
    pub(super) fn seconds_left(&self) -> u64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

impl Connection {
    /// Extends the connection's authentication to a fresh token's `exp`.
    /// The token must name the same user; a refused one changes nothing, and
    /// the connection still ends at the current token's `exp`.
    pub(super) async fn refresh(&mut self, token: &str) -> Result<ServerFrame, Failure> {
        let refused = |message: &str| ErrorFrame::new(ErrorCode::Unauthorized, message);
        let verified = match self.shared.auth.verify(token).await {
            Ok(verified) => verified,
            Err(reason) => {
                tracing::info!(%reason, "refresh refused");
                return Err(refused("token refused"));
            }
        };
        if verified.user.id != self.requester.member.user.id {
            tracing::warn!(other = %verified.user.id, "refresh with another user's token");
            return Err(refused("the token is for another user"));
        }
        if verified.expires_at <= self.expiry.exp {
            return Err(refused(
                "the token does not expire later than the current one",
            ));
        }
        self.expiry = Expiry::at(verified.expires_at);
        Ok(ServerFrame::Refreshed {
            expires_in: self.expiry.seconds_left(),
        })
    }
}
