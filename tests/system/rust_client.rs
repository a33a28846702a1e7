//! `cavlo_client::Client`, the Rust SDK, against a real system: it moves
//! off a gateway that stops, resumes its room there, and delivers each
//! message once and in order.

use std::time::Duration;

use cavlo_client as sdk;
use schemas::id::Seq;

use crate::harness::{Client, FRAME_TIMEOUT, Options, System, room, token};

/// The next event, failing the test after [`FRAME_TIMEOUT`] or if the
/// client stopped.
async fn next_event(events: &mut sdk::Events) -> sdk::Event {
    let event = tokio::time::timeout(FRAME_TIMEOUT, events.next())
        .await
        .expect("an event in time")
        .expect("the client runs");
    if let sdk::Event::Stopped(why) = event {
        panic!("the client stopped: {why:?}");
    }
    event
}

/// The next chat event's seq, skipping presence and the like.
async fn next_chat_seq(events: &mut sdk::Events) -> Seq {
    loop {
        if let sdk::Event::Chat(chat) = next_event(events).await {
            return chat.seq;
        }
    }
}

#[tokio::test]
async fn the_rust_client_moves_off_a_stopping_gateway_and_misses_nothing() {
    let system = System::start(Options::default()).await;
    let (g0, g1) = (system.gateways[0], system.gateways[1]);
    let room = room("sdk");
    let mut options = sdk::Options::new(
        [format!("ws://{g0}/ws"), format!("ws://{g1}/ws")],
        sdk::TokenSource::from_fn(|| async { Ok(token("bot")) }),
    );
    options.backoff = sdk::Backoff {
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    let (bot, mut events) = sdk::Client::connect(options).await.expect("connects");
    let sdk::Event::Connected(welcome) = next_event(&mut events).await else {
        panic!("connected first");
    };
    let joined = bot.join(room.clone()).await.expect("joins");
    assert_eq!(joined.members.len(), 1);

    let mut ann = Client::connect(g1, "ann").await;
    ann.join(&room, None).await;
    let ack = bot
        .send_chat(room.clone(), "hello <b>ann</b>")
        .await
        .expect("acked");
    assert_eq!(ack.text, "hello ann", "the ack says what was stored");
    let delivered = ann.next_chat().await;
    assert_eq!((Some(delivered.seq), delivered.text), (ack.seq, ack.text));
    let first = ann.chat(&room, "a1", "one").await.unwrap().unwrap();
    assert_eq!(next_chat_seq(&mut events).await, first);

    // Stopping gateway 0 tells the bot to move; ann goes on meanwhile.
    system.stop_gateway(0);
    let mut sent = Vec::new();
    for n in 2..=4 {
        sent.push(
            ann.chat(&room, &format!("a{n}"), "more")
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Until the three arrive and the bot is welcomed by the other gateway.
    let (mut got, mut moved) = (Vec::new(), false);
    while got.len() < sent.len() || !moved {
        match next_event(&mut events).await {
            sdk::Event::Chat(chat) => got.push(chat.seq),
            sdk::Event::Connected(again) => {
                assert_ne!(again.gateway, welcome.gateway, "moved to the other gateway");
                moved = true;
            }
            _ => {}
        }
    }
    assert_eq!(got, sent, "each once, in order, across the move");
    let after = bot
        .send_chat(room.clone(), "still here")
        .await
        .expect("acked");
    assert_eq!(ann.next_chat().await.seq, after.seq.unwrap());

    bot.close().await;
    ann.close().await;
    system.finish().await;
}
