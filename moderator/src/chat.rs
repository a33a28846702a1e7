//! Handing accepted chat to per-room writer tasks, which store it in order.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::Client;
use schemas::code::ErrorCode;
use schemas::event::Verdict;
use schemas::id::{ModeratorId, RoomId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::reply;
use crate::room_writer::{Accepted, RoomWriter};
use crate::rules::Violation;

/// A chat message waiting for its room's writer.
#[derive(Debug)]
pub struct Job {
    /// The message.
    pub accepted: Accepted,
    /// Where the verdict goes.
    pub reply: Option<async_nats::Subject>,
}

/// One writer task per room with pending chat; each exits when idle.
pub struct Writers {
    js: async_nats::jetstream::Context,
    client: Client,
    moderator: ModeratorId,
    queue_capacity: usize,
    idle_timeout: Duration,
    senders: HashMap<RoomId, mpsc::Sender<Job>>,
    tasks: JoinSet<RoomId>,
}

impl Writers {
    /// No writers yet.
    pub fn new(
        client: Client,
        moderator: ModeratorId,
        queue_capacity: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            js: async_nats::jetstream::new(client.clone()),
            client,
            moderator,
            queue_capacity: queue_capacity.max(1),
            idle_timeout,
            senders: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Hands a job to its room's writer, starting one if needed.
    pub fn dispatch(&mut self, room: RoomId, job: Job) -> Result<(), Violation> {
        let job = match self.senders.get(&room) {
            Some(tx) => match tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Violation {
                        code: ErrorCode::Unavailable,
                        message: "room is busy; retry".into(),
                    });
                }
                // The writer went idle and closed; start a new one.
                Err(mpsc::error::TrySendError::Closed(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        tx.try_send(job)
            .expect("a fresh channel with capacity >= 1 has room for one job");
        let writer = RoomWriter::new(self.js.clone(), self.client.clone(), room.clone());
        let (client, id, idle) = (
            self.client.clone(),
            self.moderator.clone(),
            self.idle_timeout,
        );
        self.tasks
            .spawn(write_room(writer, rx, client, id, idle, room.clone()));
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

/// A room writer's task: stores jobs in order until idle for `idle`.
async fn write_room(
    mut writer: RoomWriter,
    mut jobs: mpsc::Receiver<Job>,
    client: Client,
    moderator: ModeratorId,
    idle: Duration,
    room: RoomId,
) -> RoomId {
    loop {
        let job = match tokio::time::timeout(idle, jobs.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(_) => {
                // Close first, then drain: a job sent before the close is
                // still stored, one sent after it is re-dispatched to a new writer.
                jobs.close();
                while let Ok(job) = jobs.try_recv() {
                    store(&mut writer, job, &client, &moderator).await;
                }
                break;
            }
        };
        store(&mut writer, job, &client, &moderator).await;
    }
    room
}

async fn store(writer: &mut RoomWriter, job: Job, client: &Client, moderator: &ModeratorId) {
    let verdict = match writer.store(job.accepted).await {
        Ok(seq) => Verdict::Stored { seq },
        Err(err) => {
            tracing::warn!(cause = %err, "chat not stored");
            Verdict::Rejected {
                code: ErrorCode::Unavailable,
                message: "message could not be stored; retry".into(),
            }
        }
    };
    reply(client, moderator, job.reply, verdict).await;
}
