//! A stored chat's ack comes from its own delivery.
//!
//! The chat stream republishes every message it stores to the room's
//! gateways, the sender's among them, so the sender's gateway learns the
//! seq from that delivery, and the moderator does not reply to a chat it
//! stored (`Action::Chat::acked_by_delivery`): one NATS message less each
//! way per chat. A moderator still replies to a chat it does not store now
//! (a rejection, a failure, a resend of a stored one), and an older
//! moderator always replies; whichever answer comes first is the ack. Both
//! come after JetStream stored the message, or never.
//!
//! A connection has at most one request under way, so it has one slot for
//! the chat it waits for, known by room and client id. Replies come to one
//! subscription per gateway (`schemas::subject::chat_reply`), naming the
//! connection and the attempt. async-nats's own requests are not used for
//! chat: each keeps its entry until a reply comes, and most chats now get
//! none. For the same reason moderators may publish to any inbox rather
//! than only answer requests (docker/nats/nats.conf): nats-server keeps an
//! entry per request until it is answered, and prunes them all on every
//! delivery once there are thousands.

use std::sync::{Arc, Mutex};

use async_nats::StatusCode;
use schemas::client::ChatMessage;
use schemas::event::{self, ModerationReply, Verdict};
use schemas::id::{ClientMsgId, RoomId, Seq};
use tokio::sync::oneshot;

/// How a waiting chat was answered.
#[derive(Debug)]
pub enum Answer {
    /// Its delivery arrived: it is stored under `seq`, with `text`.
    Delivered {
        /// Its seq.
        seq: Seq,
        /// The stored text.
        text: String,
    },
    /// The moderator replied (or NATS did, for want of responders).
    Replied(async_nats::Message),
}

/// What one attempt at sending a chat came to.
#[derive(Debug)]
pub enum Settled {
    /// The moderator's verdict: `Stored` when the delivery came first.
    Answered(Verdict),
    /// The moderator the chat went to is gone: ask the group instead.
    Gone,
    /// Nobody listens: no moderator runs.
    NoResponders,
    /// No answer in time.
    TimedOut,
    /// The reply could not be decoded.
    Malformed(event::EventDecodeError),
}

/// Reads the answer to an attempt at sending `sent`, whichever of its three
/// routes it came by: its delivery (stored: the ack, with the stored text
/// when sanitizing changed it), the moderator's reply (a rejection, a
/// failure, a resend of a stored chat), or NATS's no-responders status
/// (the attempt went to one moderator, `targeted`, that is gone; with
/// none targeted, nobody listens). `None` is no answer in time.
pub fn settle(answer: Option<Answer>, sent: &str, targeted: bool) -> Settled {
    let reply = match answer {
        None => return Settled::TimedOut,
        Some(Answer::Delivered { seq, text }) => {
            return Settled::Answered(Verdict::Stored {
                seq: Some(seq),
                text: (text != sent).then_some(text),
            });
        }
        Some(Answer::Replied(reply)) => reply,
    };
    if reply.status == Some(StatusCode::NO_RESPONDERS) {
        return match targeted {
            true => Settled::Gone,
            false => Settled::NoResponders,
        };
    }
    match event::decode::<ModerationReply>(&reply.payload) {
        Ok(reply) => Settled::Answered(reply.verdict),
        Err(err) => Settled::Malformed(err),
    }
}

/// The chat one connection waits for, if any.
#[derive(Clone, Debug, Default)]
pub struct ChatSlot(Arc<Mutex<Slot>>);

#[derive(Debug, Default)]
struct Slot {
    awaited: Option<Awaited>,
    /// Waits so far: each gets the next number, which its reply names.
    attempts: u64,
}

/// A chat is known by its room and the client's id for it: client ids are
/// unique per user and room only (docs/protocol.md).
#[derive(Debug)]
struct Awaited {
    room: RoomId,
    id: ClientMsgId,
    attempt: u64,
    answer: oneshot::Sender<Answer>,
}

impl ChatSlot {
    /// Waits for the answer to the next attempt at sending chat `id` to
    /// `room`, replacing any earlier wait; the wait ends when the result
    /// is dropped.
    pub fn wait_for(&self, room: RoomId, id: ClientMsgId) -> Waiting<'_> {
        let (answer, rx) = oneshot::channel();
        let mut slot = self.lock();
        slot.attempts += 1;
        let attempt = slot.attempts;
        slot.awaited = Some(Awaited {
            room,
            id,
            attempt,
            answer,
        });
        drop(slot);
        Waiting {
            slot: self,
            attempt,
            answer: rx,
        }
    }

    /// `chat` was delivered: answers the wait for it, if this is one.
    pub fn delivered(&self, chat: &ChatMessage) {
        let slot = &mut self.lock().awaited;
        if slot
            .as_ref()
            .is_some_and(|awaited| awaited.id == chat.id && awaited.room == chat.room)
            && let Some(awaited) = slot.take()
        {
            let _ = awaited.answer.send(Answer::Delivered {
                seq: chat.seq,
                text: chat.text.clone(),
            });
        }
    }

    /// A reply for attempt `attempt` came: answers the wait, if it is for
    /// that attempt still.
    pub fn replied(&self, attempt: u64, reply: async_nats::Message) {
        let slot = &mut self.lock().awaited;
        if slot
            .as_ref()
            .is_some_and(|awaited| awaited.attempt == attempt)
            && let Some(awaited) = slot.take()
        {
            let _ = awaited.answer.send(Answer::Replied(reply));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0.lock().expect("chat slot lock poisoned")
    }
}

