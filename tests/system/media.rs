//! Calls through media nodes: placement, forwarding, moving off a node
//! that died or drains, and joins the node refuses. Participants are
//! synthetic WebRTC sessions on loopback ([`Participant`]).

use std::time::Duration;

use schemas::call::{CallJoin, CallReply};
use schemas::client::{ClientFrame, PresenceEvent, ServerFrame};
use schemas::code::ErrorCode;
use schemas::event;
use schemas::id::RoomId;
use schemas::subject;
use tokio::time::Instant;

use crate::harness::{
    Client, FRAME_TIMEOUT, Options, Participant, System, assert_code, get_json, room, token,
    token_with,
};

/// How long forwarded media may take to arrive once a call is set up.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(10);

fn with_media(nodes: usize) -> Options {
    Options {
        media_nodes: nodes,
        ..Options::default()
    }
}

/// Sends `call_join` with the participant's offer and hands it the answer.
async fn call(client: &mut Client, room: &RoomId, participant: &mut Participant) {
    client
        .send(&ClientFrame::CallJoin {
            room: room.clone(),
            sdp: participant.offer.clone(),
        })
        .await;
    match client.recv().await {
        ServerFrame::CallAnswer {
            room: answered,
            sdp,
        } => {
            assert_eq!(&answered, room);
            participant.answered(sdp);
        }
        other => panic!("expected call_answer, got {other:?}"),
    }
}

/// Waits for `call_moved` about `room`, skipping other frames.
async fn moved(client: &mut Client, room: &RoomId) {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no call_moved");
        match client.recv().await {
            ServerFrame::CallMoved { room: moved } if &moved == room => return,
            _ => {}
        }
    }
}

/// Both members are told `call_moved`, join again with new sessions and
/// hear each other; returns when both were told.
async fn rejoin_after_move(ann: &mut Client, bob: &mut Client, room: &RoomId) -> Instant {
    moved(ann, room).await;
    moved(bob, room).await;
    let told = Instant::now();
    let (mut ann_call, mut bob_call) = (
        Participant::start(true).await,
        Participant::start(true).await,
    );
    call(ann, room, &mut ann_call).await;
    call(bob, room, &mut bob_call).await;
    assert!(ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await);
    assert!(bob_call.hears(ann.conn_id.as_str(), MEDIA_TIMEOUT).await);
    told
}

/// Writes into the calls bucket that the other of two media nodes holds
/// `room`'s call, as a node taking it over would (with NATS users, as the
/// media user, which owns the bucket); returns that node's index.
async fn take_over(system: &System, room: &RoomId) -> usize {
    let holder = system.media_node_of(room).await.expect("placed");
    let taker = 1 - holder;
    let user = system.nats.with_users.then_some("media");
    let js = async_nats::jetstream::new(system.nats.connect_as(user).await);
    let calls = js
        .get_key_value(subject::CALLS_BUCKET)
        .await
        .expect("the calls bucket opens");
    let node = system.media[taker].id.as_str().to_owned();
    calls
        .put(subject::room_key(room), node.into())
        .await
        .expect("the takeover is written");
    taker
}

/// Two members on two gateways, each in the call through the media node.
async fn two_in_a_call(system: &System, room: &RoomId) -> [(Client, Participant); 2] {
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    ann.join(room, None).await;
    bob.join(room, None).await;
    let mut ann_call = Participant::start(true).await;
    let mut bob_call = Participant::start(true).await;
    call(&mut ann, room, &mut ann_call).await;
    call(&mut bob, room, &mut bob_call).await;
    [(ann, ann_call), (bob, bob_call)]
}

