//! Fan-out load: rooms of clients all sending chat, every delivery timed
//! and checked for loss, duplication and order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cavlo_client::{Connection, Outbox};
use schemas::client::{ChatMessage, ClientFrame, ServerFrame};
use schemas::code::ErrorCode;
use schemas::id::{ClientMsgId, ConnId, RoomId, Seq};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connect::{ClientError, connect, connect_slow, expect, token};
use crate::latency::{Latency, Summary};
use crate::ledger::{Acked, Correctness, Delivered, Message, Received, Sent};

/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 64;
/// Chat messages a client may have unacknowledged when sending at a fixed rate.
const MAX_IN_FLIGHT: usize = 64;

/// What to run.
#[derive(Clone, Debug, Default)]
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
    /// How long to keep receiving after sending stops, at most.
    pub drain: Duration,
    /// End the drain early once the run has settled for this long: every
    /// message sent was acked, and every member received each of the
    /// others' acked messages (see [`Settle`]). `None` drains in full.
    pub settle: Option<Duration>,
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
    /// With `resume`, how long a message may go unanswered before the
    /// client takes its connection for dead and reconnects, as the SDK
    /// does; `None` never does, and leaves it to the gateway to close a
    /// connection it cannot serve (a client's own timer would hide a
    /// gateway that fails to).
    pub silence_timeout: Option<Duration>,
    /// What a fault must have caused.
    pub expect: Expect,
}

/// What a run must show happened, beyond what every run must: the effect
/// of the fault it ran under, seen from the clients.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// Clients reconnected at least this often.
    pub reconnects: u64,
    /// At least this many connections were closed with this code.
    pub close: Option<(u16, u64)>,
    /// No rejoin was told `truncated`.
    pub untruncated: bool,
}

/// When slow consumers stop reading, from the start of sending.
pub const SLOW_AFTER: Duration = Duration::from_secs(5);

/// The receive buffer of a slow consumer's socket.
const SLOW_RECEIVE_BUFFER: u32 = 4096;

/// What happened.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Chat messages sent.
    pub sent: u64,
    /// Of those, acknowledged: each matched by its id to a message sent
    /// and awaiting its ack (a resend of a stored message is acked too).
    pub acked: u64,
    /// Acks that named no message awaiting one: never sent, in another
    /// room, or acked already. Must be 0.
    pub unknown_acks: u64,
    /// Acks without a seq. A resend is acked so only when its original was
    /// trimmed from the backlog, so they must be 0 unless a rejoin was
    /// told `truncated`.
    pub acked_without_seq: u64,
    /// Chat frames delivered to receivers.
    pub deliveries: u64,
    /// Seconds of sending.
    pub seconds: f64,
    /// Deliveries per second of sending: those that arrived while clients
    /// sent, so the drain's catching up does not swell the rate.
    pub deliveries_per_second: f64,
    /// Acks per second of sending, counted as deliveries are.
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
    /// Clients that ended early: still reconnecting when the run ended, or
    /// failed without `resume`. What they sent and did not see acked counts
    /// as unacked, what they did not receive as lost. Must be 0.
    pub stranded: u64,
    /// Why, by reason (a reconnect names the last answer of each gateway
    /// it tried).
    pub stranded_reasons: BTreeMap<String, u64>,
    /// Connections the gateway closed, by close code ("none" without one).
    pub closes: BTreeMap<String, u64>,
    /// Of those, slow consumers closed with 4100 (slow consumer).
    pub slow_closed: u64,
    /// The longest time any client went without a delivery, of the
    /// silences that began while messages were being sent (one that ends
    /// in the drain counts whole), ms.
    pub longest_silence_ms: u64,
    /// Lost, duplicated, reordered and misdelivered deliveries, and live
    /// gaps, judged by message id; all must be 0.
    pub correctness: Correctness,
}

