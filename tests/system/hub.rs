//! The hub subscribes a room only while it has local members, and closes a
//! member whose queue overflows instead of waiting for it.

use std::time::Duration;

use gateway::chat_acks::ChatSlot;
use gateway::hub::{DeliveryKind, Hub, MemberHandle};
use gateway::send_queue::{self, Limits};
use schemas::client::{ChatMessage, Member, User};
use schemas::id::{ConnId, RoomId, Seq};
use schemas::{event, subject};

use crate::harness::{FRAME_TIMEOUT, Nats, room};

/// A queue no test fills.
const ROOMY: Limits = Limits {
    bytes: 1024 * 1024,
    delay: Duration::from_secs(60),
};

/// Whether the server holds a subscription to `room`'s deliveries, from its
/// monitoring endpoint: a fact, where a request's timeout could only have
/// been read as "someone listens".
async fn has_interest(nats: &Nats, room: &RoomId) -> bool {
    nats.room_subscriptions()
        .await
        .contains(&subject::room_deliveries(room))
}

fn chat(room: &RoomId, seq: u64) -> bytes::Bytes {
    let from = Member {
        conn_id: "sender".into(),
        user: User {
            id: "u".into(),
            name: "U".into(),
        },
    };
    event::encode(&ChatMessage {
        room: room.clone(),
        seq: Seq(seq),
        id: "m".into(),
        from,
        text: "x".into(),
        ts: 0,
    })
    .into()
}

#[tokio::test]
async fn rooms_are_subscribed_only_while_they_have_local_members() {
    let nats = Nats::start().await;
    let client = nats.connect().await;
    let hub = Hub::new(client.clone());
    let observer = nats.connect().await;
    let room = room("interest");
    assert!(!has_interest(&nats, &room).await);

    let (queue, mut deliveries) = send_queue::channel(ROOMY);
    let handle = MemberHandle::new(queue, ChatSlot::default());
    hub.join(&room, ConnId::from("a"), handle.clone())
        .await
        .unwrap();
    hub.join(&room, ConnId::from("b"), handle).await.unwrap();
    // Make sure the server has the SUB before asking it.
    bootstrap::nats::round_trip(&client).await.unwrap();
    assert_eq!(hub.room_count(), 1);
    assert!(has_interest(&nats, &room).await);

    observer
        .publish(subject::chat_deliver(&room), chat(&room, 1))
        .await
        .unwrap();
    for member in ["a", "b"] {
        let delivery = tokio::time::timeout(FRAME_TIMEOUT, deliveries.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            delivery.kind,
            DeliveryKind::Chat {
                seq: Seq(1),
                prev: None
            },
            "delivered to {member}"
        );
        assert!(delivery.frame.as_str().contains(r#""type":"chat""#));
    }

    hub.leave(&room, &ConnId::from("a"));
    assert!(has_interest(&nats, &room).await, "one member is left");
    hub.leave(&room, &ConnId::from("b"));
    assert_eq!(hub.room_count(), 0);
    // The unsubscribe travels to the server asynchronously; wait for it.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while has_interest(&nats, &room).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room still subscribed after the last member left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn a_member_whose_queue_overflows_is_flagged_slow_and_others_are_unaffected() {
    let nats = Nats::start().await;
    let client = nats.connect().await;
    let hub = Hub::new(client.clone());
    let publisher = nats.connect().await;
    let room = room("slow");

    // Room for one frame: the second overflows it.
    let (slow_queue, _never_read) = send_queue::channel(Limits { bytes: 1, ..ROOMY });
    let slow = MemberHandle::new(slow_queue, ChatSlot::default());
    let (fast_queue, mut fast_deliveries) = send_queue::channel(ROOMY);
    let fast = MemberHandle::new(fast_queue, ChatSlot::default());
    hub.join(&room, ConnId::from("slow"), slow.clone())
        .await
        .unwrap();
    hub.join(&room, ConnId::from("fast"), fast.clone())
        .await
        .unwrap();
    bootstrap::nats::round_trip(&client).await.unwrap();

    for seq in 1..=3 {
        publisher
            .publish(subject::chat_deliver(&room), chat(&room, seq))
            .await
            .unwrap();
    }
    tokio::time::timeout(FRAME_TIMEOUT, slow.slow.cancelled())
        .await
        .expect("overflow flags the member");
    for seq in 1..=3 {
        let delivery = tokio::time::timeout(FRAME_TIMEOUT, fast_deliveries.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            delivery.kind,
            DeliveryKind::Chat {
                seq: Seq(seq),
                prev: None
            }
        );
    }
    assert!(!fast.slow.is_cancelled());
    tokio::time::timeout(Duration::from_secs(5), hub.shutdown())
        .await
        .expect("hub stops");
}