#[tokio::test]
async fn a_call_forwards_each_participants_media_to_the_others_only() {
    let system = System::start(with_media(1)).await;
    let room = room("call");
    let [(ann, ann_call), (bob, bob_call)] = two_in_a_call(&system, &room).await;
    assert!(
        ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await,
        "ann hears bob"
    );
    assert!(
        bob_call.hears(ann.conn_id.as_str(), MEDIA_TIMEOUT).await,
        "bob hears ann"
    );
    assert_eq!(
        ann_call.senders(),
        [bob.conn_id.to_string()],
        "nobody else, not herself"
    );
    assert_eq!(system.media_node_of(&room).await, Some(0));
    ann.close().await;
    bob.close().await;
    system.finish().await;
}

#[tokio::test]
async fn welcome_says_whether_a_media_service_runs() {
    for (nodes, expected) in [(1, true), (0, false)] {
        let system = System::start(with_media(nodes)).await;
        let mut connection = Client::open(system.gateways[0]).await;
        let welcome = connection
            .authenticate(&token("ann"))
            .await
            .expect("welcomed");
        assert_eq!(welcome.media, expected, "with {nodes} media nodes");
        drop(connection);
        system.finish().await;
    }
}

#[tokio::test]
async fn two_gateways_starting_one_rooms_call_at_once_start_it_on_one_node() {
    let system = System::start(with_media(2)).await;
    for attempt in 0..3 {
        let room = room(&format!("race{attempt}"));
        let mut ann = Client::connect(system.gateways[0], "ann").await;
        let mut bob = Client::connect(system.gateways[1], "bob").await;
        ann.join(&room, None).await;
        bob.join(&room, None).await;
        let (mut ann_call, mut bob_call) = (
            Participant::start(true).await,
            Participant::start(true).await,
        );
        tokio::join!(
            call(&mut ann, &room, &mut ann_call),
            call(&mut bob, &room, &mut bob_call)
        );
        assert!(
            ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await
                && bob_call.hears(ann.conn_id.as_str(), MEDIA_TIMEOUT).await,
            "both ended up in one call"
        );
        assert!(system.media_node_of(&room).await.is_some());
        ann.close().await;
        bob.close().await;
    }
    system.finish().await;
}

#[tokio::test]
async fn a_killed_media_nodes_calls_move_to_another() {
    let mut system = System::start(with_media(2)).await;
    let room = room("kill");
    let [(mut ann, ann_call), (mut bob, _bob_call)] = two_in_a_call(&system, &room).await;
    assert!(ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await);
    let holder = system.media_node_of(&room).await.expect("placed");
    let killed = Instant::now();
    system.kill_media(holder).await;
    let told = rejoin_after_move(&mut ann, &mut bob, &room).await;
    let told = told.duration_since(killed);
    let back = killed.elapsed();
    assert_eq!(system.media_node_of(&room).await, Some(1 - holder));
    assert!(
        back < Duration::from_secs(10),
        "media back after {back:?} (told after {told:?})"
    );
    ann.close().await;
    bob.close().await;
    system.finish().await;
}

/// A node takes a call over when it stops hearing the node that held it,
/// while the gateways may still hear that node (here: the takeover is
/// written as that other node would). Every connection must follow the
/// placement, or the room's call stays split across two nodes. Before the
/// gateways watched the calls bucket, nobody was told `call_moved`.
#[tokio::test]
async fn a_call_taken_over_by_another_node_moves_every_connection() {
    let system = System::start(with_media(2)).await;
    let room = room("takeover");
    let [(mut ann, ann_call), (mut bob, bob_call)] = two_in_a_call(&system, &room).await;
    assert!(ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await);
    drop((ann_call, bob_call));
    let taker = take_over(&system, &room).await;
    rejoin_after_move(&mut ann, &mut bob, &room).await;
    assert_eq!(system.media_node_of(&room).await, Some(taker));
    ann.close().await;
    bob.close().await;
    system.finish().await;
}

