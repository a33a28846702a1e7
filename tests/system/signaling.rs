//! WebRTC signaling: relayed to one member, stamped by the server, checked
//! by the moderator, never stored.

use async_nats::jetstream;
use base64::Engine;
use moderator::config::ModeratorConfig;
use schemas::client::{ClientFrame, IceServers, ServerFrame, SignalKind};
use schemas::code::ErrorCode;
use schemas::id::{ConnId, RoomId};
use schemas::subject;
use serde_json::{Value, json};

use crate::harness::{Client, Options, System, assert_code, now, room, signal};

/// The next signal frame as (room, from, user id, kind, data).
async fn next_signal(client: &mut Client) -> (RoomId, ConnId, String, SignalKind, Value) {
    match client.recv().await {
        ServerFrame::Signal {
            room,
            from,
            user,
            kind,
            data,
        } => (room, from, user.id.0, kind, data),
        other => panic!("expected a signal, got {other:?}"),
    }
}

#[tokio::test]
async fn offer_and_answer_cross_gateways_with_the_server_stamped_sender() {
    let system = System::start(Options::default()).await;
    let room = room("call");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    // Ann claims to be someone else; the server overwrites it.
    let forged = format!(
        r#"{{"type":"signal","room":"{room}","to":"{}","kind":"offer","data":{{"type":"offer","sdp":"v=0 offer"}},
            "from":"{}","user":{{"id":"mallory","name":"Mallory"}}}}"#,
        bob.conn_id, bob.conn_id
    );
    ann.send_raw(&forged).await;
    let (got_room, from, user, kind, data) = next_signal(&mut bob).await;
    assert_eq!(
        (got_room, &from, user.as_str(), kind),
        (room.clone(), &ann.conn_id, "ann", SignalKind::Offer)
    );
    assert_eq!(data["sdp"], "v=0 offer");

    bob.send(&signal(
        &room,
        &from,
        SignalKind::Answer,
        json!({"type": "answer", "sdp": "v=0 answer"}),
    ))
    .await;
    let (_, from, user, kind, data) = next_signal(&mut ann).await;
    assert_eq!(
        (&from, user.as_str(), kind),
        (&bob.conn_id, "bob", SignalKind::Answer)
    );
    assert_eq!(data["sdp"], "v=0 answer");

    bob.send(&signal(
        &room,
        &ann.conn_id,
        SignalKind::Candidate,
        json!({"candidate": "candidate:1 1 udp 2 10.0.0.1 5000 typ host"}),
    ))
    .await;
    assert_eq!(next_signal(&mut ann).await.3, SignalKind::Candidate);
    drop((ann, bob));
    system.finish().await;
}

#[tokio::test]
async fn signals_reach_only_members_of_the_same_room() {
    let system = System::start(Options::default()).await;
    let (room, other) = (room("here"), room("there"));
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    let mut cat = Client::connect(system.gateways[1], "cat").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;
    cat.join(&other, None).await;
    let offer = json!({"sdp": "v=0"});

    let cases = [
        (
            "target in another room",
            signal(&room, &cat.conn_id, SignalKind::Offer, offer.clone()),
            ErrorCode::PeerNotFound,
        ),
        (
            "no such connection",
            signal(
                &room,
                &ConnId::from("nobody"),
                SignalKind::Offer,
                offer.clone(),
            ),
            ErrorCode::PeerNotFound,
        ),
        // Reported: a signal to oneself came back.
        (
            "to oneself",
            signal(&room, &ann.conn_id, SignalKind::Offer, offer.clone()),
            ErrorCode::InvalidMessage,
        ),
        (
            "sender not in the room",
            signal(&other, &cat.conn_id, SignalKind::Offer, offer.clone()),
            ErrorCode::NotInRoom,
        ),
        (
            "data not an object",
            signal(&room, &bob.conn_id, SignalKind::Offer, json!("v=0")),
            ErrorCode::InvalidMessage,
        ),
        (
            "offer without sdp",
            signal(
                &room,
                &bob.conn_id,
                SignalKind::Offer,
                json!({"type": "offer"}),
            ),
            ErrorCode::InvalidMessage,
        ),
        (
            "oversize sdp",
            signal(
                &room,
                &bob.conn_id,
                SignalKind::Offer,
                json!({"sdp": "a".repeat(ModeratorConfig::default().max_signal_bytes)}),
            ),
            ErrorCode::TooLarge,
        ),
    ];
    for (case, frame, code) in &cases {
        ann.send(frame).await;
        let error = ann.next_error().await;
        assert_code(&error, *code, case);
    }

    // Nothing reached anyone: the next signal each gets is this marker.
    ann.send(&signal(
        &room,
        &bob.conn_id,
        SignalKind::Bye,
        json!({"marker": 1}),
    ))
    .await;
    assert_eq!(next_signal(&mut bob).await.4, json!({"marker": 1}));
    // Its next frame answers this ping: no signal of its own came back.
    ann.assert_alive().await;
    cat.assert_alive().await;
    drop((ann, bob, cat));
    system.finish().await;
}

