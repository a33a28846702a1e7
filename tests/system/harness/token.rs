//! Tokens for test users, signed with the secret the test gateways accept.

use std::time::Duration;

use schemas::token::Claims;

pub use schemas::time::now_secs as now;

/// HS256 secret the test gateways accept.
pub const SECRET: &str = "test-secret-not-for-production";

/// How long test tokens last.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The claims of a test user: `sub`, named `sub` in capitals.
fn claims(sub: &str) -> Claims {
    Claims::new(sub, sub.to_uppercase(), TOKEN_TTL)
}

/// A token for user `sub`.
pub fn token(sub: &str) -> String {
    claims(sub).sign_hs256(SECRET.as_bytes())
}

/// A token for `sub` with `claims` merged in, overriding the usual ones:
/// tokens that expired, expire soon, or name an issuer or audience,
/// which `Claims` cannot say, hence jsonwebtoken directly.
pub fn token_with(sub: &str, extra: serde_json::Value) -> String {
    let mut body = serde_json::to_value(claims(sub)).expect("claims serialize");
    body.as_object_mut()
        .expect("claims are a JSON object")
        .extend(extra.as_object().cloned().unwrap_or_default());
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &body, &key)
        .expect("HS256 signing cannot fail")
}
