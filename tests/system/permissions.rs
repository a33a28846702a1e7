//! NATS as compose runs it (`docker/nats/nats.conf`): each service connects
//! as its own user, and each user may do only what its service needs. The
//! whole system works that way, and what a service must not do is refused.

use std::time::Duration;

use schemas::client::{ClientFrame, ServerFrame, SignalKind};
use schemas::id::Seq;
use serde_json::json;

use crate::harness::{Client, Nats, Options, System, room, signal};

/// What nats-server logged so far.
async fn server_log(nats: &Nats) -> String {
    let out = nats.container.stdout_to_vec().await.unwrap_or_default();
    let err = nats.container.stderr_to_vec().await.unwrap_or_default();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    )
}

/// Join, chat both ways across two gateways, resume on the other gateway,
/// resume from past the room's end (history's leader read), signal and
/// leave: every path of every service, with only its own permissions.
#[tokio::test]
async fn every_service_works_with_only_its_own_nats_permissions() {
    let system = System::start(Options {
        nats_users: true,
        ..Options::default()
    })
    .await;
    let room = room("perms");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;
    let first = ann.chat(&room, "a1", "hi bob").await.unwrap().unwrap();
    assert_eq!(bob.next_chat().await.seq, first);
    let second = bob.chat(&room, "b1", "hi ann").await.unwrap().unwrap();
    assert_eq!(ann.next_chat().await.seq, second);

    drop(bob);
    let third = ann.chat(&room, "a2", "missed it").await.unwrap().unwrap();
    let mut bob = Client::connect(system.gateways[0], "bob").await;
    let (history, _, truncated) = bob.join(&room, Some(second)).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), [third]);
    assert!(!truncated);
    let (_, _, truncated) = bob.join(&room, Some(Seq(third.0 + 1000))).await;
    assert!(truncated, "since past the room's end");

    ann.send(&signal(
        &room,
        &bob.conn_id,
        SignalKind::Offer,
        json!({"type": "offer", "sdp": "v=0"}),
    ))
    .await;
    loop {
        if let ServerFrame::Signal { from, .. } = bob.recv().await {
            assert_eq!(from, ann.conn_id);
            break;
        }
    }
    ann.send(&ClientFrame::Leave { room: room.clone() }).await;
    let log = server_log(&system.nats).await;
    assert!(
        !log.contains("Violation"),
        "a service was refused something:\n{log}"
    );
    drop((ann, bob));
    system.finish().await;
}

/// What each service's user must not do, from docs/architecture.md
/// ("NATS permissions"): the server refuses each, and logs it.
#[tokio::test]
async fn each_service_user_is_refused_what_its_service_must_not_do() {
    const REFUSED: &[(&str, &[&str])] = &[
        (
            "gateway",
            &[
                "cavlo.deliver.r.chat",
                "cavlo.signal.someone",
                "cavlo.chat.r",
                "cavlo.moderator.heartbeat",
                "$KV.CAVLO_ROOMS.r",
                "$JS.API.STREAM.CREATE.CAVLO_CHAT",
                "$JS.API.STREAM.PURGE.CAVLO_CHAT",
            ],
        ),
        (
            "history",
            &[
                "cavlo.deliver.r.chat",
                "cavlo.chat.r",
                "cavlo.moderate",
                "$KV.CAVLO_ROOMS.r",
                "$JS.API.STREAM.DELETE.CAVLO_CHAT",
                "$JS.API.STREAM.PURGE.CAVLO_CHAT",
            ],
        ),
        (
            "moderator",
            &[
                "cavlo.history.backlog",
                "cavlo.gateway.heartbeat",
                "$JS.API.STREAM.CREATE.CAVLO_CHAT",
                "$JS.API.STREAM.DELETE.CAVLO_CHAT",
                "$JS.API.STREAM.PURGE.CAVLO_CHAT",
            ],
        ),
    ];
    let nats = Nats::start_with_users().await;
    for (user, subjects) in REFUSED {
        let client = nats.connect_as(Some(user)).await;
        for subject in *subjects {
            client
                .publish(subject.to_string(), "forged".into())
                .await
                .expect("a publish is queued");
        }
        client.flush().await.expect("flushed");
    }
    // An allowed publish, to show the check can tell them apart.
    let gateway = nats.connect_as(Some("gateway")).await;
    gateway
        .publish("cavlo.gateway.heartbeat", "{}".into())
        .await
        .unwrap();
    gateway.flush().await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut missing = Vec::new();
    loop {
        let log = server_log(&nats).await;
        missing.clear();
        for (user, subjects) in REFUSED {
            for subject in *subjects {
                let refused = log.lines().any(|line| {
                    line.contains(&format!("user:{user}\""))
                        && line.contains("Publish Violation")
                        && line.contains(&format!("Subject \"{subject}\""))
                });
                if !refused {
                    missing.push(format!("{user} may publish to {subject}"));
                }
            }
        }
        let allowed_refused = log.lines().any(|line| {
            line.contains("Violation")
                && line.contains("Subject \"cavlo.gateway.heartbeat\"")
                && line.contains("user:gateway\"")
        });
        assert!(
            !allowed_refused,
            "the gateway's own heartbeat was refused:\n{log}"
        );
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(missing.is_empty(), "not refused: {missing:#?}");
}