impl Report {
    /// Whether the run passed: nothing lost, duplicated, reordered,
    /// skipped live or misdelivered; every ack matched to a message
    /// awaiting it, and with a seq unless something was trimmed; at least
    /// `min_acked` of the sent messages acked; and, with slow consumers,
    /// each of them closed as slow (4100) and no other connection. The
    /// error says what failed.
    pub fn verdict(&self, plan: &Plan, min_acked: f64) -> Result<(), String> {
        let acked = self.acked as f64 / self.sent.max(1) as f64;
        if self.stranded > 0 {
            let some: Vec<_> = self.stranded_reasons.iter().take(3).collect();
            Err(format!(
                "{} clients ended early, for {} reasons, among them: {some:?}",
                self.stranded,
                self.stranded_reasons.len()
            ))
        } else if plan.expect.untruncated && self.truncated > 0 {
            Err(format!(
                "{} rejoins were told `truncated`: the backlog did not outlast the fault",
                self.truncated
            ))
        } else if !self.correctness.is_clean() {
            Err(format!(
                "deliveries were lost, duplicated, reordered, skipped live or misdelivered: {:?}",
                self.correctness
            ))
        } else if self.unknown_acks > 0 {
            Err(format!(
                "{} acks named no message awaiting one (never sent, in another room, or acked before)",
                self.unknown_acks
            ))
        } else if self.acked_without_seq > 0 && self.truncated == 0 {
            Err(format!(
                "{} acks came without a seq while no rejoin was told `truncated`",
                self.acked_without_seq
            ))
        } else if self.sent == 0 || acked < min_acked {
            Err(format!(
                "{} of {} sent messages acked, {:.1} % required; errors {:?}",
                self.acked,
                self.sent,
                min_acked * 100.0,
                self.errors
            ))
        } else if plan.slow > 0
            && (self.slow_closed < plan.slow as u64 || self.reconnects != self.slow_closed)
        {
            Err(format!(
                "{} slow consumers, {} of them closed as slow (4100), \
                 {} reconnects in all; closes {:?}",
                plan.slow, self.slow_closed, self.reconnects, self.closes
            ))
        } else if self.reconnects < plan.expect.reconnects {
            Err(format!(
                "{} reconnects, {} expected",
                self.reconnects, plan.expect.reconnects
            ))
        } else if let Some((code, count)) = plan.expect.close
            && self.closes.get(&code.to_string()).copied().unwrap_or(0) < count
        {
            Err(format!(
                "fewer than {count} connections closed with {code}; closes {:?}",
                self.closes
            ))
        } else {
            Ok(())
        }
    }
}

/// The report as text, for people.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (d, a, c) = (&self.delivery_latency, &self.ack_latency, &self.correctness);
        writeln!(
            f,
            "sent {} acked {} delivered {} in {:.1}s",
            self.sent, self.acked, self.deliveries, self.seconds
        )?;
        writeln!(
            f,
            "acks naming no awaited message {}  acks without seq {}",
            self.unknown_acks, self.acked_without_seq
        )?;
        writeln!(
            f,
            "deliveries/s {:.0}  acks/s {:.0}",
            self.deliveries_per_second, self.acks_per_second
        )?;
        writeln!(
            f,
            "delivery latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            d.p50, d.p90, d.p99, d.p999, d.max
        )?;
        writeln!(
            f,
            "ack latency µs:      p50 {} p90 {} p99 {} p99.9 {} max {}",
            a.p50, a.p90, a.p99, a.p999, a.max
        )?;
        writeln!(
            f,
            "errors {:?}  closes by code {:?}",
            self.errors, self.closes
        )?;
        writeln!(
            f,
            "unacked {} reconnects {} (peak {}/s) truncated rejoins {} longest silence {} ms",
            self.unacked,
            self.reconnects,
            self.peak_reconnects_per_second,
            self.truncated,
            self.longest_silence_ms
        )?;
        writeln!(
            f,
            "clients ended early {} {:?}",
            self.stranded, self.stranded_reasons
        )?;
        write!(
            f,
            "lost {} duplicated {} reordered {} live gaps {} misdelivered {}",
            c.lost, c.duplicated, c.reordered, c.live_gaps, c.misdelivered
        )
    }
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
    /// Deliveries of a seq above every seq their receiver had: each
    /// message once, in a run that loses and reorders nothing.
    pub fresh: AtomicU64,
}

/// Ends a run's drain once nothing more can come: no message awaits its
/// ack, and the fresh deliveries are as many as the acked messages times
/// the other members of a room. A run that lost, reordered or stranded
/// anything never gets there and drains in full; the verdict judges it
/// as before. The state must hold for the settle time, so a late
/// duplicate still has a moment to show.
struct Settle {
    /// Receivers of each message: the other members of its room.
    receivers: u64,
    quiet: Duration,
}

