//! The client against a fake gateway on loopback that plays its part of
//! the protocol frame by frame, so each test can say exactly what the
//! gateway does and check exactly what the client answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cavlo_client::{
    Backoff, Client, ConnectErrorKind, Connection, Event, Events, Options, RecvErrorKind,
    RequestErrorKind, Stop, TokenSource,
};
use futures_util::{SinkExt, StreamExt};
use schemas::client::{
    ChatMessage, ClientFrame, ErrorFrame, IceServers, Limits, Member, ServerFrame, User,
};
use schemas::code::ErrorCode;
use schemas::id::{ClientMsgId, RoomId, Seq};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// How long a test waits for what it expects.
const WAIT: Duration = Duration::from_secs(5);

/// A gateway's listening socket.
struct Gateway {
    listener: TcpListener,
    url: String,
}

impl Gateway {
    async fn start() -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        Gateway { listener, url }
    }

    /// The next client's socket.
    async fn accept(&self) -> Peer {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a client connects")
            .unwrap();
        Peer {
            ws: tokio_tungstenite::accept_async(stream).await.unwrap(),
        }
    }
}

/// One client, seen from the gateway.
struct Peer {
    ws: WebSocketStream<TcpStream>,
}

impl Peer {
    async fn recv(&mut self) -> ClientFrame {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame from the client")
                .expect("the socket is open")
                .unwrap();
            if let Message::Text(text) = message {
                return ClientFrame::decode(&text).expect("a client frame");
            }
        }
    }

    async fn send(&mut self, frame: ServerFrame) {
        self.ws.send(Message::text(frame.to_json())).await.unwrap();
    }

    /// Reads `auth`, answers `welcome` as connection `conn_id`, and returns
    /// the token.
    async fn welcome(&mut self, conn_id: &str, expires_in: u64) -> String {
        let ClientFrame::Auth { token } = self.recv().await else {
            panic!("auth comes first");
        };
        self.send(ServerFrame::Welcome {
            conn_id: conn_id.into(),
            user: ann().user,
            gateway: "gw".into(),
            limits: Limits {
                max_frame_bytes: 131072,
                max_rooms: 16,
                history_limit: 50,
            },
            expires_in,
            ice: IceServers::default(),
            media: false,
        })
        .await;
        token
    }

    async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
    }
}

fn ann() -> Member {
    Member {
        conn_id: "other".into(),
        user: User {
            id: "ann".into(),
            name: "Ann".into(),
        },
    }
}

fn chat(room: &RoomId, seq: u64) -> ChatMessage {
    ChatMessage {
        room: room.clone(),
        seq: Seq(seq),
        id: ClientMsgId(format!("m{seq}")),
        from: ann(),
        text: format!("message {seq}"),
        ts: 0,
    }
}

fn options(urls: &[&Gateway], token: impl Into<TokenSource>) -> Options {
    let mut options = Options::new(urls.iter().map(|g| g.url.clone()), token);
    options.backoff = Backoff {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };
    options
}

async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("the client runs")
}

/// A client connected to `gateway` as connection `c1`, past its
/// `Connected` event, and the gateway's side of it.
async fn connected(gateway: &Gateway) -> (Client, Events, Peer) {
    let (connected, peer) = tokio::join!(Client::connect(options(&[gateway], "t")), async {
        let mut peer = gateway.accept().await;
        peer.welcome("c1", 3600).await;
        peer
    });
    let (client, mut events) = connected.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected(_)));
    (client, events, peer)
}

/// Joins `room` through `client`, answering as `peer` with `history`.
async fn join(client: &Client, peer: &mut Peer, room: &RoomId, history: Vec<ChatMessage>) {
    let joining = client.join(room.clone());
    let answering = async {
        let frame = peer.recv().await;
        assert_eq!(
            frame,
            ClientFrame::Join {
                room: room.clone(),
                since: None,
                replaces: None
            }
        );
        let last_seq = history.last().map_or(Seq(0), |chat| chat.seq);
        peer.send(ServerFrame::Joined {
            room: room.clone(),
            members: vec![ann()],
            history,
            last_seq,
            truncated: false,
        })
        .await;
    };
    let (joined, ()) = tokio::join!(joining, answering);
    assert_eq!(joined.unwrap().room, *room);
}

#[tokio::test]
async fn a_connection_surfaces_the_close_code() {
    let gateway = Gateway::start().await;
    let serving = async {
        let mut peer = gateway.accept().await;
        peer.welcome("c1", 3600).await;
        peer.close(4100).await;
        peer
    };
    let (connected, _peer) = tokio::join!(Connection::connect(&gateway.url, "t"), serving);
    let (mut connection, welcome) = connected.unwrap();
    assert_eq!(welcome.conn_id.as_str(), "c1");
    assert_eq!(welcome.expires_in, 3600);
    let err = connection.recv().await.unwrap_err();
    assert_eq!(err.kind(), RecvErrorKind::Closed(Some(4100)));
}

#[tokio::test]
async fn a_refused_fixed_token_is_final() {
    let gateway = Gateway::start().await;
    let serving = async {
        let mut peer = gateway.accept().await;
        let _auth = peer.recv().await;
        peer.send(ServerFrame::Error(ErrorFrame::new(
            ErrorCode::Unauthorized,
            "authentication failed",
        )))
        .await;
        peer.close(4001).await;
    };
    let (connected, ()) = tokio::join!(Client::connect(options(&[&gateway], "bad")), serving);
    let err = connected.unwrap_err();
    assert_eq!(err.kind(), ConnectErrorKind::Unauthorized);
}

