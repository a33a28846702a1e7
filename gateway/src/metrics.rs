//! What the gateway counts, for Prometheus (`cavlo_gateway_…`, served at
//! `/metrics` on the health listener; docs/operations.md lists them).
//!
//! A labelled count looks its series up in a small map under a read lock,
//! then bumps an atomic.

use std::sync::Arc;

use bootstrap::metrics::{LATENCY_BUCKETS, Label, Metrics, encode_gauge};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use schemas::client::ServerFrame;
use schemas::code::ErrorCode;

use crate::hub::{DeliveryKind, Hub};

/// The gateway's metrics; cheap to clone (every metric is shared).
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    connections: Gauge,
    /// Connections that authenticated.
    pub authenticated: Counter,
    closed: Family<[(&'static str, u16); 1], Counter>,
    received: Family<Label, Counter>,
    sent: Family<Label, Counter>,
    errors: Family<Label, Counter>,
    /// From a chat frame's arrival to its ack (or error) going out.
    pub chat_ack: Histogram,
    /// History's answer to a backlog query, as the gateway waits for it.
    pub backlog: Histogram,
}

impl GatewayMetrics {
    /// The gateway's metrics, registered in `metrics`, with rooms and
    /// members read from `hub` at each scrape.
    pub fn register(metrics: &Metrics, hub: Arc<Hub>) -> Self {
        let this = Self {
            connections: Gauge::default(),
            authenticated: Counter::default(),
            closed: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            errors: Family::default(),
            chat_ack: Histogram::new(LATENCY_BUCKETS),
            backlog: Histogram::new(LATENCY_BUCKETS),
        };
        metrics.register("gateway", |registry| {
            registry.register(
                "connections",
                "WebSockets open now",
                this.connections.clone(),
            );
            registry.register(
                "authenticated",
                "Connections that authenticated",
                this.authenticated.clone(),
            );
            registry.register(
                "closed",
                "Connections closed, by close code (1000: the client's close echoed, \
                 1006: dropped without a close frame)",
                this.closed.clone(),
            );
            registry.register(
                "frames_received",
                "Frames from clients, by type (invalid: not a client frame)",
                this.received.clone(),
            );
            registry.register(
                "frames_sent",
                "Frames to clients, by type",
                this.sent.clone(),
            );
            registry.register(
                "errors",
                "Error frames sent to clients, by error code",
                this.errors.clone(),
            );
            registry.register(
                "chat_ack_seconds",
                "From a chat frame's arrival to its ack or error",
                this.chat_ack.clone(),
            );
            registry.register(
                "backlog_seconds",
                "Backlog queries to history, as the gateway waits for them",
                this.backlog.clone(),
            );
            registry.register_collector(Box::new(HubCollector(hub)));
        });
        this
    }

    /// Counts an open WebSocket until the returned guard is dropped.
    pub fn open(&self) -> OpenSocket {
        self.connections.inc();
        OpenSocket(self.connections.clone())
    }

    /// Counts a connection ending with close `code`.
    pub fn closed(&self, code: u16) {
        self.closed.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a frame from a client of type `kind`.
    pub fn received(&self, kind: &'static str) {
        self.received.get_or_create(&[("type", kind)]).inc();
    }

    /// Counts a frame sent to a client (and, for an error, its code).
    pub fn sent(&self, frame: &ServerFrame) {
        if let ServerFrame::Error(error) = frame {
            self.error(error.code);
        }
        self.sent.get_or_create(&[("type", frame.kind())]).inc();
    }

    /// Counts a room delivery sent to a client.
    pub fn delivered(&self, kind: DeliveryKind) {
        let kind = match kind {
            DeliveryKind::Chat { .. } => "chat",
            DeliveryKind::Presence { .. } => "presence",
            DeliveryKind::Signal => "signal",
        };
        self.sent.get_or_create(&[("type", kind)]).inc();
    }

    fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&[("code", code.as_str())]).inc();
    }
}

/// Holds one count of `cavlo_gateway_connections`.
#[derive(Debug)]
pub struct OpenSocket(Gauge);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Rooms with local members and local memberships, read at scrape time.
struct HubCollector(Arc<Hub>);

impl std::fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubCollector")
    }
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges = [
            (
                "rooms",
                "Rooms with members on this gateway",
                self.0.room_count(),
            ),
            (
                "members",
                "Room memberships of this gateway's connections",
                self.0.local_member_count(),
            ),
        ];
        for (name, help, value) in gauges {
            encode_gauge(&mut encoder, name, help, None, value as i64)?;
        }
        Ok(())
    }
}