impl Settle {
    /// Watches `progress` once sending stopped, until the state held for
    /// the quiet time (then ends the run: [`Deadlines::settled`]) or the
    /// run ends.
    async fn watch(self, progress: Arc<Progress>, deadlines: watch::Sender<Deadlines>) {
        let mut since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let Deadlines {
                stop_sending, stop, ..
            } = *deadlines.borrow();
            if now >= stop {
                return;
            }
            if now < stop_sending {
                since = None;
                tokio::time::sleep(SETTLE_CHECK).await;
                continue;
            }
            let sent = progress.sent.load(Ordering::Relaxed);
            let acked = progress.acked.load(Ordering::Relaxed);
            let fresh = progress.fresh.load(Ordering::Relaxed);
            // Equal, not at least: a count that ran past what was expected
            // (which a correct run never shows) must not end the drain.
            if sent == acked && fresh == acked * self.receivers {
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.quiet {
                    eprintln!(
                        "fanout: settled {:.1} s into the drain",
                        stop_sending.elapsed().as_secs_f64()
                    );
                    deadlines.send_modify(|d| {
                        d.stop = d.stop.min(Instant::now());
                        d.settled = true;
                    });
                    return;
                }
            } else {
                since = None;
            }
            tokio::time::sleep(SETTLE_CHECK).await;
        }
    }
}

/// When a run's clients stop sending and stop: as planned, or earlier,
/// when the run settles ([`Settle`]) or is told to stop sending (the
/// `stop_sending` token of [`run`]; SIGUSR1 to `loadgen fanout`). Every
/// client follows the latest.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    stop_sending: Instant,
    stop: Instant,
    /// The run ended because it settled: nothing was missing, so a client
    /// still reconnecting then is not stranded.
    settled: bool,
}

/// How often [`Settle`] looks.
const SETTLE_CHECK: Duration = Duration::from_millis(100);

struct Outcome {
    room: usize,
    index: usize,
    /// The client's user id, which its messages' deliveries must name.
    user: String,
    /// Acks matched to a message awaiting one.
    acks: u64,
    /// See [`Report::unknown_acks`].
    unknown_acks: u64,
    /// See [`Report::acked_without_seq`].
    acked_without_seq: u64,
    /// Every message sent, by id, with what its ack said: what the other
    /// members must receive.
    messages: HashMap<ClientMsgId, Acked>,
    received: Received,
    /// Chat deliveries for a room this client is not in.
    wrong_room: u64,
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
    /// Why the client ended before the run did, if it did.
    stranded: Option<String>,
    /// What arrived before sending stopped, for the rates.
    while_sending: Counts,
}

/// Deliveries and acks, counted over some part of a run.
#[derive(Clone, Copy, Default)]
struct Counts {
    deliveries: u64,
    acks: u64,
}

/// Runs the plan; `progress` is updated as it goes. Once `stop_sending` is
/// cancelled, clients stop sending (if they still did) and drain.
pub async fn run(
    plan: &Plan,
    secret: &[u8],
    progress: Arc<Progress>,
    stop_sending: CancellationToken,
) -> Result<Report, ClientError> {
    let rooms: Vec<RoomId> = (0..plan.rooms)
        .map(|_| RoomId(format!("load-{}", nuid::next())))
        .collect();
    let clients = connect_all(plan, secret, &rooms).await?;

    let origin = Instant::now();
    let start = origin + Duration::from_millis(200);
    let (deadlines, following) = watch::channel(Deadlines {
        stop_sending: start + plan.duration,
        stop: start + plan.duration + plan.drain,
        settled: false,
    });
    let per_client = (plan.rooms * plan.clients_per_room).max(1) as f64;
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(per_client / plan.rate));
    let padding = "x".repeat(plan.size.saturating_sub(21));

    // Dropped (aborted) when the run ends.
    let mut helpers = JoinSet::new();
    let drain = plan.drain;
    let told = deadlines.clone();
    helpers.spawn(async move {
        stop_sending.cancelled().await;
        told.send_if_modified(|d| {
            let now = Instant::now();
            if now >= d.stop_sending {
                return false;
            }
            eprintln!("fanout: told to stop sending");
            d.stop_sending = now;
            d.stop = d.stop.min(now + drain);
            true
        });
    });
    if let Some(quiet) = plan.settle {
        let settle = Settle {
            receivers: plan.clients_per_room.saturating_sub(1) as u64,
            quiet,
        };
        helpers.spawn(settle.watch(progress.clone(), deadlines));
    }
    let mut tasks = JoinSet::new();
    for (n, (room, index, user, connection, conn_id)) in clients.into_iter().enumerate() {
        let schedule = Schedule {
            // Spread the first sends over one interval so clients do not fire together.
            first: start + interval.map_or(Duration::ZERO, |i| i.mul_f64(n as f64 / per_client)),
            interval,
            origin,
        };
        let member = Member {
            room,
            index,
            room_id: rooms[room].clone(),
            user: format!("load-{user}"),
            token: token(secret, &format!("load-{user}")),
            gateways: plan.gateways.clone(),
            gateway: user % plan.gateways.len(),
            connected_at: origin,
            seat: conn_id,
            resume: plan.resume,
            silence_timeout: plan.silence_timeout,
            pause: is_slow(plan, room, index)
                .then(|| (start + SLOW_AFTER, start + SLOW_AFTER + plan.slow_pause)),
        };
        let rider = Rider::new(
            connection,
            member,
            schedule,
            progress.clone(),
            following.clone(),
        );
        tasks.spawn(rider.drive(padding.clone()));
    }
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("client task does not panic"));
    }
    let sending = following
        .borrow()
        .stop_sending
        .saturating_duration_since(start);
    Ok(report(sending, outcomes))
}

