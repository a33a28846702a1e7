//! One writer task per room with chat waiting to be stored, so rooms are
//! stored in parallel while each room's messages keep their order.
//!
//! A writer stores only the chat of the room's members by the rooms bucket,
//! the authority on membership: a gateway's own view can be wrong (one
//! that was paused may not know its members were removed), and moderation
//! must hold whatever a gateway believes. One read of the room's members
//! serves every message the writer takes at once, so under load the check
//! costs a read per batch, not per message.

use std::collections::HashMap;
use std::time::Duration;

use schemas::code::ErrorCode;
use schemas::event::Verdict;
use schemas::id::{ConnId, RoomId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::membership::Membership;
use crate::metrics::ModeratorMetrics;
use crate::reply::Reply;
use crate::room_writer::{Accepted, RoomWriter, Stored};

/// A chat message waiting for its room's writer.
#[derive(Debug)]
pub struct Job {
    /// The message.
    pub accepted: Accepted,
    /// Whether sanitizing changed the text; the ack then carries the stored
    /// text, so the sender shows what everyone else sees.
    pub sanitized: bool,
    /// Whether the gateway takes the ack from the delivery, so that only a
    /// message not stored now is answered (see `Action::Chat`).
    pub acked_by_delivery: bool,
    /// Where the verdict goes.
    pub reply: Reply,
}

/// The room's queue is full; the job comes back so it can still be answered
/// (boxed: this is the rare path, and a `Result` is as large as its error).
#[derive(Debug)]
pub struct Busy(pub Box<Job>);

/// The running room writers.
pub struct Writers {
    js: async_nats::jetstream::Context,
    membership: Membership,
    queue_capacity: usize,
    idle_timeout: Duration,
    senders: HashMap<RoomId, mpsc::Sender<Job>>,
    tasks: JoinSet<RoomId>,
    metrics: ModeratorMetrics,
}

impl Writers {
    /// No writers yet. Each room's queue holds `queue_capacity` jobs; a
    /// writer exits after `idle_timeout` without any.
    pub fn new(
        js: async_nats::jetstream::Context,
        membership: Membership,
        queue_capacity: usize,
        idle_timeout: Duration,
        metrics: ModeratorMetrics,
    ) -> Self {
        Self {
            js,
            membership,
            metrics,
            queue_capacity: queue_capacity.max(1),
            idle_timeout,
            senders: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Hands a job to its room's writer, starting one if needed. A full
    /// queue gives the job back: the moderator never waits for a room.
    pub fn dispatch(&mut self, room: RoomId, job: Job) -> Result<(), Busy> {
        let job = match self.senders.get(&room) {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(job)) => return Err(Busy(Box::new(job))),
                // The writer went idle and closed; start a new one.
                Err(mpsc::error::TrySendError::Closed(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        tx.try_send(job)
            .expect("a fresh channel with capacity >= 1 has room for one job");
        let writer = RoomWriter::new(self.js.clone(), room.clone(), self.metrics.clone());
        let membership = self.membership.clone();
        self.tasks.spawn(write_room(
            writer,
            membership,
            rx,
            self.idle_timeout,
            room.clone(),
        ));
        self.senders.insert(room, tx);
        Ok(())
    }

    /// Waits for a writer to exit and forgets it; pending forever when none runs.
    pub async fn reap(&mut self) {
        match self.tasks.join_next().await {
            Some(Ok(room)) => {
                if self.senders.get(&room).is_some_and(|tx| tx.is_closed()) {
                    self.senders.remove(&room);
                }
            }
            Some(Err(err)) => tracing::error!(cause = %err, "room writer failed"),
            None => std::future::pending().await,
        }
    }

    /// Lets every writer store what it has, then waits for them.
    pub async fn finish(mut self) {
        self.senders.clear();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A room writer's task: stores jobs in order, as many as are waiting at
/// once, until idle for `idle`.
async fn write_room(
    mut writer: RoomWriter,
    membership: Membership,
    mut jobs: mpsc::Receiver<Job>,
    idle: Duration,
    room: RoomId,
) -> RoomId {
    let mut batch = Vec::new();
    loop {
        match tokio::time::timeout(idle, jobs.recv()).await {
            Ok(Some(job)) => batch.push(job),
            Ok(None) => break,
            Err(_) => {
                // Close first, then drain: a job sent before the close is
                // still stored, one sent after it is re-dispatched to a new writer.
                jobs.close();
                while let Ok(job) = jobs.try_recv() {
                    batch.push(job);
                }
                store_members(&mut writer, &membership, &room, &mut batch).await;
                break;
            }
        }
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        store_members(&mut writer, &membership, &room, &mut batch).await;
    }
    room
}

/// Stores the jobs of `batch` whose senders are members of `room`, in
/// order, and refuses the others with `not_in_room`; empties `batch`.
async fn store_members(
    writer: &mut RoomWriter,
    membership: &Membership,
    room: &RoomId,
    batch: &mut Vec<Job>,
) {
    if batch.is_empty() {
        return;
    }
    let senders: Vec<ConnId> = batch
        .iter()
        .map(|job| job.accepted.from.conn_id.clone())
        .collect();
    let members = match membership.members_expecting(room, &senders).await {
        Ok(members) => members,
        Err(err) => {
            let verdict = crate::roster::failed(room, err);
            for job in batch.drain(..) {
                job.reply.send(verdict.clone()).await;
            }
            return;
        }
    };
    for job in batch.drain(..) {
        let from = &job.accepted.from.conn_id;
        if members.iter().any(|m| m.member.conn_id == *from) {
            store(writer, job).await;
        } else {
            tracing::info!(%room, conn_id = %from, "chat from a connection that is not a member");
            let refusal = Verdict::Rejected {
                code: ErrorCode::NotInRoom,
                message: "join the room first".into(),
            };
            job.reply.send(refusal).await;
        }
    }
}

async fn store(writer: &mut RoomWriter, job: Job) {
    let text = job.sanitized.then(|| job.accepted.text.clone());
    let verdict = match writer.store(job.accepted).await {
        Ok(Stored::New(_)) if job.acked_by_delivery => return job.reply.left_to_delivery(),
        Ok(Stored::New(seq)) => Verdict::Stored {
            seq: Some(seq),
            text,
        },
        // A resend: JetStream kept the original, and delivers nothing.
        Ok(Stored::Duplicate(seq)) => Verdict::Stored { seq, text },
        Err(err) => {
            tracing::warn!(cause = %err, "chat not stored");
            Verdict::unavailable("message could not be stored")
        }
    };
    job.reply.send(verdict).await;
}
