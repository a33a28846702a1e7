//! Bad frames get a clear error and change nothing else.

use std::time::Duration;

use gateway::config::GatewayConfig;
use schemas::client::{ClientFrame, ServerFrame};
use schemas::code::{CloseCode, ErrorCode};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Client, Options, System, assert_code, room};

#[tokio::test]
async fn malformed_frames_get_invalid_message_and_the_connection_stays_usable() {
    let system = System::start(Options::default()).await;
    let room = room("malformed");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[1], "bob").await;
    ann.join(&room, None).await;
    bob.join(&room, None).await;

    let r = room.as_str();
    let cases = [
        ("not JSON", "{\"type\":".to_owned()),
        ("JSON but not an object", "[1,2]".to_owned()),
        (
            "unknown type",
            format!(r#"{{"type":"shout","room":"{r}"}}"#),
        ),
        (
            "missing text",
            format!(r#"{{"type":"chat","room":"{r}","id":"m1"}}"#),
        ),
        (
            "wrong field type",
            format!(r#"{{"type":"chat","room":"{r}","id":"m1","text":42}}"#),
        ),
        (
            "spoofed sender",
            format!(
                r#"{{"type":"chat","room":"{r}","id":"m1","text":"x","from":{{"conn_id":"x"}}}}"#
            ),
        ),
        ("missing type", r#"{"room":"lobby"}"#.to_owned()),
    ];
    for (case, text) in &cases {
        ann.send_raw(text).await;
        let error = ann.next_error().await;
        assert_code(&error, ErrorCode::InvalidMessage, case);
    }
    ann.send_message(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_code(
        &ann.next_error().await,
        ErrorCode::InvalidMessage,
        "binary frame",
    );
    ann.send(&ClientFrame::Auth {
        token: "again".into(),
    })
    .await;
    assert_code(
        &ann.next_error().await,
        ErrorCode::InvalidMessage,
        "second auth",
    );

    // The chat with a spoofed sender named its id, and nothing was delivered.
    let seq = ann.chat(&room, "real", "after the noise").await.unwrap();
    let chat = bob.next_chat().await;
    assert_eq!(
        (chat.id.as_str(), Some(chat.seq)),
        ("real", seq),
        "bad frames delivered nothing"
    );
    assert_eq!(
        chat.from.conn_id, ann.conn_id,
        "sender is the authenticated connection"
    );
    assert_eq!(chat.from.user.id.as_str(), "ann");
    drop((ann, bob));
    system.finish().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let mut gateway = Options::default().gateway;
    gateway.max_frame_bytes = 4096;
    let system = System::start(Options {
        gateway,
        ..Options::one_gateway()
    })
    .await;
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let mut bob = Client::connect(system.gateways[0], "bob").await;
    let _ = ann.send_message(Message::text("x".repeat(8192))).await;
    assert_eq!(ann.expect_close().await, 1009);
    bob.assert_alive().await;
    drop((ann, bob));
    system.finish().await;
}

#[tokio::test]
async fn rooms_per_connection_are_limited() {
    let gateway = GatewayConfig {
        max_rooms_per_connection: 2,
        ..Options::default().gateway
    };
    let system = System::start(Options {
        gateway,
        ..Options::one_gateway()
    })
    .await;
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    let (a, b, c) = (room("a"), room("b"), room("c"));
    ann.join(&a, None).await;
    ann.join(&b, None).await;
    ann.join(&a, None).await; // a re-join is not a new room
    ann.send(&ClientFrame::Join {
        room: c.clone(),
        since: None,
        replaces: None,
    })
    .await;
    let error = ann.next_error().await;
    assert_code(&error, ErrorCode::TooManyRooms, "third room");
    ann.send(&ClientFrame::Leave { room: a.clone() }).await;
    assert_eq!(ann.recv().await, ServerFrame::Left { room: a });
    ann.join(&c, None).await;
    drop(ann);
    system.finish().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_with_4102() {
    let gateway = GatewayConfig {
        max_connections: 2,
        ..Options::default().gateway
    };
    let system = System::start(Options {
        gateway,
        ..Options::one_gateway()
    })
    .await;
    let g = system.gateways[0];
    let ann = Client::connect(g, "ann").await;
    let _bob = Client::connect(g, "bob").await;
    let mut third = Client::from_socket(Client::open(g).await);
    assert_eq!(
        third.expect_close().await,
        schemas::code::CloseCode::GatewayFull.code()
    );
    ann.close().await;
    // The slot is free again once a socket closes. The server notices the
    // close asynchronously, so retry until it has.
    let deadline = tokio::time::Instant::now() + crate::harness::FRAME_TIMEOUT;
    loop {
        let mut client = Client::from_socket(Client::open(g).await);
        client
            .send(&ClientFrame::Auth {
                token: crate::harness::token("cat"),
            })
            .await;
        match client.recv_or_close().await {
            Ok(ServerFrame::Welcome { .. }) => break,
            Err(code) if code == schemas::code::CloseCode::GatewayFull.code() => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::task::yield_now().await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop((_bob, third));
    system.finish().await;
}

#[tokio::test]
async fn health_reports_connections_and_rooms() {
    let system = System::one_gateway().await;
    let g = system.gateways[0];
    let mut ann = Client::connect(g, "ann").await;
    ann.join(&room("health"), None).await;
    let health = crate::harness::get_json(g, "/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["connections"], 1);
    assert_eq!(health["rooms"], 1);
    assert_eq!(
        crate::harness::get_json(g, "/ready").await["status"],
        "ready"
    );
    drop(ann);
    system.finish().await;
}

/// A gateway told to stop drains (issue 11): `/ready` fails and new
/// WebSockets are refused at once, so a load balancer moves on; each
/// client is sent `draining` with a time to move within the first three
/// quarters of `drain_timeout`; one that moves resumes on the other
/// gateway with nothing lost, and one that stays is closed with 4101 when
/// the drain ends, not before.
#[tokio::test]
async fn a_stopping_gateway_drains_its_clients_to_the_others() {
    const DRAIN: Duration = Duration::from_secs(3);
    let system = System::start(Options {
        gateway: GatewayConfig {
            drain_timeout: DRAIN,
            ..Options::default().gateway
        },
        ..Options::default()
    })
    .await;
    let (g1, g2) = (system.gateways[0], system.gateways[1]);
    let room = room("drained");
    let mut ann = Client::connect(g1, "ann").await;
    let mut bob = Client::connect(g1, "bob").await;
    let mut cat = Client::connect(g2, "cat").await;
    for client in [&mut ann, &mut bob, &mut cat] {
        client.join(&room, None).await;
    }
    let before = cat.chat(&room, "before", "x").await.unwrap().unwrap();
    for client in [&mut ann, &mut bob] {
        assert_eq!(client.next_chat().await.seq, before);
    }

    let stopped = Instant::now();
    system.stop_gateway(0);
    for client in [&mut ann, &mut bob] {
        match client.recv().await {
            ServerFrame::Draining { reconnect_in_ms } => assert!(
                Duration::from_millis(reconnect_in_ms) <= DRAIN * 3 / 4,
                "move within the first three quarters: {reconnect_in_ms} ms"
            ),
            other => panic!("expected draining, got {other:?}"),
        }
    }
    let (status, body) = crate::harness::http(g1, "GET", "/ready", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let (status, _) = crate::harness::http(g1, "GET", "/ws", "").await;
    assert_eq!(status, 503, "no new WebSocket while draining");

    // Ann moves, as the SDK does: to the other gateway, resuming.
    let during = cat.chat(&room, "during", "x").await.unwrap().unwrap();
    let old = ann.conn_id.clone();
    let mut moved = ann;
    let mut ann = Client::connect(g2, "ann").await;
    ann.send(&ClientFrame::Join {
        room: room.clone(),
        since: Some(before),
        replaces: Some(old),
    })
    .await;
    let joined = ann.join_reply(&room).await.expect("rejoined");
    let seqs: Vec<_> = joined.history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [during], "resumed with exactly what it missed");
    // Its seat moved with `replaces`: the old connection is closed (4002).
    let (_, code) = moved.chats_until_close().await;
    assert_eq!(
        code,
        CloseCode::Replaced.code(),
        "the connection ann moved from gives up its seat"
    );

    // Bob stays: closed with 4101 when the drain ends, not before.
    let (_, code) = bob.chats_until_close().await;
    let after = stopped.elapsed();
    assert_eq!(code, CloseCode::ShuttingDown.code());
    assert!(
        after >= DRAIN - Duration::from_millis(200),
        "closed after {after:?}"
    );
    assert!(after < DRAIN * 3, "closed after {after:?}");
    drop((ann, bob, cat));
    system.finish().await;
}

/// With nobody connected, a stopping gateway does not wait for the drain.
#[tokio::test]
async fn a_gateway_with_no_clients_stops_at_once() {
    let mut options = Options::one_gateway();
    options.gateway.drain_timeout = Duration::from_secs(30);
    let system = System::start(options).await;
    let started = Instant::now();
    system.finish().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Reported: 10,000 `{}` frames in 0.12 s got 10,000 `invalid_message`
/// answers and the connection stayed. Past a burst of invalid frames the
/// connection is closed with 4003; the budget refills slowly.
#[tokio::test]
async fn a_flood_of_invalid_frames_closes_the_connection() {
    let system = System::start(Options {
        gateway: GatewayConfig {
            invalid_frame_burst: 5,
            invalid_frames_per_minute: 1,
            ..Options::default().gateway
        },
        ..Options::one_gateway()
    })
    .await;
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    for _ in 0..5 {
        ann.send_raw("{}").await;
        assert_code(
            &ann.next_error().await,
            ErrorCode::InvalidMessage,
            "within the budget",
        );
    }
    ann.assert_alive().await;
    for _ in 0..100 {
        ann.send_raw("{}").await;
    }
    // The first frame past the budget is not answered: the socket closes.
    assert_eq!(
        ann.recv_or_close().await,
        Err(CloseCode::InvalidFrames.code())
    );
    drop(ann);
    system.finish().await;
}

/// Reported: invalid UTF-8 in a text frame dropped the TCP connection
/// without a close frame, and a client's close(1000) was not echoed (the
/// client saw 1006). RFC 6455 asks for 1007 and for the echo, before and
/// after authentication.
#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_a_clients_close_is_echoed() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{
        CloseCode as WsCloseCode, Data, OpCode,
    };

    let system = System::one_gateway().await;
    let g = system.gateways[0];
    let not_utf8 = || {
        Message::Frame(Frame::message(
            vec![0x68, 0xc3, 0x28],
            OpCode::Data(Data::Text),
            true,
        ))
    };
    let mut ann = Client::connect(g, "ann").await;
    let _ = ann.send_message(not_utf8()).await;
    assert_eq!(ann.expect_close().await, 1007, "after auth");
    let mut early = Client::from_socket(Client::open(g).await);
    let _ = early.send_message(not_utf8()).await;
    assert_eq!(early.expect_close().await, 1007, "before auth");

    for (case, mut client) in [
        ("after auth", Client::connect(g, "bob").await),
        ("before auth", Client::from_socket(Client::open(g).await)),
    ] {
        let bye = CloseFrame {
            code: WsCloseCode::Normal,
            reason: "bye".into(),
        };
        let _ = client.send_message(Message::Close(Some(bye))).await;
        assert_eq!(
            client.expect_close().await,
            1000,
            "{case}: the close is echoed"
        );
    }
    drop((ann, early));
    system.finish().await;
}

/// Slowloris: a client that sends its HTTP headers a byte at a time holds
/// a socket only until `gateway.handshake_timeout`, not for as long as it
/// keeps trickling.
#[tokio::test]
async fn a_handshake_that_trickles_in_is_cut_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TIMEOUT: Duration = Duration::from_secs(1);
    let system = System::start(Options {
        gateway: GatewayConfig {
            handshake_timeout: TIMEOUT,
            ..Options::default().gateway
        },
        ..Options::one_gateway()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(system.gateways[0])
        .await
        .unwrap();
    let started = Instant::now();
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    stream.write_all(request).await.unwrap();
    // One more byte every 100 ms, for up to ten times the timeout.
    let cut = loop {
        if stream.write_all(b"a").await.is_err() {
            break started.elapsed();
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            // hyper may answer 408 before closing.
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
        assert!(
            started.elapsed() < TIMEOUT * 10,
            "still open after {:?}",
            started.elapsed()
        );
    };
    assert!(cut >= TIMEOUT, "cut before the timeout: {cut:?}");
    assert!(
        cut < TIMEOUT * 3,
        "cut at {cut:?}, the timeout is {TIMEOUT:?}"
    );
    system.finish().await;
}

/// The gateway offers no WebSocket extension: permessage-deflate stays
/// off, so no inflated message can outgrow `max_frame_bytes`.
#[tokio::test]
async fn no_extension_is_negotiated_even_when_offered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let system = System::one_gateway().await;
    let g = system.gateways[0];
    let mut stream = tokio::net::TcpStream::connect(g).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {g}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer to the handshake")
            .unwrap();
        assert_eq!(read, 1, "closed during the handshake: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    drop(stream);
    system.finish().await;
}
