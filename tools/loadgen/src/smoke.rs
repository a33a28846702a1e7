//! An end-to-end check of a running system through each of its gateways:
//! auth, join, presence, chat across gateways, signaling, history on rejoin,
//! and, given the gateway's NATS credentials, that NATS refuses a gateway
//! that tries to publish to a room directly.

use std::time::Duration;

use schemas::client::{ChatMessage, ClientFrame, PresenceEvent, ServerFrame, SignalKind};
use schemas::id::{RoomId, Seq};
use schemas::{event, subject};

use cavlo_client::Connection;

use crate::connect::{ClientError, connect, expect, token};

/// NATS access with a gateway's credentials, for the permission check.
pub struct GatewayNats {
    /// Server URL.
    pub url: String,
    /// The gateways' user.
    pub user: String,
    /// Its password.
    pub password: String,
}

/// A failed smoke check, saying which step failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {cause}")]
pub struct SmokeError {
    step: String,
    cause: String,
}

fn step<E: std::fmt::Display>(step: &str) -> impl FnOnce(E) -> SmokeError + '_ {
    move |err| SmokeError {
        step: step.to_owned(),
        cause: err.to_string(),
    }
}

fn check(ok: bool, what: &str) -> Result<(), SmokeError> {
    if ok {
        Ok(())
    } else {
        Err(SmokeError {
            step: what.to_owned(),
            cause: "check failed".into(),
        })
    }
}

/// Runs the check from each of `gateways` to the next (the last to the
/// first), so each is used both to send and to receive.
pub async fn run(
    gateways: &[String],
    secret: &[u8],
    nats: Option<GatewayNats>,
) -> Result<(), SmokeError> {
    check(!gateways.is_empty(), "at least one gateway URL")?;
    for (i, first) in gateways.iter().enumerate() {
        let second = &gateways[(i + 1) % gateways.len()];
        println!("smoke: {first} <-> {second}");
        across(first, second, secret).await?;
    }
    if let Some(nats) = nats {
        println!("smoke: NATS refuses a gateway publishing to a room");
        permissions(&gateways[0], secret, nats).await?;
    }
    println!("smoke: ok");
    Ok(())
}

async fn joined(
    client: &mut Connection,
    room: &RoomId,
    since: Option<Seq>,
) -> Result<(usize, Vec<ChatMessage>), ClientError> {
    client
        .send(&ClientFrame::Join {
            room: room.clone(),
            since,
            replaces: None,
        })
        .await?;
    expect(client, |frame| match frame {
        ServerFrame::Joined {
            members, history, ..
        } => Some(Ok((members.len(), history))),
        ServerFrame::Error(error) => Some(Err(ClientError::Unexpected(format!("{error:?}")))),
        _ => None,
    })
    .await?
}

async fn chat(client: &mut Connection, room: &RoomId, id: &str) -> Result<Seq, ClientError> {
    let frame = ClientFrame::Chat {
        room: room.clone(),
        id: id.into(),
        text: format!("smoke {id}"),
    };
    client.send(&frame).await?;
    expect(client, |frame| match frame {
        ServerFrame::Ack { seq, .. } => Some(Ok(seq.unwrap_or_default())),
        ServerFrame::Error(error) => Some(Err(ClientError::Unexpected(format!("{error:?}")))),
        _ => None,
    })
    .await?
}

async fn next_chat(client: &mut Connection) -> Result<ChatMessage, ClientError> {
    expect(client, |frame| {
        if let ServerFrame::Chat(chat) = frame {
            Some(chat)
        } else {
            None
        }
    })
    .await
}

