//! HS256 tokens for test users, signed with the gateways' shared secret.

use jsonwebtoken::{EncodingKey, Header};

/// How long minted tokens stay valid.
const VALIDITY_SECS: u64 = 3600;

/// Signs tokens for made-up users.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
}

impl Minter {
    /// A minter for `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token for user `sub`.
    pub fn token(&self, sub: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
            + VALIDITY_SECS;
        let claims = serde_json::json!({"sub": sub, "name": sub, "exp": exp});
        // HS256 with a byte key cannot fail to sign.
        jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .expect("HS256 signing cannot fail")
    }
}
