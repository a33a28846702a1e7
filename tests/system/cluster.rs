//! A gateway's part in the cluster: it serves only while it hears (and
//! sends) heartbeats.

use std::time::Duration;

use gateway::cluster::ClusterError;
use gateway::server::RunError;
use schemas::client::ServerFrame;
use schemas::code::CloseCode;

use crate::harness::{Client, Nats, Options};

/// A gateway whose heartbeat subscription ends (its NATS client closed for
/// good) must not go on serving: its peers would count it dead and remove
/// its members while it kept them. It drains, closes its sockets with the
/// reconnect code and returns the error, so the process exits and is
/// restarted. Before, its cluster task returned quietly and the gateway
/// served on, unseen by its peers.
#[tokio::test]
async fn a_gateway_that_stops_hearing_heartbeats_stops_serving() {
    let nats = Nats::start().await;
    let client = nats.connect().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Options::default().gateway;
    let metrics = bootstrap::metrics::Metrics::new(&client);
    let gateway = tokio::spawn(gateway::run(
        listener,
        client.clone(),
        config,
        metrics,
        std::future::pending::<()>(),
    ));
    let mut ann = Client::connect(addr, "ann").await;

    client.drain().await.expect("the client drains");

    let code = loop {
        match ann.recv_or_close().await {
            Ok(ServerFrame::Draining { .. }) => continue,
            Ok(other) => panic!("expected draining or a close, got {other:?}"),
            Err(code) => break code,
        }
    };
    assert_eq!(
        code,
        CloseCode::ShuttingDown.code(),
        "closed to reconnect elsewhere"
    );
    let result = tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .expect("the gateway stops by itself")
        .expect("the gateway task does not panic");
    assert!(
        matches!(result, Err(RunError::Cluster(ClusterError::Ended(_)))),
        "the gateway says why it stopped: {result:?}"
    );
}