#[tokio::test]
async fn candidates_per_room_are_capped() {
    let cap = 20;
    let moderator = ModeratorConfig {
        max_candidates_per_room: cap,
        signal_burst: 1000,
        ..ModeratorConfig::default()
    };
    let system = System::start(Options {
        moderator,
        ..Options::one_gateway()
    })
    .await;
    let room = room("flood");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[0], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    for i in 0..cap + 5 {
        ann.send(&signal(
            &room,
            &bob.conn_id,
            SignalKind::Candidate,
            json!({"candidate": format!("c{i}")}),
        ))
        .await;
    }
    ann.send(&signal(&room, &bob.conn_id, SignalKind::Bye, json!({})))
        .await;
    for i in 0..cap {
        let (_, _, _, kind, data) = next_signal(&mut bob).await;
        assert_eq!(
            (kind, data),
            (SignalKind::Candidate, json!({"candidate": format!("c{i}")}))
        );
    }
    assert_eq!(
        next_signal(&mut bob).await.3,
        SignalKind::Bye,
        "nothing past the cap was relayed"
    );
    for _ in 0..5 {
        assert_code(
            &ann.next_error().await,
            ErrorCode::RateLimited,
            "candidate past the cap",
        );
    }
    drop((ann, bob));
    system.finish().await;
}

#[tokio::test]
async fn signaling_is_never_stored() {
    let system = System::one_gateway().await;
    let room = room("nostore");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[0], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;
    ann.chat(&room, "c1", "stored").await.unwrap();
    assert_eq!(bob.next_chat().await.id.as_str(), "c1");
    for kind in [
        SignalKind::Offer,
        SignalKind::Answer,
        SignalKind::Candidate,
        SignalKind::Bye,
    ] {
        let data = json!({"sdp": "v=0", "candidate": "c"});
        ann.send(&signal(&room, &bob.conn_id, kind, data)).await;
        assert_eq!(next_signal(&mut bob).await.3, kind);
    }

    let js = jetstream::new(system.nats.connect().await);
    let mut stream = js.get_stream(subject::CHAT_STREAM).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "only the chat message is stored"
    );
    let (history, _, _) = bob.join(&room, None).await;
    assert_eq!(
        history.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["c1"]
    );
    drop((ann, bob));
    system.finish().await;
}

/// Every client gets ICE servers in `welcome`: STUN as configured, and
/// TURN with credentials made for its own user by coturn's shared-secret
/// scheme, valid for `turn_ttl`; `ice` renews them. The secret is never
/// sent. (The browser tests show coturn accepting them.)
#[tokio::test]
async fn clients_get_turn_credentials_for_their_user_and_can_renew_them() {
    const SECRET: &str = "turn-test-secret";
    let mut options = Options::one_gateway();
    options.gateway.ice = gateway::config::IceConfig {
        stun_urls: vec!["stun:stun.test:3478".into()],
        turn_urls: vec!["turn:turn.test:3478?transport=udp".into()],
        turn_secret: Some(bootstrap::config::Secret(SECRET.into())),
        turn_ttl: std::time::Duration::from_secs(600),
    };
    let system = System::start(options).await;
    let check = |ice: &IceServers, user: &str| {
        let json = serde_json::to_string(ice).unwrap();
        assert!(!json.contains(SECRET), "the secret was sent: {json}");
        assert_eq!(ice.expires_in, 600);
        assert_eq!(ice.servers[0].urls, ["stun:stun.test:3478"]);
        assert_eq!(ice.servers[0].username, None);
        let turn = &ice.servers[1];
        assert_eq!(turn.urls, ["turn:turn.test:3478?transport=udp"]);
        let username = turn.username.as_deref().expect("a TURN username");
        let (expiry, name) = username.split_once(':').expect("<expiry>:<user>");
        assert_eq!(name, user);
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            expiry.abs_diff(now() + 600) <= 5,
            "expires in 600 s: {expiry}"
        );
        let key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SECRET.as_bytes());
        let expected = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, username.as_bytes()));
        assert_eq!(turn.credential.as_deref(), Some(expected.as_str()));
    };
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let bob = Client::connect(system.gateways[0], "bob").await;
    check(&ann.ice, "ann");
    check(&bob.ice, "bob");
    ann.send(&ClientFrame::Ice {}).await;
    match ann.recv().await {
        ServerFrame::Ice(ice) => check(&ice, "ann"),
        other => panic!("expected ice, got {other:?}"),
    }
    drop((ann, bob));
    system.finish().await;
}
