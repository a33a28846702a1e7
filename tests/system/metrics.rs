//! Prometheus metrics (docs/operations.md): every service reports what
//! happened. (bootstrap's tests cover serving them at `/metrics`.)

use std::time::Duration;

use schemas::client::ClientFrame;
use schemas::code::ErrorCode;
use tokio::time::Instant;

use crate::harness::{Client, FRAME_TIMEOUT, Options, System, assert_code, room};

/// The value of series `series` (name and labels exactly as encoded) in
/// OpenMetrics text, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

/// `series` summed over several services' metrics texts.
pub fn total(texts: &[String], series: &str) -> f64 {
    texts.iter().filter_map(|text| sample(text, series)).sum()
}

/// What gateway `index` reports.
fn scrape(system: &System, index: usize) -> String {
    system.gateway_metrics[index].encode()
}

/// A join, three chats, an invalid frame and a close, across two gateways
/// and two moderators: each service's metrics count exactly that.
#[tokio::test]
async fn every_service_counts_what_happened() {
    let system = System::start(Options::default()).await;
    let (g1, g2) = (system.gateways[0], system.gateways[1]);
    let room = room("counted");
    let mut ann = Client::connect(g1, "ann").await;
    let mut bob = Client::connect(g2, "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;
    for i in 0..3 {
        ann.chat(&room, &format!("m{i}"), "counted").await.unwrap();
        bob.next_chat().await;
    }
    ann.send_raw("{}").await;
    assert_code(&ann.next_error().await, ErrorCode::InvalidMessage, "{}");

    let first = scrape(&system, 0);
    for (series, value) in [
        ("cavlo_gateway_connections", 1.0),
        ("cavlo_gateway_authenticated_total", 1.0),
        ("cavlo_gateway_rooms", 1.0),
        ("cavlo_gateway_members", 1.0),
        ("cavlo_gateway_frames_received_total{type=\"auth\"}", 1.0),
        ("cavlo_gateway_frames_received_total{type=\"join\"}", 1.0),
        ("cavlo_gateway_frames_received_total{type=\"chat\"}", 3.0),
        ("cavlo_gateway_frames_received_total{type=\"invalid\"}", 1.0),
        ("cavlo_gateway_frames_sent_total{type=\"welcome\"}", 1.0),
        ("cavlo_gateway_frames_sent_total{type=\"ack\"}", 3.0),
        ("cavlo_gateway_errors_total{code=\"invalid_message\"}", 1.0),
        ("cavlo_gateway_chat_ack_seconds_count", 3.0),
        ("cavlo_gateway_backlog_seconds_count", 1.0),
        ("cavlo_nats_connected", 1.0),
    ] {
        assert_eq!(sample(&first, series), Some(value), "{series} in:\n{first}");
    }
    assert!(sample(&first, "cavlo_process_resident_memory_bytes").is_some_and(|b| b > 0.0));
    let second = scrape(&system, 1);
    for (series, value) in [
        // Bob's own join and the three deliveries, but no ack.
        ("cavlo_gateway_frames_sent_total{type=\"chat\"}", 3.0),
        ("cavlo_gateway_frames_sent_total{type=\"joined\"}", 1.0),
        ("cavlo_gateway_frames_sent_total{type=\"presence\"}", 0.0),
    ] {
        assert_eq!(
            sample(&second, series).unwrap_or(0.0),
            value,
            "{series} in:\n{second}"
        );
    }
    assert_eq!(
        sample(&second, "cavlo_gateway_frames_sent_total{type=\"ack\"}"),
        None
    );

    // A chat's ack comes from its delivery, which can reach the client
    // before the moderator has read JetStream's publish ack and counted
    // the store: the moderators' counts are read until they settle.
    let expected = [
        ("cavlo_moderator_requests_total{action=\"join\"}", 2.0),
        ("cavlo_moderator_requests_total{action=\"chat\"}", 3.0),
        ("cavlo_moderator_store_seconds_count", 3.0),
        ("cavlo_moderator_stored_total", 3.0),
    ];
    let deadline = Instant::now() + FRAME_TIMEOUT;
    loop {
        let moderators: Vec<String> = system
            .moderator_metrics
            .iter()
            .map(|m| m.encode())
            .collect();
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(series, value)| total(&moderators, series) != *value)
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{wrong:?} in:\n{moderators:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let history = system.history_metrics.encode();
    assert_eq!(
        sample(
            &history,
            "cavlo_history_queries_total{outcome=\"answered\"}"
        ),
        Some(2.0),
        "{history}"
    );
    assert_eq!(
        sample(&history, "cavlo_history_query_seconds_count"),
        Some(2.0)
    );

    // A client's close is counted once its socket is gone.
    ann.close().await;
    let deadline = Instant::now() + FRAME_TIMEOUT;
    loop {
        let text = scrape(&system, 0);
        if sample(&text, "cavlo_gateway_connections") == Some(0.0) {
            assert_eq!(
                sample(&text, "cavlo_gateway_closed_total{code=\"1000\"}"),
                Some(1.0),
                "{text}"
            );
            assert_eq!(sample(&text, "cavlo_gateway_members"), Some(0.0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ann's socket stays open:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob.send(&ClientFrame::Leave { room: room.clone() }).await;
    drop(bob);
    system.finish().await;
}
