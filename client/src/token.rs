//! Where a [`Client`](crate::Client) gets its tokens.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::TokenError;

/// A token being fetched.
pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send>>;

/// A token, or a way to get a fresh one.
///
/// A fixed token lasts until its `exp`: then the gateway closes the
/// connection (4105) and reconnecting with the same token is refused, so the
/// client stops. A function is called before every connect and again before
/// the token expires, so a long-running bot or service stays connected:
///
/// ```
/// use std::time::Duration;
/// use cavlo_client::TokenSource;
/// use schemas::token::Claims;
///
/// // A service that holds the gateways' HS256 secret signs its own tokens.
/// let secret = b"the gateways' hs256 secret".to_vec();
/// let source = TokenSource::from_fn(move || {
///     let token = Claims::new("bot-1", "Bot", Duration::from_secs(600)).sign_hs256(&secret);
///     async move { Ok(token) }
/// });
/// assert!(source.refreshes());
/// ```
#[derive(Clone)]
pub struct TokenSource(Source);

#[derive(Clone)]
enum Source {
    Fixed(String),
    Function(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl TokenSource {
    /// Always the same token.
    pub fn fixed(token: impl Into<String>) -> Self {
        Self(Source::Fixed(token.into()))
    }

    /// Tokens from `fetch`, called before every connect and before the
    /// current token expires (for example an HTTP call to the app's backend).
    pub fn from_fn<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, TokenError>> + Send + 'static,
    {
        Self(Source::Function(Arc::new(move || Box::pin(fetch()))))
    }

    /// Whether this source can give a fresh token before the current one
    /// expires.
    pub fn refreshes(&self) -> bool {
        matches!(self.0, Source::Function(_))
    }

    /// A token: the fixed one, or a fresh one.
    pub(crate) fn fetch(&self) -> TokenFuture {
        match &self.0 {
            Source::Fixed(token) => {
                let token = token.clone();
                Box::pin(async move { Ok(token) })
            }
            Source::Function(fetch) => fetch(),
        }
    }
}

impl From<String> for TokenSource {
    fn from(token: String) -> Self {
        Self::fixed(token)
    }
}

impl From<&str> for TokenSource {
    fn from(token: &str) -> Self {
        Self::fixed(token)
    }
}

/// Written by hand so that a token never reaches a log.
impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Source::Fixed(_) => f.write_str("TokenSource::Fixed(XXXXXXXX)"),
            Source::Function(_) => f.write_str("TokenSource::Function"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fixed_token_stays_and_never_shows_in_debug() {
        let source = TokenSource::from("secret-token");
        assert!(!source.refreshes());
        assert_eq!(source.fetch().await.unwrap(), "secret-token");
        assert!(!format!("{source:?}").contains("secret-token"));
    }

    #[tokio::test]
    async fn a_function_is_called_for_every_token() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = calls.clone();
        let source = TokenSource::from_fn(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move { Ok(format!("token-{n}")) }
        });
        assert_eq!(source.fetch().await.unwrap(), "token-0");
        assert_eq!(source.fetch().await.unwrap(), "token-1");
    }
}
