//! Who is in a room, across gateways: member lists, presence events,
//! capacity under concurrent joins, and no ghosts when a gateway dies.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use gateway::cluster::{REAP_RETRY, SCAN_INTERVAL};
use moderator::config::ModeratorConfig;
use moderator::membership::Membership;
use schemas::client::{ClientFrame, Member, PresenceEvent, ServerFrame, User};
use schemas::code::{CloseCode, ErrorCode};
use schemas::event::{Action, ModerationRequest, Verdict};
use schemas::id::{ConnId, GatewayId, RoomId, UserId};
use tokio::time::Instant;

use crate::harness::{
    Client, FRAME_TIMEOUT, Link, NATS_USERS, Nats, Options, REQUEST_TIMEOUT, SECRET, System,
    assert_code, get_json, moderate, room, service_binary,
};

fn ids(members: &[schemas::client::Member]) -> BTreeSet<ConnId> {
    members.iter().map(|m| m.conn_id.clone()).collect()
}

/// The next presence event as (event, conn id).
async fn next_presence(client: &mut Client) -> (PresenceEvent, ConnId) {
    match client.next_presence().await {
        ServerFrame::Presence { event, member, .. } => (event, member.conn_id),
        other => panic!("expected presence, got {other:?}"),
    }
}

#[tokio::test]
async fn members_and_presence_span_gateways() {
    let system = System::start(Options::default()).await;
    let (g1, g2) = (system.gateways[0], system.gateways[1]);
    let room = room("presence");
    let mut ann = Client::connect(g1, "ann").await;
    let mut bob = Client::connect(g2, "bob").await;
    let mut cat = Client::connect(g1, "cat").await;

    let joined = ann.try_join(&room, None).await.unwrap();
    assert_eq!(ids(&joined.members), [ann.conn_id.clone()].into());
    let joined = bob.try_join(&room, None).await.unwrap();
    assert_eq!(
        ids(&joined.members),
        [ann.conn_id.clone(), bob.conn_id.clone()].into()
    );
    assert_eq!(
        joined
            .members
            .iter()
            .find(|m| m.conn_id == ann.conn_id)
            .unwrap()
            .user
            .id
            .as_str(),
        "ann"
    );
    assert_eq!(
        next_presence(&mut ann).await,
        (PresenceEvent::Join, bob.conn_id.clone())
    );

    let joined = cat.try_join(&room, None).await.unwrap();
    assert_eq!(joined.members.len(), 3);
    for client in [&mut ann, &mut bob] {
        assert_eq!(
            next_presence(client).await,
            (PresenceEvent::Join, cat.conn_id.clone())
        );
    }

    bob.send(&ClientFrame::Leave { room: room.clone() }).await;
    assert_eq!(bob.recv().await, ServerFrame::Left { room: room.clone() });
    for client in [&mut ann, &mut cat] {
        assert_eq!(
            next_presence(client).await,
            (PresenceEvent::Leave, bob.conn_id.clone())
        );
    }

    let cat_id = cat.conn_id.clone();
    cat.close().await;
    assert_eq!(
        next_presence(&mut ann).await,
        (PresenceEvent::Leave, cat_id),
        "leaving by disconnect"
    );
    // No one hears of their own presence: bob joins again, then dave. Ann
    // hears both; bob's next presence is dave's join, so nothing about
    // himself (his leave, his join) is waiting before it, nor anything
    // about ann's before hers (a quiet window would only say that nothing
    // came within it).
    bob.join(&room, None).await;
    let mut dave = Client::connect(g2, "dave").await;
    dave.join(&room, None).await;
    assert_eq!(
        next_presence(&mut ann).await,
        (PresenceEvent::Join, bob.conn_id.clone())
    );
    for client in [&mut ann, &mut bob] {
        assert_eq!(
            next_presence(client).await,
            (PresenceEvent::Join, dave.conn_id.clone()),
            "no one hears of their own presence"
        );
    }
    drop((ann, bob, dave));
    system.finish().await;
}

