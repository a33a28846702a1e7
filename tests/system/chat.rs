//! The chat path: gateway → moderator → JetStream → gateways, and resume.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use history::config::HistoryConfig;
use schemas::client::{ChatMessage, ServerFrame};
use schemas::code::ErrorCode;
use schemas::event::{self, ModerationReply, Verdict};
use schemas::id::Seq;
use tokio::time::Instant;

use crate::harness::{Client, Options, QUIET, System, assert_code, room};

#[tokio::test]
async fn chat_reaches_every_other_member_once_across_gateways() {
    let system = System::start(Options::default()).await;
    let (g1, g2) = (system.gateways[0], system.gateways[1]);
    let room = room("fanout");
    let mut clients = vec![
        Client::connect(g1, "ann").await,
        Client::connect(g2, "bob").await,
        Client::connect(g2, "cat").await,
    ];
    for client in &mut clients {
        client.join(&room, None).await;
    }

    const PER_CLIENT: usize = 5;
    let mut acked: HashMap<Seq, (usize, String)> = HashMap::new();
    let mut last_ack = Seq(0);
    for round in 0..PER_CLIENT {
        for (sender, client) in clients.iter_mut().enumerate() {
            let id = format!("m-{sender}-{round}");
            let seq = client
                .chat(&room, &id, &format!("hello {id}"))
                .await
                .expect("acked")
                .expect("has seq");
            assert!(seq > last_ack, "acks increase: {seq} after {last_ack}");
            last_ack = seq;
            acked.insert(seq, (sender, id));
        }
    }

    // Each client gets exactly the others' messages, in seq order, once.
    for (receiver, client) in clients.iter_mut().enumerate() {
        let expected: Vec<Seq> = {
            let mut seqs: Vec<Seq> = acked
                .iter()
                .filter(|(_, (s, _))| *s != receiver)
                .map(|(seq, _)| *seq)
                .collect();
            seqs.sort();
            seqs
        };
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            let chat = client.next_chat().await;
            let (sender, id) = &acked[&chat.seq];
            assert_eq!(chat.id.as_str(), id);
            assert_eq!(chat.text, format!("hello {id}"));
            assert_ne!(*sender, receiver, "nobody receives their own message");
            got.push(chat.seq);
        }
        assert_eq!(
            got, expected,
            "client {receiver} got each other message once, in order"
        );
        client.assert_alive().await; // and nothing else was queued before the pong
    }
    drop(clients);
    system.finish().await;
}

#[tokio::test]
async fn reconnecting_to_the_other_gateway_resumes_exactly_the_missed_messages() {
    let system = System::start(Options::default()).await;
    let (g1, g2) = (system.gateways[0], system.gateways[1]);
    let room = room("resume");
    let mut ann = Client::connect(g1, "ann").await;
    let mut bob = Client::connect(g1, "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    ann.chat(&room, "before", "seen by bob").await.unwrap();
    let seen = bob.next_chat().await.seq;
    bob.close().await;

    let mut missed = Vec::new();
    for i in 0..5 {
        missed.push(
            ann.chat(&room, &format!("missed-{i}"), "while bob was away")
                .await
                .unwrap()
                .unwrap(),
        );
    }

    let mut bob = Client::connect(g2, "bob").await;
    let (history, last_seq, truncated) = bob.join(&room, Some(seen)).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), missed);
    assert_eq!(last_seq, *missed.last().unwrap());
    assert!(!truncated);

    let live = ann
        .chat(&room, "after", "live again")
        .await
        .unwrap()
        .unwrap();
    let chat = bob.next_chat().await;
    assert_eq!((chat.seq, chat.id.as_str()), (live, "after"));
    bob.assert_alive().await;
    drop((ann, bob));
    system.finish().await;
}

