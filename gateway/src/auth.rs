//! Verifying the JWT a client presents in its `auth` frame.
//!
//! HS256 tokens are checked against a shared secret; RS256 and ES256 tokens
//! against a JSON Web Key Set (see [`crate::jwks`]). `exp` is always required,
//! `iss` and `aud` when configured (present and equal). `alg: none` never
//! verifies.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use schemas::client::User;
use schemas::id::UserId;
use schemas::token::Claims;

use crate::config::AuthConfig;
use crate::jwks::{Jwks, JwksError};

/// Longest display name kept from a token; longer ones are cut.
const MAX_NAME_CHARS: usize = 64;

/// The token verifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// Neither a secret nor a key set is configured.
    #[error(
        "no token verification configured: set gateway.auth.hs256_secret or gateway.auth.jwks_url"
    )]
    NoVerifier,
    /// No HTTP client for the key set could be built.
    #[error("cannot set up the key set client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Why a token was refused. Clients only ever see `unauthorized`; the kind
/// goes to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a well-formed JWT, or one with an algorithm that is not accepted.
    #[error("malformed token or unsupported algorithm")]
    Malformed,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("expired")]
    Expired,
    /// A claim (`iss`, `aud`, `sub`, `exp`) is missing or wrong.
    #[error("missing or wrong claim")]
    WrongClaim,
    /// The key named by `kid` is not in the key set.
    #[error("unknown signing key")]
    UnknownKey,
    /// The key set could not be fetched.
    #[error("key set unavailable")]
    KeySetUnavailable,
}

/// A token that verified.
#[derive(Debug)]
pub struct Verified {
    /// Who it names.
    pub user: User,
    /// Its `exp`, in seconds since the Unix epoch: the connection's
    /// authentication ends then.
    pub expires_at: u64,
    /// The token's `viewer` claim: calls' media may be received, not sent.
    pub viewer: bool,
}

/// Verifies tokens.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Authenticator {
    /// Builds a verifier from config.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let hs256 = config
            .hs256_secret
            .as_ref()
            .map(|secret| DecodingKey::from_secret(secret.0.as_bytes()));
        let jwks = match &config.jwks_url {
            Some(url) => Some(Jwks::new(
                url.clone(),
                config.jwks_refetch_interval,
                config.jwks_max_age,
            )?),
            None => None,
        };
        if hs256.is_none() && jwks.is_none() {
            return Err(AuthSetupError::NoVerifier);
        }
        Ok(Self {
            hs256,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// Checks `token` and returns the user it names and when it expires.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone().ok_or(AuthError::Malformed)?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Malformed)?;
                let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
                jwks.key(kid, header.alg).await.map_err(|err| match err {
                    JwksError::UnknownKey => AuthError::UnknownKey,
                    JwksError::Fetch(_) => AuthError::KeySetUnavailable,
                })?
            }
            _ => return Err(AuthError::Malformed),
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation(header.alg))
            .map_err(classify)?;
        let Claims {
            sub,
            name,
            exp,
            viewer,
        } = data.claims;
        // RFC 7519: now must be before `exp`; the library lets the exp
        // second itself through.
        if exp <= jsonwebtoken::get_current_timestamp() {
            return Err(AuthError::Expired);
        }
        if sub.is_empty() {
            return Err(AuthError::WrongClaim);
        }
        // A name made only of removed characters shows as the user id.
        let name = match display_name(name.as_deref().unwrap_or(&sub)) {
            name if name.is_empty() => display_name(&sub),
            name => name,
        };
        Ok(Verified {
            user: User {
                id: UserId(sub),
                name,
            },
            expires_at: exp,
            viewer,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        // The connection ends at `exp` exactly; a token past it is refused
        // as exactly (the library's default allows 60 s more).
        validation.leeway = 0;
        // A configured audience or issuer is required, not only checked when
        // present: a token without the claim was minted for anyone.
        let mut required = vec!["exp", "sub"];
        required.extend(self.audience.as_ref().map(|_| "aud"));
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        validation
    }
}

fn classify(err: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidAudience
        | ErrorKind::InvalidIssuer
        | ErrorKind::MissingRequiredClaim(_) => AuthError::WrongClaim,
        ErrorKind::ImmatureSignature | ErrorKind::InvalidSubject => AuthError::WrongClaim,
        _ => AuthError::Malformed,
    }
}

/// A display name fit for other users' screens: no control, bidirectional
/// or invisible characters ([`schemas::text`]), at most [`MAX_NAME_CHARS`]
/// characters.
pub(crate) fn display_name(raw: &str) -> String {
    raw.chars()
        .filter(|&c| !c.is_control() && !schemas::text::is_spoofing_char(c))
        .take(MAX_NAME_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz test (`tests/fuzz_auth.rs`): a token whose `exp`
    /// is the current second verified, although RFC 7519 asks that the
    /// current time be before `exp`.
    #[tokio::test]
    async fn a_token_is_refused_from_its_exp_second_on() {
        let secret = "unit-test-secret-0123456789abcdef";
        let auth = Authenticator::new(&AuthConfig {
            hs256_secret: Some(bootstrap::config::Secret(secret.into())),
            ..AuthConfig::default()
        })
        .unwrap();
        let token = |exp: u64| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({"sub": "ann", "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let now = jsonwebtoken::get_current_timestamp();
        assert_eq!(
            auth.verify(&token(now)).await.err(),
            Some(AuthError::Expired)
        );
        assert!(auth.verify(&token(now + 60)).await.is_ok());
    }

    #[test]
    fn display_names_are_cleaned() {
        assert_eq!(display_name("Ann"), "Ann");
        assert_eq!(display_name("  A\u{0}n\nn "), "Ann");
        assert_eq!(display_name("adm\u{200B}in\u{202E}"), "admin");
        assert_eq!(
            display_name(&"x".repeat(100)).chars().count(),
            MAX_NAME_CHARS
        );
    }
}
