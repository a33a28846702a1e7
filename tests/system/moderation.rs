//! What the moderator refuses or changes before anything reaches a room.

use std::time::Duration;

use moderator::config::ModeratorConfig;
use schemas::client::ClientFrame;
use schemas::code::ErrorCode;
use schemas::id::RoomId;
use tokio::time::Instant;

use crate::harness::{Client, Options, System, assert_code, room};

#[tokio::test]
async fn oversize_chat_and_bad_room_names_are_refused() {
    let system = System::start(Options {
        gateways: 1,
        ..Options::default()
    })
    .await;
    let room = room("limits");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&room, None).await;

    let max = ModeratorConfig::default().max_chat_bytes;
    assert!(ann.chat(&room, "fits", &"x".repeat(max)).await.is_ok());
    let error = ann
        .chat(&room, "big", &"x".repeat(max + 1))
        .await
        .unwrap_err();
    assert_code(&error, ErrorCode::TooLarge, "chat one byte over the limit");

    for bad in [
        "has space",
        "dot.ted",
        "wild*",
        ">",
        "",
        "ünïcode",
        &"a".repeat(65),
    ] {
        ann.send(&ClientFrame::Join {
            room: RoomId::from(bad),
            since: None,
        })
        .await;
        let error = ann.next_error().await;
        assert_code(&error, ErrorCode::InvalidRoom, &format!("join {bad:?}"));
        assert_eq!(error.room.as_ref().map(|r| r.as_str()), Some(bad));
    }
    ann.assert_alive().await;
    system.shutdown().await;
}

#[tokio::test]
async fn markup_is_stripped_before_anyone_sees_it() {
    let system = System::start(Options::default()).await;
    let room = room("sanitize");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    const CASES: &[(&str, &str)] = &[
        ("<b>bold</b> text", "bold text"),
        ("<script>alert('x')</script>after", "after"),
        ("<img src=x onerror=alert(1)>caption", "caption"),
        ("<style>*{display:none}</style>visible", "visible"),
        ("a < b && c > d", "a < b && c > d"),
    ];
    for (i, (input, expected)) in CASES.iter().enumerate() {
        ann.chat(&room, &format!("s{i}"), input)
            .await
            .expect("accepted");
        assert_eq!(
            bob.next_chat().await.text,
            *expected,
            "delivered text of {input:?}"
        );
    }
    let (history, _, _) = bob.join(&room, None).await;
    let stored: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        stored,
        CASES.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
        "stored text is sanitized too"
    );

    let error = ann
        .chat(&room, "empty", "<script>only</script>")
        .await
        .unwrap_err();
    assert_code(
        &error,
        ErrorCode::InvalidMessage,
        "nothing left after sanitizing",
    );
    system.shutdown().await;
}

/// A sustained flood at 10x the rate, with two moderators sharing the load:
/// the admitted count stays within 20 % of what one bucket allows, because a
/// connection's requests stick to one moderator.
#[tokio::test]
async fn rate_limit_holds_with_two_moderators() {
    const PER_MINUTE: u32 = 600;
    const BURST: u32 = 5;
    const FLOOD: Duration = Duration::from_secs(4);
    let system = System::start(Options {
        gateways: 1,
        moderators: 2,
        moderator: ModeratorConfig {
            chat_rate_per_minute: PER_MINUTE,
            chat_burst: BURST,
            ..ModeratorConfig::default()
        },
        ..Options::default()
    })
    .await;
    let room = room("flood");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&room, None).await;

    let per_second = f64::from(PER_MINUTE) / 60.0;
    let interval = Duration::from_secs_f64(1.0 / (per_second * 10.0));
    let (mut admitted, mut limited, mut sent) = (0u32, 0u32, 0u32);
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < FLOOD {
        tokio::time::sleep_until(next).await; // pacing the flood, not synchronising
        next += interval;
        let id = format!("f{sent}");
        sent += 1;
        match ann.chat(&room, &id, "spam").await {
            Ok(_) => admitted += 1,
            Err(error) => {
                assert_code(&error, ErrorCode::RateLimited, &id);
                limited += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = f64::from(BURST) + per_second * elapsed;
    assert!(
        f64::from(sent) > allowed * 5.0,
        "the flood really was a flood: sent {sent}, allowed {allowed:.0}"
    );
    assert!(
        (f64::from(admitted) - allowed).abs() <= allowed * 0.2,
        "admitted {admitted} of {sent} ({limited} limited), allowed {allowed:.1} over {elapsed:.2}s"
    );
    system.shutdown().await;
}
