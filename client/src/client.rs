//! A client that stays connected: failover between gateways, fresh tokens,
//! rooms resumed with `since`, chat resent until acked.
//!
//! [`Client`] is a cheap handle to one task (the session) that owns the
//! connection, as an async-nats `Client` is; [`Events`] is what that task
//! hears.

use schemas::client::{ClientFrame, SignalKind};
use schemas::id::{ConnId, RoomId};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ConnectError, ConnectErrorKind, RequestError, RequestErrorKind};
use crate::event::{Ack, EVENTS_CAPACITY, Events, Joined};
use crate::options::Options;
use crate::session::{Command, Dial, Halt, Session};

/// Requests a [`Client`] may queue for its task before a caller waits:
/// bounded, so a caller faster than the socket slows down instead of
/// filling memory.
const COMMANDS_CAPACITY: usize = 64;

/// A handle to a connected client; clones share the connection.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use cavlo_client::{Client, Event, Options};
///
/// let options = Options::new(
///     ["ws://127.0.0.1:8080/ws", "ws://127.0.0.1:8081/ws"],
///     "eyJhbGciOiJIUzI1NiJ9...",
/// );
/// let (client, mut events) = Client::connect(options).await?;
/// let joined = client.join("lobby").await?;
/// println!("{} members", joined.members.len());
/// let ack = client.send_chat("lobby", "hello").await?;
/// println!("stored as {:?}", ack.seq);
/// while let Some(event) = events.next().await {
///     if let Event::Chat(chat) = event {
///         println!("{}: {}", chat.from.user.name, chat.text);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
}

impl Client {
    /// Connects to the first gateway that welcomes the token, trying them in
    /// turn with backoff, and starts the task that keeps the connection.
    /// Fails when the token is refused for good or
    /// [`Options::max_attempts`](crate::Options::max_attempts) attempts failed.
    pub async fn connect(options: Options) -> Result<(Client, Events), ConnectError> {
        if options.urls.is_empty() {
            return Err(ConnectError::with_source(
                ConnectErrorKind::InvalidUrl,
                "no gateway URL",
            ));
        }
        let (commands, mut inbox) = mpsc::channel(COMMANDS_CAPACITY);
        let (events, receiver) = mpsc::channel(EVENTS_CAPACITY);
        let mut session = Session::new(options, events);
        // No command can arrive yet: the handle is not returned.
        let first = match session.dial(&mut inbox, Dial::First).await {
            Ok(first) => first,
            Err(Halt::Failed(err)) => return Err(err),
            Err(Halt::Stop(stop)) => {
                return Err(ConnectError::with_source(
                    ConnectErrorKind::Closed(None),
                    format!("{stop:?}"),
                ));
            }
        };
        // The task ends when the client is closed or every handle dropped
        // (the command channel closes), and on a terminal close code.
        tokio::spawn(session.run(first, inbox));
        Ok((Client { commands }, Events { receiver }))
    }

    /// Joins `room` and returns the answer, backlog included. After a
    /// reconnect the client joins it again by itself, from the last seq it
    /// delivered.
    pub async fn join(&self, room: impl Into<RoomId>) -> Result<Joined, RequestError> {
        let room = room.into();
        self.ask(|reply| Command::Join { room, reply }).await
    }

    /// Leaves `room`; its chat not yet acked is dropped (its
    /// [`Client::send_chat`](crate::Client::send_chat) fails with [`RequestErrorKind::Left`]).
    pub async fn leave(&self, room: impl Into<RoomId>) -> Result<(), RequestError> {
        let room = room.into();
        self.ask(|reply| Command::Leave { room, reply }).await
    }

    /// Sends a chat message with a fresh id and waits for its ack. Until
    /// then it is resent after every reconnect, and after 1–3 s when
    /// refused `unavailable` or `rate_limited`; any other refusal is the
    /// error.
    pub async fn send_chat(
        &self,
        room: impl Into<RoomId>,
        text: impl Into<String>,
    ) -> Result<Ack, RequestError> {
        let (room, text) = (room.into(), text.into());
        self.ask(|reply| Command::Chat { room, text, reply }).await
    }

    /// Sends a WebRTC signal to member `to` of `room`, once it is written to
    /// the socket. Signals are never stored or resent, so one sent between
    /// connections fails with [`RequestErrorKind::NotConnected`]; peers
    /// renegotiate after a reconnect. A refusal comes later as
    /// [`Event::Error`](crate::Event::Error).
    pub async fn signal(
        &self,
        room: impl Into<RoomId>,
        to: ConnId,
        kind: SignalKind,
        data: serde_json::Value,
    ) -> Result<(), RequestError> {
        let frame = ClientFrame::Signal {
            room: room.into(),
            to,
            kind,
            data,
            from: None,
            user: None,
        };
        self.ask(|reply| Command::Signal { frame, reply }).await
    }

    /// Joins `room`'s call through the media service with an SDP offer,
    /// once it is written to the socket; the answer comes as
    /// [`Event::CallAnswer`](crate::Event::CallAnswer), a refusal as
    /// [`Event::Error`](crate::Event::Error). Join again after
    /// [`Event::CallMoved`](crate::Event::CallMoved) and after a reconnect.
    pub async fn call_join(
        &self,
        room: impl Into<RoomId>,
        sdp: String,
    ) -> Result<(), RequestError> {
        let frame = ClientFrame::CallJoin {
            room: room.into(),
            sdp,
        };
        self.ask(|reply| Command::Signal { frame, reply }).await
    }

    /// Hangs up `room`'s call.
    pub async fn call_leave(&self, room: impl Into<RoomId>) -> Result<(), RequestError> {
        let frame = ClientFrame::CallLeave { room: room.into() };
        self.ask(|reply| Command::Signal { frame, reply }).await
    }

    /// Closes the connection and stops the client; returns once it has.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Command,
    ) -> Result<T, RequestError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || RequestError::new(RequestErrorKind::Stopped);
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
