//! The task behind a [`Client`](crate::Client): one connection at a time,
//! and what outlives it (rooms and their last seqs, unacked chat, waiting
//! callers).
//!
//! It reconnects only when the gateway closes the socket or the socket
//! fails (or a draining gateway says when to move), never on a timer of
//! its own, which would hide a server fault.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use schemas::client::{ChatMessage, ClientFrame, ErrorFrame, ServerFrame};
use schemas::code::ErrorCode;
use schemas::id::{ClientMsgId, ConnId, RoomId, Seq};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::connection::{Connection, Dialer, Welcome};
use crate::error::{
    ConnectError, ConnectErrorKind, RecvErrorKind, RequestError, RequestErrorKind, SendError,
    TokenError,
};
use crate::event::{Ack, Event, Joined, Stop};
use crate::options::Options;
use crate::outbox::Outbox;
use crate::token::{TokenFuture, TokenSource};

/// Error codes a chat is resent after: the gateway could not store it now
/// (`unavailable`) or not yet (`rate_limited`). Resending its id is
/// idempotent.
const RETRIED: &[ErrorCode] = &[ErrorCode::Unavailable, ErrorCode::RateLimited];

/// How long a refused chat waits before it is resent: a random time in
/// `[RETRY_DELAY, 3 · RETRY_DELAY]`, as the browser SDK does.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest a token is refreshed before it expires; earlier tokens
/// are refreshed when a fifth of their life is left.
const MAX_REFRESH_LEAD: Duration = Duration::from_secs(60);

/// Error codes that answer a `join` (the others name a room only when
/// they answer a signal, which the client never waits for).
const JOIN_REFUSALS: &[ErrorCode] = &[
    ErrorCode::InvalidRoom,
    ErrorCode::TooManyRooms,
    ErrorCode::RoomFull,
    ErrorCode::Unavailable,
];

type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

pub(crate) enum Command {
    Join {
        room: RoomId,
        reply: Reply<Joined>,
    },
    Leave {
        room: RoomId,
        reply: Reply<()>,
    },
    Chat {
        room: RoomId,
        text: String,
        reply: Reply<Ack>,
    },
    Signal {
        frame: ClientFrame,
        reply: Reply<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A room the client is in, or joining.
#[derive(Default)]
struct Room {
    /// The highest seq delivered (in a backlog or live), which a rejoin
    /// resumes after. Never taken from an ack: an ack can come before
    /// someone else's message with a lower seq.
    last_seq: Option<Seq>,
    /// Whether the current connection's join was answered.
    joined: bool,
    /// The connection that last held a seat here, which a rejoin replaces.
    seat: Option<ConnId>,
    /// Callers of [`Client::join`](crate::Client::join) waiting for `joined`.
    waiting: Vec<Reply<Joined>>,
}

/// A chat message waiting for its ack.
struct Outgoing {
    text: String,
    reply: Reply<Ack>,
    /// When to resend it after a retryable refusal.
    retry_at: Option<Instant>,
}

/// How a connected spell ended.
enum End {
    /// The socket closed or failed.
    Lost(Option<u16>),
    /// The gateway is draining and its time to move has come.
    Move,
    /// The client was closed (with whom to tell), or every handle dropped.
    Close(Option<oneshot::Sender<()>>),
}

/// Why [`Session::dial`] returned no connection.
pub(crate) enum Halt {
    /// The client is to stop.
    Stop(Stop),
    /// The first connect failed for good.
    Failed(ConnectError),
}

/// Which kind of connect [`Session::dial`] makes.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Dial {
    /// The first, from [`Client::connect`](crate::Client::connect): to the first URL, at once.
    First,
    /// After a lost connection: to the next URL, after a backoff.
    Again,
    /// Away from a draining gateway: to the next URL, at once.
    Move,
}

/// The task's state: everything that outlives one connection.
pub(crate) struct Session {
    options: Options,
    /// The URL of the current or last connection.
    url: usize,
    events: mpsc::Sender<Event>,
    rooms: BTreeMap<RoomId, Room>,
    /// Callers of [`Client::leave`](crate::Client::leave) waiting for `left`.
    leaving: HashMap<RoomId, Vec<Reply<()>>>,
    outbox: Outbox<Outgoing>,
    /// Prefix of this client's message ids: unique, so that ids never
    /// collide with another client of the same user, or with this one
    /// before a restart (a repeated id within the gateway's duplicate
    /// window would be taken for a resend).
    id_prefix: String,
    sent: u64,
    /// The current connection's id.
    conn_id: Option<ConnId>,
    /// Who is told when the task is done, if [`Client::close`](crate::Client::close) asked.
    closing: Option<oneshot::Sender<()>>,
}

impl Session {
    pub(crate) fn new(options: Options, events: mpsc::Sender<Event>) -> Session {
        Session {
            options,
            url: 0,
            events,
            rooms: BTreeMap::new(),
            leaving: HashMap::new(),
            outbox: Outbox::default(),
            id_prefix: nuid::next().to_string(),
            sent: 0,
            conn_id: None,
            closing: None,
        }
    }

