//! The claims of the JWT a client presents in its `auth` frame, and HS256
//! signing for whoever holds the shared secret: an app backend written in
//! Rust, the gateway's development tokens, test tools.
//!
//! Gateways verify tokens (`gateway::auth`); this is the format they read.

use serde::{Deserialize, Serialize};

/// What a cavlo token says. `sub` names the user; `name` is the display
/// name (the user id when absent); `exp` is required, in seconds since the
/// Unix epoch, and the connection's authentication ends then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The display name shown to other members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// A viewer: joins calls to receive their media, and may send none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub viewer: bool,
}

impl Claims {
    /// Claims for user `sub` named `name`, valid for `ttl` from now.
    pub fn new(sub: impl Into<String>, name: impl Into<String>, ttl: std::time::Duration) -> Self {
        Self {
            sub: sub.into(),
            name: Some(name.into()),
            exp: crate::time::now_secs() + ttl.as_secs(),
            viewer: false,
        }
    }

    /// The token, signed with HS256 and `secret` (the gateways'
    /// `gateway.auth.hs256_secret`).
    pub fn sign_hs256(&self, secret: &[u8]) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        // HS256 with a byte key and claims of strings and integers cannot
        // fail to sign.
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), self, &key)
            .expect("HS256 signing cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    #[test]
    fn a_signed_token_verifies_with_the_same_secret_only() {
        let claims = Claims::new("ann", "Ann", std::time::Duration::from_secs(60));
        let token = claims.sign_hs256(b"secret");
        let validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        let read = decode::<Claims>(&token, &DecodingKey::from_secret(b"secret"), &validation)
            .expect("verifies");
        assert_eq!(read.claims, claims);
        assert!(
            decode::<Claims>(&token, &DecodingKey::from_secret(b"other"), &validation).is_err()
        );
    }
}
