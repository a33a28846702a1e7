//! HTTP: accepting sockets, routing, the connection limit and shutdown.
//!
//! One port serves everything public: `GET /ws` (the WebSocket), `/health`,
//! `/ready`, the demo app and SDK as static files, and, when development
//! tokens are on, `POST /auth/dev-token` (see `web`).

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_tungstenite::HyperWebsocket;
use hyper_tungstenite::tungstenite::protocol::WebSocketConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use schemas::code::CloseCode;
use schemas::id::GatewayId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use bootstrap::health::{json, nats_connected, readiness_response};
use bootstrap::metrics::Metrics;

use crate::Shared;
use crate::admission::{Counter, Entry};
use crate::auth::{AuthSetupError, Authenticator};
use crate::bus::Bus;
use crate::cluster::{self, Cluster, ClusterError};
use crate::config::GatewayConfig;
use crate::departures::Departures;
use crate::hub::Hub;
use crate::metrics::GatewayMetrics;
use crate::placements;

/// How often a draining gateway checks whether its sockets are all gone.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The gateway could not start, or stopped for want of the cluster.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Token verification is not configured properly.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// The gateway's signal subject could not be subscribed.
    #[error(transparent)]
    Subscribe(#[from] crate::hub::SubscribeError),
    /// The gateway could not take part in the cluster (at start-up, or a
    /// heartbeat subscription ended while it ran): it stopped serving.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The cluster task panicked: the gateway stopped serving.
    #[error("the cluster task panicked")]
    ClusterPanicked,
    /// A URL in `gateway.demo_gateways` cannot go into the demo's policy.
    #[error(transparent)]
    DemoGateways(#[from] crate::web::InvalidDemoGateway),
    /// `gateway.ice` is not usable.
    #[error(transparent)]
    Ice(#[from] crate::ice::IceSetupError),
}

/// Serves WebSockets and the other routes on `listener` until `shutdown`
/// resolves, then drains: `/ready` fails and new WebSockets are refused
/// (so a load balancer moves on), and every client is told when to move
/// to another gateway, until all have gone or `drain_timeout` passes.
/// Then it closes every socket left with 4101 (reconnect) and waits for
/// them, up to `shutdown_timeout`.
///
/// A gateway that loses its part in the cluster (see [`crate::cluster`])
/// stops the same way and returns the error.
pub async fn run(
    listener: TcpListener,
    client: async_nats::Client,
    config: GatewayConfig,
    metrics: Metrics,
    shutdown: impl Future,
) -> Result<(), RunError> {
    let (server, cluster, departures) = Server::start(client, config, metrics).await?;
    tracing::info!(gateway = %server.shared.id, addr = ?listener.local_addr().ok(), "gateway ready");
    if server.shared.config.dev_tokens {
        tracing::warn!(
            "dev tokens are on: anyone can get a token at POST /auth/dev-token; never in production"
        );
    }
    let mut cluster = tokio::spawn(cluster.run(server.closing.clone()));
    tokio::spawn(placements::follow(
        server.shared.bus.clone(),
        server.closing.clone(),
    ));
    let mut failed = None;
    let stop = async {
        tokio::select! {
            _ = shutdown => {}
            ended = &mut cluster => {
                let err = match ended {
                    // Not before `closing` is cancelled, which is after this.
                    Ok(Ok(())) => return,
                    Ok(Err(err)) => RunError::Cluster(err),
                    Err(_) => RunError::ClusterPanicked,
                };
                tracing::error!(cause = %err, "the gateway left the cluster; stopping");
                failed = Some(err);
            }
        }
    };
    server.accept(listener, stop).await;
    server.close(departures).await;
    match failed {
        Some(err) => Err(err),
        None => match cluster.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RunError::ClusterPanicked),
        },
    }
}

struct Server {
    shared: Arc<Shared>,
    client: async_nats::Client,
    connections: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Cancelled once every connection closed: the departures they queued
    /// are sent, then the cluster task stops.
    closing: CancellationToken,
}

type HttpResponse = Response<Full<Bytes>>;

