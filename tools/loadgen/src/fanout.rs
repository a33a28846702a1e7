//! Fan-out load: rooms of clients all sending chat, every delivery timed
//! and checked for loss, duplication and order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use schemas::client::{ClientFrame, ServerFrame};
use schemas::id::RoomId;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{Client, ClientError};
use crate::latency::{Latency, Summary};
use crate::ledger::{Correctness, Received};
use crate::token::Minter;

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 64;
/// Chat messages a client may have unacknowledged when sending at a fixed rate.
const MAX_IN_FLIGHT: usize = 64;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Gateway URLs; clients are spread over them round-robin.
    pub gateways: Vec<String>,
    /// Number of rooms.
    pub rooms: usize,
    /// Clients in each room.
    pub clients_per_room: usize,
    /// Chat messages per second over all clients; 0 sends as fast as acks
    /// allow (saturation).
    pub rate: f64,
    /// Bytes of text per message.
    pub size: usize,
    /// How long clients send.
    pub duration: Duration,
    /// How long to keep receiving after sending stops.
    pub drain: Duration,
}

/// What happened.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Chat messages sent.
    pub sent: u64,
    /// Of those, acknowledged.
    pub acked: u64,
    /// Chat frames delivered to receivers.
    pub deliveries: u64,
    /// Seconds of sending.
    pub seconds: f64,
    /// Deliveries per second of sending.
    pub deliveries_per_second: f64,
    /// Acks per second of sending.
    pub acks_per_second: f64,
    /// Send → delivery, µs.
    pub delivery_latency: Summary,
    /// Send → ack, µs.
    pub ack_latency: Summary,
    /// Error frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Lost, duplicated and reordered deliveries; all must be 0.
    pub correctness: Correctness,
}

/// Live totals for the progress line.
#[derive(Default)]
pub struct Progress {
    /// Sent so far.
    pub sent: AtomicU64,
    /// Acked so far.
    pub acked: AtomicU64,
    /// Delivered so far.
    pub delivered: AtomicU64,
}

struct Outcome {
    room: usize,
    index: usize,
    acked: Vec<u64>,
    received: Received,
    latency: Latency,
    ack_latency: Latency,
    errors: BTreeMap<String, u64>,
    sent: u64,
}

/// Runs the plan; `progress` is updated as it goes.
pub async fn run(
    plan: &Plan,
    minter: &Minter,
    progress: Arc<Progress>,
) -> Result<Report, ClientError> {
    let rooms: Vec<RoomId> = (0..plan.rooms)
        .map(|_| RoomId(format!("load-{}", nuid::next())))
        .collect();
    let clients = connect_all(plan, minter, &rooms).await?;

    let origin = Instant::now();
    let start = origin + Duration::from_millis(200);
    let stop_sending = start + plan.duration;
    let stop = stop_sending + plan.drain;
    let per_client = (plan.rooms * plan.clients_per_room).max(1) as f64;
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(per_client / plan.rate));
    let padding = "x".repeat(plan.size.saturating_sub(21));

    let mut tasks = JoinSet::new();
    for (n, (room, index, client)) in clients.into_iter().enumerate() {
        let schedule = Schedule {
            // Spread the first sends over one interval so clients do not fire together.
            first: start + interval.map_or(Duration::ZERO, |i| i.mul_f64(n as f64 / per_client)),
            interval,
            stop_sending,
            stop,
            origin,
        };
        let (room_id, padding, progress) = (rooms[room].clone(), padding.clone(), progress.clone());
        tasks.spawn(drive(
            client, room_id, room, index, schedule, padding, progress,
        ));
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("client task does not panic")?);
    }
    Ok(report(plan, outcomes))
}

async fn connect_all(
    plan: &Plan,
    minter: &Minter,
    rooms: &[RoomId],
) -> Result<Vec<(usize, usize, Client)>, ClientError> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (room, room_id) in rooms.iter().enumerate() {
        for index in 0..plan.clients_per_room {
            let n = room * plan.clients_per_room + index;
            let url = plan.gateways[n % plan.gateways.len()].clone();
            let (token, room_id, permits) = (
                minter.token(&format!("load-{n}")),
                room_id.clone(),
                permits.clone(),
            );
            tasks.spawn(async move {
                let _permit = permits.acquire().await.expect("never closed");
                let mut client = Client::connect(&url, &token).await?;
                client
                    .send(&ClientFrame::Join {
                        room: room_id,
                        since: None,
                    })
                    .await?;
                client
                    .expect(|frame| match frame {
                        ServerFrame::Joined { .. } => Some(Ok(())),
                        ServerFrame::Error(error) => {
                            Some(Err(ClientError::Unexpected(format!("{error:?}"))))
                        }
                        _ => None,
                    })
                    .await??;
                Ok::<_, ClientError>((room, index, client))
            });
        }
    }
    let mut clients = Vec::new();
    while let Some(done) = tasks.join_next().await {
        clients.push(done.expect("connect task does not panic")?);
    }
    Ok(clients)
}

