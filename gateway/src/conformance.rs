//! A WebSocket echo on the gateway's own socket stack, for the Autobahn
//! protocol-conformance cases (`scripts/autobahn.sh`).
//!
//! The cases need a server that echoes every message; `/ws` answers with
//! cavlo's protocol instead. The echo shares everything below that: the
//! HTTP handshake and its checks, the frame and message size limits, how a
//! read error becomes a close code and how a connection ends. It serves
//! anyone without authentication, so it is compiled only with the
//! `conformance` feature and never into a deployed gateway.

use futures_util::{SinkExt, StreamExt};
use hyper_tungstenite::HyperWebsocketStream;
use hyper_tungstenite::tungstenite::Message;

use crate::Shared;
use crate::connection::{Exit, end, read, write};

/// Where the echo is served.
pub(crate) const PATH: &str = "/conformance/echo";

/// Sends back every text and binary message until the socket ends.
pub(crate) async fn echo(mut socket: HyperWebsocketStream, shared: &Shared) {
    let write_timeout = shared.config.write_timeout;
    let exit = loop {
        let message = match read(socket.next().await) {
            Ok(message) => message,
            Err(exit) => break exit,
        };
        match message {
            Message::Text(_) | Message::Binary(_) => {
                if let Err(exit) = write(socket.send(message), write_timeout).await {
                    break exit;
                }
            }
            Message::Close(_) => break Exit::ClientClosed,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    };
    end(&mut socket, exit, shared).await;
}