/// Why an upgrade was refused: the status and a plain-text body.
type Refusal = (StatusCode, &'static str);

impl Server {
    /// Wires the gateway's parts together: its routes for signals and chat
    /// replies, its departures worker and its place in the cluster, all
    /// before it serves anyone. Returns the server, its part in the cluster
    /// (to run) and the departures worker (done once `closing` is and its
    /// queue is empty).
    async fn start(
        client: async_nats::Client,
        config: GatewayConfig,
        metrics: Metrics,
    ) -> Result<(Arc<Self>, Cluster, JoinHandle<()>), RunError> {
        // Unique per process even when the name is configured: a gateway
        // restarted under its old name must not revive the members its previous
        // process left behind, which the others remove once that id goes silent.
        let name = config.id.as_deref().unwrap_or("gw");
        let id = GatewayId(format!("{name}-{}", nuid::next()));
        let hub = Arc::new(Hub::new(client.clone()));
        let gateway_metrics = GatewayMetrics::register(&metrics, hub.clone());
        let bus = Bus::new(client.clone(), id.clone(), gateway_metrics.backlog.clone());
        hub.route_signals(&id).await?;
        hub.route_chat_replies(bus.chat_replies()).await?;
        let timing = cluster::Timing {
            heartbeat_interval: config.heartbeat_interval,
            gateway_timeout: config.gateway_timeout,
            media_timeout: config.media_timeout,
        };
        let cluster = Cluster::join(hub.clone(), bus.clone(), id.clone(), timing).await?;
        let closing = CancellationToken::new();
        let (departures, departures_done) = Departures::start(bus.clone(), closing.clone());
        let server = Arc::new(Server {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            tasks: TaskTracker::new(),
            shared: Arc::new(Shared {
                auth: Authenticator::new(&config.auth)?,
                ice: crate::ice::Ice::new(&config.ice)?,
                demo_policy: crate::web::DemoPolicy::new(&config.demo_gateways)?,
                metrics: gateway_metrics,
                unauthenticated: Counter::new(config.max_unauthenticated_per_ip),
                per_user: Counter::new(config.max_connections_per_user),
                hub,
                bus,
                departures,
                draining: CancellationToken::new(),
                shutdown: CancellationToken::new(),
                id,
                config,
            }),
            client,
            closing,
        });
        Ok((server, cluster, departures_done))
    }

    /// Accepts connections until `stop`, then drains (see [`run`]).
    async fn accept(self: &Arc<Self>, listener: TcpListener, stop: impl Future) {
        let drained = self.clone().drain(stop);
        tokio::pin!(drained);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut drained => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => (stream, peer.ip()),
                    Err(err) => {
                        // Usually out of file descriptors; the loop goes on once
                        // some are released.
                        tracing::error!(cause = %err, "failed to accept");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            self.serve_http(stream, peer);
        }
    }

    /// Serves one accepted TCP connection's HTTP requests in a task of its
    /// own; an upgraded WebSocket moves on to [`Server::upgrade`]'s task.
    fn serve_http(self: &Arc<Self>, stream: TcpStream, peer: IpAddr) {
        let _ = stream.set_nodelay(true);
        let send_buffer = self.shared.config.socket_send_buffer_bytes;
        if send_buffer > 0
            && let Err(err) = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer)
        {
            tracing::warn!(cause = %err, "cannot bound the socket's send buffer");
        }
        let handshake_timeout = self.shared.config.handshake_timeout;
        let server = self.clone();
        let closing = self.shared.shutdown.clone();
        self.tasks.spawn(async move {
            let service = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.route(req, peer).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            // A kept-alive HTTP connection (a health checker's) would hold
            // the shutdown for its whole timeout: end it after its current
            // request. An upgraded one has handed its socket over already.
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(cause = %err, "http connection ended with an error");
            }
        });
    }

    /// After draining: closes the sockets left (4101) and waits for them,
    /// sends the departures they queued, then unsubscribes from everything.
    async fn close(&self, departures: JoinHandle<()>) {
        tracing::info!("gateway closing its last connections");
        self.shared.shutdown.cancel();
        self.tasks.close();
        let grace = self.shared.config.shutdown_timeout;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close in time");
        }
        // Closed connections queued their departures; send them, then stop.
        self.closing.cancel();
        if tokio::time::timeout(grace, departures).await.is_err() {
            tracing::warn!("some departures were not sent in time");
        }
        self.shared.hub.shutdown().await;
    }

    /// Waits for `shutdown`, then drains (see [`run`]); returns when every
    /// WebSocket is gone or `drain_timeout` has passed.
    async fn drain(self: Arc<Self>, shutdown: impl Future) {
        shutdown.await;
        let config = &self.shared.config;
        if config.drain_timeout.is_zero() {
            return;
        }
        tracing::info!(timeout = ?config.drain_timeout, "gateway draining");
        self.shared.draining.cancel();
        // Every permit back means every socket has closed. Polled rather
        // than acquired, so /health keeps counting the sockets left.
        let gone = async {
            while self.connections.available_permits() < config.max_connections {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        };
        if tokio::time::timeout(config.drain_timeout, gone)
            .await
            .is_err()
        {
            tracing::info!("drain timeout: closing the connections left");
        }
    }

    async fn route(&self, req: Request<Incoming>, peer: IpAddr) -> HttpResponse {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/ws") if self.shared.draining.is_cancelled() => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining; use another gateway",
            ),
            (&Method::GET, "/ws") => self.upgrade(req, peer),
            #[cfg(feature = "conformance")]
            (&Method::GET, crate::conformance::PATH) => self.echo(req),
            (&Method::GET, "/health") => self.health(),
            (&Method::GET, "/ready") if self.shared.draining.is_cancelled() => {
                readiness_response(Err("draining".to_owned()))
            }
            (&Method::GET, "/ready") => readiness_response(nats_connected(&self.client)),
            (&Method::POST, "/auth/dev-token") => crate::web::dev_token(&self.shared, req).await,
            (&Method::GET, path) => {
                let cached = req.headers().get(header::IF_NONE_MATCH);
                crate::web::file(path, cached, &self.shared.demo_policy)
                    .unwrap_or_else(|| plain(StatusCode::NOT_FOUND, "not found"))
            }
            _ => plain(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// Checks a WebSocket upgrade request and answers it, with the limits
    /// every socket gets; `Err` is the refusal to send instead.
    fn handshake(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<(HttpResponse, HyperWebsocket), Refusal> {
        if !hyper_tungstenite::is_upgrade_request(&req) {
            return Err((StatusCode::BAD_REQUEST, "expected a WebSocket upgrade"));
        }
        if !origin_allowed(&req, &self.shared.config.allowed_origins) {
            tracing::info!(origin = ?req.headers().get(header::ORIGIN), "origin refused");
            return Err((StatusCode::FORBIDDEN, "origin not allowed"));
        }
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.shared.config.max_frame_bytes))
            .max_frame_size(Some(self.shared.config.max_frame_bytes))
            .read_buffer_size(self.shared.config.socket_read_buffer_bytes);
        hyper_tungstenite::upgrade(&mut req, Some(ws_config))
            .map_err(|_| (StatusCode::BAD_REQUEST, "invalid WebSocket handshake"))
    }

    fn upgrade(&self, req: Request<Incoming>, peer: IpAddr) -> HttpResponse {
        let (response, websocket) = match self.handshake(req) {
            Ok(upgrade) => upgrade,
            Err((status, reason)) => return plain(status, reason),
        };
        // Take the permit before the socket exists; it lives as long as the
        // socket's task.
        let permit = self.connections.clone().try_acquire_owned().ok();
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            let mut socket = match websocket.await {
                Ok(socket) => socket,
                Err(err) => {
                    tracing::debug!(cause = %err, "upgrade failed");
                    return;
                }
            };
            let _open = shared.metrics.open();
            let Some(permit) = permit else {
                tracing::warn!("connection limit reached");
                crate::connection::close(&mut socket, CloseCode::GatewayFull, &shared).await;
                return;
            };
            match shared.unauthenticated.try_enter(peer) {
                Some(pending) => serve(socket, shared, permit, pending).await,
                None => {
                    tracing::info!(%peer, "too many unauthenticated sockets from one address");
                    crate::connection::close(
                        &mut socket,
                        CloseCode::TooManyUnauthenticated,
                        &shared,
                    )
                    .await;
                }
            }
        });
        response
    }

    /// The conformance echo (see `conformance`), on the same handshake.
    #[cfg(feature = "conformance")]
    fn echo(&self, req: Request<Incoming>) -> HttpResponse {
        let (response, websocket) = match self.handshake(req) {
            Ok(upgrade) => upgrade,
            Err((status, reason)) => return plain(status, reason),
        };
        let shared = self.shared.clone();
        self.tasks.spawn(async move {
            match websocket.await {
                Ok(socket) => crate::conformance::echo(socket, &shared).await,
                Err(err) => tracing::debug!(cause = %err, "upgrade failed"),
            }
        });
        response
    }

    fn health(&self) -> HttpResponse {
        let config = &self.shared.config;
        let body = serde_json::json!({
            "status": "ok",
            "gateway": self.shared.id,
            "connections": config.max_connections - self.connections.available_permits(),
            "rooms": self.shared.hub.room_count(),
            "moderators": self.shared.bus.moderators().count(),
            "media_nodes": self.shared.bus.media().view().by_load().len(),
            "nats": self.client.connection_state().to_string(),
        });
        json(StatusCode::OK, body)
    }
}