/// A connected client: which room and index it has, its user, its
/// connection and that connection's id.
type Connected = (usize, usize, usize, Connection, ConnId);

async fn connect_all(
    plan: &Plan,
    secret: &[u8],
    rooms: &[RoomId],
) -> Result<Vec<Connected>, ClientError> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (room, room_id) in rooms.iter().enumerate() {
        for index in 0..plan.clients_per_room {
            let n = room * plan.clients_per_room + index;
            let url = plan.gateways[n % plan.gateways.len()].clone();
            let (token, room_id, permits) = (
                token(secret, &format!("load-{n}")),
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
                let (mut connection, welcome) = if slow {
                    connect_slow(&url, &token, SLOW_RECEIVE_BUFFER).await?
                } else {
                    connect(&url, &token).await?
                };
                connection
                    .send(&ClientFrame::Join {
                        room: room_id,
                        since: None,
                        replaces: None,
                    })
                    .await?;
                expect(&mut connection, |frame| match frame {
                    ServerFrame::Joined { .. } => Some(Ok(())),
                    ServerFrame::Error(error) => {
                        Some(Err(ClientError::Unexpected(format!("{error:?}"))))
                    }
                    _ => None,
                })
                .await??;
                Ok::<_, ClientError>((room, index, n, connection, welcome.conn_id))
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
    origin: Instant,
}

/// Who one client is, and where it may reconnect.
struct Member {
    room: usize,
    index: usize,
    room_id: RoomId,
    /// Its user id.
    user: String,
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
    /// See [`Plan::silence_timeout`].
    silence_timeout: Option<Duration>,
    /// For a slow consumer, when it stops reading and when it reads again.
    pause: Option<(Instant, Instant)>,
}

/// A chat message sent and not yet acknowledged, kept to resend.
struct Pending {
    text: String,
    sent_at: Instant,
}

/// What one client does next.
enum Step {
    /// Handle this frame.
    Frame(ServerFrame),
    /// Send the next message, if it is time.
    Send,
    /// Replace the connection.
    Reconnect,
    /// Keep waiting.
    Wait,
    /// The run is over.
    Stop,
}

/// One client's state for the whole run: its connection (replaced as
/// faults require), what it waits for and what it saw.
struct Rider {
    connection: Connection,
    member: Member,
    schedule: Schedule,
    /// Sent and not yet answered, matched to answers by id.
    pending: Outbox<Pending>,
    outcome: Outcome,
    /// When the next message is due.
    next_send: Instant,
    /// When the last delivery came, to measure silences.
    last_delivery: Instant,
    /// When a draining gateway asked this client to move, as the SDK does.
    move_at: Option<Instant>,
    /// The run's live totals, which this client adds to.
    progress: Arc<Progress>,
    /// When to stop sending and stop; they may move earlier.
    deadlines: watch::Receiver<Deadlines>,
}

impl Rider {
    fn new(
        connection: Connection,
        member: Member,
        schedule: Schedule,
        progress: Arc<Progress>,
        deadlines: watch::Receiver<Deadlines>,
    ) -> Rider {
        let outcome = Outcome {
            room: member.room,
            index: member.index,
            user: member.user.clone(),
            acks: 0,
            unknown_acks: 0,
            acked_without_seq: 0,
            messages: HashMap::new(),
            received: Received::default(),
            wrong_room: 0,
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
            stranded: None,
            while_sending: Counts::default(),
        };
        Rider {
            connection,
            member,
            schedule,
            pending: Outbox::default(),
            outcome,
            next_send: schedule.first,
            last_delivery: schedule.first,
            move_at: None,
            progress,
            deadlines,
        }
    }

    /// Sends on schedule (or whenever the last message is acked), and
    /// records every frame until the schedule's `stop`. With `resume`, a
    /// closed or silent connection is replaced as a real client would do it.
    /// A client that fails ends early and says why in its outcome, so the
    /// run still reports what every other client saw.
    async fn drive(mut self, padding: String) -> Outcome {
        if let Err(err) = self.ride(&padding).await {
            self.outcome.stranded = Some(err.to_string());
        }
        self.outcome.unacked = self.pending.len() as u64;
        self.connection.close().await;
        self.outcome
    }

    async fn ride(&mut self, padding: &str) -> Result<(), ClientError> {
        loop {
            match self.next_step().await? {
                Step::Stop => return Ok(()),
                Step::Wait => {}
                Step::Reconnect => self.reconnect().await?,
                Step::Send => self.send_next(padding).await?,
                Step::Frame(frame) => self.on_frame(frame).await?,
            }
        }
    }

    /// Whether the schedule has a message to send now, and room for it.
    fn sending(&self) -> (bool, bool) {
        let sending = self.next_send < self.deadlines.borrow().stop_sending;
        let may_send = match self.schedule.interval {
            Some(_) => self.pending.len() < MAX_IN_FLIGHT,
            None => self.pending.is_empty(),
        };
        (sending, may_send)
    }

    /// Waits for the next frame, or for whatever comes first: the next
    /// send, a silent connection, a draining gateway's moment to move, a
    /// slow consumer's pause, the end.
    async fn next_step(&mut self) -> Result<Step, ClientError> {
        let (sending, may_send) = self.sending();
        let stop = self.deadlines.borrow_and_update().stop;
        let mut wake = if sending && may_send {
            self.next_send
        } else {
            stop
        };
        // A connection that leaves a message unanswered this long is dead
        // (its gateway stopped, or cut off) even if the socket is open.
        let deadline = self.member.silence_timeout.and_then(|timeout| {
            self.pending
                .oldest()
                .map(|p| p.sent_at.max(self.member.connected_at) + timeout)
        });
        if self.member.resume {
            wake = wake.min(deadline.unwrap_or(wake));
        }
        if let Some(at) = self.move_at {
            wake = wake.min(at);
        }
        if let Some((from, until)) = self.member.pause {
            if Instant::now() >= from {
                // Frozen: neither reads nor sends. Its silence is its own,
                // so both the unanswered-message clock and the silence
                // measure start again when it thaws, and what it would have
                // sent meanwhile is not sent at once afterwards.
                self.member.pause = None;
                tokio::time::sleep_until(until).await;
                self.member.connected_at = Instant::now();
                self.last_delivery = self.member.connected_at;
                self.next_send = self.next_send.max(self.member.connected_at);
                return Ok(Step::Wait);
            }
            wake = wake.min(from);
        }
        let received = tokio::select! {
            received = self.connection.recv_until(wake.min(stop)) => received,
            // The run's deadlines moved: look again.
            Ok(()) = self.deadlines.changed() => return Ok(Step::Wait),
        };
        let now = Instant::now();
        Ok(match received {
            Ok(Some(frame)) => Step::Frame(frame),
            Err(err) if self.member.resume && now < stop => {
                count_close(&mut self.outcome.closes, &err.into());
                Step::Reconnect
            }
            // Settled while this client was reconnecting (its socket is
            // closed): nothing was missing, so it is not stranded.
            Err(_) if self.deadlines.borrow().settled => Step::Stop,
            Err(err) => return Err(err.into()),
            Ok(None) if now >= stop => Step::Stop,
            Ok(None) if self.move_at.is_some_and(|at| now >= at) => {
                self.move_at = None;
                Step::Reconnect
            }
            Ok(None) if self.member.resume && deadline.is_some_and(|d| now >= d) => Step::Reconnect,
            Ok(None) if sending && may_send && now >= self.next_send => Step::Send,
            Ok(None) => Step::Wait,
        })
    }

    /// Sends the next message; its text carries the send time.
    async fn send_next(&mut self, padding: &str) -> Result<(), ClientError> {
        let now = Instant::now();
        let id = ClientMsgId(format!(
            "{}-{}-{}",
            self.member.room, self.member.index, self.outcome.sent
        ));
        let message = Pending {
            text: format!("{:020}{padding}", self.micros(now)),
            sent_at: now,
        };
        let sent = self.send_chat(&id, &message.text).await;
        self.outcome.messages.insert(id.clone(), Acked::No);
        self.pending.push(self.member.room_id.clone(), id, message);
        self.outcome.sent += 1;
        self.progress.sent.fetch_add(1, Ordering::Relaxed);
        self.next_send = match self.schedule.interval {
            Some(interval) => self.next_send + interval,
            None => now,
        };
        match sent {
            Ok(()) => Ok(()),
            Err(_) if self.member.resume => self.reconnect().await,
            Err(err) => Err(err),
        }
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), ClientError> {
        let now = Instant::now();
        match frame {
            ServerFrame::Ack { id, room, seq, .. } => {
                let Some(sent) = self.pending.take(&room, &id) else {
                    self.outcome.unknown_acks += 1;
                    return Ok(());
                };
                self.outcome
                    .ack_latency
                    .record(now.duration_since(sent.sent_at).as_micros() as u64);
                let acked = match seq {
                    Some(seq) => Acked::Seq(seq.0),
                    None => {
                        self.outcome.acked_without_seq += 1;
                        Acked::WithoutSeq
                    }
                };
                self.outcome.messages.insert(id, acked);
                self.outcome.acks += 1;
                if now < self.deadlines.borrow().stop_sending {
                    self.outcome.while_sending.acks += 1;
                }
                self.progress.acked.fetch_add(1, Ordering::Relaxed);
                if self.schedule.interval.is_none() {
                    self.next_send = now;
                }
            }
            ServerFrame::Draining { reconnect_in_ms } if self.member.resume => {
                self.move_at = Some(now + Duration::from_millis(reconnect_in_ms));
            }
            ServerFrame::Chat(chat) => {
                self.record(&chat);
                if let Some(sent) = chat.text.get(..20).and_then(|t| t.parse::<u64>().ok()) {
                    self.outcome
                        .latency
                        .record(self.micros(now).saturating_sub(sent));
                }
                let stop_sending = self.deadlines.borrow().stop_sending;
                if now < stop_sending {
                    self.outcome.while_sending.deliveries += 1;
                }
                // A silence that began while messages were being sent
                // counts whole, even when it ends in the drain: cut short
                // at the end of sending, a fault's silence could never
                // measure longer than the time left to send.
                if self.last_delivery < stop_sending {
                    self.outcome.longest_silence = self
                        .outcome
                        .longest_silence
                        .max(now.saturating_duration_since(self.last_delivery));
                }
                self.last_delivery = now;
                self.progress.delivered.fetch_add(1, Ordering::Relaxed);
            }
            ServerFrame::Error(error) => {
                *self
                    .outcome
                    .errors
                    .entry(error.code.to_string())
                    .or_default() += 1;
                let room = error.room.unwrap_or_else(|| self.member.room_id.clone());
                let refused = error
                    .id
                    .and_then(|id| Some((self.pending.take(&room, &id)?, id)));
                if let Some((message, id)) = refused
                    && self.member.resume
                    && RETRYABLE.contains(&error.code)
                {
                    // Resent now, answered after the others in flight.
                    let resent = self.send_chat(&id, &message.text).await;
                    self.pending.push(room, id, message);
                    if resent.is_err() {
                        return self.reconnect().await;
                    }
                }
                if self.schedule.interval.is_none() {
                    self.next_send = now;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Records a chat delivery, live or from the backlog.
    fn record(&mut self, chat: &ChatMessage) {
        if chat.room != self.member.room_id {
            self.outcome.wrong_room += 1;
            return;
        }
        // Its own messages, which a rejoin's backlog may bring back, are
        // not what others must receive.
        if chat.seq.0 > self.outcome.received.highest()
            && chat.from.user.id.as_str() != self.member.user
        {
            self.progress.fresh.fetch_add(1, Ordering::Relaxed);
        }
        self.outcome.received.record(Delivered {
            id: chat.id.clone(),
            from: chat.from.user.id.as_str().to_owned(),
            seq: chat.seq.0,
        });
    }

    /// Microseconds from the run's origin to `at`.
    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.schedule.origin).as_micros() as u64
    }

    async fn send_chat(&mut self, id: &ClientMsgId, text: &str) -> Result<(), ClientError> {
        let frame = ClientFrame::Chat {
            room: self.member.room_id.clone(),
            id: id.clone(),
            text: text.to_owned(),
        };
        Ok(self.connection.send(&frame).await?)
    }

    /// Closes the connection (while it stays open it holds a seat in the
    /// room), connects to the next gateway that answers, rejoins the room
    /// from the highest seq received (recording the backlog as
    /// deliveries), and resends every unacknowledged message in order.
    /// Gives up at the schedule's `stop`.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        // Bounded: a gateway cut off the network never answers the close.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.connection.close()).await;
        self.outcome.reconnects += 1;
        self.outcome.reconnected_at.push(Instant::now());
        let mut backoff = RECONNECT_DELAY;
        let mut answers: BTreeMap<usize, String> = BTreeMap::new();
        loop {
            // Nothing is missing any more: a connection would add nothing.
            if self.deadlines.borrow().settled {
                return Ok(());
            }
            self.member.gateway = (self.member.gateway + 1) % self.member.gateways.len();
            match self.rejoin().await {
                Ok(()) => {
                    self.member.connected_at = Instant::now();
                    return Ok(());
                }
                Err(err) => answers.insert(self.member.gateway, err.to_string()),
            };
            if Instant::now() >= self.deadlines.borrow().stop {
                let answers: Vec<String> = answers
                    .iter()
                    .map(|(gateway, err)| format!("{}: {err}", self.member.gateways[*gateway]))
                    .collect();
                return Err(ClientError::Unexpected(format!(
                    "still reconnecting when the run ended; last answers: {}",
                    answers.join("; ")
                )));
            }
            tokio::time::sleep(bootstrap::backoff::jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_RECONNECT_DELAY);
        }
    }

    /// One attempt of [`Rider::reconnect`], to the member's current gateway.
    async fn rejoin(&mut self) -> Result<(), ClientError> {
        let url = &self.member.gateways[self.member.gateway];
        let (mut connection, welcome) = connect(url, &self.member.token).await?;
        let since = self.outcome.received.highest();
        connection
            .send(&ClientFrame::Join {
                room: self.member.room_id.clone(),
                since: Some(Seq(since)),
                replaces: Some(self.member.seat.clone()),
            })
            .await?;
        let (history, truncated) = expect(&mut connection, |frame| match frame {
            ServerFrame::Joined {
                history, truncated, ..
            } => Some(Ok((history, truncated))),
            ServerFrame::Error(error) => Some(Err(ClientError::Unexpected(format!("{error:?}")))),
            _ => None,
        })
        .await??;
        self.outcome.truncated += u64::from(truncated);
        self.outcome.received.reconnected();
        for chat in &history {
            self.record(chat);
        }
        self.connection = connection;
        self.member.seat = welcome.conn_id;
        for (room, id, message) in self.pending.iter() {
            let frame = ClientFrame::Chat {
                room: room.clone(),
                id: id.clone(),
                text: message.text.clone(),
            };
            self.connection.send(&frame).await?;
        }
        Ok(())
    }
}

/// Counts a close by the gateway under its close code.
fn count_close(closes: &mut BTreeMap<String, u64>, err: &ClientError) {
    if let Some(code) = err.close_code() {
        let code = code.map_or_else(|| "none".to_owned(), |code| code.to_string());
        *closes.entry(code).or_default() += 1;
    }
}

/// Error codes a real client retries.
const RETRYABLE: &[ErrorCode] = &[ErrorCode::Unavailable, ErrorCode::RateLimited];

/// The first wait between two reconnect attempts; it doubles up to
/// `MAX_RECONNECT_DELAY`, with full jitter as the SDK does, so that a
/// gateway's clients moving at once do not retry in lockstep.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(4);

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

/// `count` per second over `seconds`; 0 for a run that never sent.
fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The report of a run whose clients sent for `sending`.
fn report(sending: Duration, outcomes: Vec<Outcome>) -> Report {
    let mut books: HashMap<usize, Sent> = HashMap::new();
    for o in &outcomes {
        let book = books.entry(o.room).or_default();
        for (id, acked) in &o.messages {
            let message = Message {
                sender: o.index,
                user: o.user.clone(),
                acked: *acked,
            };
            book.insert(id.clone(), message);
        }
    }
    let (mut latency, mut ack_latency) = (Latency::default(), Latency::default());
    let mut correctness = Correctness::default();
    let (mut errors, mut closes) = (BTreeMap::new(), BTreeMap::new());
    let mut slow_closed = 0;
    let (mut sent, mut acked, mut deliveries) = (0, 0, 0);
    let (mut unknown_acks, mut acked_without_seq) = (0, 0);
    let (mut unacked, mut reconnects, mut truncated) = (0, 0, 0);
    let mut longest_silence = Duration::ZERO;
    let mut stranded_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut while_sending = Counts::default();
    for o in &outcomes {
        while_sending.deliveries += o.while_sending.deliveries;
        while_sending.acks += o.while_sending.acks;
        correctness.add(o.index, &o.received, &books[&o.room]);
        correctness.add_misdelivered(o.wrong_room);
        unknown_acks += o.unknown_acks;
        acked_without_seq += o.acked_without_seq;
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
        if let Some(reason) = &o.stranded {
            *stranded_reasons.entry(reason.clone()).or_default() += 1;
        }
        longest_silence = longest_silence.max(o.longest_silence);
        deliveries += o.latency.summary().count;
    }
    let seconds = sending.as_secs_f64();
    let peak_reconnects_per_second = peak_per_second(
        outcomes
            .iter()
            .flat_map(|o| o.reconnected_at.iter().copied()),
    );
    Report {
        sent,
        acked,
        unknown_acks,
        acked_without_seq,
        deliveries,
        seconds,
        deliveries_per_second: per_second(while_sending.deliveries, seconds),
        acks_per_second: per_second(while_sending.acks, seconds),
        delivery_latency: latency.summary(),
        ack_latency: ack_latency.summary(),
        errors,
        unacked,
        reconnects,
        peak_reconnects_per_second,
        truncated,
        stranded: stranded_reasons.values().sum(),
        stranded_reasons,
        closes,
        slow_closed,
        longest_silence_ms: longest_silence.as_millis() as u64,
        correctness,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean run of one acked message, as far as the verdict reads it.
    fn clean() -> Report {
        Report {
            sent: 1,
            acked: 1,
            ..Report::default()
        }
    }

    #[test]
    fn a_fault_without_its_effect_on_the_clients_fails() {
        let mut plan = Plan::default();
        assert_eq!(clean().verdict(&plan, 1.0), Ok(()));
        plan.expect = Expect {
            reconnects: 3,
            close: Some((4104, 3)),
            untruncated: true,
        };
        let mut report = clean();
        report.reconnects = 2;
        assert_eq!(
            report.verdict(&plan, 1.0),
            Err("2 reconnects, 3 expected".into())
        );
        report.reconnects = 3;
        report.closes.insert("4104".into(), 2);
        assert!(report.verdict(&plan, 1.0).unwrap_err().contains("4104"));
        report.closes.insert("4104".into(), 3);
        assert_eq!(report.verdict(&plan, 1.0), Ok(()));
        report.truncated = 1;
        assert!(
            report
                .verdict(&plan, 1.0)
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[test]
    fn a_stranded_client_fails_the_run_first() {
        let mut report = clean();
        report.stranded = 1;
        report
            .stranded_reasons
            .insert("still reconnecting when the run ended".into(), 1);
        report.correctness.lost = 5;
        let failure = report.verdict(&Plan::default(), 1.0).unwrap_err();
        assert!(failure.starts_with("1 clients ended early"), "{failure}");
    }

    #[test]
    fn peak_per_second_counts_the_busiest_second() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let moments = [0, 100, 900, 1_000, 2_100, 2_200, 2_300, 2_900].map(at);
        assert_eq!(peak_per_second(moments.into_iter()), 4, "2.1 to 2.9 s");
        assert_eq!(peak_per_second(std::iter::empty()), 0);
    }
}
