//! One participant of a call: its WebRTC session, the tracks it sends the
//! node, and the other participants' tracks the node forwards to it.
//!
//! The session is str0m's sans-IO [`Rtc`]: it never touches the socket or
//! the clock itself; [`crate::sfu`] feeds it packets and time and sends
//! what it outputs.
//!
//! Tracks forwarded to a participant are added and removed by offers the
//! node makes over the call's data channel (the browser answers there too):
//! the browser's first offer, made through its gateway, can only carry its
//! own tracks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use schemas::id::{ConnId, RoomId};
use serde::{Deserialize, Serialize};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::{Rtc, RtcError};

use crate::simulcast::{Layer, Quality, Switch};

/// A participant's number on this node, unique for the node's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// What the node and a browser say to each other on the call's data channel
/// (`cavlo`), as JSON text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelMessage {
    /// An SDP offer: from the node when other participants' tracks arrive
    /// or leave; from the browser when its own change.
    Offer {
        /// The offer.
        sdp: String,
    },
    /// The answer to the other side's offer.
    Answer {
        /// The answer.
        sdp: String,
    },
    /// What the browser wants of one participant's video (from the
    /// browser): the small layer for a small tile, none for a hidden one.
    Quality {
        /// The participant whose video it is.
        conn: ConnId,
        /// What it wants.
        quality: Quality,
    },
    /// The participant now speaking loudest in the call (from the node).
    Speaker {
        /// Its connection, or `None` when nobody speaks.
        conn: Option<ConnId>,
    },
    /// The node refused the browser's last message.
    Error {
        /// Why, for people.
        message: String,
    },
}

/// A track the participant sends the node.
#[derive(Debug)]
pub struct Published {
    /// Its m-line in the participant's session.
    pub mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// When the node last asked the participant for a keyframe of it.
    pub keyframe_asked: Option<Instant>,
    /// Its simulcast layers, smallest first; empty without simulcast.
    pub layers: Vec<Layer>,
}

/// Another participant's track, forwarded to this one.
#[derive(Debug)]
pub struct Subscription {
    /// Who sends it.
    pub source: PeerId,
    /// The sender's connection: the browser's stream id, so it can tell
    /// whose tile the track belongs in.
    pub source_conn: ConnId,
    /// The track's m-line in the sender's session.
    pub source_mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// Where its negotiation stands.
    pub state: SubscriptionState,
    /// What the subscriber asked for (video only).
    pub quality: Quality,
    /// The simulcast layer it gets.
    pub switch: Switch,
}

/// The negotiation of one forwarded track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Not offered to the browser yet.
    Wanted,
    /// Offered at this m-line; the browser has not answered.
    Offered(Mid),
    /// Negotiated: media flows on this m-line.
    Open(Mid),
    /// Its sender left: the m-line is to be stopped.
    Ending(Mid),
    /// Stopping offered; the browser has not answered.
    EndOffered(Mid),
}

/// One participant.
pub struct Peer {
    /// Its number on the node.
    pub id: PeerId,
    /// The call's room.
    pub room: RoomId,
    /// Its connection (the gateway's id for it).
    pub conn: ConnId,
    /// Whether it may send media: not a viewer's, in any offer.
    pub publish: bool,
    /// The revision of the rooms bucket that listed it as a member when it
    /// joined: older changes to the room's members say nothing about it.
    pub listed: u64,
    /// When it joined: a session that never connects is dropped.
    pub joined: Instant,
    /// Whether its session connected (ICE and DTLS).
    pub connected: bool,
    /// When the node's offer that awaits an answer went out.
    pub offered: Option<Instant>,
    /// The WebRTC session.
    pub rtc: Rtc,
    /// The data channel, once the browser opened it.
    pub channel: Option<ChannelId>,
    /// The node's offer awaiting the browser's answer.
    pub pending: Option<SdpPendingOffer>,
    /// Tracks it sends.
    pub published: Vec<Published>,
    /// Tracks forwarded to it.
    pub subscriptions: Vec<Subscription>,
    /// When its session next needs time to pass.
    pub wake: Instant,
    /// Its smoothed audio level, in -dBov (0 loudest, 127 silent).
    pub loudness: f32,
    /// When it last had voice activity.
    pub spoke: Option<Instant>,
    /// Offers it made recently, to bound renegotiations.
    pub offers: Vec<Instant>,
    /// The bandwidth towards it, as its session estimates (TWCC), bits/s.
    pub estimate: Option<f64>,
    /// What it asked of each participant's video, kept for tracks of that
    /// participant that arrive later (it joined the call again).
    wishes: HashMap<ConnId, Quality>,
}