async fn serve(
    socket: hyper_tungstenite::HyperWebsocketStream,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    pending: Entry<IpAddr>,
) {
    crate::connection::serve(socket, shared, pending).await;
}

/// Whether a browser at this request's `Origin` may connect: no `Origin`
/// (not a browser), the gateway's own origin, or one on the allow-list.
fn origin_allowed<B>(req: &Request<B>, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((host, origin_host), (Some(host), Some(origin_host)) if host.eq_ignore_ascii_case(origin_host))
}

fn plain(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Option<&str>) -> Request<()> {
        let mut builder = Request::builder()
            .uri("/ws")
            .header(header::HOST, "chat.example.com:8080");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example.com".to_owned()];
        let cases: &[(Option<&str>, &[String], bool)] = &[
            (None, &[], true),
            (Some("http://chat.example.com:8080"), &[], true),
            (Some("https://app.example.com"), &allowed, true),
            (Some("https://APP.example.com"), &allowed, true),
            (Some("https://evil.example.com"), &allowed, false),
            (Some("https://app.example.com.evil.net"), &allowed, false),
            (Some("http://chat.example.com:9999"), &[], false),
            (Some("https://anything.net"), &["*".to_owned()], true),
        ];
        for (origin, allowed, expected) in cases {
            assert_eq!(
                origin_allowed(&request(*origin), allowed),
                *expected,
                "origin {origin:?}"
            );
        }
    }
}