#[tokio::test]
async fn acks_are_matched_by_id_whatever_their_order() {
    let gateway = Gateway::start().await;
    let room = RoomId::from("lobby");
    let (client, mut events, mut peer) = connected(&gateway).await;
    join(&client, &mut peer, &room, vec![]).await;

    let sending = async {
        tokio::join!(
            client.send_chat(room.clone(), "first"),
            client.send_chat(room.clone(), "second <b>")
        )
    };
    let answering = async {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let ClientFrame::Chat { id, text, .. } = peer.recv().await else {
                panic!("chat expected");
            };
            ids.push((id, text));
        }
        // Answered newest first, the second sanitized.
        ids.sort_by_key(|(_, text)| text.len());
        let (first, second) = (&ids[0].0, &ids[1].0);
        for (id, seq, text) in [(second, 8, Some("second ")), (first, 7, None)] {
            peer.send(ServerFrame::Ack {
                id: id.clone(),
                room: room.clone(),
                seq: Some(Seq(seq)),
                text: text.map(str::to_owned),
            })
            .await;
        }
        // And one for a message never sent.
        peer.send(ServerFrame::Ack {
            id: "never-sent".into(),
            room: room.clone(),
            seq: Some(Seq(9)),
            text: None,
        })
        .await;
    };
    let ((first, second), ()) = tokio::join!(sending, answering);
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!((first.seq, first.text.as_str()), (Some(Seq(7)), "first"));
    assert_eq!(
        (second.seq, second.text.as_str()),
        (Some(Seq(8)), "second ")
    );
    match next_event(&mut events).await {
        Event::Unmatched(ServerFrame::Ack { id, .. }) => assert_eq!(id.as_str(), "never-sent"),
        other => panic!("expected the unmatched ack, got {other:?}"),
    }
    client.close().await;
}

/// A gateway closes with 4101 while a chat waits for its ack: the client
/// moves to the next gateway, rejoins from the last seq it delivered,
/// taking over its old seat, resends the chat with the same id, and
/// delivers each message once.
#[tokio::test]
async fn a_reconnect_fails_over_resumes_from_the_last_seq_and_resends() {
    let (first, second) = (Gateway::start().await, Gateway::start().await);
    let room = RoomId::from("lobby");
    let (connected, mut peer) =
        tokio::join!(Client::connect(options(&[&first, &second], "t")), async {
            let mut peer = first.accept().await;
            peer.welcome("c1", 3600).await;
            peer
        });
    let (client, mut events) = connected.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected(_)));
    join(&client, &mut peer, &room, vec![chat(&room, 1)]).await;
    peer.send(ServerFrame::Chat(chat(&room, 2))).await;
    assert_eq!(next_event(&mut events).await, Event::Chat(chat(&room, 2)));

    let sending = client.send_chat(room.clone(), "hello");
    let serving = async {
        let ClientFrame::Chat { id, .. } = peer.recv().await else {
            panic!("chat expected");
        };
        peer.close(4101).await;
        let mut again = second.accept().await;
        again.welcome("c2", 3600).await;
        assert_eq!(
            again.recv().await,
            ClientFrame::Join {
                room: room.clone(),
                since: Some(Seq(2)),
                replaces: Some("c1".into()),
            }
        );
        let ClientFrame::Chat { id: resent, .. } = again.recv().await else {
            panic!("the unacked chat is resent");
        };
        assert_eq!(resent, id, "resent under the same id");
        again
            .send(ServerFrame::Joined {
                room: room.clone(),
                members: vec![ann()],
                history: vec![chat(&room, 2), chat(&room, 3)],
                last_seq: Seq(4),
                truncated: false,
            })
            .await;
        again.send(ServerFrame::Chat(chat(&room, 3))).await;
        again.send(ServerFrame::Chat(chat(&room, 4))).await;
        again
            .send(ServerFrame::Ack {
                id,
                room: room.clone(),
                seq: Some(Seq(5)),
                text: None,
            })
            .await;
        again
    };
    let (acked, _again) = tokio::join!(sending, serving);
    assert_eq!(acked.unwrap().seq, Some(Seq(5)));
    assert_eq!(
        next_event(&mut events).await,
        Event::Disconnected {
            close_code: Some(4101)
        }
    );
    assert!(
        matches!(next_event(&mut events).await, Event::Connected(w) if w.conn_id.as_str() == "c2")
    );
    assert_eq!(next_event(&mut events).await, Event::Chat(chat(&room, 3)));
    assert!(matches!(
        next_event(&mut events).await,
        Event::Rejoined { .. }
    ));
    assert_eq!(
        next_event(&mut events).await,
        Event::Chat(chat(&room, 4)),
        "3 came in the backlog and live: once"
    );
    client.close().await;
    assert_eq!(next_event(&mut events).await, Event::Stopped(Stop::Closed));
}

#[tokio::test]
async fn a_terminal_close_code_stops_the_client() {
    let gateway = Gateway::start().await;
    let (client, mut events, mut peer) = connected(&gateway).await;
    peer.close(4002).await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Stopped(Stop::Terminal(4002))
    );
    let err = client.join("lobby").await.unwrap_err();
    assert_eq!(err.kind(), RequestErrorKind::Stopped);
}

#[tokio::test]
async fn a_token_function_refreshes_before_expiry() {
    let gateway = Gateway::start().await;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let token = TokenSource::from_fn(move || {
        let n = counted.fetch_add(1, Ordering::Relaxed);
        async move { Ok(format!("token-{n}")) }
    });
    let (connected, mut peer) = tokio::join!(Client::connect(options(&[&gateway], token)), async {
        let mut peer = gateway.accept().await;
        assert_eq!(peer.welcome("c1", 1).await, "token-0");
        peer
    });
    let (client, _events) = connected.unwrap();
    // A fifth of one second before expiry.
    assert_eq!(
        peer.recv().await,
        ClientFrame::Refresh {
            token: "token-1".into()
        }
    );
    client.close().await;
}
