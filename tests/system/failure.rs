//! A failing dependency gives clients an error, never a hang.

use moderator::config::ModeratorConfig;
use schemas::client::{ClientFrame, PresenceEvent, ServerFrame, SignalKind};
use schemas::code::{CloseCode, ErrorCode};
use schemas::event::{self, Action, ModerationReply, ModerationRequest, Verdict};
use schemas::id::{ModeratorId, RoomId, Seq};
use schemas::subject;
use serde_json::json;

use std::time::Duration;

use futures_util::StreamExt;

use tokio::time::Instant;

use crate::harness::{
    Client, FRAME_TIMEOUT, Options, REQUEST_TIMEOUT, System, assert_code, get_json, room, signal,
};

#[tokio::test]
async fn with_nats_down_requests_fail_with_unavailable_and_recover() {
    let system = System::one_gateway().await;
    let room = room("outage");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&room, None).await;
    ann.chat(&room, "before", "ok").await.unwrap();

    system.nats.container.pause().await.expect("pause NATS");
    let asked = Instant::now();
    let error = ann.chat(&room, "during", "lost?").await.unwrap_err();
    assert_code(&error, ErrorCode::Unavailable, "chat with NATS paused");
    // One request timeout, not two in a row.
    let took = asked.elapsed();
    assert!(
        took < REQUEST_TIMEOUT + Duration::from_secs(1),
        "unavailable after {took:?}"
    );
    ann.send(&ClientFrame::Join {
        room: crate::harness::room("other"),
        since: None,
        replaces: None,
    })
    .await;
    assert_code(
        &ann.next_error().await,
        ErrorCode::Unavailable,
        "join with NATS paused",
    );
    ann.assert_alive().await;

    system.nats.container.unpause().await.expect("unpause NATS");
    // The client retries its message as the protocol asks; it is stored once.
    let mut retry = 0;
    let seq = loop {
        match ann.chat(&room, "during", "lost?").await {
            Ok(seq) => break seq,
            Err(error) => {
                assert_code(&error, ErrorCode::Unavailable, "retry while reconnecting");
                retry += 1;
                assert!(retry < 20, "never recovered");
            }
        }
    };
    let (history, _, _) = ann.join(&room, None).await;
    let ids: Vec<&str> = history.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["before", "during"]);
    assert_eq!(history.last().map(|m| m.seq), seq);
    // The join sent while NATS was paused reaches a moderator after the
    // gateway gave up on it and queued the leave that undoes it; whichever
    // the moderator applies first, no member may be left that nobody holds.
    // That it did reach one is shown by the moderators' count: the first
    // join, the paused one and the last (a leave check that passes because
    // the join never arrived would prove nothing).
    let joins = || {
        let texts: Vec<String> = system
            .moderator_metrics
            .iter()
            .map(|m| m.encode())
            .collect();
        crate::metrics::total(&texts, "cavlo_moderator_requests_total{action=\"join\"}")
    };
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while joins() < 3.0 {
        assert!(
            Instant::now() < deadline,
            "the paused join never reached a moderator: {} joins",
            joins()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ann);
    system.finish().await;
}

/// With NATS stopped (not paused: the connections drop), a request is
/// answered `unavailable` within one request timeout. Found as an operator
/// would: it took two timeouts in a row.
#[tokio::test]
async fn with_nats_stopped_a_chat_is_refused_within_one_request_timeout() {
    let system = System::one_gateway().await;
    let room = room("stopped");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&room, None).await;
    ann.chat(&room, "before", "ok").await.unwrap();

    system.nats.container.stop().await.expect("stop NATS");
    for id in ["during-1", "during-2"] {
        let asked = Instant::now();
        let error = ann.chat(&room, id, "lost?").await.unwrap_err();
        assert_code(&error, ErrorCode::Unavailable, "chat with NATS stopped");
        let took = asked.elapsed();
        assert!(
            took < REQUEST_TIMEOUT + Duration::from_secs(1),
            "{id}: unavailable after {took:?}"
        );
    }
    // NATS does not come back here, so the services cannot finish their
    // departures: dropping the system stops them without waiting.
    drop((ann, system));
}

