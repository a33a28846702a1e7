//! The checks an event must pass before anything is stored or delivered.

use regex::Regex;
use schemas::client::SignalKind;
use schemas::code::ErrorCode;
use schemas::id::{ClientMsgId, RoomId};

use crate::config::ModeratorConfig;

/// The room-name rule failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid room_name_pattern: {0}")]
pub struct RuleError(#[from] regex::Error);

/// Static checks on room names, chat messages and signals.
#[derive(Clone, Debug)]
pub struct Rules {
    room_name: Regex,
    max_chat_bytes: usize,
    max_signal_bytes: usize,
}

/// A failed check, as the client will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The client-facing code.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
}

impl Violation {
    /// A violation with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Rules {
    /// Builds the rules from config.
    pub fn new(config: &ModeratorConfig) -> Result<Self, RuleError> {
        Ok(Self {
            room_name: Regex::new(&config.room_name_pattern)?,
            max_chat_bytes: config.max_chat_bytes,
            max_signal_bytes: config.max_signal_bytes,
        })
    }

    /// Whether `room` is an acceptable room name.
    pub fn check_room(&self, room: &RoomId) -> Result<(), Violation> {
        if room.is_subject_safe() && self.room_name.is_match(room.as_str()) {
            Ok(())
        } else {
            Err(Violation::new(
                ErrorCode::InvalidRoom,
                "room name is not allowed",
            ))
        }
    }

    /// Whether a chat message may be stored, before sanitizing.
    pub fn check_chat(&self, room: &RoomId, id: &ClientMsgId, text: &str) -> Result<(), Violation> {
        if !id.is_valid() {
            return Err(Violation::new(
                ErrorCode::InvalidMessage,
                "id must be 1 to 64 printable characters without spaces",
            ));
        }
        self.check_room(room)?;
        if text.len() > self.max_chat_bytes {
            return Err(Violation::new(
                ErrorCode::TooLarge,
                format!("chat text is over {} bytes", self.max_chat_bytes),
            ));
        }
        Ok(())
    }
}

impl Rules {
    /// Whether a signal's payload is acceptable: a JSON object within the
    /// size limit, holding what its kind needs (`sdp` for offers and
    /// answers, `candidate` for candidates).
    pub fn check_signal(
        &self,
        kind: SignalKind,
        data: &serde_json::Value,
    ) -> Result<(), Violation> {
        let size = serde_json::to_vec(data)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.max_signal_bytes {
            return Err(Violation::new(
                ErrorCode::TooLarge,
                format!("signal data is over {} bytes", self.max_signal_bytes),
            ));
        }
        let Some(object) = data.as_object() else {
            return Err(Violation::new(
                ErrorCode::InvalidMessage,
                "signal data must be a JSON object",
            ));
        };
        let well_formed = match kind {
            SignalKind::Offer | SignalKind::Answer => {
                object.get("sdp").is_some_and(|sdp| sdp.is_string())
            }
            // A null candidate marks the end of candidates.
            SignalKind::Candidate => object
                .get("candidate")
                .is_some_and(|c| c.is_string() || c.is_null()),
            SignalKind::Bye => true,
            SignalKind::Media => ["audio", "video"]
                .iter()
                .all(|key| object.get(*key).is_some_and(|v| v.is_boolean())),
        };
        if well_formed {
            Ok(())
        } else {
            Err(Violation::new(
                ErrorCode::InvalidMessage,
                "offer and answer need a string sdp, candidate needs candidate, media needs boolean audio and video",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(&ModeratorConfig::default()).unwrap()
    }

    #[test]
    fn room_names() {
        const CASES: &[(&str, bool)] = &[
            ("lobby", true),
            ("Room_1-a", true),
            ("", false),
            ("has space", false),
            ("dot.ted", false),
            ("wild*", false),
            ("<script>", false),
            ("ünïcode", false),
        ];
        for (name, ok) in CASES {
            assert_eq!(
                rules().check_room(&RoomId::from(*name)).is_ok(),
                *ok,
                "room {name:?}"
            );
        }
        assert!(rules().check_room(&RoomId("a".repeat(64))).is_ok());
        assert!(rules().check_room(&RoomId("a".repeat(65))).is_err());
    }

    #[test]
    fn a_permissive_pattern_still_cannot_address_other_subjects() {
        let rules = Rules::new(&ModeratorConfig {
            room_name_pattern: ".*".into(),
            ..ModeratorConfig::default()
        })
        .unwrap();
        assert!(rules.check_room(&"a.b".into()).is_err());
        assert!(rules.check_room(&">".into()).is_err());
    }

    #[test]
    fn signal_payloads() {
        use serde_json::json;
        let max = ModeratorConfig::default().max_signal_bytes;
        let cases = [
            (
                SignalKind::Offer,
                json!({"type": "offer", "sdp": "v=0"}),
                None,
            ),
            (SignalKind::Answer, json!({"sdp": "v=0"}), None),
            (
                SignalKind::Candidate,
                json!({"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0"}),
                None,
            ),
            (SignalKind::Candidate, json!({"candidate": null}), None),
            (SignalKind::Bye, json!({}), None),
            (
                SignalKind::Media,
                json!({"audio": false, "video": true}),
                None,
            ),
            (
                SignalKind::Media,
                json!({"audio": "off", "video": true}),
                Some(ErrorCode::InvalidMessage),
            ),
            (
                SignalKind::Media,
                json!({"audio": false}),
                Some(ErrorCode::InvalidMessage),
            ),
            (
                SignalKind::Offer,
                json!({"sdp": 42}),
                Some(ErrorCode::InvalidMessage),
            ),
            (
                SignalKind::Offer,
                json!({}),
                Some(ErrorCode::InvalidMessage),
            ),
            (
                SignalKind::Candidate,
                json!({"sdp": "x"}),
                Some(ErrorCode::InvalidMessage),
            ),
            (
                SignalKind::Bye,
                json!("not an object"),
                Some(ErrorCode::InvalidMessage),
            ),
            (
                SignalKind::Offer,
                json!({"sdp": "x".repeat(max)}),
                Some(ErrorCode::TooLarge),
            ),
            (
                SignalKind::Offer,
                json!({"sdp": "x".repeat(max - 20)}),
                None,
            ),
        ];
        for (kind, data, expected) in cases {
            let got = rules().check_signal(kind, &data).err().map(|v| v.code);
            assert_eq!(
                got,
                expected,
                "{kind:?} {}",
                &data.to_string()[..data.to_string().len().min(60)]
            );
        }
    }

    #[test]
    fn chat_size_and_id() {
        let room = RoomId::from("lobby");
        let max = ModeratorConfig::default().max_chat_bytes;
        let cases: &[(&str, String, Option<ErrorCode>)] = &[
            ("m1", "hi".into(), None),
            ("m1", "x".repeat(max), None),
            ("m1", "x".repeat(max + 1), Some(ErrorCode::TooLarge)),
            ("", "hi".into(), Some(ErrorCode::InvalidMessage)),
            ("a b", "hi".into(), Some(ErrorCode::InvalidMessage)),
        ];
        for (id, text, expected) in cases {
            let got = rules()
                .check_chat(&room, &ClientMsgId::from(*id), text)
                .err()
                .map(|v| v.code);
            assert_eq!(got, *expected, "id {id:?}, {} bytes", text.len());
        }
    }
}