#[tokio::test]
async fn resending_a_message_id_is_idempotent() {
    let system = System::start(Options::default()).await;
    let (g1, g2) = (system.gateways[0], system.gateways[1]);
    let room = room("resend");
    let mut ann = Client::connect(g1, "ann").await;
    let mut bob = Client::connect(g2, "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    let first = ann.chat(&room, "dup-1", "once").await.unwrap();
    // The same user resends after a reconnect, through the other gateway.
    ann.close().await;
    let mut ann = Client::connect(g2, "ann").await;
    ann.join(&room, None).await;
    let again = ann.chat(&room, "dup-1", "once").await.unwrap();
    assert_eq!(again, first, "a resend gets the original seq");
    let marker = ann.chat(&room, "marker", "next").await.unwrap();

    assert_eq!(bob.next_chat().await.id.as_str(), "dup-1");
    let next = bob.next_chat().await;
    assert_eq!(
        (next.id.as_str(), Some(next.seq)),
        ("marker", marker),
        "no second delivery of dup-1"
    );

    // Another user's message with the same client id is a different message.
    let mut cat = Client::connect(g1, "cat").await;
    cat.join(&room, None).await;
    let other = cat.chat(&room, "dup-1", "mine").await.unwrap();
    assert!(other > marker);
    drop((ann, bob, cat));
    system.finish().await;
}

/// A resend whose original has left the backlog (but not the duplicate
/// window) is recognised: acked without a seq, as docs/protocol.md says,
/// and neither stored nor delivered again. After the duplicate window the
/// same id is a new message: stored and delivered with a new seq.
#[tokio::test]
async fn a_resend_after_the_backlog_or_the_duplicate_window_moved_on() {
    const WINDOW: Duration = Duration::from_secs(1);
    let system = System::start(Options {
        history: HistoryConfig {
            backlog_size: 2,
            duplicate_window: WINDOW,
            ..HistoryConfig::default()
        },
        ..Options::default()
    })
    .await;
    let room = room("resent");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    let original = ann.chat(&room, "early", "first").await.unwrap().unwrap();
    for id in ["push-1", "push-2"] {
        ann.chat(&room, id, "trims the first").await.unwrap();
    }
    let resent = ann.chat_acked(&room, "early", "first").await.unwrap();
    assert_eq!(resent.seq, None, "acked, its original out of the backlog");
    let marker = ann.chat(&room, "marker", "next").await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(bob.next_chat().await.id.as_str().to_owned());
    }
    assert_eq!(
        ids,
        ["early", "push-1", "push-2", "marker"],
        "nothing twice"
    );
    let (history, last, _) = bob.join(&room, None).await;
    assert_eq!(last, marker.unwrap());
    assert_eq!(history.len(), 2, "the resend took no place in the backlog");

    // Past the window, JetStream forgets the id (on its own timer, so ask
    // again until it has, bounded): then the resend is a new message.
    tokio::time::sleep(WINDOW).await;
    let deadline = Instant::now() + WINDOW * 10;
    let again = loop {
        let ack = ann.chat_acked(&room, "early", "first").await.unwrap();
        match ack.seq {
            Some(seq) if seq > marker.unwrap() => break seq,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "still a duplicate after {:?}",
            WINDOW * 11
        );
        tokio::time::sleep(WINDOW / 4).await;
    };
    assert!(again > original);
    let chat = bob.next_chat().await;
    assert_eq!((chat.id.as_str(), chat.seq), ("early", again));
    drop((ann, bob));
    system.finish().await;
}

/// `history.max_age` trims messages by age: a new member gets none of
/// them, a client resuming from before them is told `truncated`, and the
/// room's next message still gets a seq above every earlier one, so no
/// client takes it for one it has. Found here: once every message of the
/// room had expired, a client resuming from before the last of them got
/// nothing and `truncated: false`, a silent miss.
#[tokio::test]
async fn messages_older_than_max_age_expire_and_seqs_go_on() {
    const MAX_AGE: Duration = Duration::from_secs(1);
    let system = System::start(Options {
        history: HistoryConfig {
            max_age: MAX_AGE,
            // JetStream requires the duplicate window within max_age.
            duplicate_window: MAX_AGE,
            ..HistoryConfig::default()
        },
        ..Options::one_gateway()
    })
    .await;
    let g = system.gateways[0];
    let room = room("aging");
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&room, None).await;
    let first = ann.chat(&room, "old-1", "x").await.unwrap().unwrap();
    let last = ann.chat(&room, "old-2", "x").await.unwrap().unwrap();

    // JetStream expires by age on its own timer: wait for it, bounded.
    let mut bob = Client::connect(g, "bob").await;
    let deadline = Instant::now() + MAX_AGE * 10;
    loop {
        let (history, _, _) = bob.join(&room, None).await;
        if history.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still held: {history:?}");
        tokio::time::sleep(MAX_AGE / 4).await;
    }
    let (history, _, truncated) = bob.join(&room, Some(first)).await;
    assert!(history.is_empty());
    assert!(truncated, "old-2, after since, expired unseen");
    // Whether a client had seen the last message can no longer be told;
    // a client that never saw any missed nothing.
    let (_, _, truncated) = bob.join(&room, Some(last)).await;
    assert!(truncated, "cannot be known: said truncated");
    let (_, _, truncated) = bob.join(&room, Some(Seq(0))).await;
    assert!(!truncated, "a client that saw nothing");

    let next = ann.chat(&room, "new", "x").await.unwrap().unwrap();
    assert!(next > last, "seqs go on after expiry: {last} then {next}");
    assert_eq!(bob.next_chat().await.seq, next);
    drop((ann, bob));
    system.finish().await;
}

