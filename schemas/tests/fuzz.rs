//! Property tests of every decoder that takes input from outside: client
//! frames (JSON text from any browser) and internal events (MessagePack from
//! NATS). Whatever comes in, decoding returns a value or a typed error and
//! never panics, and what decodes encodes back to something that decodes
//! the same.
//!
//! A corpus of known-nasty inputs runs every time. CI runs proptest's
//! default number of cases; the long run is
//! `PROPTEST_CASES=1000000 cargo test --release -p schemas --test fuzz`
//! (passed on 2026-11-26: a million cases per property in 45 s).

use proptest::prelude::*;
use schemas::client::{ClientFrame, Member, User};
use schemas::event::{
    self, Action, BacklogReply, BacklogRequest, Heartbeat, ModerationReply, ModerationRequest,
    ModeratorHeartbeat, PresenceChange, RoomState, SignalDelivery,
};
use schemas::id::Seq;
use schemas::text;
use serde_json::{Value, json};

/// Field names and frame types of the protocol, so generated objects reach
/// deep into the decoder instead of failing at the first unknown field.
const KEYS: &[&str] = &[
    "type", "token", "room", "since", "replaces", "id", "text", "to", "kind", "data", "from",
    "user",
];
const TYPES: &[&str] = &[
    "auth", "refresh", "join", "leave", "chat", "signal", "ping", "offer", "bye", "",
];

/// JSON values of every kind, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop::sample::select(TYPES).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(KEYS).prop_map(str::to_owned),
                inner,
                0..8
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Objects shaped like client frames: a known `type` and known fields with
/// any values.
fn frame_like() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES),
        prop::collection::btree_map(prop::sample::select(KEYS), json_value(), 0..6),
    )
        .prop_map(|(kind, fields)| {
            let mut object = serde_json::Map::new();
            for (key, value) in fields {
                object.insert(key.to_owned(), value);
            }
            object.insert("type".into(), json!(kind));
            Value::Object(object).to_string()
        })
}

/// What decodes, encodes back to a frame that decodes to the same encoding.
fn round_trips(frame: &ClientFrame) -> Result<(), TestCaseError> {
    let encoded = serde_json::to_string(frame).expect("client frames serialize");
    let again = ClientFrame::decode(&encoded);
    prop_assert!(again.is_ok(), "{encoded} does not decode: {again:?}");
    let reencoded = serde_json::to_string(&again.unwrap()).unwrap();
    prop_assert_eq!(reencoded, encoded);
    Ok(())
}