/// How often a browser may renegotiate on its own, per [`OFFER_WINDOW`].
const MAX_OFFERS: usize = 10;

/// The window [`MAX_OFFERS`] counts in.
const OFFER_WINDOW: Duration = Duration::from_secs(10);

impl Peer {
    /// A participant whose session answered its first offer.
    pub fn new(
        id: PeerId,
        room: RoomId,
        conn: ConnId,
        publish: bool,
        listed: u64,
        rtc: Rtc,
        now: Instant,
    ) -> Self {
        Self {
            id,
            room,
            conn,
            publish,
            listed,
            joined: now,
            connected: false,
            offered: None,
            rtc,
            channel: None,
            pending: None,
            published: Vec::new(),
            subscriptions: Vec::new(),
            wake: now,
            loudness: 127.0,
            spoke: None,
            offers: Vec::new(),
            estimate: None,
            wishes: HashMap::new(),
        }
    }

    /// Starts forwarding track `mid` of `source` (connection `conn`) to
    /// this participant, once negotiated.
    pub fn subscribe_to(&mut self, source: PeerId, conn: ConnId, mid: Mid, kind: MediaKind) {
        let quality = self.wishes.get(&conn).copied().unwrap_or_default();
        self.subscriptions.push(Subscription {
            source,
            source_conn: conn,
            source_mid: mid,
            quality,
            kind,
            state: SubscriptionState::Wanted,
            switch: Switch::default(),
        });
    }

    /// Stops forwarding everything `source` sends: its m-lines are stopped
    /// at the next negotiation.
    pub fn unsubscribe_all(&mut self, source: PeerId) {
        self.subscriptions.retain_mut(|sub| {
            if sub.source != source {
                return true;
            }
            match sub.state {
                SubscriptionState::Wanted => false,
                SubscriptionState::Offered(mid) | SubscriptionState::Open(mid) => {
                    sub.state = SubscriptionState::Ending(mid);
                    true
                }
                SubscriptionState::Ending(_) | SubscriptionState::EndOffered(_) => true,
            }
        });
    }

    /// The subscription forwarding `source`'s track `mid`, and its m-line,
    /// once negotiated.
    pub fn forwarding(&mut self, source: PeerId, mid: Mid) -> Option<(Mid, &mut Subscription)> {
        self.subscriptions
            .iter_mut()
            .find_map(|sub| match sub.state {
                SubscriptionState::Open(out) if sub.source == source && sub.source_mid == mid => {
                    Some((out, sub))
                }
                _ => None,
            })
    }

    /// The sender, track and layer behind this participant's m-line `out`.
    pub fn source_of(&self, out: Mid) -> Option<(PeerId, Mid, Option<Rid>)> {
        self.subscriptions.iter().find_map(|sub| match sub.state {
            SubscriptionState::Open(mid) if mid == out => {
                Some((sub.source, sub.source_mid, sub.switch.current))
            }
            _ => None,
        })
    }

    /// This participant's share of its bandwidth for one video track it
    /// gets at full quality, bits/s; `None` while unknown.
    pub fn video_budget(&self) -> Option<f64> {
        let full = self
            .subscriptions
            .iter()
            .filter(|sub| sub.kind == MediaKind::Video && sub.quality == Quality::High)
            .count();
        self.estimate.map(|estimate| estimate / full.max(1) as f64)
    }