#[tokio::test]
async fn backlog_is_bounded_and_resume_past_it_is_truncated() {
    let system = System::start(Options {
        history: HistoryConfig {
            backlog_size: 5,
            ..HistoryConfig::default()
        },
        ..Options::one_gateway()
    })
    .await;
    let g1 = system.gateways[0];
    let room = room("bounded");
    let mut ann = Client::connect(g1, "ann").await;
    ann.join(&room, None).await;
    let mut seqs = Vec::new();
    for i in 0..8 {
        seqs.push(
            ann.chat(&room, &format!("b{i}"), "x")
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].next()),
        "seqs are gap-free: {seqs:?}"
    );

    let mut bob = Client::connect(g1, "bob").await;
    let (history, last_seq, truncated) = bob.join(&room, None).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[3..]);
    assert_eq!((last_seq, truncated), (seqs[7], false));

    let seqs_of = |history: &[ChatMessage]| history.iter().map(|m| m.seq).collect::<Vec<_>>();
    let (history, _, truncated) = bob.join(&room, Some(seqs[0])).await;
    assert_eq!(seqs_of(&history), seqs[3..], "the retained five");
    assert!(truncated, "seqs[1..3] were trimmed");

    let (history, _, truncated) = bob.join(&room, Some(seqs[2])).await;
    assert_eq!((seqs_of(&history), truncated), (seqs[3..].to_vec(), false));
    drop((ann, bob));
    system.finish().await;
}

/// A room's seqs start at the stream's last sequence + 1, not at 1. Found
/// as an operator would: a room never trimmed (3 messages) answered a join
/// with `since: 0` with `truncated: true`. `truncated` now says whether
/// messages after `since` were really trimmed.
#[tokio::test]
async fn truncated_is_true_only_when_messages_after_since_were_trimmed() {
    let system = System::start(Options {
        history: HistoryConfig {
            backlog_size: 3,
            ..HistoryConfig::default()
        },
        ..Options::one_gateway()
    })
    .await;
    let g = system.gateways[0];
    let (earlier, fresh) = (room("earlier"), room("fresh"));
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&earlier, None).await;
    ann.chat(&earlier, "e1", "raises the stream's sequence")
        .await
        .unwrap();
    ann.join(&fresh, None).await;
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(
            ann.chat(&fresh, &format!("f{i}"), "x")
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(seqs[0] > Seq(1), "the room does not start at 1");

    let mut bob = Client::connect(g, "bob").await;
    let (history, _, truncated) = bob.join(&fresh, Some(Seq(0))).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs);
    assert!(
        !truncated,
        "nothing was trimmed from a room of 3 with room for 3"
    );

    // One more message trims the first: now a client that saw nothing, or
    // only up to before it, has missed something.
    seqs.push(ann.chat(&fresh, "f3", "x").await.unwrap().unwrap());
    assert_eq!(Some(bob.next_chat().await.seq), seqs.last().copied());
    for since in [Seq(0), Seq(seqs[0].0 - 1)] {
        let (_, _, truncated) = bob.join(&fresh, Some(since)).await;
        assert!(truncated, "since {since}: seqs[0] was trimmed");
    }
    let (history, _, truncated) = bob.join(&fresh, Some(seqs[0])).await;
    assert_eq!((history.len(), truncated), (3, false));

    // A `since` past the room's end, as after a stream reset: the stream's
    // leader confirms the room ends before it, so the client gets the room's
    // last messages, marked truncated.
    let beyond = Seq(seqs.last().unwrap().0 + 1000);
    let (history, _, truncated) = bob.join(&fresh, Some(beyond)).await;
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[1..]);
    assert!(truncated, "since past the room's end");
    drop((ann, bob));
    system.finish().await;
}

#[tokio::test]
async fn chat_and_leave_outside_a_room_are_refused() {
    let system = System::one_gateway().await;
    let room = room("outside");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let error = ann.chat(&room, "m1", "hi").await.unwrap_err();
    assert_code(&error, ErrorCode::NotInRoom, "chat before join");
    assert_eq!(error.room.as_ref(), Some(&room));

    ann.send(&schemas::client::ClientFrame::Leave { room: room.clone() })
        .await;
    assert_code(
        &ann.next_error().await,
        ErrorCode::NotInRoom,
        "leave before join",
    );

    ann.join(&room, None).await;
    ann.send(&schemas::client::ClientFrame::Leave { room: room.clone() })
        .await;
    assert_eq!(ann.recv().await, ServerFrame::Left { room: room.clone() });
    let error = ann.chat(&room, "m2", "hi").await.unwrap_err();
    assert_code(&error, ErrorCode::NotInRoom, "chat after leave");
    drop(ann);
    system.finish().await;
}

