//! A failing dependency gives clients an error, never a hang.

use schemas::client::ClientFrame;
use schemas::code::ErrorCode;

use crate::harness::{Client, System, assert_code, room};

#[tokio::test]
async fn with_nats_down_requests_fail_with_unavailable_and_recover() {
    let system = System::one_gateway().await;
    let room = room("outage");
    let mut ann = Client::connect(system.gateways[0], "ann").await;
    ann.join(&room, None).await;
    ann.chat(&room, "before", "ok").await.unwrap();

    system.nats.container.pause().await.expect("pause NATS");
    let error = ann.chat(&room, "during", "lost?").await.unwrap_err();
    assert_code(&error, ErrorCode::Unavailable, "chat with NATS paused");
    ann.send(&ClientFrame::Join {
        room: crate::harness::room("other"),
        since: None,
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
    drop(ann);
    system.finish().await;
}
