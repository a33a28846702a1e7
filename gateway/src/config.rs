//! Gateway settings.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bootstrap::config::Secret;
use bootstrap::service::{Common, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Everything the gateway binary reads (see [`bootstrap::config`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[nats]`, `[log]`, `[health]`
    #[serde(flatten)]
    pub common: Common,
    /// `[gateway]`
    pub gateway: GatewayConfig,
}

impl ServiceConfig for Config {
    fn common(&self) -> &Common {
        &self.common
    }
}

/// The WebSocket endpoint (`[gateway]`, `CAVLO_GATEWAY__…`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Address to listen on. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// This gateway's name: its id in `welcome`, heartbeats and logs is the
    /// name plus a suffix unique to the process. Default `gw`.
    pub id: Option<String>,
    /// Browser origins allowed to open a WebSocket, e.g.
    /// `https://app.example.com`; `*` allows any. The gateway's own origin and
    /// clients that send no `Origin` (non-browsers) are always allowed; any
    /// other origin gets HTTP 403. Default: none.
    pub allowed_origins: Vec<String>,
    /// WebSocket URLs of the other gateways the demo page may fail over to
    /// (its `?gateways=` list), e.g. `wss://chat2.example.com/ws`: the
    /// page's Content-Security-Policy lets it connect to this gateway and
    /// to these only. Default: none.
    pub demo_gateways: Vec<String>,
    /// WebSockets open at once. Past it, a new socket is closed with code
    /// 4102 (reconnect elsewhere). Default 10 000.
    pub max_connections: usize,
    /// Largest WebSocket message (and frame) accepted, in bytes; a larger one
    /// closes the socket with code 1009. Default 128 KiB.
    pub max_frame_bytes: usize,
    /// Bytes each socket's read buffer starts with (it grows for larger
    /// messages). Small keeps idle connections cheap: tungstenite's 128 KiB
    /// default made each idle socket cost about 137 KiB. Default 2 KiB.
    pub socket_read_buffer_bytes: usize,
    /// The kernel send buffer of each client socket, in bytes (Linux keeps
    /// up to twice this); 0 leaves it to the kernel's autotuning. Bounded,
    /// so a client that stops reading fills its send queue and is closed
    /// with 4100 within seconds, instead of parking up to 4 MiB of kernel
    /// memory first (Linux's autotuning limit) while it looks healthy.
    /// 64 KiB still carries about 1 MiB/s at 60 ms round trip, far more
    /// than chat and signaling need. Default 64 KiB.
    pub socket_send_buffer_bytes: usize,
    /// Rooms one connection may be in; one more join gets `too_many_rooms`.
    /// Default 16.
    pub max_rooms_per_connection: usize,
    /// Sockets one client address may have open before they authenticate;
    /// more are closed with 4106. Behind a proxy every client has the
    /// proxy's address: raise it or set 0 (no cap). Default 256.
    pub max_unauthenticated_per_ip: usize,
    /// Connections one user may have on this gateway; one more is closed
    /// with 4004. 0: no cap. Default 16.
    pub max_connections_per_user: usize,
    /// `invalid_message` answers one connection may get at once (frames that
    /// do not parse, binary frames, chat the moderator finds malformed);
    /// past this budget the connection is closed with 4003. Default 20.
    pub invalid_frame_burst: u32,
    /// How fast the budget for `invalid_message` answers refills, per
    /// minute. Default 10.
    pub invalid_frames_per_minute: u32,
    /// Bytes of frames waiting to be written to one socket (see
    /// [`crate::send_queue`]). A client that lets more pile up is closed
    /// with code 4100 (slow consumer) and resumes with `since`; a pause
    /// shorter than this many bytes of its rooms' traffic costs it nothing.
    /// Default 1 MiB.
    pub send_queue_bytes: usize,
    /// How long a frame may wait to be written to one socket; a client that
    /// falls further behind is closed with 4100 too. The time its
    /// connection spends awaiting services for the client (a request may
    /// take the NATS request timeout) is not counted. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub send_queue_delay: Duration,
    /// Chat messages of one room a connection holds back while an earlier
    /// one is missing (see `reorder_timeout`), and the most a gap fill
    /// fetches at once: past it the connection closes with 4103 and the
    /// client resumes. Default 256.
    pub reorder_capacity: usize,
    /// How long a room's chat waits for a missing seq before it is fetched
    /// from history. Live deliveries can be lost or, during an upgrade, come
    /// out of order; a connection delivers them in seq order and holds later ones
    /// (at most `reorder_capacity` per room, else it closes with 4103 and
    /// the client resumes). Default 300 ms.
    #[serde(with = "humantime_serde")]
    pub reorder_timeout: Duration,
    /// Time a new socket has to send its `auth` frame; then it is closed with
    /// 4001. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// Time a client has to send its HTTP request headers. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time one frame may take to write. A socket blocked longer belongs to
    /// a client that stopped reading: it is closed with 4100 (slow consumer),
    /// and the close frame gets as long again to go out. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A connection from which nothing arrives this long, not even a pong to
    /// the gateway's WebSocket pings (sent every third of it), is closed with
    /// 4107: it is most likely half-open, its client gone without a close,
    /// and would otherwise keep its seats and a slot of its user's
    /// connection cap. At least 1 s. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long the gateway drains before it closes what is
    /// left: `/ready` fails and new WebSockets are refused at once, and each
    /// client is sent `draining` with a time to move to another gateway,
    /// spread over the first three quarters of this period so the clients
    /// do not all arrive at once elsewhere. It ends early once every client
    /// has gone. `0s`: no draining. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Time sockets get to close after draining ends (with 4101). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Messages in `joined.history` when the join has no `since`. Default 50.
    pub history_limit: usize,
    /// How often this gateway announces it is alive. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Silence after which another gateway counts as dead and this one asks
    /// for its members to be removed from shared rooms; also after which a
    /// moderator's rooms move to the others. Keep it equal to the
    /// moderator's `gateway_timeout`. Default 9 s.
    #[serde(with = "humantime_serde")]
    pub gateway_timeout: Duration,
    /// Silence after which a media node counts as dead: the calls this
    /// gateway's connections hold there are told `call_moved`. Keep it
    /// equal to the media nodes' `node_timeout`. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub media_timeout: Duration,
    /// `call_join`s one connection may send per minute on average (each is
    /// a negotiation on a media node); more get `rate_limited`. Default 30.
    pub call_joins_per_minute: u32,
    /// `call_join`s a connection may send at once. Default 5.
    pub call_join_burst: u32,
    /// Serve `POST /auth/dev-token`, which hands anyone a short-lived HS256
    /// token for a display name. For local development and demos only: it
    /// lets anybody in. Needs `auth.hs256_secret`. Default off.
    pub dev_tokens: bool,
    /// How long a development token is valid. Default 1 h.
    #[serde(with = "humantime_serde")]
    pub dev_token_ttl: Duration,
    /// Token verification.
    pub auth: AuthConfig,
    /// STUN and TURN servers handed to clients for their calls.
    pub ice: IceConfig,
}

impl GatewayConfig {
    /// The budget for one connection's `call_join`s.
    pub fn call_join_rate(&self) -> bootstrap::token_bucket::Rate {
        bootstrap::token_bucket::Rate::per_minute(self.call_joins_per_minute, self.call_join_burst)
    }

    /// What one connection's send queue may hold.
    pub fn send_queue_limits(&self) -> crate::send_queue::Limits {
        crate::send_queue::Limits {
            bytes: self.send_queue_bytes,
            delay: self.send_queue_delay,
        }
    }

    /// The budget for `invalid_message` answers to one connection.
    pub fn invalid_frame_rate(&self) -> bootstrap::token_bucket::Rate {
        bootstrap::token_bucket::Rate::per_minute(
            self.invalid_frames_per_minute,
            self.invalid_frame_burst,
        )
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            id: None,
            allowed_origins: Vec::new(),
            demo_gateways: Vec::new(),
            max_connections: 10_000,
            max_frame_bytes: 128 * 1024,
            socket_read_buffer_bytes: 2 * 1024,
            socket_send_buffer_bytes: 64 * 1024,
            max_rooms_per_connection: 16,
            max_unauthenticated_per_ip: 256,
            max_connections_per_user: 16,
            invalid_frame_burst: 20,
            invalid_frames_per_minute: 10,
            send_queue_bytes: 1024 * 1024,
            send_queue_delay: Duration::from_secs(10),
            reorder_capacity: 256,
            reorder_timeout: Duration::from_millis(300),
            auth_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            history_limit: 50,
            heartbeat_interval: Duration::from_secs(3),
            gateway_timeout: Duration::from_secs(9),
            media_timeout: Duration::from_secs(3),
            call_joins_per_minute: 30,
            call_join_burst: 5,
            dev_tokens: false,
            dev_token_ttl: Duration::from_secs(3600),
            auth: AuthConfig::default(),
            ice: IceConfig::default(),
        }
    }
}

/// The ICE servers clients get in `welcome` and on `ice`
/// (`[gateway.ice]`, `CAVLO_GATEWAY__ICE__…`; see [`crate::ice`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct IceConfig {
    /// STUN URLs, e.g. `stun:stun.example.com:3478`. Default: none.
    pub stun_urls: Vec<String>,
    /// TURN URLs, e.g. `turn:turn.example.com:3478?transport=udp`; each
    /// client gets credentials for them. Needs `turn_secret`. Default: none.
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's
    /// `static-auth-secret`). Never sent to clients.
    pub turn_secret: Option<Secret>,
    /// How long TURN credentials are valid; clients ask for new ones before
    /// then. Default 1 h.
    #[serde(with = "humantime_serde")]
    pub turn_ttl: Duration,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl: Duration::from_secs(3600),
        }
    }
}