/// A client that closes while its requests wait on a slow store is let go
/// at once, without working through the requests it left behind. Found by
/// the fault suite: a client reconnecting after a NATS leader change found
/// its previous connection still holding its seat (`room_full`), because
/// the gateway read that connection's close only after each buffered chat
/// had waited out the request timeout.
#[tokio::test]
async fn a_client_that_closes_while_its_requests_wait_is_let_go_at_once() {
    let system = System::one_gateway().await;
    let g = system.gateways[0];
    let room = room("closing");
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&room, None).await;

    system.nats.container.pause().await.expect("pause NATS");
    for i in 0..3 {
        ann.send(&ClientFrame::Chat {
            room: room.clone(),
            id: format!("c{i}").as_str().into(),
            text: "waits".into(),
        })
        .await;
    }
    ann.close().await;
    let closed = Instant::now();
    // /health is the gateway's own: it answers with NATS paused.
    while get_json(g, "/health").await["connections"] != 0 {
        // Working through the buffered requests took one timeout each.
        assert!(
            closed.elapsed() < REQUEST_TIMEOUT * 2,
            "the connection outlived its client while its requests waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    system.nats.container.unpause().await.expect("unpause NATS");
    system.finish().await;
}

/// In a quiet room a client that stops reading fills no queue, but the
/// gateway's write to it blocks: past the write timeout it is closed as a
/// slow consumer too, and a client reading again in time gets the code
/// after what was on its way (it used to be dropped without one). The
/// close is timed by the gateway's own count of 4100 closes: not before
/// the write timeout (no write can block before the first send), nor long
/// after it.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4100_after_the_write_timeout() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
    let mut options = Options::one_gateway();
    options.gateway.write_timeout = WRITE_TIMEOUT;
    options.moderator.chat_rate_per_minute = 60_000;
    options.moderator.chat_burst = 1_000;
    let system = System::start(options).await;
    let g = system.gateways[0];
    let room = room("quiet");
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&room, None).await;
    let mut slow = Client::connect_with_receive_buffer(g, "slow", 4096).await;
    slow.join(&room, None).await;
    // More than the socket buffers hold (64 KiB on the gateway's side, as
    // the kernel counts it twice), far fewer bytes than the queue's 1 MiB.
    let text = "x".repeat(2000);
    let first_send = Instant::now();
    for i in 0..120 {
        ann.chat(&room, &format!("m{i}"), &text).await.unwrap();
    }
    let sent = first_send.elapsed();
    // The gateway's write blocked during those sends and times out
    // WRITE_TIMEOUT later, when it counts the close; its close frame may
    // then go out for as long again. Read again in that window.
    let closed = loop {
        let counted = crate::metrics::sample(
            &system.gateway_metrics[0].encode(),
            "cavlo_gateway_closed_total{code=\"4100\"}",
        );
        if counted.is_some_and(|closes| closes >= 1.0) {
            assert_eq!(counted, Some(1.0), "only the slow client is closed");
            break first_send.elapsed();
        }
        assert!(
            first_send.elapsed() < sent + WRITE_TIMEOUT * 2,
            "no 4100 close counted {:?} after the first send",
            first_send.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        closed >= WRITE_TIMEOUT,
        "closed {closed:?} after the first send, before the write timeout ({WRITE_TIMEOUT:?})"
    );
    let (_, code) = slow.chats_until_close().await;
    assert_eq!(code, 4100);
    ann.assert_alive().await;
    drop((ann, slow));
    system.finish().await;
}

/// Sends `count` chats of `size` characters into `room`, each after the
/// last was acked; their seqs.
async fn chats_acked(client: &mut Client, room: &RoomId, count: usize, size: usize) -> Vec<Seq> {
    let text = "x".repeat(size);
    let mut acked = Vec::new();
    for i in 0..count {
        let ack = client
            .chat_acked(room, &format!("m{i}"), &text)
            .await
            .unwrap();
        acked.push(ack.seq.expect("a first send has its seq"));
    }
    acked
}

