//! The browser SDK's tests play the gateway, so the server frames they feed
//! the SDK must be frames the gateway could send. Hand-written ones drifted
//! (a `welcome` without `ice`, empty `limits`); so:
//!
//! * one frame of every kind is generated here from [`ServerFrame`] into
//!   `tests/sdk/fixtures/server-frames.json`, which the SDK tests build
//!   their frames from; this test fails when the file is not what the
//!   types make (regenerate: `CAVLO_WRITE_FIXTURES=1 cargo test -p schemas
//!   --test sdk_fixtures`);
//! * every frame the SDK tests actually fed the SDK is recorded by
//!   `tests/sdk/fakes.mjs` and checked by `examples/check_sdk_frames.rs`
//!   (scripts/test.sh runs it right after the SDK tests).

use std::path::PathBuf;

use schemas::client::{
    ChatMessage, ErrorFrame, IceServer, IceServers, Limits, Member, PresenceEvent, ServerFrame,
    SignalKind, User,
};
use schemas::code::ErrorCode;
use schemas::id::{ConnId, Seq};

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/sdk/fixtures/server-frames.json")
}

fn member(conn: &str, id: &str, name: &str) -> Member {
    Member {
        conn_id: ConnId::from(conn),
        user: User {
            id: id.into(),
            name: name.into(),
        },
    }
}

/// One frame of every kind the gateway sends, as the SDK tests know them.
fn frames() -> Vec<(&'static str, ServerFrame)> {
    let ann = member("c1", "u1", "Ann");
    let bob = member("c9", "u9", "Bob");
    let chat = ChatMessage {
        room: "lobby".into(),
        seq: Seq(1),
        id: "other-1".into(),
        from: bob.clone(),
        text: "message 1".into(),
        ts: 1_764_115_200_001,
    };
    let ice = IceServers {
        servers: vec![
            IceServer {
                urls: vec!["stun:turn.example:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec!["turn:turn.example:3478?transport=udp".into()],
                username: Some("1764118800:u1".into()),
                credential: Some("c2VjcmV0".into()),
            },
        ],
        expires_in: 3600,
    };
    vec![
        (
            "welcome",
            ServerFrame::Welcome {
                conn_id: ann.conn_id.clone(),
                user: ann.user.clone(),
                gateway: "gw-1".into(),
                limits: Limits {
                    max_frame_bytes: 131_072,
                    max_rooms: 16,
                    history_limit: 50,
                },
                expires_in: 3600,
                ice: ice.clone(),
                media: false,
            },
        ),
        ("refreshed", ServerFrame::Refreshed { expires_in: 3600 }),
        (
            "joined",
            ServerFrame::Joined {
                room: "lobby".into(),
                members: vec![ann.clone(), bob.clone()],
                history: vec![chat.clone()],
                last_seq: Seq(1),
                truncated: false,
            },
        ),
        (
            "left",
            ServerFrame::Left {
                room: "lobby".into(),
            },
        ),
        ("chat", ServerFrame::Chat(chat)),
        (
            "ack",
            ServerFrame::Ack {
                id: "m1".into(),
                room: "lobby".into(),
                seq: Some(Seq(2)),
                text: None,
            },
        ),
        (
            "signal",
            ServerFrame::Signal {
                room: "lobby".into(),
                from: bob.conn_id.clone(),
                user: bob.user.clone(),
                kind: SignalKind::Offer,
                data: serde_json::json!({"type": "offer", "sdp": "v=0"}),
            },
        ),
        (
            "presence",
            ServerFrame::Presence {
                room: "lobby".into(),
                event: PresenceEvent::Join,
                member: bob,
            },
        ),
        ("pong", ServerFrame::Pong),
        (
            "draining",
            ServerFrame::Draining {
                reconnect_in_ms: 2500,
            },
        ),
        ("ice", ServerFrame::Ice(ice)),
        (
            "call_answer",
            ServerFrame::CallAnswer {
                room: "lobby".into(),
                sdp: "v=0\r\n".into(),
            },
        ),
        (
            "call_moved",
            ServerFrame::CallMoved {
                room: "lobby".into(),
            },
        ),
        (
            "error",
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                id: Some("m1".into()),
                room: Some("lobby".into()),
                request: Some("chat".into()),
            }),
        ),
    ]
}

#[test]
fn the_sdk_fixtures_are_what_the_server_types_make() {
    let mut fixtures = serde_json::Map::new();
    for (name, frame) in frames() {
        let json: serde_json::Value =
            serde_json::from_str(&frame.to_json()).expect("a frame is JSON");
        assert_eq!(json["type"], name, "{name}: named by its type");
        fixtures.insert(name.into(), json);
    }
    let made = serde_json::to_string_pretty(&fixtures).expect("JSON serializes") + "\n";
    let path = fixture_path();
    if std::env::var_os("CAVLO_WRITE_FIXTURES").is_some() {
        let dir = path.parent().expect("the fixture has a directory");
        std::fs::create_dir_all(dir).expect("make the fixtures' directory");
        std::fs::write(&path, &made).expect("write the fixtures");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == made,
        "{} is not what the server types make; regenerate it with \
         CAVLO_WRITE_FIXTURES=1 cargo test -p schemas --test sdk_fixtures",
        path.display()
    );
}
