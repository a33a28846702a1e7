//! A request parsed into one typed command, applied by the method for its
//! action.
//!
//! Every command ends with its [`Reply`]: sent at once, from the room
//! writer once the message is stored, or from the task that changes the
//! room or relays the signal; or, for a chat stored for a gateway that
//! takes the ack from the delivery, handed over to that delivery
//! ([`Reply::left_to_delivery`]).

use std::future::Future;
use std::sync::Arc;

use async_nats::Client;
use async_nats::service;
use schemas::client::{Member, SignalKind};
use schemas::code::ErrorCode;
use schemas::event::{self, Action, ModerationRequest, RoomMember, Verdict};
use schemas::id::{ClientMsgId, ConnId, GatewayId, JoinId, ModeratorId, RoomId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::ModeratorMetrics;
use crate::rate_limit::{CandidateBudget, RateLimiter};
use crate::relay::{self, Signal};
use crate::reply::Reply;
use crate::room_writer::Accepted;
use crate::roster::Roster;
use crate::rules::{Rules, Violation};
use crate::sanitize;
use crate::writers::{Busy, Job, Writers};

/// A chat message to check and store.
#[derive(Debug)]
pub struct Chat {
    /// The sender.
    pub from: Member,
    /// The room.
    pub room: RoomId,
    /// The client's id for the message.
    pub id: ClientMsgId,
    /// The text as the client sent it.
    pub text: String,
    /// Answer only if it is not stored now (see [`Action::Chat`]).
    pub acked_by_delivery: bool,
}

/// One moderation request, parsed.
#[derive(Debug)]
pub enum Command {
    /// Store a chat message in a room.
    Chat(Chat),
    /// Admit a member to a room.
    Join {
        /// The room.
        room: RoomId,
        /// The member and its gateway.
        member: RoomMember,
        /// This join attempt.
        attempt: JoinId,
        /// The same user's previous connection, whose seat this one takes.
        replaces: Option<ConnId>,
    },
    /// Remove a connection from a room.
    Leave {
        /// The room.
        room: RoomId,
        /// The connection.
        conn: ConnId,
        /// Its last join attempt there, cancelled if not applied yet.
        attempt: Option<JoinId>,
    },
    /// Remove a dead gateway's members from a room.
    Reap {
        /// The room.
        room: RoomId,
        /// The gateway believed dead.
        gateway: GatewayId,
    },
    /// Relay a WebRTC signal to another member.
    Signal {
        /// The sender.
        from: Member,
        /// The signal.
        signal: Signal,
    },
}

impl Command {
    /// The action's name, as the `action` label of the request metric.
    pub fn action(&self) -> &'static str {
        match self {
            Command::Chat(_) => "chat",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Reap { .. } => "reap",
            Command::Signal { .. } => "signal",
        }
    }
}

impl From<ModerationRequest> for Command {
    fn from(request: ModerationRequest) -> Self {
        let ModerationRequest {
            from,
            gateway,
            action,
        } = request;
        match action {
            Action::Chat {
                room,
                id,
                text,
                acked_by_delivery,
            } => Command::Chat(Chat {
                from,
                room,
                id,
                text,
                acked_by_delivery,
            }),
            Action::Join {
                room,
                attempt,
                replaces,
            } => Command::Join {
                room,
                member: RoomMember {
                    member: from,
                    gateway,
                },
                attempt,
                replaces,
            },
            Action::Leave { room, attempt } => Command::Leave {
                room,
                conn: from.conn_id,
                attempt,
            },
            Action::Reap { room, gateway } => Command::Reap { room, gateway },
            Action::Signal {
                room,
                to,
                signal,
                data,
            } => Command::Signal {
                from,
                signal: Signal {
                    room,
                    to,
                    kind: signal,
                    data,
                },
            },
        }
    }
}

/// The moderator's state: checks, budgets, room writers and the roster.
pub(crate) struct Moderator {
    pub(crate) id: ModeratorId,
    pub(crate) client: Client,
    pub(crate) rules: Rules,
    pub(crate) chat_limiter: RateLimiter,
    pub(crate) signal_limiter: RateLimiter,
    pub(crate) candidates: CandidateBudget,
    pub(crate) writers: Writers,
    pub(crate) roster: Arc<Roster>,
    /// Membership and signal requests under way.
    pub(crate) requests: JoinSet<()>,
    /// Bounds `requests`.
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) metrics: ModeratorMetrics,
}