/// Issue 29, item 1: a client that pauses while its room is busy (a tab
/// busy for a moment) is not a slow consumer. 1,000 chats arrive while it
/// reads nothing, more than the socket buffers hold, so hundreds of frames
/// wait in its gateway's queue; it then reads every one, in order, and is
/// still connected. When the queue was bounded at 256 frames, it was
/// closed with 4100 instead.
#[tokio::test]
async fn a_client_that_pauses_through_a_burst_gets_all_of_it_and_stays() {
    let mut options = Options::one_gateway();
    options.moderator.chat_rate_per_minute = 60_000;
    options.moderator.chat_burst = 2_000;
    let system = System::start(options).await;
    let g = system.gateways[0];
    let room = room("burst");
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&room, None).await;
    let mut paused = Client::connect_with_receive_buffer(g, "paused", 4096).await;
    paused.join(&room, None).await;

    let acked = chats_acked(&mut ann, &room, 1_000, 100).await;
    let mut got = Vec::new();
    while got.len() < acked.len() {
        got.push(paused.next_chat().await.seq);
    }
    assert_eq!(got, acked, "every message once, in order");
    paused.assert_alive().await;
    drop((ann, paused));
    system.finish().await;
}

/// Issue 10, item 5: a slow consumer was dropped without its close frame.
/// A client that stops reading in a busy room fills the gateway's queue for
/// it; the gateway closes it with 4100 after the frames already on their
/// way, so the client, reading again, gets them and then the code. Its
/// roommate is untouched, and resuming with `since` gets the rest once.
#[tokio::test]
async fn a_slow_consumer_gets_its_close_code_and_resumes_with_nothing_lost() {
    let mut options = Options::one_gateway();
    // About 14 of its 1,000-character chats.
    options.gateway.send_queue_bytes = 16 * 1024;
    options.moderator.chat_rate_per_minute = 60_000;
    options.moderator.chat_burst = 1_000;
    options.history.backlog_size = 1_000;
    let system = System::start(options).await;
    let g = system.gateways[0];
    let room = room("busy");
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&room, None).await;
    // A small receive buffer, so the gateway's queue, not the kernel's
    // buffers, takes what the client does not read.
    let mut slow = Client::connect_with_receive_buffer(g, "slow", 4096).await;
    slow.join(&room, None).await;

    let acked = chats_acked(&mut ann, &room, 300, 1000).await;

    let (mut got, code) = slow.chats_until_close().await;
    assert_eq!(code, 4100, "closed as a slow consumer");
    assert!(got.len() < acked.len(), "it was closed before the end");
    assert_eq!(got, acked[..got.len()], "what it got came in order");
    ann.assert_alive().await;

    let mut back = Client::connect(g, "slow").await;
    let since = got.last().copied().unwrap_or(Seq(0));
    let (history, _, truncated) = back.join(&room, Some(since)).await;
    got.extend(history.iter().map(|chat| chat.seq));
    assert_eq!(got, acked, "every message once, in order");
    assert!(!truncated);
    drop((ann, slow, back));
    system.finish().await;
}

