//! NATS as compose runs it (`docker/nats/nats.conf`): each service connects
//! as its own user, and each user may do only what its service needs. The
//! whole system works that way, and what a service must not do is refused.

use std::time::Duration;

use schemas::client::{ClientFrame, ServerFrame, SignalKind};
use schemas::id::Seq;
use serde_json::json;

use crate::harness::{Client, Nats, Options, Participant, System, room, signal};

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
        media_nodes: 1,
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
    // A call through the media node: the gateways' joins and heartbeats,
    // the node's buckets and replies.
    let (mut ann_call, mut bob_call) = (
        Participant::start(true).await,
        Participant::start(true).await,
    );
    for (client, participant) in [(&mut ann, &mut ann_call), (&mut bob, &mut bob_call)] {
        client
            .send(&ClientFrame::CallJoin {
                room: room.clone(),
                sdp: participant.offer.clone(),
            })
            .await;
        loop {
            if let ServerFrame::CallAnswer { sdp, .. } = client.recv().await {
                participant.answered(sdp);
                break;
            }
        }
    }
    assert!(
        bob_call
            .hears(ann.conn_id.as_str(), Duration::from_secs(10))
            .await
    );
    ann.send(&ClientFrame::Leave { room: room.clone() }).await;
    // The leave is done (the moderator wrote the room and announced it)
    // before the log is read: a refusal on its path must be in it.
    assert_eq!(ann.recv().await, ServerFrame::Left { room: room.clone() });
    assert!(matches!(
        bob.next_presence().await,
        ServerFrame::Presence { member, .. } if member.conn_id == ann.conn_id
    ));
    let log = server_log(&system.nats).await;
    assert!(
        log.contains("Server is ready"),
        "the server's log was read:\n{log}"
    );
    assert!(
        !log.contains("Violation"),
        "a service was refused something:\n{log}"
    );
    drop((ann, bob));
    system.finish().await;
}

/// Every kind of subject cavlo uses, one concrete subject each, the NATS
/// services API's, and the JetStream API subjects that read or change its
/// two streams.
const SUBJECTS: &[&str] = &[
    "cavlo.moderate",
    "cavlo.moderate.m1",
    "cavlo.history.backlog",
    "cavlo.gateway.heartbeat",
    "cavlo.moderator.heartbeat",
    "cavlo.media.heartbeat",
    "cavlo.media.n1.join",
    "cavlo.media.n1.leave",
    "cavlo.roundtrip.x",
    "cavlo.deliver.r.chat",
    "cavlo.deliver.r.presence",
    "cavlo.signal.g1",
    "cavlo.chat.r",
    "$KV.CAVLO_ROOMS.r",
    "_INBOX.x",
    "$SRV.PING",
    "$SRV.INFO.cavlo-moderator",
    "$SRV.STATS.cavlo-history.h1",
    "$JS.API.INFO",
    "$JS.API.STREAM.CREATE.CAVLO_CHAT",
    "$JS.API.STREAM.UPDATE.CAVLO_CHAT",
    "$JS.API.STREAM.DELETE.CAVLO_CHAT",
    "$JS.API.STREAM.PURGE.CAVLO_CHAT",
    "$JS.API.STREAM.INFO.CAVLO_CHAT",
    "$JS.API.STREAM.MSG.GET.CAVLO_CHAT",
    "$JS.API.STREAM.MSG.DELETE.CAVLO_CHAT",
    "$JS.API.DIRECT.GET.CAVLO_CHAT",
    "$JS.API.DIRECT.GET.CAVLO_CHAT.cavlo.chat.r",
    "$JS.API.CONSUMER.CREATE.CAVLO_CHAT",
    "$JS.API.CONSUMER.CREATE.CAVLO_CHAT.cavlo-archiver",
    "$JS.API.CONSUMER.INFO.CAVLO_CHAT.cavlo-archiver",
    "$JS.API.CONSUMER.DELETE.CAVLO_CHAT.cavlo-archiver",
    "$JS.API.CONSUMER.MSG.NEXT.CAVLO_CHAT.cavlo-archiver",
    "$JS.ACK.CAVLO_CHAT.cavlo-archiver.1.2.3.4.5.6",
    "$JS.API.STREAM.CREATE.KV_CAVLO_ROOMS",
    "$JS.API.STREAM.UPDATE.KV_CAVLO_ROOMS",
    "$JS.API.STREAM.DELETE.KV_CAVLO_ROOMS",
    "$JS.API.STREAM.PURGE.KV_CAVLO_ROOMS",
    "$JS.API.STREAM.INFO.KV_CAVLO_ROOMS",
    "$JS.API.STREAM.MSG.GET.KV_CAVLO_ROOMS",
    "$JS.API.DIRECT.GET.KV_CAVLO_ROOMS",
    "$JS.API.CONSUMER.CREATE.KV_CAVLO_ROOMS",
    "$JS.API.CONSUMER.CREATE.KV_CAVLO_ROOMS.w_1.$KV.CAVLO_ROOMS.r",
    "$KV.CAVLO_CALLS.r",
    "$JS.API.STREAM.CREATE.KV_CAVLO_CALLS",
    "$JS.API.STREAM.DELETE.KV_CAVLO_CALLS",
    "$JS.API.STREAM.INFO.KV_CAVLO_CALLS",
    "$JS.API.DIRECT.GET.KV_CAVLO_CALLS",
    "$JS.API.CONSUMER.CREATE.KV_CAVLO_CALLS",
    "$JS.API.CONSUMER.CREATE.KV_CAVLO_CALLS.w_1.$KV.CAVLO_CALLS.r",
];

