//! Media node settings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bootstrap::service::{Common, ServiceConfig};
use serde::{Deserialize, Serialize};

/// Everything the media binary reads (see [`bootstrap::config`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `[nats]`, `[log]`, `[health]`
    #[serde(flatten)]
    pub common: Common,
    /// `[media]`
    pub media: MediaConfig,
}

impl ServiceConfig for Config {
    fn common(&self) -> &Common {
        &self.common
    }
}

/// How the node forwards media (`[media]`, `CAVLO_MEDIA__…`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaConfig {
    /// The UDP address media arrives at: one port for every participant.
    /// Open it in firewalls. Default `0.0.0.0:10000`.
    pub udp_listen: SocketAddr,
    /// The address browsers send media to, the node's one ICE candidate.
    /// Default: the address of the interface this host reaches others
    /// through. Set it behind NAT (or Docker's port mapping) to the address
    /// clients reach.
    pub public_ip: Option<IpAddr>,
    /// The port browsers send media to, when a NAT or Docker maps another
    /// one to `udp_listen`'s. Default: `udp_listen`'s port.
    pub public_port: Option<u16>,
    /// Participants this node holds at most, over all its calls; the next
    /// join goes to another node, or gets `unavailable`. Default 500.
    pub max_participants: usize,
    /// Largest SDP offer accepted, in bytes; larger gets `too_large`.
    /// Default 64 KiB.
    pub max_offer_bytes: usize,
    /// Keyframe requests to one publisher's track are at least this far
    /// apart, however many subscribers ask. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub keyframe_interval: Duration,
    /// How often the node announces itself and its load. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node silent this long is dead: its calls may be taken over. Keep
    /// it at least 3 heartbeat intervals, and equal to the gateways'
    /// `media_timeout`. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// How long a stopping node waits for its participants to move to
    /// other nodes before it ends their calls. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// JetStream replicas of the calls bucket. Default 1.
    pub calls_replicas: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            udp_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10000),
            public_ip: None,
            public_port: None,
            max_participants: 500,
            max_offer_bytes: 64 * 1024,
            keyframe_interval: Duration::from_millis(500),
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(5),
            calls_replicas: 1,
        }
    }
}

impl MediaConfig {
    /// The address browsers send media to, given the socket's own.
    pub fn public_addr(&self, bound: SocketAddr) -> SocketAddr {
        let ip = self.public_ip.unwrap_or_else(|| {
            if bound.ip().is_unspecified() {
                outward_ip()
            } else {
                bound.ip()
            }
        });
        SocketAddr::new(ip, self.public_port.unwrap_or(bound.port()))
    }
}

/// The address of the interface this host routes outward through: a UDP
/// socket "connected" to a documentation address takes it, and sends
/// nothing. Loopback when the host has no route.
fn outward_ip() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| socket.connect("192.0.2.1:9").map(|()| socket))
        .and_then(|socket| socket.local_addr());
    match probe {
        Ok(addr) => addr.ip(),
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}