/// A client whose network dropped leaves a half-open socket that, in a quiet
/// room, nothing written would ever fail on: it kept its seat and a slot of
/// its user's cap for good. The gateway pings a silent client and closes
/// one that answers nothing for the idle timeout (4107), freeing its seat,
/// while one that reads (and so answers pings, as browsers do) stays,
/// sending nothing. The silent client's socket holds the pings and then
/// the close frame with 4107.
#[tokio::test]
async fn a_client_that_answers_no_pings_is_closed_as_idle_and_one_that_reads_stays() {
    const IDLE: Duration = Duration::from_secs(1);
    let mut options = Options::one_gateway();
    options.gateway.idle_timeout = IDLE;
    let system = System::start(options).await;
    let g = system.gateways[0];
    let room = room("quiet");
    let mut gone = Client::connect(g, "gone").await;
    gone.join(&room, None).await;
    let mut here = Client::connect(g, "here").await;
    here.join(&room, None).await;

    // `gone` reads nothing from now on, as if its network dropped; `here`
    // only reads.
    here.read_for(IDLE * 3).await;
    match here.next_presence().await {
        ServerFrame::Presence { event, member, .. } => {
            assert_eq!(
                (event, member.conn_id),
                (PresenceEvent::Leave, gone.conn_id.clone())
            );
        }
        other => panic!("expected presence, got {other:?}"),
    }
    assert_eq!(
        get_json(g, "/health").await["connections"],
        1,
        "only `here` is left"
    );
    here.assert_alive().await;
    assert_eq!(gone.close_code_unanswered().await, CloseCode::Idle.code());
    drop(here);
    system.finish().await;
}

/// History stopped (crashed, or being redeployed): a join, which needs the
/// backlog, is refused with `unavailable` at once rather than after a
/// timeout, while chat in rooms already joined still flows and is stored;
/// once history is back, joins work and get what was said meanwhile.
#[tokio::test]
async fn with_history_down_joins_fail_at_once_chat_flows_and_history_back_serves_it() {
    let mut system = System::one_gateway().await;
    let g = system.gateways[0];
    let room = room("historyless");
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&room, None).await;
    let before = ann.chat(&room, "a1", "before").await.unwrap().unwrap();

    system.stop_history().await;
    let mut bob = Client::connect(g, "bob").await;
    let asked = Instant::now();
    let error = bob.try_join(&room, None).await.unwrap_err();
    assert_code(&error, ErrorCode::Unavailable, "join without history");
    // Waiting for an answer would take the request timeout.
    assert!(
        asked.elapsed() < REQUEST_TIMEOUT,
        "refused after {:?}, not at once",
        asked.elapsed()
    );
    let during = ann.chat(&room, "a2", "during").await.unwrap().unwrap();

    system.start_history().await;
    let (history, _, truncated) = bob.join(&room, None).await;
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [before, during]
    );
    assert!(!truncated);
    drop((ann, bob));
    system.finish().await;
}

/// NATS stopped and started again on its data, as a crash or a redeploy of
/// the server does: unlike a pause, every connection to it drops. Clients
/// on both gateways keep their sockets; once NATS is back, chat is stored
/// and reaches every member live, exactly once and in order, nothing stored
/// before is lost, and a client resuming from the last seq it saw gets
/// exactly what came after.
#[tokio::test]
async fn after_nats_restarts_on_its_data_chat_flows_live_and_resume_works() {
    let system = System::start(Options {
        restartable_nats: true,
        ..Options::default()
    })
    .await;
    let room = room("restart");
    let mut clients = Vec::new();
    for (user, gateway) in [("ann", 0), ("bob", 0), ("cat", 1), ("dan", 1)] {
        let mut client = Client::connect(system.gateways[gateway], user).await;
        client.join(&room, None).await;
        clients.push(client);
    }
    let before = clients[0]
        .chat(&room, "before", "said before the restart")
        .await
        .unwrap()
        .expect("a stored chat has a seq");
    for client in &mut clients[1..] {
        assert_eq!(client.next_chat().await.seq, before);
    }

    system.nats.stop().await;
    system.nats.start_again().await;

    // The services reconnect by themselves; meanwhile a chat is refused as
    // `unavailable`, and the client sends it again, as the protocol asks.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match clients[2].chat(&room, "after", "said after it").await {
            Ok(seq) => break seq.expect("a stored chat has a seq"),
            Err(error) => {
                assert_code(&error, ErrorCode::Unavailable, "chat while NATS returns");
                assert!(
                    Instant::now() < deadline,
                    "nothing stored 30 s after NATS returned"
                );
                // Within the chat rate (100 a minute after a burst of 10).
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    assert!(
        after > before,
        "seqs go on after the restart: {before} then {after}"
    );
    let marker = clients[0]
        .chat(&room, "marker", "and one more")
        .await
        .unwrap()
        .expect("a stored chat has a seq");
    for (i, client) in clients.iter_mut().enumerate() {
        let expected: &[&str] = match i {
            0 => &["after"],
            2 => &["marker"],
            _ => &["after", "marker"],
        };
        for id in expected {
            assert_eq!(
                client.next_chat().await.id.as_str(),
                *id,
                "client {i}, live"
            );
        }
    }

    let mut eve = Client::connect(system.gateways[1], "eve").await;
    let (resumed, last, truncated) = eve.join(&room, Some(before)).await;
    let ids: Vec<&str> = resumed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["after", "marker"], "resumed from {before}");
    assert_eq!((last, truncated), (marker, false));
    let (all, _, _) = Client::connect(system.gateways[0], "fay")
        .await
        .join(&room, None)
        .await;
    let ids: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        ["before", "after", "marker"],
        "nothing stored was lost"
    );
    drop((clients, eve));
    system.finish().await;
}

