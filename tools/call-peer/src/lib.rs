//! A synthetic call participant: a WebRTC session (str0m, the crate the
//! media node is built on) on a loopback UDP socket, that sends audio frames
//! like a browser's microphone and records whose frames reach it, and how
//! late.
//!
//! It answers the node's renegotiation offers on the `cavlo` data channel,
//! as the browser SDK does, so tracks of participants who arrive later
//! reach it too. Each frame it sends carries the time it was sent (since
//! [`Options::epoch`]) and its number, so a receiver in the same process
//! can tell how long the frame took and which frames never came.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bytes of a frame's header: when it was sent (µs since the epoch, u64)
/// and its number (u32), little-endian.
const HEADER: usize = 12;

/// How a participant sends.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Whether it sends audio at all (a viewer does not).
    pub publish: bool,
    /// Time between two frames (20 ms, as Opus in browsers).
    pub frame_interval: Duration,
    /// Bytes per frame, header included (at least 12).
    pub frame_bytes: usize,
    /// The instant frame times count from: the same for every participant
    /// whose frames are compared.
    pub epoch: Instant,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            publish: true,
            frame_interval: Duration::from_millis(20),
            frame_bytes: 64,
            epoch: Instant::now(),
        }
    }
}

/// Frames received from one sender.
#[derive(Clone, Debug, Default)]
pub struct FromSender {
    /// Each frame that arrived, by number; a number seen twice is counted
    /// in `duplicates`.
    pub frames: BTreeMap<u32, Arrival>,
    /// Frames that came more than once.
    pub duplicates: u64,
    /// Bytes of the frames.
    pub bytes: u64,
}

/// One frame that arrived.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// When it was sent, µs since the epoch.
    pub sent_at: u64,
    /// How long it took, µs.
    pub delay: u64,
}

/// What a participant sent and received.
#[derive(Debug, Default)]
pub struct Record {
    /// When each frame it sent was sent (µs since the epoch), by number.
    pub sent: Vec<u64>,
    /// Frames received, by the sender's connection id (the stream id the
    /// node gives the tracks it forwards).
    pub received: BTreeMap<String, FromSender>,
}

type Shared = Arc<Mutex<Record>>;

/// One participant, driven by its own task until dropped.
pub struct Participant {
    /// The SDP offer to send in `call_join`.
    pub offer: String,
    answer: Option<oneshot::Sender<String>>,
    record: Shared,
    task: JoinHandle<()>,
}

impl Participant {
    /// A participant that sends audio (`publish`) or only receives, with
    /// the default frames.
    pub async fn start(publish: bool) -> Participant {
        Participant::with(Options {
            publish,
            ..Options::default()
        })
        .await
    }