    pub(crate) async fn run(
        mut self,
        first: (Connection, Welcome),
        mut commands: mpsc::Receiver<Command>,
    ) {
        let (mut connection, mut welcome) = first;
        let stop = loop {
            let end = match self.resume(&mut connection, &welcome).await {
                Ok(()) => {
                    self.emit(Event::Connected(welcome.clone())).await;
                    self.serve(&mut connection, &welcome, &mut commands).await
                }
                Err(_) => End::Lost(None),
            };
            let dial = match end {
                End::Close(reply) => {
                    connection.close().await;
                    self.closing = reply;
                    break Stop::Closed;
                }
                End::Move => {
                    connection.close().await;
                    Dial::Move
                }
                End::Lost(Some(code)) if (4000..4100).contains(&code) => {
                    break Stop::Terminal(code);
                }
                End::Lost(close_code) => {
                    self.emit(Event::Disconnected { close_code }).await;
                    Dial::Again
                }
            };
            self.disconnected();
            match self.dial(&mut commands, dial).await {
                Ok(connected) => (connection, welcome) = connected,
                Err(Halt::Stop(stop)) => break stop,
                Err(Halt::Failed(err)) => break Stop::GaveUp(err.to_string()),
            }
        };
        self.stop(stop).await;
    }

    /// Connects as `dial` says, trying the gateways in turn with backoff,
    /// and queueing the commands that arrive meanwhile.
    pub(crate) async fn dial(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        dial: Dial,
    ) -> Result<(Connection, Welcome), Halt> {
        let mut failures = 0u32;
        // With a token function, a refused token is fetched again once:
        // it may only have gone stale, or been signed with a key the
        // provider has just rotated.
        let mut refusals = 0u32;
        loop {
            if dial == Dial::Again || failures > 0 {
                let wait = tokio::time::sleep(self.options.backoff.delay(failures));
                self.while_offline(wait, commands).await?;
            }
            if dial != Dial::First || failures > 0 {
                self.url = (self.url + 1) % self.options.urls.len();
            }
            let attempt = connect(
                self.options.urls[self.url].clone(),
                self.options.token.clone(),
                self.options.dialer.clone(),
            );
            let err = match self.while_offline(attempt, commands).await? {
                Ok(connected) => return Ok(connected),
                Err(err) => err,
            };
            if err.kind() == ConnectErrorKind::Token {
                self.emit(Event::TokenFailed(TokenError::new(&err))).await;
            }
            let refused = matches!(
                err.kind(),
                ConnectErrorKind::Unauthorized | ConnectErrorKind::Closed(Some(4001))
            );
            if refused {
                refusals += 1;
                if !self.options.token.refreshes() || refusals > 1 {
                    return Err(match dial {
                        Dial::First => Halt::Failed(err),
                        _ => Halt::Stop(Stop::Refused(err.to_string())),
                    });
                }
            } else if let ConnectErrorKind::Closed(Some(code)) = err.kind()
                && (4000..4100).contains(&code)
            {
                // Terminal with these credentials: 4004, too many
                // connections of this user on that gateway, say.
                return Err(match dial {
                    Dial::First => Halt::Failed(err),
                    _ => Halt::Stop(Stop::Terminal(code)),
                });
            } else {
                refusals = 0;
            }
            failures += 1;
            if self.options.max_attempts.is_some_and(|max| failures >= max) {
                return Err(Halt::Failed(err));
            }
        }
    }