/// A connection's moderator dies, as in a crash: the connection's next
/// requests (chat of its room, a signal, a join) are answered by another
/// moderator at once, without an `unavailable`, and its chat budget starts
/// full there, as docs/architecture.md says: one more burst, and no more.
#[tokio::test]
async fn when_a_connections_moderator_dies_its_next_requests_go_to_another() {
    // A rate so low that no token comes back during the test: what a
    // bucket holds is what it started with.
    let moderator = ModeratorConfig {
        chat_rate_per_minute: 1,
        ..ModeratorConfig::default()
    };
    let burst = moderator.chat_burst;
    let mut system = System::start(Options {
        moderators: 1,
        moderator,
        ..Options::one_gateway()
    })
    .await;
    let g = system.gateways[0];
    let room = room("moved");
    let (mut ann, mut bob) = (
        Client::connect(g, "ann").await,
        Client::connect(g, "bob").await,
    );
    ann.join(&room, None).await;
    bob.join(&room, None).await;
    // Ann spends her whole burst at the only moderator, which also stores
    // the room and holds her sticky budgets.
    for i in 0..burst {
        ann.chat(&room, &format!("burst-{i}"), "x").await.unwrap();
    }
    let refused = ann.chat(&room, "over", "x").await.unwrap_err();
    assert_code(&refused, ErrorCode::RateLimited, "past the burst");

    system.start_moderator().await;
    system.kill_moderator(0).await;

    // A whole burst again, and no more: the new moderator's bucket for
    // this connection starts full.
    let mut after = None;
    for i in 0..burst {
        after = ann
            .chat(
                &room,
                &format!("after-{i}"),
                "stored by the other moderator",
            )
            .await
            .expect("answered by the live moderator, with a full budget");
    }
    let after = after.expect("a stored chat has a seq");
    let refused = ann.chat(&room, "over-again", "x").await.unwrap_err();
    assert_code(&refused, ErrorCode::RateLimited, "past the new burst");
    ann.send(&signal(
        &room,
        &bob.conn_id,
        SignalKind::Offer,
        json!({"type": "offer", "sdp": "v=0"}),
    ))
    .await;
    let other = crate::harness::room("other");
    ann.join(&other, None).await;
    let mut seen = Vec::new();
    while seen.len() < 2 * burst as usize {
        seen.push(bob.next_chat().await);
    }
    assert_eq!(seen.last().map(|chat| chat.seq), Some(after));
    assert!(
        matches!(
            bob.recv().await,
            ServerFrame::Signal {
                kind: SignalKind::Offer,
                ..
            }
        ),
        "the signal was relayed"
    );
    drop((ann, bob));
    system.finish().await;
}