#[derive(Clone, Copy)]
struct Schedule {
    first: Instant,
    interval: Option<Duration>,
    stop_sending: Instant,
    stop: Instant,
    origin: Instant,
}

/// One client: sends on schedule (or whenever its last message is acked),
/// and records every frame until `stop`.
async fn drive(
    mut client: Client,
    room_id: RoomId,
    room: usize,
    index: usize,
    schedule: Schedule,
    padding: String,
    progress: Arc<Progress>,
) -> Result<Outcome, ClientError> {
    let mut outcome = Outcome {
        room,
        index,
        acked: Vec::new(),
        received: Received::default(),
        latency: Latency::default(),
        ack_latency: Latency::default(),
        errors: BTreeMap::new(),
        sent: 0,
    };
    let mut pending: std::collections::VecDeque<Instant> = Default::default();
    let mut next_send = schedule.first;
    let micros = |at: Instant| at.duration_since(schedule.origin).as_micros() as u64;
    loop {
        let sending = next_send < schedule.stop_sending;
        let may_send = match schedule.interval {
            Some(_) => pending.len() < MAX_IN_FLIGHT,
            None => pending.is_empty(),
        };
        let wake = if sending && may_send {
            next_send
        } else {
            schedule.stop
        };
        let frame = match client.recv_until(wake.min(schedule.stop)).await? {
            Some(frame) => frame,
            None if Instant::now() >= schedule.stop => break,
            None => {
                // Time to send the next message; its text carries the send time.
                let now = Instant::now();
                let text = format!("{:020}{padding}", micros(now));
                let id = format!("{}-{}-{}", room, index, outcome.sent);
                client
                    .send(&ClientFrame::Chat {
                        room: room_id.clone(),
                        id: id.as_str().into(),
                        text,
                    })
                    .await?;
                pending.push_back(now);
                outcome.sent += 1;
                progress.sent.fetch_add(1, Ordering::Relaxed);
                next_send = match schedule.interval {
                    Some(interval) => next_send + interval,
                    None => now,
                };
                continue;
            }
        };
        let now = Instant::now();
        match frame {
            ServerFrame::Ack { seq, .. } => {
                if let Some(sent_at) = pending.pop_front() {
                    outcome
                        .ack_latency
                        .record(now.duration_since(sent_at).as_micros() as u64);
                }
                outcome.acked.extend(seq.map(|s| s.0));
                progress.acked.fetch_add(1, Ordering::Relaxed);
                if schedule.interval.is_none() {
                    next_send = now;
                }
            }
            ServerFrame::Chat(chat) => {
                outcome.received.record(chat.seq.0);
                if let Some(sent) = chat.text.get(..20).and_then(|t| t.parse::<u64>().ok()) {
                    outcome.latency.record(micros(now).saturating_sub(sent));
                }
                progress.delivered.fetch_add(1, Ordering::Relaxed);
            }
            ServerFrame::Error(error) => {
                pending.pop_front();
                *outcome.errors.entry(error.code.to_string()).or_default() += 1;
                if schedule.interval.is_none() {
                    next_send = now;
                }
            }
            _ => {}
        }
    }
    client.close().await;
    Ok(outcome)
}

fn report(plan: &Plan, outcomes: Vec<Outcome>) -> Report {
    let mut acked_by_room: HashMap<usize, Vec<(usize, Vec<u64>)>> = HashMap::new();
    for o in &outcomes {
        acked_by_room
            .entry(o.room)
            .or_default()
            .push((o.index, o.acked.clone()));
    }
    let (mut latency, mut ack_latency) = (Latency::default(), Latency::default());
    let mut correctness = Correctness::default();
    let mut errors = BTreeMap::new();
    let (mut sent, mut acked, mut deliveries) = (0, 0, 0);
    for o in &outcomes {
        let expected: Vec<u64> = acked_by_room[&o.room]
            .iter()
            .filter(|(index, _)| *index != o.index)
            .flat_map(|(_, seqs)| seqs.iter().copied())
            .collect();
        correctness.add(&o.received, &expected);
        latency.merge(&o.latency);
        ack_latency.merge(&o.ack_latency);
        for (code, n) in &o.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
        sent += o.sent;
        acked += o.acked.len() as u64;
        deliveries += o.latency.summary().count;
    }
    let seconds = plan.duration.as_secs_f64();
    Report {
        sent,
        acked,
        deliveries,
        seconds,
        deliveries_per_second: deliveries as f64 / seconds,
        acks_per_second: acked as f64 / seconds,
        delivery_latency: latency.summary(),
        ack_latency: ack_latency.summary(),
        errors,
        correctness,
    }
}