    /// Runs `work` while queueing the commands that arrive meanwhile.
    async fn while_offline<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Result<T, Halt> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                command = commands.recv() => match command {
                    None => return Err(Halt::Stop(Stop::Closed)),
                    Some(Command::Close { reply }) => {
                        self.closing = Some(reply);
                        return Err(Halt::Stop(Stop::Closed));
                    }
                    Some(command) => self.queue(command),
                },
            }
        }
    }

    /// Takes a command while there is no connection: rooms and chat wait
    /// for the next one, signals fail.
    fn queue(&mut self, command: Command) {
        match command {
            Command::Join { room, reply } => {
                self.rooms.entry(room).or_default().waiting.push(reply)
            }
            Command::Leave { room, reply } => {
                self.forget(&room);
                let _ = reply.send(Ok(()));
            }
            Command::Chat { room, text, reply } => {
                self.keep_chat(room, text, reply);
            }
            Command::Signal { reply, .. } => {
                let _ = reply.send(Err(RequestError::new(RequestErrorKind::NotConnected)));
            }
            Command::Close { .. } => unreachable!("handled by the caller"),
        }
    }

    /// After `welcome`: joins every room again from its last seq, taking
    /// over the seat of the connection that held it, then resends every
    /// unacked chat in order.
    async fn resume(
        &mut self,
        connection: &mut Connection,
        welcome: &Welcome,
    ) -> Result<(), SendError> {
        self.conn_id = Some(welcome.conn_id.clone());
        for (room, state) in &self.rooms {
            let join = ClientFrame::Join {
                room: room.clone(),
                since: state.last_seq,
                replaces: state.seat.clone(),
            };
            connection.send(&join).await?;
        }
        for (room, id, outgoing) in self.outbox.iter_mut() {
            outgoing.retry_at = None;
            connection
                .send(&chat_frame(room, id, &outgoing.text))
                .await?;
        }
        Ok(())
    }

    /// Reads frames and takes commands until the connection ends.
    async fn serve(
        &mut self,
        connection: &mut Connection,
        welcome: &Welcome,
        commands: &mut mpsc::Receiver<Command>,
    ) -> End {
        let mut refresh_at = self.refresh_time(welcome.expires_in);
        let mut refreshing: Option<TokenFuture> = None;
        let mut move_at: Option<Instant> = None;
        loop {
            let retry_at = self
                .outbox
                .iter()
                .filter_map(|(_, _, chat)| chat.retry_at)
                .min();
            tokio::select! {
                frame = connection.recv() => match frame {
                    Ok(ServerFrame::Refreshed { expires_in }) => {
                        refresh_at = self.refresh_time(expires_in);
                    }
                    Ok(ServerFrame::Draining { reconnect_in_ms }) => {
                        move_at = Some(Instant::now() + Duration::from_millis(reconnect_in_ms));
                    }
                    Ok(frame) => self.on_frame(frame).await,
                    Err(err) => return End::Lost(match err.kind() {
                        RecvErrorKind::Closed(code) => code,
                        _ => None,
                    }),
                },
                command = commands.recv() => {
                    let sent = match command {
                        None => return End::Close(None),
                        Some(Command::Close { reply }) => return End::Close(Some(reply)),
                        Some(command) => self.on_command(command, connection).await,
                    };
                    if sent.is_err() {
                        return End::Lost(None);
                    }
                }
                _ = sleep_until(refresh_at) => {
                    refresh_at = None;
                    refreshing = Some(self.options.token.fetch());
                }
                token = fetched(&mut refreshing) => {
                    refreshing = None;
                    match token {
                        Ok(token) => {
                            if connection.send(&ClientFrame::Refresh { token }).await.is_err() {
                                return End::Lost(None);
                            }
                        }
                        // The connection runs until its token expires (4105),
                        // and the reconnect fetches a token again.
                        Err(err) => self.emit(Event::TokenFailed(err)).await,
                    }
                }
                _ = sleep_until(move_at) => return End::Move,
                _ = sleep_until(retry_at) => {
                    if self.resend_due(connection).await.is_err() {
                        return End::Lost(None);
                    }
                }
            }
        }
    }

    /// When to refresh a token that expires in `expires_in` seconds: when
    /// a fifth of its life is left, at most a minute before. `None` for a
    /// fixed token.
    fn refresh_time(&self, expires_in: u64) -> Option<Instant> {
        let life = Duration::from_secs(expires_in);
        let lead = (life / 5).min(MAX_REFRESH_LEAD);
        self.options
            .token
            .refreshes()
            .then(|| Instant::now() + life - lead)
    }

    async fn on_command(
        &mut self,
        command: Command,
        connection: &mut Connection,
    ) -> Result<(), SendError> {
        match command {
            Command::Join { room, reply } => {
                let state = self.rooms.entry(room.clone()).or_default();
                state.waiting.push(reply);
                let join = ClientFrame::Join {
                    room,
                    since: state.last_seq,
                    replaces: None,
                };
                connection.send(&join).await
            }
            Command::Leave { room, reply } => {
                self.forget(&room);
                self.leaving.entry(room.clone()).or_default().push(reply);
                connection.send(&ClientFrame::Leave { room }).await
            }
            Command::Chat { room, text, reply } => {
                let frame = self.keep_chat(room, text, reply);
                connection.send(&frame).await
            }
            Command::Signal { frame, reply } => {
                let sent = connection.send(&frame).await;
                let answer = match &sent {
                    Ok(()) => Ok(()),
                    Err(_) => Err(RequestError::new(RequestErrorKind::NotConnected)),
                };
                let _ = reply.send(answer);
                sent
            }
            Command::Close { .. } => unreachable!("handled by the caller"),
        }
    }

    async fn on_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Chat(chat) => {
                if self.delivered(&chat) {
                    self.emit(Event::Chat(chat)).await;
                }
            }
            ServerFrame::Joined {
                room,
                members,
                history,
                last_seq,
                truncated,
            } => {
                let Some(state) = self.rooms.get_mut(&room) else {
                    return; // left meanwhile
                };
                state.joined = true;
                state.seat = self.conn_id.clone();
                let waiting = std::mem::take(&mut state.waiting);
                if waiting.is_empty() {
                    // A rejoin after a reconnect: deliver what was missed.
                    for chat in history {
                        if self.delivered(&chat) {
                            self.emit(Event::Chat(chat)).await;
                        }
                    }
                    self.emit(Event::Rejoined {
                        room,
                        members,
                        truncated,
                    })
                    .await;
                    return;
                }
                if let Some(newest) = history.iter().map(|chat| chat.seq).max() {
                    state.last_seq = state.last_seq.max(Some(newest));
                }
                let joined = Joined {
                    room,
                    members,
                    history,
                    last_seq,
                    truncated,
                };
                for reply in waiting {
                    let _ = reply.send(Ok(joined.clone()));
                }
            }
            ServerFrame::Left { room } => {
                for reply in self.leaving.remove(&room).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            ServerFrame::Ack {
                id,
                room,
                seq,
                text,
            } => match self.outbox.take(&room, &id) {
                Some(outgoing) => {
                    let text = text.unwrap_or(outgoing.text);
                    let _ = outgoing.reply.send(Ok(Ack { id, seq, text }));
                }
                None => {
                    let frame = ServerFrame::Ack {
                        id,
                        room,
                        seq,
                        text,
                    };
                    self.emit(Event::Unmatched(frame)).await;
                }
            },
            ServerFrame::Error(error) => self.on_error(error).await,
            ServerFrame::Presence {
                room,
                event,
                member,
            } => {
                self.emit(Event::Presence {
                    room,
                    event,
                    member,
                })
                .await;
            }
            ServerFrame::Signal {
                room,
                from,
                user,
                kind,
                data,
            } => {
                self.emit(Event::Signal {
                    room,
                    from,
                    user,
                    kind,
                    data,
                })
                .await;
            }
            ServerFrame::CallAnswer { room, sdp } => {
                self.emit(Event::CallAnswer { room, sdp }).await;
            }
            ServerFrame::CallMoved { room } => self.emit(Event::CallMoved { room }).await,
            // Answers to frames this client does not send, and `welcome`
            // and `refreshed`, which `serve` and `connect` read.
            ServerFrame::Welcome { .. }
            | ServerFrame::Refreshed { .. }
            | ServerFrame::Draining { .. }
            | ServerFrame::Pong
            | ServerFrame::Ice(_) => {}
        }
    }

    /// An error frame goes to the request it names: a chat by its id, a
    /// join or leave by its room.
    async fn on_error(&mut self, error: ErrorFrame) {
        if let Some(id) = &error.id {
            let room = error.room.clone().unwrap_or_else(|| RoomId::from(""));
            if RETRIED.contains(&error.code) {
                if let Some(outgoing) = self.outbox.get_mut(&room, id) {
                    outgoing.retry_at = Some(Instant::now() + retry_wait());
                    return;
                }
            } else if let Some(outgoing) = self.outbox.take(&room, id) {
                let _ = outgoing.reply.send(Err(RequestError::refused(error)));
                return;
            }
            self.emit(Event::Unmatched(ServerFrame::Error(error))).await;
            return;
        }
        let Some(room) = error.room.clone() else {
            self.emit(Event::Error(error)).await;
            return;
        };
        // Leaving a room the gateway does not hold is done already.
        if error.code == ErrorCode::NotInRoom
            && let Some(waiting) = self.leaving.remove(&room)
        {
            for reply in waiting {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        let joining = self
            .rooms
            .get(&room)
            .is_some_and(|state| !state.joined || !state.waiting.is_empty());
        if !joining || !JOIN_REFUSALS.contains(&error.code) {
            self.emit(Event::Error(error)).await;
            return;
        }
        // A refused join: a room never joined on this connection is
        // forgotten; one held already (a resync refused) is kept.
        let state = self.rooms.get_mut(&room).expect("checked above");
        let waiting = std::mem::take(&mut state.waiting);
        if !state.joined {
            self.forget(&room);
        }
        if waiting.is_empty() {
            self.emit(Event::Error(error)).await;
            return;
        }
        for reply in waiting {
            let _ = reply.send(Err(RequestError::refused(error.clone())));
        }
    }

    /// Whether `chat` is new to its room (a seq above the last delivered),
    /// recording it if so: a rejoin's backlog may repeat what came live.
    fn delivered(&mut self, chat: &ChatMessage) -> bool {
        let Some(state) = self.rooms.get_mut(&chat.room) else {
            return false;
        };
        if state.last_seq.is_some_and(|last| chat.seq <= last) {
            return false;
        }
        state.last_seq = Some(chat.seq);
        true
    }

    async fn resend_due(&mut self, connection: &mut Connection) -> Result<(), SendError> {
        let now = Instant::now();
        for (room, id, outgoing) in self.outbox.iter_mut() {
            if outgoing.retry_at.is_some_and(|at| at <= now) {
                outgoing.retry_at = None;
                connection
                    .send(&chat_frame(room, id, &outgoing.text))
                    .await?;
            }
        }
        Ok(())
    }

    /// Drops `room` and its unacked chat.
    fn forget(&mut self, room: &RoomId) {
        if let Some(state) = self.rooms.remove(room) {
            for reply in state.waiting {
                let _ = reply.send(Err(RequestError::new(RequestErrorKind::Left)));
            }
        }
        for outgoing in self.outbox.take_room(room) {
            let _ = outgoing
                .reply
                .send(Err(RequestError::new(RequestErrorKind::Left)));
        }
    }

    /// Between connections: no room is joined, and leaves in flight are
    /// done (the connection that held the seat is gone).
    fn disconnected(&mut self) {
        for state in self.rooms.values_mut() {
            state.joined = false;
        }
        for reply in self.leaving.drain().flat_map(|(_, waiting)| waiting) {
            let _ = reply.send(Ok(()));
        }
    }

    /// Gives a chat message a fresh id and keeps it until it is answered;
    /// returns its frame.
    fn keep_chat(&mut self, room: RoomId, text: String, reply: Reply<Ack>) -> ClientFrame {
        self.sent += 1;
        let id = ClientMsgId(format!("{}-{}", self.id_prefix, self.sent));
        let frame = chat_frame(&room, &id, &text);
        let outgoing = Outgoing {
            text,
            reply,
            retry_at: None,
        };
        self.outbox.push(room, id, outgoing);
        frame
    }

    async fn emit(&self, event: Event) {
        // An application that dropped its `Events` wants none.
        let _ = self.events.send(event).await;
    }

    /// Answers every waiting request and says why the client stopped.
    async fn stop(mut self, stop: Stop) {
        let stopped = || RequestError::new(RequestErrorKind::Stopped);
        for state in std::mem::take(&mut self.rooms).into_values() {
            for reply in state.waiting {
                let _ = reply.send(Err(stopped()));
            }
        }
        for outgoing in self.outbox.drain() {
            let _ = outgoing.reply.send(Err(stopped()));
        }
        self.disconnected();
        self.emit(Event::Stopped(stop)).await;
        if let Some(closing) = self.closing.take() {
            let _ = closing.send(());
        }
    }
}

/// One attempt: a token, then a welcomed connection.
async fn connect(
    url: String,
    token: TokenSource,
    dialer: Dialer,
) -> Result<(Connection, Welcome), ConnectError> {
    let token = token
        .fetch()
        .await
        .map_err(|err| ConnectError::with_source(ConnectErrorKind::Token, err))?;
    Connection::connect_with(&url, &token, &dialer).await
}

/// How long a refused chat waits: `RETRY_DELAY` plus up to twice that
/// again, so that the clients refused together do not come back together.
fn retry_wait() -> Duration {
    let jitter = Backoff {
        base_delay: RETRY_DELAY * 2,
        max_delay: RETRY_DELAY * 2,
    };
    RETRY_DELAY + jitter.delay(0)
}

fn chat_frame(room: &RoomId, id: &ClientMsgId, text: &str) -> ClientFrame {
    ClientFrame::Chat {
        room: room.clone(),
        id: id.clone(),
        text: text.to_owned(),
    }
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The token being fetched, or never without one.
async fn fetched(fetching: &mut Option<TokenFuture>) -> Result<String, TokenError> {
    match fetching {
        Some(token) => token.await,
        None => std::future::pending().await,
    }
}
