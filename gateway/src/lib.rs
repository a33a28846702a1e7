//! The gateway: the WebSocket endpoint browsers connect to.
//!
//! It authenticates each socket, forwards client events to the moderator and
//! history over NATS, and delivers room traffic to its sockets. It keeps no
//! state that outlives a connection, so any number can run and a client may
//! reconnect to any of them.
//!
//! * [`config`]: settings and defaults.
//! * [`server`]: HTTP accept loop, routes (`/ws`, `/health`, `/ready`, static
//!   files, `/auth/dev-token`), origin check, connection limit and shutdown.
//! * [`connection`]: one socket's life: auth, then frames in and deliveries out.
//! * [`admission`]: caps per client address (before auth) and per user.
//! * [`hub`]: connections, rooms with local members, their subscriptions.
//! * [`bus`]: typed requests to the moderator and history.
//! * [`chat_acks`]: a stored chat's ack taken from its own delivery.
//! * [`routing`]: which moderator stores a room's chat.
//! * [`media`]: the live media nodes, where a new call goes, and which
//!   calls must move.
//! * [`placements`]: which node holds each room's call, from the calls bucket.
//! * [`reorder`]: each room's chat released to a connection in seq order.
//! * [`send_queue`]: a connection's deliveries, bounded by bytes and by time.
//! * [`departures`]: reliable "left the room" notices for closed connections.
//! * [`cluster`]: heartbeats, and removing dead gateways' members.
//! * [`auth`] and [`jwks`]: token verification.
//! * [`ice`]: STUN and TURN servers for calls, with per-user TURN credentials.
//! * [`metrics`]: what the gateway counts for Prometheus.
//! * [`web`]: the embedded demo app and SDK, their security headers, and
//!   development tokens.
//! * `conformance` (feature `conformance`, tests only): a WebSocket echo on
//!   the same socket stack, for the Autobahn cases.

pub mod admission;
pub mod auth;
pub mod bus;
pub mod chat_acks;
pub mod cluster;
pub mod config;
#[cfg(feature = "conformance")]
mod conformance;
mod connection;
pub mod departures;
pub mod hub;
pub mod ice;
pub mod jwks;
pub mod media;
pub mod metrics;
pub mod placements;
pub mod reorder;
pub mod routing;
pub mod send_queue;
pub mod server;
pub mod web;

use std::net::IpAddr;
use std::sync::Arc;

use schemas::client::Limits;
use schemas::id::{GatewayId, UserId};
use tokio_util::sync::CancellationToken;

use crate::admission::Counter;
use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::GatewayConfig;
use crate::departures::Departures;
use crate::hub::Hub;
pub use crate::server::{RunError, run};

/// Ready when NATS is connected (also served at `/ready` on the gateway's port).
pub fn readiness(client: &async_nats::Client) -> bootstrap::health::Check {
    bootstrap::health::streams_ready(client, &[])
}

/// What every connection task shares.
pub(crate) struct Shared {
    id: GatewayId,
    config: GatewayConfig,
    hub: Arc<Hub>,
    bus: Bus,
    departures: Departures,
    auth: Authenticator,
    ice: crate::ice::Ice,
    /// The demo page's Content-Security-Policy.
    demo_policy: crate::web::DemoPolicy,
    metrics: crate::metrics::GatewayMetrics,
    /// Sockets not yet authenticated, per client address.
    unauthenticated: Counter<IpAddr>,
    /// Authenticated connections, per user.
    per_user: Counter<UserId>,
    /// Cancelled when the gateway starts draining (see `server::run`).
    draining: CancellationToken,
    /// Cancelled when the gateway closes what is left, after draining.
    shutdown: CancellationToken,
}

impl Shared {
    fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.config.max_frame_bytes,
            max_rooms: self.config.max_rooms_per_connection,
            history_limit: self.config.history_limit,
        }
    }
}
