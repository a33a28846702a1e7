//! HS256 tokens for test users, signed with the gateways' shared secret.

use std::time::Duration;

use schemas::token::Claims;

/// How long minted tokens stay valid.
const VALIDITY: Duration = Duration::from_secs(3600);

/// Signs tokens for made-up users.
#[derive(Clone)]
pub struct Minter {
    secret: Vec<u8>,
}

impl Minter {
    /// A minter for `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// A token for user `sub`.
    pub fn token(&self, sub: &str) -> String {
        Claims::new(sub, sub, VALIDITY).sign_hs256(&self.secret)
    }
}
