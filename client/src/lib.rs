//! A Rust client of cavlo's WebSocket protocol (docs/protocol.md), for bots,
//! services, load tools and tests: the second SDK after the browser's
//! `cavlo.js`.
//!
//! The major components are:
//!
//! * [`Client`]: stays connected for an application. It fails over between
//!   gateways with backoff and jitter, fetches a fresh token for every
//!   connect and refreshes it before it expires ([`TokenSource`]), rejoins
//!   every room after a reconnect from the last seq it delivered (so each
//!   message arrives once), and resends unacked chat. A chat's ack is
//!   matched by its id. What it hears comes as [`Event`]s.
//! * [`Connection`]: one socket, frame by frame, with the gateway's close
//!   codes as typed errors: for code that needs the exact exchange (the
//!   system tests, `loadgen`).
//! * [`Outbox`]: chat waiting for its answer, found by id, resent in order.
//! * [`Backoff`]: the waits between attempts.
//!
//! Frames are `schemas::client`'s [`ClientFrame`](schemas::client::ClientFrame)
//! and [`ServerFrame`](schemas::client::ServerFrame); tokens are
//! `schemas::token`'s. Every operation has its own error type with a kind
//! to match on ([`ConnectError`], [`SendError`], [`RecvError`],
//! [`RequestError`]). Both speak `ws://` only, so `wss://` needs a TLS
//! proxy beside the client for now; a [`Connection`] can also wrap a socket
//! opened elsewhere ([`Connection::from_socket`]).
//!
//! A bot that answers every message:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cavlo_client::{Client, Event, Options, TokenSource};
//! use schemas::token::Claims;
//!
//! let secret = std::env::var("CAVLO_GATEWAY__AUTH__HS256_SECRET")?.into_bytes();
//! let token = TokenSource::from_fn(move || {
//!     let token = Claims::new("echo-bot", "Echo", Duration::from_secs(600)).sign_hs256(&secret);
//!     async move { Ok(token) }
//! });
//! let options = Options::new(["ws://127.0.0.1:8080/ws", "ws://127.0.0.1:8081/ws"], token);
//! let (client, mut events) = Client::connect(options).await?;
//! client.join("lobby").await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Chat(chat) => {
//!             // Answered from another task: this one keeps reading events.
//!             let client = client.clone();
//!             tokio::spawn(async move {
//!                 let reply = format!("{} said {}", chat.from.user.name, chat.text);
//!                 if let Err(err) = client.send_chat(chat.room, reply).await {
//!                     eprintln!("not sent: {err}");
//!                 }
//!             });
//!         }
//!         Event::Stopped(why) => eprintln!("stopped: {why:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod client;
mod connection;
mod error;
mod event;
mod options;
mod outbox;
mod session;
mod token;

pub use backoff::Backoff;
pub use client::Client;
pub use connection::{Connection, Dialer, MAX_MESSAGE_BYTES, Socket, WELCOME_TIMEOUT, Welcome};
pub use error::{
    ConnectError, ConnectErrorKind, Error, RecvError, RecvErrorKind, RequestError,
    RequestErrorKind, SendError, SendErrorKind, TokenError,
};
pub use event::{Ack, EVENTS_CAPACITY, Event, Events, Joined, Stop};
pub use options::Options;
pub use outbox::Outbox;
pub use token::TokenSource;
/// The WebSocket library the [`Connection`] speaks through, at the version
/// it uses: for [`Connection::send_message`] and [`Connection::socket_mut`].
pub use tokio_tungstenite::tungstenite;