/// A connection waiting for one chat's answer; dropping it ends the wait.
#[derive(Debug)]
pub struct Waiting<'a> {
    slot: &'a ChatSlot,
    attempt: u64,
    /// Where the answer comes; closed if the wait was replaced.
    pub answer: oneshot::Receiver<Answer>,
}

impl Waiting<'_> {
    /// This wait's number, which names it in the reply subject.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let slot = &mut self.slot.lock().awaited;
        if slot
            .as_ref()
            .is_some_and(|awaited| awaited.attempt == self.attempt)
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use schemas::client::{Member, User};

    use super::*;

    fn chat(id: &str, seq: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq: Seq(seq),
            id: id.into(),
            from: Member {
                conn_id: "c1".into(),
                user: User {
                    id: "u1".into(),
                    name: "Ann".into(),
                },
            },
            text: "hi".into(),
            ts: 0,
        }
    }

    fn reply(subject: &str) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Default::default(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn the_delivery_of_the_awaited_chat_answers_it() {
        let slot = ChatSlot::default();
        let mut waiting = slot.wait_for("r".into(), "m2".into());
        slot.delivered(&chat("m1", 6));
        assert!(
            waiting.answer.try_recv().is_err(),
            "another chat's delivery"
        );
        slot.delivered(&chat("m2", 7));
        match waiting.answer.try_recv() {
            Ok(Answer::Delivered { seq, text }) => assert_eq!((seq, text.as_str()), (Seq(7), "hi")),
            other => panic!("expected the delivery, got {other:?}"),
        }
    }

    /// Client ids are unique per user and room only (docs/protocol.md): a
    /// late delivery of "m1" in one room must not answer "m1" in another.
    #[test]
    fn a_delivery_in_another_room_does_not_answer_the_same_id() {
        let slot = ChatSlot::default();
        let mut waiting = slot.wait_for("r".into(), "m1".into());
        let mut elsewhere = chat("m1", 9);
        elsewhere.room = "other".into();
        slot.delivered(&elsewhere);
        assert!(
            waiting.answer.try_recv().is_err(),
            "answered from another room"
        );
    }

    #[test]
    fn a_reply_to_an_earlier_attempt_is_not_taken_for_the_current_one() {
        let slot = ChatSlot::default();
        drop(slot.wait_for("r".into(), "m1".into()));
        let mut waiting = slot.wait_for("r".into(), "m1".into());
        slot.replied(1, reply("late"));
        assert!(waiting.answer.try_recv().is_err());
        slot.replied(2, reply("current"));
        assert!(
            matches!(waiting.answer.try_recv(), Ok(Answer::Replied(msg)) if msg.subject.as_str() == "current")
        );
    }

    fn replied(status: Option<StatusCode>, payload: Vec<u8>) -> Option<Answer> {
        let mut msg = reply("r");
        msg.status = status;
        msg.payload = payload.into();
        Some(Answer::Replied(msg))
    }

    #[test]
    fn every_route_of_an_answer_settles_the_chat() {
        let delivered = |text: &str| {
            Some(Answer::Delivered {
                seq: Seq(7),
                text: text.into(),
            })
        };
        let verdict = |verdict: Verdict| {
            event::encode(&ModerationReply {
                moderator: "m1".into(),
                verdict,
            })
        };
        let rejected = Verdict::Rejected {
            code: schemas::code::ErrorCode::RateLimited,
            message: "slow down".into(),
        };
        let no_responders = || replied(Some(StatusCode::NO_RESPONDERS), Vec::new());
        let cases: Vec<(&str, Option<Answer>, bool, &str)> = vec![
            (
                "delivered as sent",
                delivered("hi"),
                true,
                "Stored(7, None)",
            ),
            (
                "delivered sanitized",
                delivered("h"),
                false,
                "Stored(7, Some(\"h\"))",
            ),
            (
                "a rejection",
                replied(None, verdict(rejected)),
                true,
                "Rejected(rate_limited)",
            ),
            (
                "a stored resend",
                replied(
                    None,
                    verdict(Verdict::Stored {
                        seq: Some(Seq(3)),
                        text: None,
                    }),
                ),
                false,
                "Stored(3, None)",
            ),
            ("its moderator is gone", no_responders(), true, "Gone"),
            ("nobody listens", no_responders(), false, "NoResponders"),
            (
                "a garbled reply",
                replied(None, b"junk".to_vec()),
                true,
                "Malformed",
            ),
            ("no answer in time", None, true, "TimedOut"),
        ];
        for (case, answer, targeted, expected) in cases {
            let got = match settle(answer, "hi", targeted) {
                Settled::Answered(Verdict::Stored { seq, text }) => {
                    format!("Stored({}, {text:?})", seq.map_or(0, |s| s.0))
                }
                Settled::Answered(Verdict::Rejected { code, .. }) => format!("Rejected({code})"),
                Settled::Answered(other) => format!("{other:?}"),
                Settled::Gone => "Gone".into(),
                Settled::NoResponders => "NoResponders".into(),
                Settled::TimedOut => "TimedOut".into(),
                Settled::Malformed(_) => "Malformed".into(),
            };
            assert_eq!(got, expected, "{case}");
        }
    }

    #[test]
    fn a_wait_that_ends_leaves_the_slot_empty() {
        let slot = ChatSlot::default();
        drop(slot.wait_for("r".into(), "m1".into()));
        assert!(slot.lock().awaited.is_none());
        // An older wait's end does not clear a newer one.
        let older = slot.wait_for("r".into(), "m1".into());
        let _newer = slot.wait_for("r".into(), "m2".into());
        drop(older);
        assert_eq!(slot.lock().awaited.as_ref().map(|a| a.attempt), Some(3));
    }
}
