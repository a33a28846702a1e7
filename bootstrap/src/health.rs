//! `/health`, `/ready` and `/metrics` over HTTP, for container
//! orchestrators and Prometheus.
//!
//! `/health` answers 200 while the process runs. `/ready` answers 200 only
//! when the service can do its work (NATS connected, its stream or bucket
//! present) and 503 with the reason otherwise. `/metrics` is the service's
//! [`Metrics`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Health endpoint settings (`[health]`, `CAVLO_HEALTH__…`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// Address for `/health`, `/ready` and `/metrics`, on a private
    /// network: the gateway also answers `/health` and `/ready` on its
    /// public port, but its metrics only here. Unset: no endpoint.
    /// Default unset.
    pub listen: Option<SocketAddr>,
}

/// A readiness check: `Err` carries the reason the service is not ready.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Set by a service once its start-up is done (streams set up, requests
/// subscribed): until then `/ready` fails, however the service's own check
/// answers. A stream can exist before this process has finished with it.
#[derive(Clone, Debug, Default)]
pub struct Started(Arc<std::sync::atomic::AtomicBool>);

impl Started {
    /// Marks start-up as done.
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether start-up is done.
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `check`, failing until start-up is done.
    pub fn gate(&self, check: Check) -> Check {
        let started = self.clone();
        Arc::new(move || {
            if !started.is_set() {
                return Box::pin(async { Err("starting".to_owned()) });
            }
            check()
        })
    }
}

/// The HTTP response for a readiness result.
pub fn readiness_response(result: Result<(), String>) -> Response<Full<Bytes>> {
    let (status, body) = match result {
        Ok(()) => (StatusCode::OK, serde_json::json!({"status": "ready"})),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not ready", "reason": reason}),
        ),
    };
    json(status, body)
}

/// A JSON response.
pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Whether the client is connected, as a readiness result.
pub fn nats_connected(client: &async_nats::Client) -> Result<(), String> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(format!("nats {state}")),
    }
}

/// A readiness check: NATS connected and every JetStream stream in
/// `streams` present.
pub fn streams_ready(client: &async_nats::Client, streams: &'static [&'static str]) -> Check {
    let client = client.clone();
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            nats_connected(&client)?;
            let js = async_nats::jetstream::new(client);
            for stream in streams {
                stream_info(&js, stream).await?;
            }
            Ok(())
        })
    })
}

/// JetStream stream `name` with its info, or why it cannot be had, as a
/// readiness result.
pub async fn stream_info(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Result<async_nats::jetstream::stream::Stream, String> {
    js.get_stream(name)
        .await
        .map_err(|err| format!("stream {name}: {err}"))
}

/// Serves `/health`, `/ready` and `/metrics` on `listener` until
/// `shutdown` resolves; requests under way then end with it.
pub async fn serve(listener: TcpListener, ready: Check, metrics: Metrics, shutdown: impl Future) {
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Such as too many open files: the next accept may work.
                Err(err) => {
                    tracing::warn!(cause = %err, "cannot accept a health connection");
                    continue;
                }
            },
        };
        let (ready, metrics) = (ready.clone(), metrics.clone());
        connections.spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (ready, metrics) = (ready.clone(), metrics.clone());
                async move {
                    let response = match req.uri().path() {
                        "/health" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
                        "/ready" => readiness_response(ready().await),
                        "/metrics" => metrics.response(),
                        _ => json(
                            StatusCode::NOT_FOUND,
                            serde_json::json!({"status": "not found"}),
                        ),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            // A prober that hangs up early ends here; nothing to act on.
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(cause = %err, "health connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn ready_reflects_the_check_and_health_does_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let check: Check = Arc::new(move || {
            let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("stream missing".to_owned())
                }
            })
        });
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("connects lazily");
        tokio::spawn(serve(listener, check, Metrics::new(&client), stopped));

        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200"));
        let response = get(addr, "/ready").await;
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(response.contains("stream missing"));
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("cavlo_nats_connected 0"), "{metrics}");
    }

    #[tokio::test]
    async fn a_gated_check_fails_until_start_up_is_done() {
        let started = Started::default();
        let check = started.gate(Arc::new(|| Box::pin(async { Ok(()) })));
        assert_eq!(check().await, Err("starting".to_owned()));
        started.set();
        assert_eq!(check().await, Ok(()));
    }
}