/// How tokens are verified (`[gateway.auth]`, `CAVLO_GATEWAY__AUTH__…`). Set
/// `hs256_secret` (development, or a backend that signs its own tokens),
/// `jwks_url` (an identity provider such as Auth0), or both.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens.
    pub hs256_secret: Option<Secret>,
    /// URL of a JSON Web Key Set for RS256/ES256 tokens, e.g.
    /// `https://YOUR_DOMAIN/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Least time between two fetches of the key set. A token that names
    /// an unknown `kid` (a key the provider has just published) causes a
    /// fetch, but at most this often, so a flood of made-up `kid`s cannot
    /// turn the gateway into a load generator against the provider.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub jwks_refetch_interval: Duration,
    /// How long a fetched key set is trusted; the first token after that
    /// fetches it again, so a key the provider removed stops being accepted.
    /// While the provider cannot be reached the last set stays in use.
    /// Default 10 min.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            jwks_url: None,
            issuer: None,
            audience: None,
            jwks_refetch_interval: Duration::from_secs(5),
            jwks_max_age: Duration::from_secs(600),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hs256_secret", &self.hs256_secret)
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_refetch_interval", &self.jwks_refetch_interval)
            .field("jwks_max_age", &self.jwks_max_age)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = AuthConfig {
            hs256_secret: Some(Secret("hunter2".into())),
            ..AuthConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
