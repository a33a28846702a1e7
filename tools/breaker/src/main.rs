//! `breaker`: a WebSocket proxy between cavlo clients and one gateway that
//! breaks the system on purpose, in one named way, to show that a verdict
//! catches what it must. A check that passes a broken system is a defect;
//! `scripts/verdict-breaks.sh` runs the load verdict through each break and
//! expects it to fail, and through `none` and expects it to pass.
//!
//!     breaker --listen 127.0.0.1:19080 --upstream ws://127.0.0.1:18080/ws --break repeated-ack
//!
//! Client frames go to the gateway unchanged; the gateway's frames come
//! back changed as the break says (see [`breaks`]); close frames and their
//! codes pass both ways. For loopback test runs only.

mod breaks;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::breaks::{Break, Breaker};

/// Relay WebSocket connections to a gateway, breaking them in one way.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Where clients connect.
    #[arg(long)]
    listen: SocketAddr,
    /// The gateway's WebSocket URL.
    #[arg(long)]
    upstream: String,
    /// What to break.
    #[arg(long = "break", value_enum)]
    what: Break,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(cli.listen).await?;
    let breaker = Arc::new(Breaker::new(cli.what));
    let upstream = Arc::new(cli.upstream);
    loop {
        let (stream, _) = listener.accept().await?;
        let (breaker, upstream) = (breaker.clone(), upstream.clone());
        tokio::spawn(async move {
            if let Err(err) = relay(stream, &upstream, &breaker).await {
                eprintln!("breaker: connection ended: {err}");
            }
        });
    }
}

/// Relays one client connection to the gateway until either side ends.
async fn relay(
    stream: TcpStream,
    upstream: &str,
    breaker: &Breaker,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let client = tokio_tungstenite::accept_async(stream).await?;
    let (server, _) = tokio_tungstenite::connect_async(upstream).await?;
    let (mut to_client, mut from_client) = client.split();
    let (mut to_server, mut from_server) = server.split();
    let mut connection = breaker.connection();
    loop {
        tokio::select! {
            message = from_client.next() => match message {
                Some(Ok(message)) => {
                    let closing = message.is_close();
                    to_server.send(message).await?;
                    if closing {
                        return Ok(());
                    }
                }
                _ => return to_server.close().await,
            },
            message = from_server.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    for frame in connection.pass(text.as_str()) {
                        to_client.feed(Message::text(frame)).await?;
                    }
                    to_client.flush().await?;
                }
                Some(Ok(message)) => {
                    let closing = message.is_close();
                    to_client.send(message).await?;
                    if closing {
                        return Ok(());
                    }
                }
                _ => return to_client.close().await,
            },
        }
    }
}