    /// Offers the browser the tracks to add and stop, if any and if no
    /// offer of the node's is awaiting its answer. Returns whether an offer
    /// went out.
    pub fn negotiate(&mut self) -> Result<bool, RtcError> {
        let Some(channel) = self.channel else {
            return Ok(false);
        };
        if self.pending.is_some() {
            return Ok(false);
        }
        let mut change = self.rtc.sdp_api();
        for sub in &mut self.subscriptions {
            match sub.state {
                SubscriptionState::Wanted => {
                    let mid = change.add_media(
                        sub.kind,
                        Direction::SendOnly,
                        Some(sub.source_conn.to_string()),
                        None,
                        None,
                    );
                    sub.state = SubscriptionState::Offered(mid);
                }
                SubscriptionState::Ending(mid) => {
                    change.stop_media(mid);
                    sub.state = SubscriptionState::EndOffered(mid);
                }
                _ => {}
            }
        }
        let Some((offer, pending)) = change.apply() else {
            return Ok(false);
        };
        self.pending = Some(pending);
        self.offered = Some(Instant::now());
        let message = ChannelMessage::Offer {
            sdp: offer.to_sdp_string(),
        };
        self.send(channel, &message)?;
        Ok(true)
    }

    /// Handles a message from the browser on the data channel. Returns the
    /// tracks whose forwarding it opened, by sender and sender's m-line:
    /// their senders are asked for a keyframe, so the new subscriber's
    /// picture starts at once.
    pub fn on_channel_message(
        &mut self,
        data: &[u8],
        now: Instant,
    ) -> Result<Vec<(PeerId, Mid)>, RtcError> {
        let Some(channel) = self.channel else {
            return Ok(Vec::new());
        };
        let mut opened = Vec::new();
        let reply = match serde_json::from_slice::<ChannelMessage>(data) {
            Ok(ChannelMessage::Answer { sdp }) => {
                opened = self.on_answer(&sdp);
                None
            }
            Ok(ChannelMessage::Offer { sdp }) => Some(self.on_offer(&sdp, now)),
            Ok(ChannelMessage::Quality { conn, quality }) => {
                self.wishes.insert(conn.clone(), quality);
                for sub in &mut self.subscriptions {
                    if sub.source_conn == conn && sub.kind == MediaKind::Video {
                        sub.quality = quality;
                    }
                }
                None
            }
            Ok(_) => Some(ChannelMessage::Error {
                message: "only offers, answers and qualities are accepted".into(),
            }),
            Err(err) => Some(ChannelMessage::Error {
                message: format!("not a channel message: {err}"),
            }),
        };
        if let Some(reply) = reply {
            self.send(channel, &reply)?;
        }
        Ok(opened)
    }

    fn on_answer(&mut self, sdp: &str) -> Vec<(PeerId, Mid)> {
        self.offered = None;
        let Some(pending) = self.pending.take() else {
            tracing::debug!(conn = %self.conn, "an answer to no offer");
            return Vec::new();
        };
        let answer = match SdpAnswer::from_sdp_string(sdp) {
            Ok(answer) => answer,
            Err(err) => {
                tracing::info!(conn = %self.conn, cause = %err, "an answer that does not parse");
                self.retry_offered();
                return Vec::new();
            }
        };
        if let Err(err) = self.rtc.sdp_api().accept_answer(pending, answer) {
            tracing::info!(conn = %self.conn, cause = %err, "an answer the node cannot accept");
            self.retry_offered();
            return Vec::new();
        }
        let mut opened = Vec::new();
        self.subscriptions.retain_mut(|sub| match sub.state {
            SubscriptionState::Offered(mid) => {
                sub.state = SubscriptionState::Open(mid);
                opened.push((sub.source, sub.source_mid));
                true
            }
            SubscriptionState::EndOffered(_) => false,
            _ => true,
        });
        opened
    }

