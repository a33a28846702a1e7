//! A TCP link between one service and NATS that a test can cut, as a
//! network blip would: the service's connection drops, and what NATS
//! publishes until the link is restored never reaches it (core NATS does not
//! buffer for a subscriber that is away). Pausing the NATS container cuts
//! every service at once; this cuts one.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards connections from a local port to NATS while it is up.
pub struct Link {
    /// The address to give the service instead of NATS's.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Link {
    /// A link to NATS at `upstream`, up.
    pub async fn open(upstream: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a link");
        let addr = listener.local_addr().expect("a bound link has an address");
        let (up, state) = watch::channel(true);
        let task = tokio::spawn(forward(listener, upstream, state));
        Link { addr, up, task }
    }

    /// The URL a service connects to.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Drops every connection over the link and holds new ones unanswered
    /// (a reconnecting client waits for NATS's greeting) until [`Link::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets held and new connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections only while the link is up; each one lives until
/// either side closes it or the link is cut.
async fn forward(listener: TcpListener, upstream: SocketAddr, mut state: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        if state.wait_for(|up| *up).await.is_err() {
            return;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Cut while waiting: leave the next client in the listen queue.
            _ = state.wait_for(|up| !*up) => continue,
        };
        let Ok((mut inbound, _)) = accepted else {
            return;
        };
        let mut state = state.clone();
        connections.spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = state.wait_for(|up| !*up) => {}
            }
        });
    }
}