/// What each service needs, as docs/architecture.md ("NATS permissions")
/// states it: (user, may publish, may subscribe), in NATS wildcards.
const NEEDS: &[(&str, &[&str], &[&str])] = &[
    (
        "gateway",
        &[
            "cavlo.moderate",
            "cavlo.moderate.*",
            "cavlo.history.backlog",
            "cavlo.gateway.heartbeat",
            "cavlo.roundtrip.>",
            "cavlo.media.*.join",
            "cavlo.media.*.leave",
            "$JS.API.STREAM.INFO.KV_CAVLO_CALLS",
            "$JS.API.CONSUMER.CREATE.KV_CAVLO_CALLS",
            "$JS.API.CONSUMER.CREATE.KV_CAVLO_CALLS.>",
            "$JS.API.CONSUMER.DELETE.KV_CAVLO_CALLS.*",
            "$JS.FC.KV_CAVLO_CALLS.>",
        ],
        &[
            "cavlo.deliver.*.*",
            "cavlo.signal.*",
            "cavlo.gateway.heartbeat",
            "cavlo.moderator.heartbeat",
            "cavlo.media.heartbeat",
            "_INBOX.>",
        ],
    ),
    (
        "moderator",
        &[
            "cavlo.chat.*",
            "cavlo.deliver.*.presence",
            "cavlo.signal.*",
            "cavlo.roundtrip.>",
            "cavlo.moderator.heartbeat",
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.CAVLO_CHAT",
            "$JS.API.STREAM.MSG.GET.CAVLO_CHAT",
            "$JS.API.DIRECT.GET.CAVLO_CHAT",
            "$JS.API.DIRECT.GET.CAVLO_CHAT.>",
            "$JS.API.STREAM.CREATE.KV_CAVLO_ROOMS",
            "$JS.API.STREAM.UPDATE.KV_CAVLO_ROOMS",
            "$JS.API.STREAM.INFO.KV_CAVLO_ROOMS",
            "$JS.API.STREAM.MSG.GET.KV_CAVLO_ROOMS",
            "$JS.API.DIRECT.GET.KV_CAVLO_ROOMS",
            "$JS.API.DIRECT.GET.KV_CAVLO_ROOMS.>",
            "$KV.CAVLO_ROOMS.>",
            "_INBOX.>",
        ],
        &[
            "cavlo.moderate",
            "cavlo.moderate.*",
            "cavlo.gateway.heartbeat",
            "_INBOX.>",
            "$SRV.>",
        ],
    ),
    (
        "history",
        &[
            "cavlo.roundtrip.>",
            "$JS.API.INFO",
            "$JS.API.STREAM.CREATE.CAVLO_CHAT",
            "$JS.API.STREAM.UPDATE.CAVLO_CHAT",
            "$JS.API.STREAM.INFO.CAVLO_CHAT",
            "$JS.API.STREAM.MSG.GET.CAVLO_CHAT",
            "$JS.API.DIRECT.GET.CAVLO_CHAT",
        ],
        &["cavlo.history.backlog", "_INBOX.>", "$SRV.>"],
    ),
    (
        "media",
        &[
            "cavlo.media.heartbeat",
            "cavlo.roundtrip.>",
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.KV_CAVLO_ROOMS",
            "$JS.API.STREAM.MSG.GET.KV_CAVLO_ROOMS",
            "$JS.API.DIRECT.GET.KV_CAVLO_ROOMS",
            "$JS.API.DIRECT.GET.KV_CAVLO_ROOMS.>",
            "$JS.API.CONSUMER.CREATE.KV_CAVLO_ROOMS",
            "$JS.API.CONSUMER.CREATE.KV_CAVLO_ROOMS.>",
            "$JS.API.STREAM.CREATE.KV_CAVLO_CALLS",
            "$JS.API.STREAM.UPDATE.KV_CAVLO_CALLS",
            "$JS.API.STREAM.INFO.KV_CAVLO_CALLS",
            "$JS.API.STREAM.MSG.GET.KV_CAVLO_CALLS",
            "$JS.API.DIRECT.GET.KV_CAVLO_CALLS",
            "$JS.API.DIRECT.GET.KV_CAVLO_CALLS.>",
            "$KV.CAVLO_CALLS.>",
        ],
        &[
            "cavlo.media.*.join",
            "cavlo.media.*.leave",
            "cavlo.media.heartbeat",
            "_INBOX.>",
            "$SRV.>",
        ],
    ),
    (
        "archiver",
        &[
            "$JS.API.INFO",
            "$JS.API.STREAM.INFO.CAVLO_CHAT",
            "$JS.API.CONSUMER.CREATE.CAVLO_CHAT.*",
            "$JS.API.CONSUMER.INFO.CAVLO_CHAT.*",
            "$JS.API.CONSUMER.MSG.NEXT.CAVLO_CHAT.*",
            "$JS.ACK.CAVLO_CHAT.>",
        ],
        &["_INBOX.>"],
    ),
];

