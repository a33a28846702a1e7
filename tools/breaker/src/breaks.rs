//! The breaks, as changes to the frames a gateway sends its clients.
//!
//! Each is what a broken gateway or moderator could do, and what the load
//! verdict (`loadgen fanout`) must fail on. Counts run over all of a
//! breaker's connections, so a short run meets each break several times.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

/// One way to break the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Break {
    /// Nothing: the control run, which must pass.
    None,
    /// Every ack loses its `seq`, as if nothing were stored under one.
    AckWithoutSeq,
    /// Every 10th ack is replaced by a copy of the connection's previous
    /// ack: one message acked twice, another never.
    RepeatedAck,
    /// Every 50th chat delivery says it is from another room.
    WrongRoom,
    /// Every 50th chat delivery is dropped.
    DroppedDelivery,
    /// Every 50th chat delivery is sent twice.
    DoubledDelivery,
    /// Every 50th chat delivery is held back and sent after the next one
    /// of its connection.
    ReorderedDelivery,
}

/// How often the counted breaks strike.
const EVERY_NTH_ACK: u64 = 10;
const EVERY_NTH_DELIVERY: u64 = 50;

/// A break, and its counts over every connection.
#[derive(Debug)]
pub struct Breaker {
    what: Break,
    acks: AtomicU64,
    deliveries: AtomicU64,
}

impl Breaker {
    pub fn new(what: Break) -> Self {
        Self {
            what,
            acks: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
        }
    }

    /// The state of one more connection.
    pub fn connection(&self) -> Connection<'_> {
        Connection {
            breaker: self,
            last_ack: None,
            held: None,
        }
    }

    /// Whether this is the one in `n` of `counter` the break strikes.
    fn strikes(counter: &AtomicU64, n: u64) -> bool {
        counter.fetch_add(1, Ordering::Relaxed) % n == n - 1
    }
}

/// What one connection's break remembers.
#[derive(Debug)]
pub struct Connection<'a> {
    breaker: &'a Breaker,
    /// The previous ack, to repeat.
    last_ack: Option<String>,
    /// A delivery held back, to send after the next.
    held: Option<String>,
}

impl Connection<'_> {
    /// What the client gets for the gateway's text frame `text`: the
    /// frame, changed, doubled, held back or dropped.
    pub fn pass(&mut self, text: &str) -> Vec<String> {
        let Ok(mut frame) = serde_json::from_str::<Value>(text) else {
            return vec![text.to_owned()];
        };
        let breaker = self.breaker;
        match frame["type"].as_str() {
            Some("ack") => match breaker.what {
                Break::AckWithoutSeq => {
                    if let Some(fields) = frame.as_object_mut() {
                        fields.remove("seq");
                    }
                    vec![frame.to_string()]
                }
                Break::RepeatedAck => {
                    let repeat = Breaker::strikes(&breaker.acks, EVERY_NTH_ACK)
                        .then(|| self.last_ack.clone())
                        .flatten();
                    self.last_ack = Some(text.to_owned());
                    vec![repeat.unwrap_or_else(|| text.to_owned())]
                }
                _ => vec![text.to_owned()],
            },
            Some("chat") => {
                let strikes = || Breaker::strikes(&breaker.deliveries, EVERY_NTH_DELIVERY);
                match breaker.what {
                    Break::WrongRoom if strikes() => {
                        frame["room"] = Value::from("a-room-nobody-joined");
                        vec![frame.to_string()]
                    }
                    Break::DroppedDelivery if strikes() => Vec::new(),
                    Break::DoubledDelivery if strikes() => vec![text.to_owned(), text.to_owned()],
                    Break::ReorderedDelivery => match self.held.take() {
                        Some(held) => vec![text.to_owned(), held],
                        None if strikes() => {
                            self.held = Some(text.to_owned());
                            Vec::new()
                        }
                        None => vec![text.to_owned()],
                    },
                    _ => vec![text.to_owned()],
                }
            }
            _ => vec![text.to_owned()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: u64) -> String {
        format!(r#"{{"type":"ack","id":"m{id}","room":"r","seq":{id}}}"#)
    }

    fn chat(seq: u64) -> String {
        format!(r#"{{"type":"chat","room":"r","seq":{seq},"id":"m{seq}"}}"#)
    }

    /// Passes `frames` through a fresh breaker's one connection.
    fn run(what: Break, frames: impl IntoIterator<Item = String>) -> Vec<Value> {
        let breaker = Breaker::new(what);
        let mut connection = breaker.connection();
        frames
            .into_iter()
            .flat_map(|frame| connection.pass(&frame))
            .map(|frame| serde_json::from_str(&frame).unwrap())
            .collect()
    }

    #[test]
    fn none_changes_nothing() {
        let frames: Vec<String> = (1..=100).map(chat).chain((1..=20).map(ack)).collect();
        let expected: Vec<Value> = frames
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        assert_eq!(run(Break::None, frames), expected);
    }

    #[test]
    fn acks_lose_their_seq() {
        let out = run(Break::AckWithoutSeq, (1..=3).map(ack));
        assert!(
            out.iter()
                .all(|a| a.get("seq").is_none() && a["id"].is_string())
        );
    }

    #[test]
    fn every_tenth_ack_repeats_the_one_before() {
        let out = run(Break::RepeatedAck, (1..=20).map(ack));
        let ids: Vec<&str> = out.iter().map(|a| a["id"].as_str().unwrap()).collect();
        assert_eq!(ids[8..11], ["m9", "m9", "m11"]);
        assert_eq!(ids[18..20], ["m19", "m19"]);
    }

    #[test]
    fn deliveries_are_renamed_dropped_doubled_or_reordered() {
        let seqs = |what| -> Vec<u64> {
            run(what, (1..=100).map(chat))
                .iter()
                .map(|c| c["seq"].as_u64().unwrap())
                .collect()
        };
        let wrong = run(Break::WrongRoom, (1..=100).map(chat));
        let renamed: Vec<u64> = wrong
            .iter()
            .filter(|c| c["room"] != "r")
            .map(|c| c["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(renamed, [50, 100]);

        let dropped = seqs(Break::DroppedDelivery);
        assert_eq!(dropped.len(), 98);
        assert!(!dropped.contains(&50) && !dropped.contains(&100));

        let doubled = seqs(Break::DoubledDelivery);
        assert_eq!(doubled.len(), 102);
        assert_eq!(doubled[49..51], [50, 50]);

        let reordered = seqs(Break::ReorderedDelivery);
        assert_eq!(reordered[48..52], [49, 51, 50, 52]);
    }
}