    fn on_offer(&mut self, sdp: &str, now: Instant) -> ChannelMessage {
        self.offers
            .retain(|at| now.duration_since(*at) < OFFER_WINDOW);
        if self.offers.len() >= MAX_OFFERS {
            return ChannelMessage::Error {
                message: format!("rate_limited: at most {MAX_OFFERS} offers per {OFFER_WINDOW:?}"),
            };
        }
        self.offers.push(now);
        if !self.publish && sends_media(sdp) {
            return ChannelMessage::Error {
                message: "forbidden: a viewer may not send audio or video".into(),
            };
        }
        let offer = match SdpOffer::from_sdp_string(sdp) {
            Ok(offer) => offer,
            Err(err) => {
                return ChannelMessage::Error {
                    message: format!("invalid_message: the offer does not parse: {err}"),
                };
            }
        };
        // The browser's offer replaces the node's own, if one was waiting.
        self.pending = None;
        self.offered = None;
        self.retry_offered();
        match self.rtc.sdp_api().accept_offer(offer) {
            Ok(answer) => ChannelMessage::Answer {
                sdp: answer.to_sdp_string(),
            },
            Err(err) => ChannelMessage::Error {
                message: format!("invalid_message: the offer cannot be accepted: {err}"),
            },
        }
    }

    /// Abandons the node's offer if the browser has not answered it within
    /// `patience` (it failed to apply it): what it proposed is offered
    /// again, so the participant does not stop getting changes for good.
    pub fn give_up_offer(&mut self, patience: Duration, now: Instant) -> bool {
        if self
            .offered
            .is_some_and(|at| now.duration_since(at) >= patience)
        {
            tracing::info!(conn = %self.conn, "the browser did not answer the node's offer; offering again");
            self.pending = None;
            self.offered = None;
            self.retry_offered();
            return true;
        }
        false
    }

    /// Puts what the last, abandoned offer proposed back to be offered.
    fn retry_offered(&mut self) {
        for sub in &mut self.subscriptions {
            match sub.state {
                SubscriptionState::Offered(_) => sub.state = SubscriptionState::Wanted,
                SubscriptionState::EndOffered(mid) => sub.state = SubscriptionState::Ending(mid),
                _ => {}
            }
        }
    }

    /// Sends `message` on the data channel.
    pub fn send(&mut self, channel: ChannelId, message: &ChannelMessage) -> Result<(), RtcError> {
        let text = serde_json::to_string(message).expect("channel messages serialize");
        if let Some(mut channel) = self.rtc.channel(channel) {
            channel.write(false, text.as_bytes())?;
        }
        Ok(())
    }

    /// Asks the participant for a keyframe of its video track `mid` (of
    /// layer `rid`, with simulcast; of every layer for `None`), at most
    /// once per `interval` per layer. Returns whether it asked.
    pub fn ask_keyframe(
        &mut self,
        mid: Mid,
        rid: Option<Rid>,
        interval: Duration,
        now: Instant,
    ) -> bool {
        let Some(track) = self.published.iter_mut().find(|t| t.mid == mid) else {
            return false;
        };
        if track.kind != MediaKind::Video {
            return false;
        }
        let recent =
            |asked: &Option<Instant>| asked.is_some_and(|at| now.duration_since(at) < interval);
        let mut rids = Vec::new();
        if track.layers.is_empty() {
            if recent(&track.keyframe_asked) {
                return false;
            }
            track.keyframe_asked = Some(now);
            rids.push(None);
        } else {
            for layer in &mut track.layers {
                if rid.is_none_or(|rid| rid == layer.rid) && !recent(&layer.keyframe_asked) {
                    layer.keyframe_asked = Some(now);
                    rids.push(Some(layer.rid));
                }
            }
        }
        let Some(mut writer) = self.rtc.writer(mid) else {
            return false;
        };
        let mut asked = false;
        for rid in rids {
            match writer.request_keyframe(rid, KeyframeRequestKind::Pli) {
                Ok(()) => asked = true,
                Err(err) => {
                    tracing::debug!(conn = %self.conn, cause = %err, "keyframe request not sent");
                }
            }
        }
        asked
    }