/// Client frames that break or strain JSON decoders elsewhere: deep
/// nesting, duplicate keys, numbers out of range, lone surrogates, a byte
/// order mark, NUL. Run every time, beside the generated cases.
fn client_corpus() -> Vec<String> {
    let mut corpus: Vec<String> = [
        "",
        "null",
        "[]",
        "{}",
        "\u{feff}{\"type\":\"ping\"}",
        "{\"type\":\"ping\",\"type\":\"auth\"}",
        "{\"type\":\"auth\",\"token\":\"\\ud800\"}",
        "{\"type\":\"join\",\"room\":\"a\",\"since\":-1}",
        "{\"type\":\"join\",\"room\":\"a\",\"since\":1e400}",
        "{\"type\":\"join\",\"room\":\"a\",\"since\":18446744073709551616}",
        "{\"type\":\"chat\",\"room\":\"a\",\"id\":\"\\u0000\",\"text\":\"x\"}",
        "{\"type\":\"signal\",\"room\":\"a\",\"to\":\"b\",\"kind\":\"offer\",\"data\":null}",
        "{\"type\":\"chat\"",
        "{\"type\":\"\\u0063hat\",\"room\":\"a\",\"id\":\"1\",\"text\":\"x\"}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    corpus.push("[".repeat(100_000));
    corpus.push(format!(
        "{{\"type\":\"signal\",\"data\":{}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    ));
    corpus
}

/// MessagePack that breaks or strains decoders: reserved byte 0xc1,
/// lengths far past the input, deep nesting, a truncated string.
fn event_corpus() -> Vec<Vec<u8>> {
    let mut corpus = vec![
        vec![],
        vec![0xc1],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        vec![0x81, 0xa4, b't', b'y', b'p', b'e'],
    ];
    corpus.push(vec![0x91; 100_000]);
    corpus
}

#[test]
fn the_corpus_decodes_or_is_refused() {
    for text in client_corpus() {
        if let Ok(frame) = ClientFrame::decode(&text) {
            round_trips(&frame).unwrap();
        }
    }
    for bytes in event_corpus() {
        let _ = event::decode::<ModerationRequest>(&bytes);
        let _ = event::decode::<BacklogReply>(&bytes);
        let _ = event::decode::<RoomState>(&bytes);
        let _ = event::decode::<SignalDelivery>(&bytes);
    }
}

proptest! {
    #[test]
    fn any_text_decodes_or_is_refused(text in any::<String>()) {
        if let Ok(frame) = ClientFrame::decode(&text) {
            round_trips(&frame)?;
        }
    }

    #[test]
    fn frame_shaped_json_decodes_or_is_refused_with_what_it_named(text in frame_like()) {
        match ClientFrame::decode(&text) {
            Ok(frame) => round_trips(&frame)?,
            Err(err) => {
                // A refusal echoes the message id and room when the frame
                // carried them as strings, so the client can match it.
                let value: Value = serde_json::from_str(&text).unwrap();
                if let (Some(id), Some(echoed)) = (value.get("id").and_then(Value::as_str), &err.id) {
                    prop_assert_eq!(echoed.as_str(), id);
                }
                prop_assert!(!err.message().is_empty());
            }
        }
    }

    #[test]
    fn any_bytes_decode_as_internal_events_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = event::decode::<ModerationRequest>(&bytes);
        let _ = event::decode::<ModerationReply>(&bytes);
        let _ = event::decode::<BacklogRequest>(&bytes);
        let _ = event::decode::<BacklogReply>(&bytes);
        let _ = event::decode::<PresenceChange>(&bytes);
        let _ = event::decode::<SignalDelivery>(&bytes);
        let _ = event::decode::<RoomState>(&bytes);
        let _ = event::decode::<Heartbeat>(&bytes);
        let _ = event::decode::<ModeratorHeartbeat>(&bytes);
    }

    #[test]
    fn damaged_internal_events_decode_or_are_refused(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        // Valid encodings with a few bytes changed and the end cut off reach
        // far deeper than random bytes.
        let request = ModerationRequest {
            from: Member {
                conn_id: "c1".into(),
                user: User { id: "u1".into(), name: "Ann".into() },
            },
            gateway: "g1".into(),
            action: Action::Chat {
                room: "r1".into(),
                id: "m1".into(),
                text: "hello".into(),
                acked_by_delivery: true,
            },
        };
        let backlog = BacklogRequest { room: "r1".into(), since: Some(Seq(7)), limit: 50 };
        for valid in [event::encode(&request), event::encode(&backlog)] {
            let mut bytes = valid.clone();
            for (at, byte) in &edits {
                bytes[at.index(valid.len())] = *byte;
            }
            bytes.truncate(cut.index(valid.len() + 1));
            let _ = event::decode::<ModerationRequest>(&bytes);
            let _ = event::decode::<BacklogRequest>(&bytes);
        }
    }

    #[test]
    fn removing_spoofing_characters_is_complete_and_idempotent(input in any::<String>()) {
        let clean = text::without_spoofing(&input);
        prop_assert!(!clean.chars().any(|c| text::is_spoofing_char(c) || (c.is_control() && c != '\n' && c != '\t')));
        prop_assert_eq!(text::without_spoofing(&clean), clean.clone());
        prop_assert!(clean.len() <= input.len());
    }
}
