//! Fan-out load: rooms of clients all sending chat, every delivery timed
//! and checked for loss, duplication and order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use schemas::client::{ClientFrame, ServerFrame};
use schemas::code::ErrorCode;
use schemas::id::{ConnId, RoomId, Seq};
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
    /// Ride out faults as a real client does: on a closed or silent
    /// connection, reconnect (to the next gateway), rejoin with `since` and
    /// resend what was not acknowledged; resend chat refused `unavailable`.
    pub resume: bool,
    /// Rooms with a slow consumer: their first client, connected with a
    /// small receive buffer, stops reading for `slow_pause` from
    /// [`SLOW_AFTER`] into sending, as a frozen browser tab does. The gateway
    /// must close it (4100) and no one else; it resumes with `since`.
    pub slow: usize,
    /// How long a slow consumer stops reading.
    pub slow_pause: Duration,
    /// Where slow consumers connect first, if not to their gateway's URL:
    /// a gateway container's own address, past Docker's port proxy.
    pub slow_gateway: Option<String>,
}

/// When slow consumers stop reading, from the start of sending.
pub const SLOW_AFTER: Duration = Duration::from_secs(5);

/// The receive buffer of a slow consumer's socket.
const SLOW_RECEIVE_BUFFER: u32 = 4096;

/// What happened.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Chat messages sent.
    pub sent: u64,
    /// Of those, acknowledged (a resend of a stored message is acked too,
    /// without a seq when the original's cannot be looked up).
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
    /// Sent messages never acknowledged by the end of the drain.
    pub unacked: u64,
    /// Connections re-established after a fault (with `resume`).
    pub reconnects: u64,
    /// The most reconnects in any one second of the run: how hard the
    /// clients of a failed or draining gateway hit the others.
    pub peak_reconnects_per_second: u64,
    /// Rejoins whose backlog said messages had been trimmed.
    pub truncated: u64,
    /// Connections the gateway closed, by close code ("none" without one).
    pub closes: BTreeMap<String, u64>,
    /// Of those, slow consumers closed with 4100 (slow consumer).
    pub slow_closed: u64,
    /// The longest time any client went without a delivery while messages
    /// were being sent, ms.
    pub longest_silence_ms: u64,
    /// Lost, duplicated and reordered deliveries, and live gaps; all must be 0.
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
    /// Acks received, with or without a seq.
    acks: u64,
    /// The seqs acks named: what the other members must receive.
    acked: Vec<u64>,
    received: Received,
    latency: Latency,
    ack_latency: Latency,
    errors: BTreeMap<String, u64>,
    sent: u64,
    unacked: u64,
    reconnects: u64,
    /// When each reconnect started.
    reconnected_at: Vec<Instant>,
    truncated: u64,
    closes: BTreeMap<String, u64>,
    /// Whether this client was one of the plan's slow consumers.
    slow: bool,
    longest_silence: Duration,
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
    for (n, (room, index, user, client)) in clients.into_iter().enumerate() {
        let schedule = Schedule {
            // Spread the first sends over one interval so clients do not fire together.
            first: start + interval.map_or(Duration::ZERO, |i| i.mul_f64(n as f64 / per_client)),
            interval,
            stop_sending,
            stop,
            origin,
        };
        let member = Member {
            room,
            index,
            room_id: rooms[room].clone(),
            token: minter.token(&format!("load-{user}")),
            gateways: plan.gateways.clone(),
            gateway: user % plan.gateways.len(),
            connected_at: origin,
            seat: client.conn_id.clone(),
            resume: plan.resume,
            pause: is_slow(plan, room, index)
                .then(|| (start + SLOW_AFTER, start + SLOW_AFTER + plan.slow_pause)),
        };
        tasks.spawn(drive(
            client,
            member,
            schedule,
            padding.clone(),
            progress.clone(),
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
) -> Result<Vec<(usize, usize, usize, Client)>, ClientError> {
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
            let slow = is_slow(plan, room, index);
            let url = match (&plan.slow_gateway, slow) {
                (Some(direct), true) => direct.clone(),
                _ => url,
            };
            tasks.spawn(async move {
                let _permit = permits.acquire().await.expect("never closed");
                let mut client = if slow {
                    Client::connect_slow(&url, &token, SLOW_RECEIVE_BUFFER).await?
                } else {
                    Client::connect(&url, &token).await?
                };
                client
                    .send(&ClientFrame::Join {
                        room: room_id,
                        since: None,
                        replaces: None,
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
                Ok::<_, ClientError>((room, index, n, client))
            });
        }
    }
    let mut clients = Vec::new();
    while let Some(done) = tasks.join_next().await {
        clients.push(done.expect("connect task does not panic")?);
    }
    Ok(clients)
}

/// Whether client `index` of room `room` is one of the plan's slow consumers.
fn is_slow(plan: &Plan, room: usize, index: usize) -> bool {
    room < plan.slow && index == 0
}

#[derive(Clone, Copy)]
struct Schedule {
    first: Instant,
    interval: Option<Duration>,
    stop_sending: Instant,
    stop: Instant,
    origin: Instant,
}

/// Who one client is, and where it may reconnect.
struct Member {
    room: usize,
    index: usize,
    room_id: RoomId,
    token: String,
    gateways: Vec<String>,
    /// Index in `gateways` of the one it is connected to.
    gateway: usize,
    /// When the current connection was made: what was sent before it was
    /// resent then, so its silence counts from here.
    connected_at: Instant,
    /// The connection that holds this member's seat in the room; a rejoin
    /// takes it over (`replaces`), as the SDK does.
    seat: ConnId,
    resume: bool,
    /// For a slow consumer, when it stops reading and when it reads again.
    pause: Option<(Instant, Instant)>,
}

/// A chat message sent and not yet acknowledged, kept to resend.
struct Pending {
    id: String,
    text: String,
    sent_at: Instant,
}

/// One client: sends on schedule (or whenever its last message is acked),
/// and records every frame until `stop`. With `resume`, a closed or silent
/// connection is replaced as a real client would do it.
async fn drive(
    mut client: Client,
    mut member: Member,
    schedule: Schedule,
    padding: String,
    progress: Arc<Progress>,
) -> Result<Outcome, ClientError> {
    let mut outcome = Outcome {
        room: member.room,
        index: member.index,
        acks: 0,
        acked: Vec::new(),
        received: Received::default(),
        latency: Latency::default(),
        ack_latency: Latency::default(),
        errors: BTreeMap::new(),
        sent: 0,
        unacked: 0,
        reconnects: 0,
        reconnected_at: Vec::new(),
        truncated: 0,
        closes: BTreeMap::new(),
        slow: member.pause.is_some(),
        longest_silence: Duration::ZERO,
    };
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut next_send = schedule.first;
    let mut last_delivery = schedule.first;
    // When a draining gateway asked this client to move, as the SDK does.
    let mut move_at: Option<Instant> = None;
    let micros = |at: Instant| at.duration_since(schedule.origin).as_micros() as u64;
    loop {
        let sending = next_send < schedule.stop_sending;
        let may_send = match schedule.interval {
            Some(_) => pending.len() < MAX_IN_FLIGHT,
            None => pending.is_empty(),
        };
        let mut wake = if sending && may_send {
            next_send
        } else {
            schedule.stop
        };
        // A connection that leaves a message unanswered this long is dead
        // (its gateway stopped, or cut off) even if the socket is open.
        let deadline = pending
            .front()
            .map(|p| p.sent_at.max(member.connected_at) + SILENT_CONNECTION);
        if member.resume {
            wake = wake.min(deadline.unwrap_or(wake));
        }
        if let Some(at) = move_at {
            wake = wake.min(at);
        }
        if let Some((from, until)) = member.pause {
            if Instant::now() >= from {
                // Frozen: neither reads nor sends. Its silence is its own,
                // so both the unanswered-message clock and the silence
                // measure start again when it thaws, and what it would have
                // sent meanwhile is not sent at once afterwards.
                member.pause = None;
                tokio::time::sleep_until(until).await;
                member.connected_at = Instant::now();
                last_delivery = member.connected_at;
                next_send = next_send.max(member.connected_at);
                continue;
            }
            wake = wake.min(from);
        }
        let step = match client.recv_until(wake.min(schedule.stop)).await {
            Ok(step) => step,
            Err(err) if member.resume && Instant::now() < schedule.stop => {
                count_close(&mut outcome.closes, &err);
                client =
                    reconnect(client, &mut member, &mut outcome, &pending, schedule.stop).await?;
                continue;
            }
            Err(err) => return Err(err),
        };
        let frame = match step {
            Some(frame) => frame,
            None if Instant::now() >= schedule.stop => break,
            None if move_at.is_some_and(|at| Instant::now() >= at) => {
                move_at = None;
                client =
                    reconnect(client, &mut member, &mut outcome, &pending, schedule.stop).await?;
                continue;
            }
            None if member.resume && deadline.is_some_and(|d| Instant::now() >= d) => {
                client =
                    reconnect(client, &mut member, &mut outcome, &pending, schedule.stop).await?;
                continue;
            }
            None => {
                if !(sending && may_send) || Instant::now() < next_send {
                    continue;
                }
                // Time to send the next message; its text carries the send time.
                let now = Instant::now();
                let message = Pending {
                    id: format!("{}-{}-{}", member.room, member.index, outcome.sent),
                    text: format!("{:020}{padding}", micros(now)),
                    sent_at: now,
                };
                let sent = send_chat(&mut client, &member.room_id, &message).await;
                pending.push_back(message);
                outcome.sent += 1;
                progress.sent.fetch_add(1, Ordering::Relaxed);
                next_send = match schedule.interval {
                    Some(interval) => next_send + interval,
                    None => now,
                };
                match sent {
                    Ok(()) => {}
                    Err(_) if member.resume => {
                        client =
                            reconnect(client, &mut member, &mut outcome, &pending, schedule.stop)
                                .await?;
                    }
                    Err(err) => return Err(err),
                }
                continue;
            }
        };
        let now = Instant::now();
        match frame {
            ServerFrame::Ack { seq, .. } => {
                if let Some(sent) = pending.pop_front() {
                    outcome
                        .ack_latency
                        .record(now.duration_since(sent.sent_at).as_micros() as u64);
                }
                outcome.acks += 1;
                outcome.acked.extend(seq.map(|s| s.0));
                progress.acked.fetch_add(1, Ordering::Relaxed);
                if schedule.interval.is_none() {
                    next_send = now;
                }
            }
            ServerFrame::Draining { reconnect_in_ms } if member.resume => {
                move_at = Some(now + Duration::from_millis(reconnect_in_ms));
            }
            ServerFrame::Chat(chat) => {
                outcome.received.record(chat.seq.0);
                if let Some(sent) = chat.text.get(..20).and_then(|t| t.parse::<u64>().ok()) {
                    outcome.latency.record(micros(now).saturating_sub(sent));
                }
                if now < schedule.stop_sending {
                    outcome.longest_silence = outcome
                        .longest_silence
                        .max(now.saturating_duration_since(last_delivery));
                }
                last_delivery = now;
                progress.delivered.fetch_add(1, Ordering::Relaxed);
            }
            ServerFrame::Error(error) => {
                *outcome.errors.entry(error.code.to_string()).or_default() += 1;
                // Replies come in sending order: the error is about the oldest.
                let refused = pending.pop_front();
                match refused {
                    Some(message) if member.resume && RETRYABLE.contains(&error.code) => {
                        // Resent now, answered after the others in flight.
                        if send_chat(&mut client, &member.room_id, &message)
                            .await
                            .is_err()
                        {
                            pending.push_back(message);
                            client = reconnect(
                                client,
                                &mut member,
                                &mut outcome,
                                &pending,
                                schedule.stop,
                            )
                            .await?;
                            continue;
                        }
                        pending.push_back(message);
                    }
                    _ => {}
                }
                if schedule.interval.is_none() {
                    next_send = now;
                }
            }
            _ => {}
        }
    }
    outcome.unacked = pending.len() as u64;
    client.close().await;
    Ok(outcome)
}

/// Counts a close by the gateway under its close code.
fn count_close(closes: &mut BTreeMap<String, u64>, err: &ClientError) {
    if let ClientError::Closed { code } = err {
        let code = code.map_or_else(|| "none".to_owned(), |code| code.to_string());
        *closes.entry(code).or_default() += 1;
    }
}

/// Error codes a real client retries.
const RETRYABLE: &[ErrorCode] = &[ErrorCode::Unavailable, ErrorCode::RateLimited];

/// How long an unanswered message marks a connection dead, with `resume`.
const SILENT_CONNECTION: Duration = Duration::from_secs(8);

/// The first wait between two reconnect attempts; it doubles up to
/// `MAX_RECONNECT_DELAY`, with full jitter as the SDK does, so that a
/// gateway's clients moving at once do not retry in lockstep.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(4);

async fn send_chat(
    client: &mut Client,
    room: &RoomId,
    message: &Pending,
) -> Result<(), ClientError> {
    client
        .send(&ClientFrame::Chat {
            room: room.clone(),
            id: message.id.as_str().into(),
            text: message.text.clone(),
        })
        .await
}

/// Closes `old` (while it stays open it holds a seat in the room), connects
/// to the next gateway that answers, rejoins the room from the highest seq
/// received (recording the backlog as deliveries), and resends every
/// unacknowledged message in order. Gives up at `stop`.
async fn reconnect(
    old: Client,
    member: &mut Member,
    outcome: &mut Outcome,
    pending: &VecDeque<Pending>,
    stop: Instant,
) -> Result<Client, ClientError> {
    // Bounded: a gateway cut off the network never answers the close.
    let _ = tokio::time::timeout(Duration::from_secs(1), old.close()).await;
    outcome.reconnects += 1;
    outcome.reconnected_at.push(Instant::now());
    let mut backoff = RECONNECT_DELAY;
    loop {
        member.gateway = (member.gateway + 1) % member.gateways.len();
        match rejoin(member, outcome, pending).await {
            Ok(client) => {
                member.connected_at = Instant::now();
                member.seat = client.conn_id.clone();
                return Ok(client);
            }
            Err(err) if Instant::now() >= stop => {
                return Err(ClientError::Unexpected(format!(
                    "still reconnecting when the run ended; last attempt: {err}"
                )));
            }
            Err(_) => {
                tokio::time::sleep(bootstrap::backoff::jittered(backoff)).await;
                backoff = (backoff * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
}

async fn rejoin(
    member: &Member,
    outcome: &mut Outcome,
    pending: &VecDeque<Pending>,
) -> Result<Client, ClientError> {
    let mut client = Client::connect(&member.gateways[member.gateway], &member.token).await?;
    let since = outcome.received.highest();
    client
        .send(&ClientFrame::Join {
            room: member.room_id.clone(),
            since: Some(Seq(since)),
            replaces: Some(member.seat.clone()),
        })
        .await?;
    let (history, truncated) = client
        .expect(|frame| match frame {
            ServerFrame::Joined {
                history, truncated, ..
            } => Some(Ok((history, truncated))),
            ServerFrame::Error(error) => Some(Err(ClientError::Unexpected(format!("{error:?}")))),
            _ => None,
        })
        .await??;
    outcome.truncated += u64::from(truncated);
    outcome.received.reconnected();
    for chat in history {
        outcome.received.record(chat.seq.0);
    }
    for message in pending {
        send_chat(&mut client, &member.room_id, message).await?;
    }
    Ok(client)
}

/// The most of `moments` that fall in any one-second bucket, counted from
/// the earliest of them.
fn peak_per_second(moments: impl Iterator<Item = Instant>) -> u64 {
    let moments: Vec<Instant> = moments.collect();
    let Some(first) = moments.iter().min().copied() else {
        return 0;
    };
    let mut buckets: HashMap<u64, u64> = HashMap::new();
    for at in moments {
        *buckets
            .entry(at.duration_since(first).as_secs())
            .or_default() += 1;
    }
    buckets.into_values().max().unwrap_or(0)
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
    let (mut errors, mut closes) = (BTreeMap::new(), BTreeMap::new());
    let mut slow_closed = 0;
    let (mut sent, mut acked, mut deliveries) = (0, 0, 0);
    let (mut unacked, mut reconnects, mut truncated) = (0, 0, 0);
    let mut longest_silence = Duration::ZERO;
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
        acked += o.acks;
        unacked += o.unacked;
        reconnects += o.reconnects;
        for (code, n) in &o.closes {
            *closes.entry(code.clone()).or_default() += n;
        }
        if o.slow {
            slow_closed += o.closes.get("4100").copied().unwrap_or(0);
        }
        truncated += o.truncated;
        longest_silence = longest_silence.max(o.longest_silence);
        deliveries += o.latency.summary().count;
    }
    let seconds = plan.duration.as_secs_f64();
    let peak_reconnects_per_second = peak_per_second(
        outcomes
            .iter()
            .flat_map(|o| o.reconnected_at.iter().copied()),
    );
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
        unacked,
        reconnects,
        peak_reconnects_per_second,
        truncated,
        closes,
        slow_closed,
        longest_silence_ms: longest_silence.as_millis() as u64,
        correctness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_per_second_counts_the_busiest_second() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let moments = [0, 100, 900, 1_000, 2_100, 2_200, 2_300, 2_900].map(at);
        assert_eq!(peak_per_second(moments.into_iter()), 4, "2.1 to 2.9 s");
        assert_eq!(peak_per_second(std::iter::empty()), 0);
    }
}