    /// Notes an audio level (in -dBov) the participant's packet carried.
    pub fn heard(&mut self, level: i8, voice: bool, now: Instant) {
        let level = f32::from(level.unsigned_abs().min(127));
        self.loudness = 0.8 * self.loudness + 0.2 * level;
        if voice {
            self.spoke = Some(now);
        }
    }
}

/// Whether an SDP offer sends any audio or video: a viewer's may not.
pub fn sends_media(sdp: &str) -> bool {
    let mut in_media = false;
    for line in sdp.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            in_media = media.starts_with("audio") || media.starts_with("video");
        } else if in_media && (line.starts_with("a=sendrecv") || line.starts_with("a=sendonly")) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_sends_media_when_an_audio_or_video_line_sends() {
        let sending = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        let receiving = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sendrecv\r\n";
        assert!(sends_media(sending));
        assert!(
            !sends_media(receiving),
            "the data channel's line is not media"
        );
        assert!(sends_media("m=video 9 X 96\r\na=sendrecv\r\n"));
    }

    /// An offer that sends audio, as a browser's renegotiation would.
    fn offer_sending_audio() -> String {
        let mut rtc = Rtc::builder()
            .set_crypto_provider(std::sync::Arc::new(str0m::crypto::from_feature_flags()))
            .build(Instant::now());
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, _) = change.apply().expect("an offer");
        offer.to_sdp_string()
    }

    fn peer(publish: bool) -> Peer {
        let rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_crypto_provider(std::sync::Arc::new(str0m::crypto::from_feature_flags()))
            .build(Instant::now());
        Peer::new(
            PeerId(1),
            "r".into(),
            "c".into(),
            publish,
            0,
            rtc,
            Instant::now(),
        )
    }

    #[test]
    fn a_viewer_cannot_start_sending_by_renegotiating() {
        let offer = offer_sending_audio();
        match peer(false).on_offer(&offer, Instant::now()) {
            ChannelMessage::Error { message } => {
                assert!(message.starts_with("forbidden"), "{message}")
            }
            other => panic!("a viewer's offer to send was answered: {other:?}"),
        }
        assert!(matches!(
            peer(true).on_offer(&offer, Instant::now()),
            ChannelMessage::Answer { .. }
        ));
    }

    #[test]
    fn an_offer_the_browser_never_answers_is_offered_again() {
        let mut peer = peer(true);
        let start = Instant::now();
        peer.offered = Some(start);
        peer.subscriptions.push(Subscription {
            source: PeerId(2),
            source_conn: "other".into(),
            source_mid: Mid::from("0"),
            kind: MediaKind::Video,
            state: SubscriptionState::Offered(Mid::from("3")),
            quality: Quality::default(),
            switch: Switch::default(),
        });
        assert!(!peer.give_up_offer(Duration::from_secs(10), start + Duration::from_secs(9)));
        assert!(peer.give_up_offer(Duration::from_secs(10), start + Duration::from_secs(10)));
        assert_eq!(peer.subscriptions[0].state, SubscriptionState::Wanted);
        assert!(peer.offered.is_none());
    }

    #[test]
    fn channel_messages_are_tagged_json() {
        let json = serde_json::to_string(&ChannelMessage::Speaker {
            conn: Some("c1".into()),
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"speaker","conn":"c1"}"#);
        let offer: ChannelMessage =
            serde_json::from_str(r#"{"type":"offer","sdp":"v=0"}"#).unwrap();
        assert_eq!(offer, ChannelMessage::Offer { sdp: "v=0".into() });
    }
}