/// A bucket's watch outlives the loss of its consumer. The ordered
/// consumer behind a watch lives on one NATS node; when that node dies, or
/// the connection stays away past its heartbeats, the client makes it again
/// under a name (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`), which
/// the deployment's NATS users did not allow: after the fault suite's NATS
/// faults, gateways logged permission violations and no longer heard
/// where calls moved, and media nodes no longer heard who left a room.
/// Here, with compose's users, the gateways' consumers are deleted as a
/// node's death would lose them: each gateway must make its own again,
/// and a takeover written after that must still move both members.
#[tokio::test]
async fn a_call_taken_over_after_the_gateways_watches_were_lost_moves_every_connection() {
    let system = System::start(Options {
        nats_users: true,
        ..with_media(2)
    })
    .await;
    let room = room("watch-lost");
    let [(mut ann, ann_call), (mut bob, bob_call)] = two_in_a_call(&system, &room).await;
    assert!(ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await);
    drop((ann_call, bob_call));
    let calls_consumers = || async {
        let jsz = get_json(
            system.nats.monitor,
            "/jsz?accounts=true&streams=true&consumers=true",
        )
        .await;
        let mut names = Vec::new();
        for account in jsz["account_details"].as_array().into_iter().flatten() {
            for stream in account["stream_detail"].as_array().into_iter().flatten() {
                if stream["name"] == "KV_CAVLO_CALLS" {
                    for consumer in stream["consumer_detail"].as_array().into_iter().flatten() {
                        names.push(consumer["name"].as_str().unwrap().to_owned());
                    }
                }
            }
        }
        names
    };
    // One watch per gateway, each opened in the background at start-up.
    let deadline = Instant::now() + FRAME_TIMEOUT;
    let lost = loop {
        let watching = calls_consumers().await;
        if watching.len() == 2 {
            break watching;
        }
        assert!(
            Instant::now() < deadline,
            "not one watch per gateway: {watching:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The gateway's own user may delete its consumers.
    let js = async_nats::jetstream::new(system.nats.connect_as(Some("gateway")).await);
    let stream = js.get_stream("KV_CAVLO_CALLS").await.expect("stream info");
    for name in &lost {
        stream
            .delete_consumer(name)
            .await
            .expect("consumer deleted");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let made = calls_consumers().await;
        if made.len() == 2 && made.iter().all(|name| !lost.contains(name)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateways did not watch the calls bucket again: {made:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    take_over(&system, &room).await;
    rejoin_after_move(&mut ann, &mut bob, &room).await;
    ann.close().await;
    bob.close().await;
    system.finish().await;
}

#[tokio::test]
async fn a_draining_media_node_moves_its_calls_at_once() {
    let system = System::start(with_media(2)).await;
    let room = room("drain");
    let [(mut ann, ann_call), (mut bob, bob_call)] = two_in_a_call(&system, &room).await;
    assert!(ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await);
    drop((ann_call, bob_call));
    let holder = system.media_node_of(&room).await.expect("placed");
    let stopped = Instant::now();
    system.stop_media(holder);
    rejoin_after_move(&mut ann, &mut bob, &room).await;
    let back = stopped.elapsed();
    assert!(back < Duration::from_secs(2), "media back after {back:?}");
    assert_eq!(system.media_node_of(&room).await, Some(1 - holder));
    ann.close().await;
    bob.close().await;
    system.finish().await;
}

/// A member the moderators remove without its gateway's word (here its
/// gateway is cut off NATS, so it cannot leave the call for it) must
/// neither hear the call nor be heard in it any longer: the node follows
/// the room's members. Before the node watched the rooms bucket, the two
/// went on hearing each other for as long as the removed one's session
/// lived.
#[tokio::test]
async fn a_member_removed_from_the_room_is_dropped_from_its_call() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut options = with_media(1);
    options.moderator.gateway_timeout = TIMEOUT;
    options.gateway.gateway_timeout = TIMEOUT;
    options.gateway.heartbeat_interval = Duration::from_millis(500);
    let system = System::start(options).await;
    let room = room("removed");
    let [(mut ann, ann_call), (bob, bob_call)] = two_in_a_call(&system, &room).await;
    assert!(ann_call.hears(bob.conn_id.as_str(), MEDIA_TIMEOUT).await);
    assert!(bob_call.hears(ann.conn_id.as_str(), MEDIA_TIMEOUT).await);

    system.cut_gateway(1);
    loop {
        match ann.next_presence().await {
            ServerFrame::Presence { event, member, .. }
                if event == PresenceEvent::Leave && member.conn_id == bob.conn_id =>
            {
                break;
            }
            _ => {}
        }
    }
    // The removal reaches the node through the bucket within moments.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !ann_call.hears(bob.conn_id.as_str(), TIMEOUT).await,
        "ann still hears bob after the room removed him"
    );
    assert!(
        !bob_call.hears(ann.conn_id.as_str(), TIMEOUT).await,
        "bob still hears the call after the room removed him"
    );
    system.restore_gateway(1);
    ann.close().await;
    drop(bob);
    system.finish().await;
}

#[tokio::test]
async fn joins_a_node_refuses_change_nothing() {
    let system = System::start(with_media(1)).await;
    let room = room("refused");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let offer = Participant::start(true).await.offer.clone();

    // Not a member: the gateway refuses before any node hears of it.
    ann.send(&ClientFrame::CallJoin {
        room: room.clone(),
        sdp: offer.clone(),
    })
    .await;
    let refusal = ann.next_error().await;
    assert_code(&refusal, ErrorCode::NotInRoom, "call before join");
    assert_eq!(
        refusal.request.as_deref(),
        Some("call_join"),
        "the refusal names the request it answers"
    );

    // Nor does the node take a join straight over NATS for a stranger.
    let nats = system.nats.connect().await;
    let join = CallJoin {
        room: room.clone(),
        conn: "stranger".into(),
        user: "mallory".into(),
        gateway: "gw".into(),
        publish: true,
        offer: offer.clone(),
    };
    let node = &system.media[0].id;
    let reply = nats
        .request(subject::media_join(node), event::encode(&join).into())
        .await
        .expect("the node answers");
    match event::decode::<CallReply>(&reply.payload).unwrap() {
        CallReply::Refused { code, .. } => assert_eq!(code, ErrorCode::NotInRoom),
        other => panic!("a stranger's join: {other:?}"),
    }

    ann.join(&room, None).await;
    // An offer that is not SDP.
    ann.send(&ClientFrame::CallJoin {
        room: room.clone(),
        sdp: "hello".into(),
    })
    .await;
    assert_code(
        &ann.next_error().await,
        ErrorCode::InvalidMessage,
        "not SDP",
    );

    // A viewer's offer that sends audio.
    let viewer = token_with("vic", serde_json::json!({"viewer": true}));
    let mut vic = Client::connect_with(system.gateways[0], &viewer).await;
    vic.join(&room, None).await;
    vic.send(&ClientFrame::CallJoin {
        room: room.clone(),
        sdp: offer.clone(),
    })
    .await;
    assert_code(
        &vic.next_error().await,
        ErrorCode::Forbidden,
        "viewer publishing",
    );

    // More joins than the burst (5) at once: the rest are rate limited.
    let mut limited = 0;
    for _ in 0..7 {
        ann.send(&ClientFrame::CallJoin {
            room: room.clone(),
            sdp: "not sdp".into(),
        })
        .await;
    }
    for _ in 0..7 {
        let error = ann.next_error().await;
        if error.code == ErrorCode::RateLimited {
            limited += 1;
        } else {
            assert_code(&error, ErrorCode::InvalidMessage, "within the burst");
        }
    }
    // One join was spent on the offer that is not SDP; the bucket refills
    // one every 2 s.
    assert!((2..=3).contains(&limited), "{limited} of 7 rate limited");

    // None of them placed the call; a viewer that only receives may join.
    assert_eq!(system.media_node_of(&room).await, None);
    let mut watching = Participant::start(false).await;
    call(&mut vic, &room, &mut watching).await;
    assert_eq!(system.media_node_of(&room).await, Some(0));
    ann.close().await;
    vic.close().await;
    system.finish().await;
}
