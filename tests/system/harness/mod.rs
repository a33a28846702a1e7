//! Starts a whole cavlo system for a test, and talks to it. One file per
//! concern:
//!
//! * [`nats`]: a real nats-server with JetStream in a container;
//! * [`system`]: history, moderators and gateways in-process, each with its
//!   own NATS connection as if it were its own process, media nodes too,
//!   and the leak check
//!   that ends a scenario;
//! * [`link`]: a TCP link between one service and NATS that a test can cut;
//! * [`client`]: the test client, over `cavlo_client::Connection`;
//! * [`token`]: test users' tokens;
//! * [`http`]: plain HTTP requests.

mod client;
mod http;
mod link;
mod nats;
mod system;
mod token;

pub use call_peer::Participant;
pub use client::{Client, FRAME_TIMEOUT, QUIET, assert_code, signal};
pub use http::{get_json, http};
pub use link::Link;
pub use nats::{NATS_USERS, Nats, REQUEST_TIMEOUT};
pub use system::{Options, System, service_binary};
pub use token::{SECRET, now, token, token_with};

use schemas::event::{self, ModerationReply, ModerationRequest, Verdict};
use schemas::id::RoomId;
use schemas::subject;

/// A unique room name, so tests never see each other's messages.
pub fn room(label: &str) -> RoomId {
    RoomId(format!("{label}-{}", nuid::next()))
}

/// The moderator's verdict on `request`, sent straight over NATS as a
/// gateway would send it.
pub async fn moderate(client: &async_nats::Client, request: &ModerationRequest) -> Verdict {
    let reply = client
        .request(subject::MODERATE, event::encode(request).into())
        .await
        .expect("a moderator answers");
    event::decode::<ModerationReply>(&reply.payload)
        .expect("a moderation reply")
        .verdict
}