impl Moderator {
    /// Parses one request and applies it. Checks run here, in arrival
    /// order, so rate limits and budgets see a connection's events in the
    /// order it sent them.
    pub(crate) async fn handle(&mut self, msg: service::Request) {
        let request: ModerationRequest = match event::decode(&msg.message.payload) {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(cause = %err, "dropping malformed moderation request");
                return;
            }
        };
        // A gateway that sends requests is alive, heartbeat or not.
        self.roster.heard(request.gateway.clone());
        let reply = Reply::new(msg, self.id.clone(), self.metrics.clone());
        let command = Command::from(request);
        self.metrics.request(command.action());
        self.apply(command, reply).await;
    }

    /// Runs the method for the command's action.
    pub(crate) async fn apply(&mut self, command: Command, reply: Reply) {
        match command {
            Command::Chat(chat) => self.chat(chat, reply).await,
            Command::Join {
                room,
                member,
                attempt,
                replaces,
            } => self.join(room, member, attempt, replaces, reply).await,
            Command::Leave {
                room,
                conn,
                attempt,
            } => self.leave(room, conn, attempt, reply).await,
            Command::Reap { room, gateway } => self.reap(room, gateway, reply).await,
            Command::Signal { from, signal } => self.signal(from, signal, reply).await,
        }
    }

    /// Checks, sanitizes and queues a chat message for its room's writer,
    /// which answers once the message is stored (or leaves the answer to
    /// the delivery, see [`Action::Chat`]).
    async fn chat(&mut self, chat: Chat, reply: Reply) {
        let Chat {
            from,
            room,
            id,
            text,
            acked_by_delivery,
        } = chat;
        if !self.chat_limiter.try_acquire(&from.conn_id, Instant::now()) {
            let violation =
                Violation::new(ErrorCode::RateLimited, "too many chat messages; slow down");
            return reply.send(violation.into()).await;
        }
        if let Err(violation) = self.rules.check_chat(&room, &id, &text) {
            return reply.send(violation.into()).await;
        }
        let clean = sanitize::plain_text(&text);
        if schemas::text::is_blank(&clean) {
            let violation = Violation::new(
                ErrorCode::InvalidMessage,
                "chat text is empty after removing markup and invisible characters",
            );
            return reply.send(violation.into()).await;
        }
        let job = Job {
            sanitized: clean != text,
            acked_by_delivery,
            accepted: Accepted {
                from,
                id,
                text: clean,
                ts: schemas::time::now_ms(),
            },
            reply,
        };
        if let Err(Busy(job)) = self.writers.dispatch(room, job) {
            job.reply.send(Verdict::unavailable("room is busy")).await;
        }
    }

    /// Admits a member if the room name is allowed and the room has space.
    async fn join(
        &mut self,
        room: RoomId,
        member: RoomMember,
        attempt: JoinId,
        replaces: Option<ConnId>,
        reply: Reply,
    ) {
        if let Err(violation) = self.rules.check_room(&room) {
            return reply.send(violation.into()).await;
        }
        let roster = self.roster.clone();
        self.spawn(reply, roster.join(room, member, attempt, replaces))
            .await;
    }

    /// Removes a connection from a room; its candidate budget there ends.
    async fn leave(&mut self, room: RoomId, conn: ConnId, attempt: Option<JoinId>, reply: Reply) {
        self.candidates.clear(&conn, &room);
        let roster = self.roster.clone();
        self.spawn(reply, roster.leave(room, conn, attempt)).await;
    }

    /// Removes a dead gateway's members, if this moderator agrees it is dead.
    async fn reap(&mut self, room: RoomId, gateway: GatewayId, reply: Reply) {
        let roster = self.roster.clone();
        self.spawn(reply, roster.reap(room, gateway)).await;
    }

    /// Checks a signal against the rate limit, its shape and the candidate
    /// budget, then relays it if both peers are in the room.
    async fn signal(&mut self, from: Member, signal: Signal, reply: Reply) {
        if let Err(violation) = self.admit_signal(&from.conn_id, &signal) {
            return reply.send(violation.into()).await;
        }
        let roster = self.roster.clone();
        self.spawn(
            reply,
            async move { relay::relay(&roster, from, signal).await },
        )
        .await;
    }

    fn admit_signal(&mut self, conn: &ConnId, signal: &Signal) -> Result<(), Violation> {
        let Signal {
            room,
            to,
            kind,
            data,
        } = signal;
        let kind = *kind;
        if !self.signal_limiter.try_acquire(conn, Instant::now()) {
            return Err(Violation::new(
                ErrorCode::RateLimited,
                "too many signals; slow down",
            ));
        }
        self.rules.check_room(room)?;
        if to == conn {
            return Err(Violation::new(
                ErrorCode::InvalidMessage,
                "a signal cannot be sent to yourself",
            ));
        }
        self.rules.check_signal(kind, data)?;
        if kind == SignalKind::Candidate && !self.candidates.try_take(conn, room) {
            return Err(Violation::new(
                ErrorCode::RateLimited,
                "too many ICE candidates in this room",
            ));
        }
        Ok(())
    }

    /// Runs a membership or signal request as its own task, which answers
    /// when done. Waits for a permit first, so a burst queues in NATS rather
    /// than in memory.
    async fn spawn(&mut self, reply: Reply, work: impl Future<Output = Verdict> + Send + 'static) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.requests.spawn(async move {
            reply.send(work.await).await;
            drop(permit);
        });
    }

    /// Waits for the requests under way, then lets every room writer store
    /// what it accepted.
    pub(crate) async fn finish(mut self) {
        while self.requests.join_next().await.is_some() {}
        self.writers.finish().await;
    }
}

impl From<Violation> for Verdict {
    fn from(violation: Violation) -> Self {
        Verdict::Rejected {
            code: violation.code,
            message: violation.message,
        }
    }
}