/// A join the moderator answered `unavailable` may have been admitted all
/// the same: a rooms-bucket write whose ack timed out can still be stored.
/// The gateway must then withdraw it, as it does a join it heard no answer
/// to, or the seat stays taken for as long as the gateway lives: the
/// cut-nats fault run in CI left such a ghost, and its room refused the
/// member's own rejoin (`room_full`) until the run ended. The moderator
/// here is the test, answering as one whose write timed out: the gateway's
/// leave naming the connection and the join's attempt must follow, and the
/// connection's next join of the room must wait for it (issue 26).
#[tokio::test]
async fn a_join_answered_unavailable_is_withdrawn_before_the_next() {
    let system = System::start(Options {
        moderators: 0,
        ..Options::one_gateway()
    })
    .await;
    let nats = system.nats.connect().await;
    let mut requests = nats
        .queue_subscribe(subject::MODERATE, subject::MODERATOR_QUEUE.into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let answer = |request: &async_nats::Message, verdict: Verdict| {
        let reply = ModerationReply {
            moderator: ModeratorId::from("test"),
            verdict,
        };
        let to = request
            .reply
            .clone()
            .expect("a request has a reply subject");
        let nats = nats.clone();
        async move {
            nats.publish(to, event::encode(&reply).into())
                .await
                .unwrap()
        }
    };
    let room = room("withdrawn");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.send(&ClientFrame::Join {
        room: room.clone(),
        since: None,
        replaces: None,
    })
    .await;
    let (message, request) = next_request(&mut requests).await;
    let Action::Join {
        attempt: joined, ..
    } = request.action
    else {
        panic!("expected the join, got {:?}", request.action);
    };
    answer(
        &message,
        Verdict::unavailable("room membership unavailable"),
    )
    .await;
    let error = ann.next_error().await;
    assert_code(&error, ErrorCode::Unavailable, "the join");
    let (message, request) = next_request(&mut requests).await;
    match request.action {
        Action::Leave {
            room: left,
            attempt,
        } => {
            assert_eq!(left, room);
            assert_eq!(request.from.conn_id, ann.conn_id);
            assert_eq!(attempt, Some(joined), "the leave names the join's attempt");
        }
        other => panic!("expected the leave withdrawing the join, got {other:?}"),
    }
    // The same connection joins again at once: the join waits for the
    // leave's answer, or the leave, applied after it, would undo it.
    ann.send(&ClientFrame::Join {
        room: room.clone(),
        since: None,
        replaces: None,
    })
    .await;
    // A slow machine may see the leave sent again (its request timed
    // out): the copy stays unanswered too, and the latest is answered.
    let mut leave = message;
    let window = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(message)) = tokio::time::timeout_at(window, requests.next()).await {
        let request: ModerationRequest = event::decode(&message.payload).unwrap();
        match request.action {
            Action::Leave { .. } => leave = message,
            other => panic!("{other:?} overtook the unanswered leave"),
        }
    }
    answer(&leave, Verdict::Done).await;
    let message = loop {
        let (message, request) = next_request(&mut requests).await;
        match request.action {
            Action::Join { .. } => break message,
            Action::Leave { .. } => answer(&message, Verdict::Done).await,
            other => panic!("expected the join once the leave was answered, got {other:?}"),
        }
    };
    let full = Verdict::Rejected {
        code: ErrorCode::RoomFull,
        message: "the room is full".into(),
    };
    answer(&message, full).await;
    assert_code(
        &ann.next_error().await,
        ErrorCode::RoomFull,
        "the next join",
    );
    drop(ann);
    // Not `finish`: with no moderator there is no rooms bucket to check.
    system.shutdown().await;
}

/// The next moderation request a test posing as the moderator receives.
async fn next_request(
    requests: &mut async_nats::Subscriber,
) -> (async_nats::Message, ModerationRequest) {
    let message = tokio::time::timeout(FRAME_TIMEOUT, requests.next())
        .await
        .expect("a request in time")
        .expect("subscribed");
    let request = event::decode(&message.payload).unwrap();
    (message, request)
}