    /// A participant sending as `options` says.
    pub async fn with(options: Options) -> Participant {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
        let local = socket.local_addr().expect("its address");
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("a host candidate"));
        let mut change = rtc.sdp_api();
        let audio = options.publish.then(|| {
            change.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("mic".into()),
                None,
                None,
            )
        });
        change.add_channel("cavlo".into());
        let (offer, pending) = change.apply().expect("an offer");
        let (answer, answered) = oneshot::channel();
        let record = Shared::default();
        let session = Session {
            rtc,
            socket,
            local,
            audio,
            channel: None,
            options,
            record: record.clone(),
        };
        let task = tokio::spawn(session.run(pending, answered));
        Participant {
            offer: offer.to_sdp_string(),
            answer: Some(answer),
            record,
            task,
        }
    }

    /// Hands the node's answer to the session, which then connects.
    pub fn answered(&mut self, sdp: String) {
        let answer = self.answer.take().expect("answered once");
        answer.send(sdp).expect("the session waits for its answer");
    }

    /// Frames received so far from connection `conn`.
    pub fn frames_from(&self, conn: &str) -> usize {
        let record = self.record.lock().unwrap();
        record
            .received
            .get(conn)
            .map_or(0, |from| from.frames.len())
    }

    /// Every sender heard from.
    pub fn senders(&self) -> Vec<String> {
        self.record
            .lock()
            .unwrap()
            .received
            .keys()
            .cloned()
            .collect()
    }

    /// Waits until frames from `conn` arrive (more than it had before);
    /// false after `timeout`.
    pub async fn hears(&self, conn: &str, timeout: Duration) -> bool {
        let before = self.frames_from(conn);
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.frames_from(conn) > before + 5 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// What it sent and received so far (a copy).
    pub fn record(&self) -> Record {
        let record = self.record.lock().unwrap();
        Record {
            sent: record.sent.clone(),
            received: record.received.clone(),
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Session {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    audio: Option<Mid>,
    channel: Option<ChannelId>,
    options: Options,
    record: Shared,
}

impl Session {
    async fn run(mut self, pending: SdpPendingOffer, answered: oneshot::Receiver<String>) {
        let Ok(answer) = answered.await else {
            return;
        };
        let answer = SdpAnswer::from_sdp_string(&answer).expect("the node's answer parses");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the node's answer is accepted");
        let mut buf = vec![0u8; 2000];
        let mut frames = tokio::time::interval(self.options.frame_interval);
        frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.poll();
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    let Ok((len, source)) = received else { continue };
                    let Ok(contents) = buf[..len].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents,
                    });
                    if self.rtc.handle_input(input).is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    if self.rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                        return;
                    }
                }
                _ = frames.tick() => self.send_frame(),
            }
        }
    }

    /// Sends one audio frame, once the session is connected.
    fn send_frame(&mut self) {
        let Some(mid) = self.audio else {
            return;
        };
        let Some(writer) = self.rtc.writer(mid) else {
            return;
        };
        let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else {
            return;
        };
        let mut record = self.record.lock().unwrap();
        let number = record.sent.len() as u32;
        let sent_at = self.options.epoch.elapsed().as_micros() as u64;
        let mut frame = vec![0u8; self.options.frame_bytes.max(HEADER)];
        frame[..8].copy_from_slice(&sent_at.to_le_bytes());
        frame[8..HEADER].copy_from_slice(&number.to_le_bytes());
        let time = MediaTime::from_millis(u64::from(number) * 20);
        if writer.write(pt, Instant::now(), time, frame).is_ok() {
            record.sent.push(sent_at);
        }
    }

    /// Sends what the session has to send and handles its events; returns
    /// when it next needs time to pass.
    fn poll(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(wake)) => return wake,
                Ok(Output::Transmit(transmit)) => {
                    let _ = self
                        .socket
                        .try_send_to(&transmit.contents, transmit.destination);
                }
                Ok(Output::Event(event)) => self.on_event(event),
                Err(_) => return Instant::now() + Duration::from_secs(3600),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ChannelOpen(channel, _) => self.channel = Some(channel),
            Event::ChannelData(data) => {
                let message: serde_json::Value =
                    serde_json::from_slice(&data.data).expect("channel messages are JSON");
                if message["type"] == "offer" {
                    let offer = SdpOffer::from_sdp_string(message["sdp"].as_str().unwrap())
                        .expect("the node's offer parses");
                    let answer = self
                        .rtc
                        .sdp_api()
                        .accept_offer(offer)
                        .expect("the node's offer is accepted");
                    let reply =
                        serde_json::json!({"type": "answer", "sdp": answer.to_sdp_string()});
                    if let Some(mut channel) = self.channel.and_then(|id| self.rtc.channel(id)) {
                        let _ = channel.write(false, reply.to_string().as_bytes());
                    }
                }
            }
            Event::MediaData(data) => {
                let sender = self
                    .rtc
                    .media(data.mid)
                    .map(|media| media.stream_id().to_owned())
                    .unwrap_or_default();
                let now = self.options.epoch.elapsed().as_micros() as u64;
                let mut record = self.record.lock().unwrap();
                let from = record.received.entry(sender).or_default();
                from.bytes += data.data.len() as u64;
                if data.data.len() < HEADER {
                    return;
                }
                let sent_at = u64::from_le_bytes(data.data[..8].try_into().expect("8 bytes"));
                let number = u32::from_le_bytes(data.data[8..HEADER].try_into().expect("4 bytes"));
                let arrival = Arrival {
                    sent_at,
                    delay: now.saturating_sub(sent_at),
                };
                if from.frames.insert(number, arrival).is_some() {
                    from.duplicates += 1;
                }
            }
            _ => {}
        }
    }
}
