//! The archiver (examples/archiver), the example of a service added live:
//! started into a running system as its own NATS user, it archives every
//! stored message once, and after a restart catches up from where it left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use archiver::archive::Archive;
use archiver::config::ArchiverConfig;
use bootstrap::metrics::Metrics;
use futures_util::FutureExt;
use schemas::client::ChatMessage;
use schemas::id::RoomId;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::harness::{Client, Nats, Options, System, room};
use crate::metrics::sample;

/// A running archiver: its stop, its task and its metrics.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: Metrics,
}

impl Running {
    /// Starts an archiver into `dir` with consumer `durable`, as the
    /// archiver's own NATS user, in small batches.
    async fn start(nats: &Nats, dir: &Path, durable: &str) -> Running {
        let client = nats.connect_as(Some("archiver")).await;
        let metrics = Metrics::new(&client);
        let config = ArchiverConfig {
            dir: dir.to_owned(),
            durable: durable.into(),
            batch: 3,
            ..ArchiverConfig::default()
        };
        let archiver = archiver::start(client, config, &metrics)
            .await
            .expect("archiver starts");
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            archiver
                .run(stop.clone().cancelled_owned())
                .map(|result| result.expect("archiver runs")),
        );
        Running {
            stop,
            task,
            metrics,
        }
    }

    /// Stops it as SIGTERM does and waits until it has.
    async fn stop(self) -> Metrics {
        self.stop.cancel();
        self.task.await.expect("archiver stops cleanly");
        self.metrics
    }
}

fn archive_dir() -> PathBuf {
    std::env::temp_dir().join(format!("cavlo-archive-{}", nuid::next()))
}

/// The archived messages of `room`, in file order.
fn archived(dir: &Path, room: &RoomId) -> Vec<ChatMessage> {
    match std::fs::read_to_string(Archive::path_of(dir, room)) {
        Ok(text) => text
            .lines()
            .map(|line| serde_json::from_str(line).expect("an archived message"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until `room`'s archive holds `count` messages, then returns them.
async fn archived_when(dir: &Path, room: &RoomId, count: usize) -> Vec<ChatMessage> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = archived(dir, room);
        if messages.len() >= count {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "{room} archived {} of {count} after 10 s",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(seq, text)` of each message.
fn lines(messages: &[ChatMessage]) -> Vec<(u64, String)> {
    messages.iter().map(|m| (m.seq.0, m.text.clone())).collect()
}

/// Sends `count` chats to `room`, texts `"<label> <n>"`; returns each
/// one's `(seq, text)` as acked.
async fn send(client: &mut Client, room: &RoomId, label: &str, count: usize) -> Vec<(u64, String)> {
    let mut sent = Vec::new();
    for _ in 0..count {
        let text = format!("{label} {}", nuid::next());
        let seq = client
            .chat(room, &nuid::next().to_string(), &text)
            .await
            .expect("accepted")
            .expect("stored");
        sent.push((seq.0, text));
    }
    sent
}

/// Started into a running system, the archiver writes what was stored
/// before it came; stopped, it misses nothing stored meanwhile; and a
/// second consumer that reads the whole stream again into the same files
/// (every message a redelivery) writes nothing twice.
#[tokio::test]
async fn archives_each_message_once_and_catches_up_after_a_restart() {
    let system = System::start(Options {
        nats_users: true,
        ..Options::default()
    })
    .await;
    let (lobby, side) = (room("archive-lobby"), room("archive-side"));
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&lobby, None).await;
    ann.join(&side, None).await;
    let mut lobby_sent = send(&mut ann, &lobby, "lobby", 5).await;
    let mut side_sent = send(&mut ann, &side, "side", 2).await;

    let dir = archive_dir();
    let archiver = Running::start(&system.nats, &dir, "archiver-test").await;
    assert_eq!(lines(&archived_when(&dir, &lobby, 5).await), lobby_sent);
    assert_eq!(lines(&archived_when(&dir, &side, 2).await), side_sent);
    // Live, while it runs.
    side_sent.extend(send(&mut ann, &side, "side", 2).await);
    assert_eq!(lines(&archived_when(&dir, &side, 4).await), side_sent);
    archiver.stop().await;

    lobby_sent.extend(send(&mut ann, &lobby, "lobby", 4).await);
    let archiver = Running::start(&system.nats, &dir, "archiver-test").await;
    assert_eq!(lines(&archived_when(&dir, &lobby, 9).await), lobby_sent);
    let metrics = archiver.stop().await.encode();
    assert_eq!(
        sample(
            &metrics,
            "cavlo_archiver_messages_total{outcome=\"written\"}"
        ),
        Some(4.0),
        "after the restart it read only what it had not:\n{metrics}"
    );
    assert_eq!(sample(&metrics, "cavlo_archiver_pending"), Some(0.0));

    // A new consumer starts at the stream's beginning: all 13 come again.
    let again = Running::start(&system.nats, &dir, "archiver-again").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = again.metrics.encode();
        if sample(
            &metrics,
            "cavlo_archiver_messages_total{outcome=\"duplicate\"}",
        ) == Some(13.0)
        {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "13 redeliveries not seen:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(
            &metrics,
            "cavlo_archiver_messages_total{outcome=\"written\"}"
        ),
        None,
        "nothing written twice"
    );
    again.stop().await;
    assert_eq!(lines(&archived(&dir, &lobby)), lobby_sent);
    assert_eq!(lines(&archived(&dir, &side)), side_sent);
    std::fs::remove_dir_all(&dir).unwrap();
    drop(ann);
    system.finish().await;
}

/// Started after a room's backlog was trimmed, the archiver begins with
/// the oldest message still stored and counts the gap; a room that never
/// lost anything has none.
#[tokio::test]
async fn counts_what_left_the_backlog_before_it_started() {
    let mut options = Options {
        nats_users: true,
        ..Options::default()
    };
    options.history.backlog_size = 3;
    let system = System::start(options).await;
    let lobby = room("archive-late");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&lobby, None).await;
    let whole = room("archive-whole");
    ann.join(&whole, None).await;
    let sent = send(&mut ann, &lobby, "late", 5).await;
    let kept = send(&mut ann, &whole, "whole", 3).await;

    let dir = archive_dir();
    let archiver = Running::start(&system.nats, &dir, "archiver-late").await;
    assert_eq!(lines(&archived_when(&dir, &lobby, 3).await), sent[2..]);
    assert_eq!(lines(&archived_when(&dir, &whole, 3).await), kept);
    let metrics = archiver.stop().await.encode();
    assert_eq!(
        sample(&metrics, "cavlo_archiver_gaps_total"),
        Some(1.0),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    drop(ann);
    system.finish().await;
}
