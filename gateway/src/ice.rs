//! ICE servers for WebRTC calls, handed to each client in `welcome` and on
//! `ice`: the configured STUN URLs, and TURN URLs with credentials made for
//! the user.
//!
//! TURN credentials follow the shared-secret scheme coturn implements
//! (`use-auth-secret`, "TURN REST API"): the username is
//! `<expiry>:<user id>` (Unix seconds) and the password
//! base64(HMAC-SHA1(secret, username)). The TURN server recomputes the
//! password from the username and refuses it after the expiry, so the
//! gateway and the relay share nothing but the secret, which never leaves
//! them. A relay that serves only users the gateway vouches for, for a
//! limited time, is not an open relay.

use std::time::Duration;

use base64::Engine;
use schemas::client::{IceServer, IceServers};
use schemas::id::UserId;

use crate::config::IceConfig;

/// `gateway.ice` is not usable.
#[derive(Debug, thiserror::Error)]
pub enum IceSetupError {
    /// TURN URLs without the secret to make their credentials.
    #[error("gateway.ice.turn_urls needs gateway.ice.turn_secret")]
    NoSecret,
    /// A URL of the wrong scheme for its list.
    #[error("gateway.ice: {0:?} is not a {1} URL")]
    Scheme(String, &'static str),
}

/// Makes each user's ICE servers.
#[derive(Clone)]
pub struct Ice {
    stun: Vec<String>,
    turn: Option<(Vec<String>, ring::hmac::Key)>,
    ttl: Duration,
}

impl Ice {
    /// Checks `config`: STUN URLs start `stun:`/`stuns:`, TURN URLs
    /// `turn:`/`turns:` and come with a secret.
    pub fn new(config: &IceConfig) -> Result<Self, IceSetupError> {
        let check = |urls: &[String], schemes: [&str; 2], kind| match urls
            .iter()
            .find(|url| !schemes.iter().any(|s| url.starts_with(s)))
        {
            Some(url) => Err(IceSetupError::Scheme(url.clone(), kind)),
            None => Ok(()),
        };
        check(&config.stun_urls, ["stun:", "stuns:"], "STUN")?;
        check(&config.turn_urls, ["turn:", "turns:"], "TURN")?;
        let turn = match (&config.turn_urls[..], &config.turn_secret) {
            ([], _) => None,
            (_, None) => return Err(IceSetupError::NoSecret),
            (urls, Some(secret)) => Some((
                urls.to_vec(),
                ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                    secret.0.as_bytes(),
                ),
            )),
        };
        Ok(Self {
            stun: config.stun_urls.clone(),
            turn,
            ttl: config.turn_ttl,
        })
    }

    /// The ICE servers for `user`, with TURN credentials valid for the
    /// configured time from now.
    pub fn servers_for(&self, user: &UserId) -> IceServers {
        self.servers_at(user, schemas::time::now_secs())
    }

    fn servers_at(&self, user: &UserId, now: u64) -> IceServers {
        let mut servers = Vec::new();
        if !self.stun.is_empty() {
            servers.push(IceServer {
                urls: self.stun.clone(),
                username: None,
                credential: None,
            });
        }
        let mut expires_in = 0;
        if let Some((urls, key)) = &self.turn {
            expires_in = self.ttl.as_secs();
            let username = format!("{}:{user}", now + expires_in);
            let credential = base64::engine::general_purpose::STANDARD
                .encode(ring::hmac::sign(key, username.as_bytes()));
            servers.push(IceServer {
                urls: urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        IceServers {
            servers,
            expires_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use bootstrap::config::Secret;

    use super::*;

    fn config(stun: &[&str], turn: &[&str], secret: Option<&str>) -> IceConfig {
        IceConfig {
            stun_urls: stun.iter().map(|s| s.to_string()).collect(),
            turn_urls: turn.iter().map(|s| s.to_string()).collect(),
            turn_secret: secret.map(|s| Secret(s.into())),
            turn_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn turn_credentials_follow_coturn_s_shared_secret_scheme() {
        let ice = Ice::new(&config(
            &["stun:stun.example.com:3478"],
            &["turn:turn.example.com:3478?transport=udp"],
            Some("north"),
        ))
        .unwrap();
        let servers = ice.servers_at(&UserId::from("ann"), 1_700_000_000);
        assert_eq!(servers.expires_in, 3600);
        assert_eq!(servers.servers[0].urls, ["stun:stun.example.com:3478"]);
        assert_eq!(servers.servers[0].credential, None);
        let turn = &servers.servers[1];
        assert_eq!(turn.username.as_deref(), Some("1700003600:ann"));
        // python3 -c 'import hmac,hashlib,base64;
        //   print(base64.b64encode(hmac.new(b"north", b"1700003600:ann", hashlib.sha1).digest()).decode())'
        assert_eq!(turn.credential.as_deref(), Some(EXPECTED_CREDENTIAL));
    }

    const EXPECTED_CREDENTIAL: &str = "TwqKCcbzejRFa1sgGqGS7SEzCGg=";

    #[test]
    fn nothing_configured_is_no_servers() {
        let servers = Ice::new(&IceConfig::default())
            .unwrap()
            .servers_for(&UserId::from("ann"));
        assert_eq!(servers, IceServers::default());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            Ice::new(&config(&[], &["turn:t:3478"], None)),
            Err(IceSetupError::NoSecret)
        ));
        assert!(matches!(
            Ice::new(&config(&["turn:t:3478"], &[], None)),
            Err(IceSetupError::Scheme(_, "STUN"))
        ));
        assert!(matches!(
            Ice::new(&config(&[], &["stun:t:3478"], Some("s"))),
            Err(IceSetupError::Scheme(_, "TURN"))
        ));
    }
}