async fn across(first: &str, second: &str, secret: &[u8]) -> Result<(), SmokeError> {
    let room = RoomId(format!("smoke-{}", nuid::next()));
    let (mut ann, ann_welcome) = connect(first, &token(secret, "smoke-ann"))
        .await
        .map_err(step("connect to the first gateway"))?;
    let (mut bob, bob_welcome) = connect(second, &token(secret, "smoke-bob"))
        .await
        .map_err(step("connect to the second gateway"))?;
    joined(&mut ann, &room, None).await.map_err(step("join"))?;
    let (members, _) = joined(&mut bob, &room, None)
        .await
        .map_err(step("second join"))?;
    check(members == 2, "joined lists both members")?;
    let bob_id = bob_welcome.conn_id.clone();
    expect(&mut ann, |f| matches!(f, ServerFrame::Presence { event: PresenceEvent::Join, member, .. } if member.conn_id == bob_id).then_some(()))
        .await
        .map_err(step("presence join across gateways"))?;

    let seq = chat(&mut ann, &room, "a1")
        .await
        .map_err(step("chat acked"))?;
    let got = next_chat(&mut bob)
        .await
        .map_err(step("chat delivered across gateways"))?;
    check(
        got.seq == seq && got.id.as_str() == "a1",
        "delivered chat matches the ack",
    )?;
    chat(&mut bob, &room, "b1")
        .await
        .map_err(step("reply acked"))?;
    check(
        next_chat(&mut ann)
            .await
            .map_err(step("reply delivered"))?
            .id
            .as_str()
            == "b1",
        "reply delivered",
    )?;

    let offer = ClientFrame::Signal {
        room: room.clone(),
        to: bob_welcome.conn_id.clone(),
        kind: SignalKind::Offer,
        data: serde_json::json!({"type": "offer", "sdp": "v=0"}),
        from: None,
        user: None,
    };
    ann.send(&offer).await.map_err(step("send signal"))?;
    let ann_id = ann_welcome.conn_id.clone();
    expect(&mut bob, |f| {
        matches!(f, ServerFrame::Signal { from, .. } if from == ann_id).then_some(())
    })
    .await
    .map_err(step("signal delivered with the sender's id"))?;

    let (mut cat, _) = connect(second, &token(secret, "smoke-cat"))
        .await
        .map_err(step("connect a third client"))?;
    let (_, history) = joined(&mut cat, &room, Some(Seq(seq.0 - 1)))
        .await
        .map_err(step("join with since"))?;
    let ids: Vec<&str> = history.iter().map(|m| m.id.as_str()).collect();
    check(
        ids == ["a1", "b1"],
        "history on join holds exactly the room's messages",
    )?;

    ann.close().await;
    expect(&mut bob, |f| matches!(f, ServerFrame::Presence { event: PresenceEvent::Leave, member, .. } if member.conn_id == ann_id).then_some(()))
        .await
        .map_err(step("presence leave on disconnect"))?;
    bob.close().await;
    cat.close().await;
    Ok(())
}

async fn permissions(gateway: &str, secret: &[u8], nats: GatewayNats) -> Result<(), SmokeError> {
    let room = RoomId(format!("smoke-{}", nuid::next()));
    let (mut ann, _) = connect(gateway, &token(secret, "smoke-ann"))
        .await
        .map_err(step("connect"))?;
    let (mut bob, _) = connect(gateway, &token(secret, "smoke-bob"))
        .await
        .map_err(step("connect"))?;
    joined(&mut ann, &room, None).await.map_err(step("join"))?;
    joined(&mut bob, &room, None).await.map_err(step("join"))?;

    let (violations, mut violation) = tokio::sync::mpsc::channel(4);
    let client = async_nats::ConnectOptions::with_user_and_password(nats.user, nats.password)
        .event_callback(move |event| {
            let violations = violations.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    let _ = violations.send(err.to_string()).await;
                }
            }
        })
        .connect(nats.url.as_str())
        .await
        .map_err(step("connect to NATS with the gateway's credentials"))?;
    let forged = ChatMessage {
        room: room.clone(),
        seq: Seq(u64::MAX / 2),
        id: "forged".into(),
        from: schemas::client::Member {
            conn_id: "nobody".into(),
            user: schemas::client::User {
                id: "mallory".into(),
                name: "Mallory".into(),
            },
        },
        text: "forged".into(),
        ts: 0,
    };
    client
        .publish(subject::chat_deliver(&room), event::encode(&forged).into())
        .await
        .map_err(step("publish a forged delivery"))?;
    client.flush().await.map_err(step("flush"))?;
    let refused = tokio::time::timeout(Duration::from_secs(5), violation.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    check(
        refused.contains("Permissions Violation"),
        "NATS refuses the gateway's publish to a delivery subject",
    )?;

    // Nothing reached the room: bob's next chat is ann's real one.
    chat(&mut ann, &room, "real")
        .await
        .map_err(step("chat after the forgery"))?;
    check(
        next_chat(&mut bob)
            .await
            .map_err(step("real chat"))?
            .id
            .as_str()
            == "real",
        "no forged message reached a client",
    )?;
    ann.close().await;
    bob.close().await;
    Ok(())
}