/// Whether NATS subject `subject` matches `pattern` (`*` one token, `>`
/// the rest).
fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(part)) if token == part => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

#[test]
fn subject_patterns_match_as_nats_does() {
    assert!(matches("cavlo.moderate.*", "cavlo.moderate.m1"));
    assert!(!matches("cavlo.moderate.*", "cavlo.moderate"));
    assert!(!matches("cavlo.moderate", "cavlo.moderate.m1"));
    assert!(matches("cavlo.deliver.>", "cavlo.deliver.r.chat"));
    assert!(!matches("cavlo.deliver.>", "cavlo.deliver"));
    assert!(matches("$JS.API.INFO", "$JS.API.INFO"));
}

/// The whole matrix: every user publishes to and subscribes to every
/// subject of [`SUBJECTS`]. The server must refuse, and log, exactly what
/// its service does not need ([`NEEDS`]), and nothing else.
#[tokio::test]
async fn each_service_user_may_do_exactly_what_its_service_needs() {
    let nats = Nats::start_with_users().await;
    let mut clients = Vec::new();
    for (user, publish, _) in NEEDS {
        let client = nats.connect_as(Some(user)).await;
        let mut subscriptions = Vec::new();
        for subject in SUBJECTS {
            client
                .publish(subject.to_string(), "forged".into())
                .await
                .expect("a publish is queued");
            subscriptions.push(
                client
                    .subscribe(subject.to_string())
                    .await
                    .expect("a subscription is queued"),
            );
        }
        // The round trip needs `cavlo.roundtrip.>`; a user without it asks
        // JetStream instead, which answers in order too.
        if publish.contains(&"cavlo.roundtrip.>") {
            bootstrap::nats::round_trip(&client)
                .await
                .expect("the server has processed it all");
        } else {
            client
                .request("$JS.API.INFO", "".into())
                .await
                .expect("the server has processed it all");
        }
        clients.push((client, subscriptions));
    }

    // A violation is logged as `… - "user:<user>" - … Publish Violation …
    // Subject "<subject>"` (or `Subscription Violation`).
    let refused = |log: &str, user: &str, kind: &str, subject: &str| {
        log.lines().any(|line| {
            line.contains(&format!("user:{user}\""))
                && line.contains(kind)
                && line.contains(&format!("Subject \"{subject}\""))
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut wrong = Vec::new();
    loop {
        let log = server_log(&nats).await;
        wrong.clear();
        for (user, publish, subscribe) in NEEDS {
            for subject in SUBJECTS {
                for (kind, needed) in [
                    ("Publish Violation", publish),
                    ("Subscription Violation", subscribe),
                ] {
                    let needs = needed.iter().any(|pattern| matches(pattern, subject));
                    if needs == refused(&log, user, kind, subject) {
                        let what = if needs { "refused" } else { "allowed" };
                        wrong.push(format!("{user}: {kind} on {subject}: {what}"));
                    }
                }
            }
        }
        // Refusals are logged as they come; what is allowed never is, so
        // wait until every refusal is in, then judge once more.
        let missing_refusals = wrong.iter().any(|w| w.ends_with(": allowed"));
        if !missing_refusals || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !wrong.is_empty() {
        eprintln!("LOG:\n{}", server_log(&nats).await);
    }
    assert!(wrong.is_empty(), "not as the services need: {wrong:#?}");
}
