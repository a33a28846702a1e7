//! Moderator and history are discoverable with the NATS services API
//! (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`), as `nats micro ls` lists them.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::{Client, Options, System, room};

/// Every answer to a services API request on `subject`, as JSON: services
/// answer once each, so collect until none has answered for a while.
async fn gather(nats: &async_nats::Client, subject: &str) -> Vec<Value> {
    let inbox = nats.new_inbox();
    let mut answers = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut all = Vec::new();
    while let Ok(Some(answer)) =
        tokio::time::timeout(Duration::from_millis(500), answers.next()).await
    {
        all.push(serde_json::from_slice(&answer.payload).expect("services API JSON"));
    }
    all
}

/// The number of requests `stats` (answers to `$SRV.STATS.…`) counted on
/// all endpoints of all instances.
fn requests(stats: &[Value]) -> u64 {
    stats
        .iter()
        .flat_map(|instance| {
            instance["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|endpoint| endpoint["num_requests"].as_u64().unwrap_or_default())
        .sum()
}

#[tokio::test]
async fn moderators_and_history_are_listed_with_their_stats() {
    let system = System::start(Options::default()).await;
    let room = room("listed");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&room, None).await;
    for i in 0..3 {
        ann.chat(&room, &format!("m{i}"), "x").await.unwrap();
    }
    let nats = system.nats.connect().await;

    let pings = gather(&nats, "$SRV.PING").await;
    let named = |name: &str| pings.iter().filter(|p| p["name"] == name).count();
    assert_eq!(named(moderator::SERVICE_NAME), 2, "{pings:#?}");
    assert_eq!(named(history::SERVICE_NAME), 1, "{pings:#?}");

    let info = gather(&nats, &format!("$SRV.INFO.{}", moderator::SERVICE_NAME)).await;
    assert_eq!(info.len(), 2);
    for instance in &info {
        let endpoints = instance["endpoints"].as_array().unwrap();
        let shared = endpoints
            .iter()
            .find(|e| e["name"] == "moderate")
            .expect("the shared endpoint");
        assert_eq!(shared["subject"], schemas::subject::MODERATE);
        assert_eq!(shared["queue_group"], schemas::subject::MODERATOR_QUEUE);
        assert!(
            endpoints.iter().any(|e| e["name"] == "direct"),
            "{instance}"
        );
    }

    // The services API counts a request when it is answered: the join,
    // whichever moderator and endpoint took it, but not the three chats,
    // which their deliveries answered (see gateway/src/chat_acks.rs); one
    // backlog query.
    let stats = gather(&nats, &format!("$SRV.STATS.{}", moderator::SERVICE_NAME)).await;
    assert_eq!(requests(&stats), 1, "{stats:#?}");
    let stats = gather(&nats, &format!("$SRV.STATS.{}", history::SERVICE_NAME)).await;
    assert_eq!(requests(&stats), 1, "{stats:#?}");
    drop(ann);
    system.finish().await;
}