#[tokio::test]
async fn capacity_is_exact_under_concurrent_joins_through_two_gateways() {
    const CAPACITY: usize = 10;
    let moderator = ModeratorConfig {
        room_capacity: CAPACITY,
        ..ModeratorConfig::default()
    };
    let system = System::start(Options {
        moderators: 2,
        moderator,
        ..Options::default()
    })
    .await;
    let room = room("capacity");
    let mut clients = Vec::new();
    for i in 0..2 * CAPACITY {
        clients.push(Client::connect(system.gateways[i % 2], &format!("user{i}")).await);
    }
    for client in &mut clients {
        client
            .send(&ClientFrame::Join {
                room: room.clone(),
                since: None,
                replaces: None,
            })
            .await;
    }
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    for client in clients {
        let mut client = client;
        match client.join_reply(&room).await {
            Ok(joined) => admitted.push((client, joined.members)),
            Err(error) => {
                assert_code(&error, ErrorCode::RoomFull, "join past capacity");
                refused.push(client);
            }
        }
    }
    assert_eq!((admitted.len(), refused.len()), (CAPACITY, CAPACITY));

    // Every admitted client's view (its joined list plus later presence)
    // converges on the same ten members.
    let expected: BTreeSet<ConnId> = admitted.iter().map(|(c, _)| c.conn_id.clone()).collect();
    for (client, members) in &mut admitted {
        let mut view = ids(members);
        while view != expected {
            match next_presence(client).await {
                (PresenceEvent::Join, id) => {
                    assert!(view.insert(id), "join of a member already listed")
                }
                (PresenceEvent::Leave, id) => panic!("unexpected leave of {id}"),
            }
        }
    }

    for (client, _) in admitted.drain(..3) {
        client.close().await;
    }
    let (mut second, mut third) = (0, 0);
    for client in &mut refused {
        // Departures reach the moderator asynchronously; a refused client
        // retries until three got in, as a real client would.
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            match client.try_join(&room, None).await {
                Ok(joined) => {
                    assert!(joined.members.len() <= CAPACITY);
                    second += 1;
                    break;
                }
                Err(error) if second < 3 && Instant::now() < deadline => {
                    assert_code(&error, ErrorCode::RoomFull, "retry")
                }
                Err(error) => {
                    assert_code(&error, ErrorCode::RoomFull, "full again");
                    third += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(
        (second, third),
        (3, CAPACITY - 3),
        "exactly the three freed slots were taken"
    );
    drop((admitted, refused));
    system.finish().await;
}

/// Starts the gateway binary as its own process, for a test that kills it.
/// On a NATS run as compose runs it, it connects as compose's gateway user.
async fn gateway_process(nats: &Nats) -> (tokio::process::Child, std::net::SocketAddr) {
    gateway_process_at(nats, &nats.url).await
}

/// [`gateway_process`], reaching NATS at `url` (a [`Link`]'s, to cut it).
async fn gateway_process_at(
    nats: &Nats,
    url: &str,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut command = tokio::process::Command::new(service_binary("gateway"));
    if nats.with_users {
        let (user, password) = NATS_USERS[0];
        command
            .env("CAVLO_NATS__USER", user)
            .env("CAVLO_NATS__PASSWORD", password);
    }
    let child = command
        .env("CAVLO_NATS__URL", url)
        .env("CAVLO_GATEWAY__LISTEN", addr.to_string())
        // Compose gives each gateway a fixed id; a restart keeps it.
        .env("CAVLO_GATEWAY__ID", "doomed")
        .env("CAVLO_GATEWAY__AUTH__HS256_SECRET", SECRET)
        .env("CAVLO_GATEWAY__HEARTBEAT_INTERVAL", "500ms")
        .env("CAVLO_GATEWAY__GATEWAY_TIMEOUT", "2s")
        .env("CAVLO_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("gateway binary starts");
    // Wait until it accepts connections (a new process has no other signal).
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "gateway process never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, addr)
}

#[tokio::test]
async fn a_killed_gateway_leaves_no_ghosts() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let moderator = ModeratorConfig {
        room_capacity: 3,
        gateway_timeout: TIMEOUT,
        ..ModeratorConfig::default()
    };
    const HEARTBEAT: Duration = Duration::from_millis(500);
    let mut gateway = Options::default().gateway;
    gateway.heartbeat_interval = HEARTBEAT;
    gateway.gateway_timeout = TIMEOUT;
    let system = System::start(Options {
        moderator,
        gateway,
        ..Options::one_gateway()
    })
    .await;
    let (mut doomed, doomed_addr) = gateway_process(&system.nats).await;
    let room: RoomId = room("ghosts");

    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&room, None).await;
    let mut bob = Client::connect(doomed_addr, "bob").await;
    let mut cat = Client::connect(doomed_addr, "cat").await;
    bob.join(&room, None).await;
    cat.join(&room, None).await;
    let on_doomed: BTreeSet<ConnId> = [bob.conn_id.clone(), cat.conn_id.clone()].into();
    for _ in 0..2 {
        assert_eq!(next_presence(&mut ann).await.0, PresenceEvent::Join);
    }
    let mut dan = Client::connect(system.gateways[0], "dan").await;
    assert_code(
        &dan.try_join(&room, None).await.unwrap_err(),
        ErrorCode::RoomFull,
        "room of three is full",
    );

    doomed.kill().await.expect("SIGKILL the gateway");
    let killed = Instant::now();
    // Restarted at once under the same configured id, as compose does: the
    // old process's members must still be removed.
    let (_restarted, _) = gateway_process(&system.nats).await;
    let mut gone = BTreeSet::new();
    while gone.len() < 2 {
        let (event, id) = next_presence(&mut ann).await;
        assert_eq!(event, PresenceEvent::Leave);
        gone.insert(id);
    }
    let took = killed.elapsed();
    assert_eq!(gone, on_doomed);
    // Not before the dead gateway's last heartbeat timed out...
    assert!(took >= TIMEOUT - HEARTBEAT, "removed early: {took:?}");
    // ...and within what the settings imply on the slow path, where the
    // moderator's view lags and the removal is asked for again, twice over.
    let slow_path = TIMEOUT + SCAN_INTERVAL + REAP_RETRY + SCAN_INTERVAL + REQUEST_TIMEOUT;
    assert!(
        took < slow_path * 2,
        "leave events took {took:?}; the settings imply at most {slow_path:?}"
    );

    let joined = dan
        .try_join(&room, None)
        .await
        .expect("the slots are free again");
    assert_eq!(
        ids(&joined.members),
        [ann.conn_id.clone(), dan.conn_id.clone()].into()
    );
    drop((bob, cat));
    drop((ann, dan));
    system.finish().await;
}

/// Found by stopping a gateway (SIGSTOP) past the timeout: the others
/// removed its members and gave their seats away, yet after SIGCONT its
/// connections were neither told nor closed; they kept receiving and
/// posting to a room they were no longer members of. Now a gateway that
/// finds it stalled past the timeout closes its connections with 4104, and
/// clients rejoin (where there are seats).
#[tokio::test]
async fn a_gateway_stopped_past_the_timeout_closes_its_connections_when_it_resumes() {
    let options = quick_timeouts(false);
    let timeout = options.moderator.gateway_timeout;
    let system = System::start(options).await;
    let (mut stalled, stalled_addr) = gateway_process(&system.nats).await;
    let room = room("stalled");
    let (mut ann, mut bob) = ann_here_bob_there(&system, stalled_addr, &room).await;
    let pid = stalled.id().expect("the gateway runs");
    stop_until_removed(pid, &mut ann, &bob, timeout).await;
    signal_process(pid, "-CONT");
    // Nothing reaches a member the others removed: the close comes first.
    match bob.recv_or_close().await {
        Err(code) => assert_eq!(code, CloseCode::Reset.code(), "bob is told to reconnect"),
        Ok(frame) => panic!("a removed member got {frame:?} before the close"),
    }
    stalled.kill().await.expect("stop the gateway");
    drop((ann, bob));
    system.finish().await;
}

/// One in-process gateway, and gateways and moderators that count a
/// gateway dead after 2 s (heartbeats every 500 ms), as the gateway
/// processes of the stop tests do; `nats_users` runs NATS as compose does.
fn quick_timeouts(nats_users: bool) -> Options {
    let mut gateway = Options::default().gateway;
    gateway.heartbeat_interval = Duration::from_millis(500);
    gateway.gateway_timeout = Duration::from_secs(2);
    Options {
        nats_users,
        moderator: ModeratorConfig {
            gateway_timeout: gateway.gateway_timeout,
            ..ModeratorConfig::default()
        },
        gateway,
        ..Options::one_gateway()
    }
}

/// Ann on the system's gateway and bob on the gateway at `there` join
/// `room`; ann has seen bob join.
async fn ann_here_bob_there(
    system: &System,
    there: std::net::SocketAddr,
    room: &RoomId,
) -> (Client, Client) {
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(room, None).await;
    let mut bob = Client::connect(there, "bob").await;
    bob.join(room, None).await;
    assert_eq!(
        next_presence(&mut ann).await,
        (PresenceEvent::Join, bob.conn_id.clone())
    );
    (ann, bob)
}

/// Stops (SIGSTOP) bob's gateway process `pid` until ann sees bob removed,
/// which the moderators do once it was silent for their `timeout`.
async fn stop_until_removed(pid: u32, ann: &mut Client, bob: &Client, timeout: Duration) {
    signal_process(pid, "-STOP");
    // The moderators' timeout, a scan of the healthy gateway, and slack.
    let removal = timeout + SCAN_INTERVAL + FRAME_TIMEOUT;
    let removed = match ann.next_presence_within(removal).await {
        ServerFrame::Presence { event, member, .. } => (event, member.conn_id),
        other => panic!("expected presence, got {other:?}"),
    };
    assert_eq!(
        removed,
        (PresenceEvent::Leave, bob.conn_id.clone()),
        "the stopped gateway's member is removed"
    );
}

/// Sends a signal to the gateway process `pid` (`-STOP`, `-CONT`).
fn signal_process(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {name}");
}

/// Issue 26, as operators hit it: with compose's nats.conf, NATS drops a
/// gateway stopped past its pings, so the first heartbeat tick after
/// SIGCONT found NATS gone, and the pause was forgotten; the reconnect a
/// moment later looked too short to count. The gateway then served on: its
/// client, no longer a member, kept receiving the room, and its chat was
/// stored. Here the paused gateway's link to NATS is cut before SIGCONT and
/// restored after, which makes that order certain (it was a race before:
/// 4 runs of 12 on a busy machine). Judged from outside, by a client with
/// no timer of its own: the paused gateway's client gets nothing but close
/// 4104, the room's history holds nothing it sent, and the other gateway's
/// member stays. Before, the client got an answer to its chat instead.
#[tokio::test]
async fn a_gateway_paused_and_cut_off_lets_no_ghost_receive_or_post() {
    let mut options = quick_timeouts(true);
    // Only the paused gateway process needs the 2 s: it must find itself
    // out of touch when it resumes. The healthy gateway and the moderators
    // get slack: on a busy machine (the whole suite in parallel, debug
    // builds) the healthy gateway's heartbeats or its own ticks came late
    // enough for the 2 s, and ann was closed with 4104 (removed as a dead
    // gateway's member, or by her gateway's own pause check) while the
    // test was still setting up: twice, once with only the gateway's
    // check given 6 s, and once more in a local CI run with 5 s for both (all of a
    // test's in-process services share its one thread, which the whole
    // suite running at once can starve). The pause outlasts the
    // moderators' timeout anyway: it lasts until ann sees bob removed.
    options.gateway.gateway_timeout = Duration::from_secs(10);
    options.moderator.gateway_timeout = Duration::from_secs(10);
    let timeout = options.moderator.gateway_timeout;
    let system = System::start(options).await;
    let link = Link::open(system.nats.addr).await;
    let (mut paused, paused_addr) = gateway_process_at(&system.nats, &link.url()).await;
    let room = room("paused");
    let (mut ann, mut bob) = ann_here_bob_there(&system, paused_addr, &room).await;
    let pid = paused.id().expect("the gateway runs");
    stop_until_removed(pid, &mut ann, &bob, timeout).await;
    link.cut();
    signal_process(pid, "-CONT");
    bob.send(&ClientFrame::Chat {
        room: room.clone(),
        id: "ghost".into(),
        text: "posted by a non-member".into(),
    })
    .await;
    let answer = bob.recv_or_close().await;
    link.restore();
    match answer {
        Err(code) => assert_eq!(code, CloseCode::Reset.code(), "bob is told to reconnect"),
        Ok(frame) => panic!("a non-member got {frame:?} before its gateway closed it"),
    }
    ann.chat(&room, "after", "after the pause")
        .await
        .expect("ann's chat is stored");

    let mut cat = Client::connect(system.gateways[0], "cat").await;
    let joined = cat.try_join(&room, None).await.expect("cat joins");
    let texts: Vec<&str> = joined.history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["after the pause"], "nothing bob sent was stored");
    assert_eq!(
        ids(&joined.members),
        [ann.conn_id.clone(), cat.conn_id.clone()].into(),
        "the other gateway's member stays; bob's is gone"
    );
    paused.kill().await.expect("stop the gateway");
    drop((ann, bob, cat));
    system.finish().await;
}

/// A connection removed from its room by anyone but itself is no longer a
/// member, and its gateway must not serve it as one. Found by the fault
/// suite in CI (the run after a rolling restart): a moderator took a live
/// gateway for dead and removed its members, the gateway, in touch all
/// along, never heard of it, and every one of its clients had its chat
/// refused with `not_in_room` while still getting the room's traffic. The
/// gateway now closes such a connection with 4104, so the client rejoins
/// and resends, as soon as it hears of the removal: from the room's
/// presence `leave` about it (here, a leave sent to the moderator by
/// someone else), or from the moderator refusing its chat (the next
/// test). Before, bob was not closed and got ann's chat.
#[tokio::test]
async fn a_member_removed_by_another_is_told_to_rejoin() {
    let system = System::start(Options::default()).await;
    let room = room("removed");
    let (mut ann, mut bob) = ann_here_bob_there(&system, system.gateways[1], &room).await;
    let bus = system.nats.connect().await;
    let leave = ModerationRequest {
        from: member(&bob, "bob"),
        gateway: GatewayId::from("another-gateway"),
        action: Action::Leave {
            room: room.clone(),
            attempt: None,
        },
    };
    assert_eq!(moderate(&bus, &leave).await, Verdict::Done);
    assert_eq!(
        next_presence(&mut ann).await,
        (PresenceEvent::Leave, bob.conn_id.clone())
    );
    ann.chat(&room, "after", "after bob was removed")
        .await
        .expect("ann's chat is stored");
    match bob.recv_or_close().await {
        Err(code) => assert_eq!(code, CloseCode::Reset.code(), "bob is told to rejoin"),
        Ok(frame) => panic!("a removed member got {frame:?}"),
    }
    drop((ann, bob));
    system.finish().await;
}

/// The same when the presence `leave` never reached the gateway (presence
/// is not stored; a gateway reconnecting to NATS misses what was sent
/// meanwhile): bob is taken out of the room's entry directly, with no
/// announcement, and the moderator's refusal of his chat is what tells the
/// gateway. Bob is closed with 4104, not told `not_in_room` about a room
/// he joined, which a client takes as the end of that message. Before, he
/// got the `not_in_room` error.
#[tokio::test]
async fn a_member_whose_chat_is_refused_as_a_stranger_is_told_to_rejoin() {
    let system = System::start(Options::default()).await;
    let room = room("unannounced");
    let (ann, mut bob) = ann_here_bob_there(&system, system.gateways[1], &room).await;
    let js = async_nats::jetstream::new(system.nats.connect().await);
    let membership = Membership::open(&js, ModeratorConfig::default().room_capacity, 1)
        .await
        .expect("the rooms bucket opens");
    membership
        .leave(&room, &bob.conn_id, None)
        .await
        .expect("bob is taken out of the room");
    bob.send(&ClientFrame::Chat {
        room: room.clone(),
        id: "stranger".into(),
        text: "sent after the removal".into(),
    })
    .await;
    match bob.recv_or_close().await {
        Err(code) => assert_eq!(code, CloseCode::Reset.code(), "bob is told to rejoin"),
        Ok(frame) => panic!("a removed member got {frame:?}"),
    }
    drop((ann, bob));
    system.finish().await;
}

/// `client`, connected as `user`, as a gateway names it to the moderator.
fn member(client: &Client, user: &str) -> Member {
    Member {
        conn_id: client.conn_id.clone(),
        user: User {
            id: UserId::from(user),
            name: user.into(),
        },
    }
}

/// Found by the fault suite: a client whose connection broke could not
/// rejoin a full room, because its old connection kept the seat until that
/// connection's gateway let it go (the gateway timeout when the gateway
/// died; indefinitely for a half-open TCP connection on a live one). A
/// rejoin naming the old connection in `replaces` takes the seat over at
/// once, and the old connection is closed with 4002. Nobody can take
/// another user's seat that way.
#[tokio::test]
async fn a_reconnecting_client_takes_over_its_old_seat_in_a_full_room() {
    let system = System::start(Options {
        moderator: ModeratorConfig {
            room_capacity: 2,
            ..ModeratorConfig::default()
        },
        ..Options::default()
    })
    .await;
    let (g1, g2) = (system.gateways[0], system.gateways[1]);
    let room = room("seat");
    // Ann's old connection stays open, as a half-open one would.
    let mut old = Client::connect(g1, "ann").await;
    let mut bob = Client::connect(g2, "bob").await;
    old.join(&room, None).await;
    bob.join(&room, None).await;
    next_presence(&mut old).await;

    let mut eve = Client::connect(g2, "eve").await;
    eve.send(&ClientFrame::Join {
        room: room.clone(),
        since: None,
        replaces: Some(old.conn_id.clone()),
    })
    .await;
    let refused = eve.join_reply(&room).await.unwrap_err();
    assert_code(
        &refused,
        ErrorCode::RoomFull,
        "another user's seat is not taken",
    );

    let mut ann = Client::connect(g2, "ann").await;
    let refused = ann.try_join(&room, None).await.unwrap_err();
    assert_code(
        &refused,
        ErrorCode::RoomFull,
        "without replaces the seat stays taken",
    );
    ann.send(&ClientFrame::Join {
        room: room.clone(),
        since: None,
        replaces: Some(old.conn_id.clone()),
    })
    .await;
    let joined = ann.join_reply(&room).await.expect("the seat passes over");
    assert_eq!(
        ids(&joined.members),
        [ann.conn_id.clone(), bob.conn_id.clone()].into()
    );
    assert_eq!(
        next_presence(&mut bob).await,
        (PresenceEvent::Leave, old.conn_id.clone())
    );
    assert_eq!(
        next_presence(&mut bob).await,
        (PresenceEvent::Join, ann.conn_id.clone())
    );
    loop {
        match old.recv_or_close().await {
            Err(code) => {
                assert_eq!(
                    code,
                    CloseCode::Replaced.code(),
                    "the old connection is told"
                );
                break;
            }
            Ok(ServerFrame::Presence { .. }) => {}
            Ok(other) => panic!("the old connection got {other:?}"),
        }
    }
    // The room still works for both, and the old one's close freed nothing
    // it no longer held.
    let ack = bob.chat_acked(&room, "b1", "still here").await.unwrap();
    assert_eq!(ann.next_chat().await.seq, ack.seq.unwrap());
    let refused = eve.try_join(&room, None).await.unwrap_err();
    assert_code(&refused, ErrorCode::RoomFull, "the room is still full");
    drop((old, ann, bob, eve));
    system.finish().await;
}

/// A leave sent while no moderator answers, and a connection that closes
/// meanwhile, still take effect: the client is told `left` at once, and
/// its gateway retries each departure until a moderator applies it, so no
/// ghost keeps a seat once moderators are back.
#[tokio::test]
async fn a_departure_is_retried_until_a_moderator_answers() {
    let mut system = System::start(Options {
        moderators: 1,
        ..Options::one_gateway()
    })
    .await;
    let g = system.gateways[0];
    let room = room("departed");
    let mut ann = Client::connect(g, "ann").await;
    let mut bob = Client::connect(g, "bob").await;
    let mut cat = Client::connect(g, "cat").await;
    ann.join(&room, None).await;
    cat.join(&room, None).await;
    bob.join(&room, None).await;
    let (ann_id, cat_id) = (ann.conn_id.clone(), cat.conn_id.clone());

    system.kill_moderator(0).await;
    cat.send(&ClientFrame::Leave { room: room.clone() }).await;
    match cat.recv().await {
        ServerFrame::Left { room: left } => assert_eq!(left, room),
        other => panic!("expected left, got {other:?}"),
    }
    ann.close().await;
    // The connection is gone, its departure queued and failing (no
    // responders): attempts at 0.1, 0.2, 0.4 and 0.8 s fail meanwhile.
    let closed = Instant::now();
    while get_json(g, "/health").await["connections"] != 2 {
        assert!(closed.elapsed() < FRAME_TIMEOUT, "ann's connection stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    system.start_moderator().await;
    let mut gone = BTreeSet::new();
    for _ in 0..2 {
        let (event, id) = next_presence(&mut bob).await;
        assert_eq!(event, PresenceEvent::Leave);
        gone.insert(id);
    }
    assert_eq!(
        gone,
        [ann_id, cat_id].into(),
        "both departures are applied once a moderator answers"
    );
    drop((bob, cat));
    system.finish().await;
}