/// A resume reads the messages after `since`, not the whole retained
/// backlog. Found by the full rolling restart: with a backlog of 2,000, a
/// drained gateway's 1,000 clients each made history read their room's
/// ~700 messages (about 400 KB) to answer a `since` a few messages back;
/// history fell behind, queries timed out, the retries kept it behind, and
/// joins got `unavailable` for minutes. Rooms interleave in the stream, so
/// this room's messages are spread over twice as many stream sequences.
#[tokio::test]
async fn a_resume_reads_what_follows_since_not_the_whole_backlog() {
    let mut options = Options::one_gateway();
    options.history.backlog_size = 2_000;
    options.moderator.chat_rate_per_minute = 60_000;
    options.moderator.chat_burst = 1_000;
    let system = System::start(options).await;
    let g = system.gateways[0];
    let (long, other) = (room("long"), room("other"));
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&long, None).await;
    ann.join(&other, None).await;
    let mut seqs = Vec::new();
    for i in 0..300 {
        seqs.push(
            ann.chat(&long, &format!("l{i}"), "x")
                .await
                .unwrap()
                .unwrap(),
        );
        ann.chat(&other, &format!("o{i}"), "y").await.unwrap();
    }
    let read = |system: &System| {
        let text = system.history_metrics.encode();
        crate::metrics::sample(&text, "cavlo_history_read_messages_total")
            .expect("history counts the messages it reads")
    };

    let mut bob = Client::connect(g, "bob").await;
    for (since, expected) in [
        (seqs[296], &seqs[297..]),
        (seqs[249], &seqs[250..]),
        (seqs[0], &seqs[1..]),
    ] {
        let before = read(&system);
        let (history, _, truncated) = bob.join(&long, Some(since)).await;
        let after = read(&system);
        assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), expected);
        assert!(!truncated, "since {since}");
        let wanted = expected.len() as f64;
        assert!(
            (wanted..=4.0 * wanted + 16.0).contains(&(after - before)),
            "since {since}: read {} messages for {wanted}",
            after - before
        );
    }
    // A join without `since` reads about `limit` messages.
    let before = read(&system);
    let (history, _, _) = bob.join(&long, None).await;
    assert_eq!(history.last().map(|m| m.seq), seqs.last().copied());
    let read_for_join = read(&system) - before;
    let returned = history.len() as f64;
    assert!(
        (returned..=4.0 * returned + 16.0).contains(&read_for_join),
        "read {read_for_join} messages for a join of {returned}"
    );
    drop((ann, bob));
    system.finish().await;
}

/// A stored chat's ack comes from its own delivery, which the sender's
/// gateway receives anyway: no moderator reply crosses NATS for it, one
/// message less each way per chat. A chat the moderator does not store now
/// (a resend, a rejection) still gets its reply. Measured as what crosses
/// NATS on reply subjects, where replies go.
#[tokio::test]
async fn a_stored_chat_is_acked_from_its_delivery_without_a_moderator_reply() {
    const EACH: usize = 4;
    let system = System::start(Options::default()).await;
    let nats = system.nats.connect().await;
    let mut replies = nats.subscribe("_INBOX.>").await.unwrap();
    nats.flush().await.unwrap();
    let room = room("delivery-acks");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    let mut acked = Vec::new();
    for i in 0..EACH {
        acked.push(ann.chat(&room, &format!("a{i}"), "plain").await.unwrap());
        acked.push(bob.chat(&room, &format!("b{i}"), "plain").await.unwrap());
    }
    let sanitized = ann.chat_acked(&room, "html", "<b>bold</b>").await.unwrap();
    assert_eq!(
        sanitized.text.as_deref(),
        Some("bold"),
        "the ack says what was stored"
    );
    let resent = ann.chat(&room, "a0", "plain").await.unwrap();
    assert_eq!(resent, acked[0], "a resend is acked with the original seq");
    let refused = ann.chat(&room, "empty", "<b></b>").await.unwrap_err();
    assert_code(
        &refused,
        ErrorCode::InvalidMessage,
        "blank after sanitizing",
    );

    let mut seqs: Vec<Seq> = acked.iter().map(|seq| seq.expect("a seq")).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        2 * EACH,
        "every chat was stored under its own seq"
    );
    let mut verdicts = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(QUIET, replies.next()).await {
        if let Ok(reply) = event::decode::<ModerationReply>(&msg.payload) {
            verdicts.push(reply.verdict);
        }
    }
    let stored = verdicts
        .iter()
        .filter(|verdict| matches!(verdict, Verdict::Stored { .. }))
        .count();
    let rejected = verdicts
        .iter()
        .filter(|verdict| matches!(verdict, Verdict::Rejected { .. }))
        .count();
    assert_eq!(
        (stored, rejected),
        (1, 1),
        "moderator replies to chat: only the resend's and the refusal's"
    );
    drop((ann, bob));
    system.finish().await;
}
