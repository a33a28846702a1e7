//! Prometheus metrics, served at `/metrics` on the health listener
//! (`health.listen`, a private port) in the OpenMetrics text format.
//!
//! Every metric is named `cavlo_…`. Each service registers its own under
//! its name (`cavlo_gateway_…`, `cavlo_moderator_…`, `cavlo_history_…`);
//! every service also reports its NATS connection (`cavlo_nats_…`) and its
//! process (`cavlo_process_…`), read at scrape time. docs/operations.md
//! lists them all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets, in seconds, for the latencies cavlo measures: a millisecond to
/// thirty seconds, past every request timeout.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// A service's metrics: what records them registers here at start, and the
/// HTTP listener encodes them on every scrape. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// A registry holding the NATS metrics of `client` and the process
    /// metrics, to which the service adds its own.
    pub fn new(client: &async_nats::Client) -> Self {
        let mut registry = Registry::with_prefix("cavlo");
        registry.register_collector(Box::new(NatsCollector(client.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Registers a service's metrics under `cavlo_<service>_`.
    pub fn register<T>(&self, service: &str, register: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        register(registry.sub_registry_with_prefix(service))
    }

    /// Every metric, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The answer to `GET /metrics`.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.encode())));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(CONTENT_TYPE),
        );
        response
    }
}

/// A label set of one `(name, value)` pair, the only kind cavlo uses.
pub type Label = [(&'static str, &'static str); 1];

/// Encodes one gauge read at scrape time, for a [`Collector`].
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
}

/// A gauge of the permits of `permits` in use, out of `max`, read at
/// scrape time: how much of a bounded pool of work is under way.
#[derive(Debug)]
pub struct PermitsInUse {
    /// The metric's name, without prefix.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// The pool.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// How many permits the pool has when nothing is under way.
    pub max: usize,
}

impl Collector for PermitsInUse {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let busy = self.max.saturating_sub(self.permits.available_permits());
        encode_gauge(&mut encoder, self.name, self.help, None, busy as i64)
    }
}

/// The NATS connection, as the client sees it at scrape time.
#[derive(Debug)]
struct NatsCollector(async_nats::Client);

impl Collector for NatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let connected = matches!(
            self.0.connection_state(),
            async_nats::connection::State::Connected
        );
        encode_gauge(
            &mut encoder,
            "nats_connected",
            "1 while the connection to NATS is up",
            None,
            i64::from(connected),
        )?;
        let stats = self.0.statistics();
        let counters = [
            (
                "nats_connects",
                "Connections made to NATS: the first, then each reconnect",
                None,
                &stats.connects,
            ),
            (
                "nats_received_messages",
                "Messages received from NATS",
                None,
                &stats.in_messages,
            ),
            (
                "nats_sent_messages",
                "Messages sent to NATS",
                None,
                &stats.out_messages,
            ),
            (
                "nats_received",
                "Payload bytes received from NATS",
                Some(&Unit::Bytes),
                &stats.in_bytes,
            ),
            (
                "nats_sent",
                "Payload bytes sent to NATS",
                Some(&Unit::Bytes),
                &stats.out_bytes,
            ),
        ];
        for (name, help, unit, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                unit,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The process's memory and open files, from `/proc/self` (Linux; on other
/// systems these metrics are absent).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = resident_memory_bytes() {
            encode_gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory of the process",
                Some(&Unit::Bytes),
                bytes,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            encode_gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors of the process (sockets included)",
                None,
                fds.count() as i64,
            )?;
        }
        Ok(())
    }
}

/// Resident pages times the page size, from `/proc/self/statm`.
fn resident_memory_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every Linux platform cavlo ships for.
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_memory_bytes().is_some_and(|bytes| bytes > 0));
        }
    }

    #[tokio::test]
    async fn services_register_under_their_name() {
        // A client that never connects: its metrics still encode.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("connects lazily");
        let metrics = Metrics::new(&client);
        let requests = metrics.register("moderator", |registry| {
            let counter = Counter::<u64>::default();
            registry.register("requests", "Requests", counter.clone());
            counter
        });
        requests.inc();
        let text = metrics.encode();
        for line in [
            "cavlo_moderator_requests_total 1",
            "cavlo_nats_connected 0",
            "cavlo_nats_connects_total 0",
            "# TYPE cavlo_process_resident_memory_bytes gauge",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
