//! The forwarding loop: one task owns the node's UDP socket and every
//! participant's session, and forwards each participant's media to the
//! others in its call.
//!
//! One socket serves every participant (ICE-lite: browsers reach the node at
//! its one advertised address), so operators open one UDP port per node. A
//! datagram is handed to the session that accepts it: the one last seen at
//! its source address, else whichever recognises its ICE credentials.
//!
//! The loop never waits on anything but the socket, its commands and its
//! timer: sends that would block are dropped (UDP may lose them anyway, and
//! the sessions retransmit what matters), so one slow path cannot stall
//! every call on the node.
//!
//! str0m's one contract: every change to a session (an input, a write, a
//! negotiation) is followed by draining its output to the next timeout
//! before the next change. So the loop drains a session right after each
//! change ([`Forwarding::drain`]), and what that output means for others
//! (media to forward, a keyframe to ask for) is queued and handled once
//! the session is drained, each change to another session drained in turn.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use schemas::id::{ConnId, RoomId};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::crypto::CryptoProvider;
use str0m::media::{Direction, MediaData, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::MediaMetrics;
use crate::peer::{ChannelMessage, Peer, PeerId, Published};
use crate::simulcast::{self, Admit, Layer};

/// What the control side asks of the loop.
#[derive(Debug)]
pub enum Command {
    /// Join `conn` to `room`'s call with its browser's offer; answered with
    /// the node's SDP answer. A connection already in the call is replaced
    /// (it joins again after its node moved, or after a failure).
    Join {
        /// The call's room.
        room: RoomId,
        /// The joining connection.
        conn: ConnId,
        /// Its browser's offer.
        offer: Box<SdpOffer>,
        /// Whether it may send media (a viewer may not).
        publish: bool,
        /// The revision of the rooms bucket that listed it as a member.
        listed: u64,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<String, JoinError>>,
    },
    /// `room`'s members as of `revision` of the rooms bucket: participants
    /// it does not list, joined on an older revision, are dropped.
    Members {
        /// The room.
        room: RoomId,
        /// The revision that says so.
        revision: u64,
        /// Its members' connections.
        members: HashSet<ConnId>,
    },
    /// `conn` left `room`'s call.
    Leave {
        /// The call's room.
        room: RoomId,
        /// The connection.
        conn: ConnId,
    },
    /// How many participants `room`'s call has.
    Count {
        /// The call's room.
        room: RoomId,
        /// Where the count goes.
        reply: oneshot::Sender<usize>,
    },
}

/// Why a join failed in the loop.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The node holds as many participants as it may.
    #[error("the media node is full")]
    Full,
    /// The browser's offer cannot be answered.
    #[error("the offer cannot be accepted: {0}")]
    Offer(#[from] str0m::RtcError),
    /// A change of the room newer than the one the join read no longer
    /// lists the connection: it was removed while its join was on its way.
    #[error("the room no longer lists this connection")]
    Unlisted,
}

/// What the loop tells the control side.
#[derive(Debug)]
pub enum Notice {
    /// The last participant left this room's call.
    Empty(RoomId),
}

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct SfuConfig {
    /// The address browsers send to: the node's one ICE candidate.
    pub public: SocketAddr,
    /// Participants the node may hold.
    pub max_participants: usize,
    /// Keyframe requests to one publisher's track are at least this far
    /// apart.
    pub keyframe_interval: Duration,
}

/// The control side's end of the loop.
#[derive(Clone, Debug)]
pub struct Sfu {
    commands: mpsc::Sender<Command>,
    participants: Arc<AtomicU32>,
}

impl Sfu {
    /// Starts the loop on `socket`. It ends when every [`Sfu`] is dropped.
    pub fn spawn(
        socket: UdpSocket,
        config: SfuConfig,
        metrics: MediaMetrics,
    ) -> (Self, mpsc::UnboundedReceiver<Notice>) {
        let (commands, receiver) = mpsc::channel(256);
        let (notices, notice_receiver) = mpsc::unbounded_channel();
        let participants = Arc::new(AtomicU32::new(0));
        let forwarding = Forwarding {
            socket,
            crypto: Arc::new(str0m::crypto::from_feature_flags()),
            config,
            peers: HashMap::new(),
            rooms: HashMap::new(),
            by_conn: HashMap::new(),
            by_addr: HashMap::new(),
            speakers: HashMap::new(),
            queued: VecDeque::new(),
            recent: HashMap::new(),
            next_id: 0,
            participants: participants.clone(),
            notices,
            metrics,
        };
        tokio::spawn(forwarding.run(receiver));
        (
            Self {
                commands,
                participants,
            },
            notice_receiver,
        )
    }

    /// Sends `command` to the loop; false if the loop has ended.
    pub async fn send(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }

    /// Participants connected now: the node's load.
    pub fn participants(&self) -> u32 {
        self.participants.load(Ordering::Relaxed)
    }
}

/// Something one participant's output means for others.
// Frames stay inline: they are forwarded right after they are polled, and
// boxing each would allocate once per frame.
#[allow(clippy::large_enum_variant)]
enum Forward {
    /// A track it sends was negotiated: offer it to the others.
    Published(PeerId, Mid),
    /// Media to forward to the others.
    Media(PeerId, MediaData),
    /// A subscriber wants a keyframe of this publisher's track (of one
    /// layer, or of all).
    Keyframe(PeerId, Mid, Option<Rid>),
}

/// The bandwidth towards a new participant, until its session measures it.
const INITIAL_ESTIMATE: Bitrate = Bitrate::kbps(1000);

/// What a subscriber's session probes for, per video track it gets: enough
/// for a browser's largest simulcast layer.
const DESIRED_PER_VIDEO: u64 = 1_700_000;

/// A participant whose session has not connected this long after its join
/// is dropped: the browser never got the answer, or left mid-join.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the node waits for the browser's answer to its offer before it
/// offers again.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the loudest speaker of each call is chosen.
const SPEAKER_INTERVAL: Duration = Duration::from_millis(500);

/// A participant whose voice activity is older than this is not speaking.
const SPEAKING_WINDOW: Duration = Duration::from_millis(1500);

/// Quieter than this (in -dBov) is not speaking, whatever the flag says.
const SPEAKING_LEVEL: f32 = 60.0;

/// How long the loop remembers a room's members as the bucket last said:
/// longer than a join takes from reading them to reaching the loop (a
/// read and a placement, each bounded by a NATS request timeout).
const RECENT_MEMBERS: Duration = Duration::from_secs(10);

/// A room's members as of one revision of the rooms bucket.
struct Listing {
    revision: u64,
    members: HashSet<ConnId>,
    /// When the loop heard of it.
    at: Instant,
}

struct Forwarding {
    socket: UdpSocket,
    crypto: Arc<CryptoProvider>,
    config: SfuConfig,
    peers: HashMap<PeerId, Peer>,
    rooms: HashMap<RoomId, Vec<PeerId>>,
    by_conn: HashMap<(RoomId, ConnId), PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Each call's loudest speaker, as last told.
    speakers: HashMap<RoomId, Option<ConnId>>,
    /// What drained sessions' output means for others, not yet acted on.
    queued: VecDeque<Forward>,
    /// Rooms' members as the bucket said in the last RECENT_MEMBERS: a
    /// join that read an older revision must not add a connection that a
    /// newer one removed, whose change reached the loop first.
    recent: HashMap<RoomId, Listing>,
    next_id: u64,
    participants: Arc<AtomicU32>,
    notices: mpsc::UnboundedSender<Notice>,
    metrics: MediaMetrics,
}

impl Forwarding {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 2000];
        let mut speakers = tokio::time::interval(SPEAKER_INTERVAL);
        loop {
            self.act(Instant::now());
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, source)) => self.receive(&buf[..len], source),
                    Err(err) => tracing::debug!(cause = %err, "UDP receive failed"),
                },
                () = tokio::time::sleep_until(wake.into()) => self.wake_due(Instant::now()),
                _ = speakers.tick() => {
                    self.expire(Instant::now());
                    self.choose_speakers(Instant::now());
                    self.desire_bandwidth(Instant::now());
                }
            }
        }
        for peer in self.peers.values_mut() {
            peer.rtc.disconnect();
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Join {
                room,
                conn,
                offer,
                publish,
                listed,
                reply,
            } => {
                let answer = self.join(room, conn, *offer, publish, listed, Instant::now());
                let _ = reply.send(answer);
            }
            Command::Members {
                room,
                revision,
                members,
            } => {
                let now = Instant::now();
                let gone: Vec<PeerId> = self
                    .rooms
                    .get(&room)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| self.peers.get(id))
                    .filter(|peer| peer.listed < revision && !members.contains(&peer.conn))
                    .map(|peer| peer.id)
                    .collect();
                for id in gone {
                    // Dropping one may end others' sessions, and drop them.
                    if !self.peers.contains_key(&id) {
                        continue;
                    }
                    tracing::info!(%room, "a participant the room no longer lists is dropped");
                    self.metrics.unlisted.inc();
                    self.remove(id, now);
                }
                let newer = self
                    .recent
                    .get(&room)
                    .is_none_or(|known| known.revision < revision);
                if newer {
                    let listing = Listing {
                        revision,
                        members,
                        at: now,
                    };
                    self.recent.insert(room, listing);
                }
            }
            Command::Leave { room, conn } => {
                if let Some(id) = self.by_conn.get(&(room, conn)).copied() {
                    self.remove(id, Instant::now());
                }
            }
            Command::Count { room, reply } => {
                let _ = reply.send(self.rooms.get(&room).map_or(0, Vec::len));
            }
        }
    }

    fn join(
        &mut self,
        room: RoomId,
        conn: ConnId,
        offer: SdpOffer,
        publish: bool,
        listed: u64,
        now: Instant,
    ) -> Result<String, JoinError> {
        if let Some(old) = self.by_conn.get(&(room.clone(), conn.clone())).copied() {
            self.remove(old, now);
        }
        if self.peers.len() >= self.config.max_participants {
            return Err(JoinError::Full);
        }
        if let Some(known) = self.recent.get(&room)
            && known.revision > listed
            && !known.members.contains(&conn)
        {
            return Err(JoinError::Unlisted);
        }
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .enable_bwe(Some(INITIAL_ESTIMATE))
            .set_crypto_provider(self.crypto.clone())
            .build(now);
        let candidate = Candidate::host(self.config.public, "udp")
            .expect("a UDP host candidate of a socket address");
        rtc.add_local_candidate(candidate);
        let answer = rtc.sdp_api().accept_offer(offer)?;
        let id = PeerId(self.next_id);
        self.next_id += 1;
        let mut peer = Peer::new(id, room.clone(), conn.clone(), publish, listed, rtc, now);
        let members = self.rooms.entry(room.clone()).or_default();
        for other in members.iter().filter_map(|id| self.peers.get(id)) {
            for track in &other.published {
                peer.subscribe_to(other.id, other.conn.clone(), track.mid, track.kind);
            }
        }
        members.push(id);
        self.by_conn.insert((room, conn), id);
        self.peers.insert(id, peer);
        self.drain(id, now);
        self.counted();
        Ok(answer.to_sdp_string())
    }

    /// Drops a participant and stops forwarding its tracks to the others.
    fn remove(&mut self, id: PeerId, now: Instant) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        peer.rtc.disconnect();
        tracing::debug!(room = %peer.room, conn = %peer.conn, "participant left");
        self.by_conn.remove(&(peer.room.clone(), peer.conn.clone()));
        self.by_addr.retain(|_, owner| *owner != id);
        let others = self.others(&peer.room, id);
        if others.is_empty() {
            self.rooms.remove(&peer.room);
            self.speakers.remove(&peer.room);
            let _ = self.notices.send(Notice::Empty(peer.room.clone()));
        } else {
            if let Some(members) = self.rooms.get_mut(&peer.room) {
                members.retain(|member| *member != id);
            }
            for other in others {
                if let Some(other_peer) = self.peers.get_mut(&other) {
                    other_peer.unsubscribe_all(id);
                    self.drain(other, now);
                }
            }
        }
        self.counted();
    }

    fn counted(&self) {
        let participants = self.peers.len();
        self.participants
            .store(participants as u32, Ordering::Relaxed);
        self.metrics.participants.set(participants as i64);
        self.metrics.calls.set(self.rooms.len() as i64);
    }

    fn receive(&mut self, datagram: &[u8], source: SocketAddr) {
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let now = Instant::now();
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.config.public,
                contents,
            },
        );
        let known = self
            .by_addr
            .get(&source)
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let owner = known.or_else(|| {
            let found = self
                .peers
                .iter()
                .find(|(_, peer)| peer.rtc.accepts(&input))
                .map(|(id, _)| *id)?;
            self.by_addr.insert(source, found);
            Some(found)
        });
        let Some(id) = owner else {
            tracing::trace!(%source, "a datagram no participant accepts");
            return;
        };
        let peer = self.peers.get_mut(&id).expect("owner is a participant");
        if let Err(err) = peer.rtc.handle_input(input) {
            tracing::info!(conn = %peer.conn, cause = %err, "participant's session failed");
            peer.rtc.disconnect();
        }
        self.drain(id, now);
    }

    /// Lets time pass for the sessions that asked for it.
    fn wake_due(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .values()
            .filter(|peer| peer.wake <= now)
            .map(|peer| peer.id)
            .collect();
        for id in due {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if let Err(err) = peer.rtc.handle_input(Input::Timeout(now)) {
                tracing::info!(conn = %peer.conn, cause = %err, "participant's session failed");
                peer.rtc.disconnect();
            }
            self.drain(id, now);
        }
    }

    fn next_wake(&self) -> Instant {
        let later = Instant::now() + Duration::from_millis(100);
        self.peers
            .values()
            .map(|peer| peer.wake)
            .min()
            .map_or(later, |wake| wake.min(later))
    }

    /// Acts on what drained sessions' output means for others, until
    /// nothing is left to act on (each change to another session is
    /// drained at once, and may queue more).
    fn act(&mut self, now: Instant) {
        while let Some(forward) = self.queued.pop_front() {
            self.forward(forward, now);
        }
    }

    /// Drains participant `id`'s session right after a change to it, as
    /// str0m requires, queueing what its output means for others; drops
    /// the participant if its session has ended.
    fn drain(&mut self, id: PeerId, now: Instant) {
        if !self.poll(id, now) {
            self.remove(id, now);
        }
    }

    /// Drains one session's output. False when the session has ended.
    fn poll(&mut self, id: PeerId, now: Instant) -> bool {
        let forwards = &mut self.queued;
        let Some(peer) = self.peers.get_mut(&id) else {
            return true;
        };
        loop {
            if !peer.rtc.is_alive() {
                return false;
            }
            if let Err(err) = peer.negotiate() {
                tracing::info!(conn = %peer.conn, cause = %err, "renegotiation failed");
                return false;
            }
            let output = match peer.rtc.poll_output() {
                Ok(output) => output,
                Err(err) => {
                    tracing::info!(conn = %peer.conn, cause = %err, "participant's session failed");
                    return false;
                }
            };
            match output {
                Output::Timeout(wake) => {
                    peer.wake = wake;
                    return true;
                }
                Output::Transmit(transmit) => {
                    if self
                        .socket
                        .try_send_to(&transmit.contents, transmit.destination)
                        .is_err()
                    {
                        self.metrics.send_dropped.inc();
                    }
                }
                Output::Event(event) => match event {
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        tracing::debug!(conn = %peer.conn, "ICE disconnected");
                        return false;
                    }
                    // Lines the node added to forward others' tracks are
                    // send-only; the participant's own are not. A viewer's
                    // are never published.
                    Event::MediaAdded(added)
                        if peer.publish
                            && matches!(
                                added.direction,
                                Direction::RecvOnly | Direction::SendRecv
                            ) =>
                    {
                        // The browser's send layers are the node's recv.
                        let layers = added
                            .simulcast
                            .map(|s| if s.recv.is_empty() { s.send } else { s.recv })
                            .unwrap_or_default()
                            .into_iter()
                            .map(|layer| Layer::new(layer.rid, now))
                            .collect();
                        peer.published.push(Published {
                            mid: added.mid,
                            kind: added.kind,
                            keyframe_asked: None,
                            layers,
                        });
                        forwards.push_back(Forward::Published(id, added.mid));
                    }
                    Event::MediaData(data) => {
                        if let (Some(level), voice) =
                            (data.ext_vals.audio_level, data.ext_vals.voice_activity)
                        {
                            peer.heard(level, voice.unwrap_or(false), now);
                        }
                        if let Some(rid) = data.rid
                            && let Some(track) =
                                peer.published.iter_mut().find(|t| t.mid == data.mid)
                            && let Some(layer) = track.layers.iter_mut().find(|l| l.rid == rid)
                        {
                            layer.heard(data.data.len(), now);
                        }
                        if !data.contiguous {
                            forwards.push_back(Forward::Keyframe(id, data.mid, data.rid));
                        }
                        forwards.push_back(Forward::Media(id, data));
                    }
                    Event::KeyframeRequest(request) => {
                        if let Some((source, mid, rid)) = peer.source_of(request.mid) {
                            forwards.push_back(Forward::Keyframe(source, mid, rid));
                        }
                    }
                    Event::ChannelOpen(channel, _) => peer.channel = Some(channel),
                    Event::ChannelData(data) => match peer.on_channel_message(&data.data, now) {
                        Ok(opened) => forwards.extend(
                            opened
                                .into_iter()
                                .map(|(source, mid)| Forward::Keyframe(source, mid, None)),
                        ),
                        Err(err) => {
                            tracing::info!(conn = %peer.conn, cause = %err, "data channel failed");
                            return false;
                        }
                    },
                    Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                        peer.estimate = Some(estimate.as_f64());
                    }
                    Event::Connected => {
                        peer.connected = true;
                        tracing::debug!(conn = %peer.conn, "participant connected");
                    }
                    _ => {}
                },
            }
        }
    }

    fn forward(&mut self, forward: Forward, now: Instant) {
        match forward {
            Forward::Published(source, mid) => {
                let Some(sender) = self.peers.get(&source) else {
                    return;
                };
                let room = sender.room.clone();
                let Some(track) = sender.published.iter().find(|t| t.mid == mid) else {
                    return;
                };
                let (conn, kind) = (sender.conn.clone(), track.kind);
                for other in self.others(&room, source) {
                    if let Some(peer) = self.peers.get_mut(&other) {
                        peer.subscribe_to(source, conn.clone(), mid, kind);
                        self.drain(other, now);
                    }
                }
            }
            Forward::Media(source, data) => {
                let Some(sender) = self.peers.get(&source) else {
                    return;
                };
                let room = sender.room.clone();
                // The sender's layers as they stand, for each subscriber's choice.
                let layers: Vec<Layer> = match data.rid {
                    Some(_) => sender
                        .published
                        .iter()
                        .find(|t| t.mid == data.mid)
                        .map(|t| t.layers.clone())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                for other in self.others(&room, source) {
                    let Some(peer) = self.peers.get_mut(&other) else {
                        continue;
                    };
                    let budget = peer.video_budget();
                    let Some((out, sub)) = peer.forwarding(source, data.mid) else {
                        continue;
                    };
                    if let Some(rid) = data.rid {
                        let target = simulcast::choose(sub.quality, &layers, budget, now);
                        match sub.switch.admit(rid, data.is_keyframe(), target) {
                            Admit::Forward => {}
                            Admit::Skip => continue,
                            Admit::AskKeyframe(wanted) => {
                                self.queued.push_back(Forward::Keyframe(
                                    source,
                                    data.mid,
                                    Some(wanted),
                                ));
                                continue;
                            }
                        }
                    }
                    let Some(writer) = peer.rtc.writer(out) else {
                        continue;
                    };
                    let Some(pt) = writer.match_params(data.params) else {
                        continue;
                    };
                    match writer.write(pt, data.network_time, data.time, data.data.clone()) {
                        Ok(()) => {
                            self.metrics.forwarded.inc();
                        }
                        Err(err) => {
                            tracing::info!(conn = %peer.conn, cause = %err, "forwarding failed");
                            peer.rtc.disconnect();
                        }
                    }
                    self.drain(other, now);
                }
            }
            Forward::Keyframe(source, mid, rid) => {
                if let Some(peer) = self.peers.get_mut(&source)
                    && peer.ask_keyframe(mid, rid, self.config.keyframe_interval, now)
                {
                    self.metrics.keyframe_requests.inc();
                    self.drain(source, now);
                }
            }
        }
    }

    /// Drops the sessions that never connected within CONNECT_TIMEOUT (the
    /// browser never got the answer, or went away mid-join), abandons the
    /// node's offers a browser has not answered within OFFER_TIMEOUT, and
    /// forgets rooms' members heard more than RECENT_MEMBERS ago.
    fn expire(&mut self, now: Instant) {
        let stale: Vec<PeerId> = self
            .peers
            .values()
            .filter(|peer| !peer.connected && now.duration_since(peer.joined) >= CONNECT_TIMEOUT)
            .map(|peer| peer.id)
            .collect();
        for id in stale {
            tracing::info!("a participant that never connected is dropped");
            self.remove(id, now);
        }
        self.recent
            .retain(|_, listing| now.duration_since(listing.at) < RECENT_MEMBERS);
        let abandoned: Vec<PeerId> = self
            .peers
            .values_mut()
            .filter_map(|peer| peer.give_up_offer(OFFER_TIMEOUT, now).then_some(peer.id))
            .collect();
        for id in abandoned {
            self.drain(id, now);
        }
    }

    /// Tells each session how much bandwidth to probe for: enough for the
    /// largest layer of every video track it gets.
    fn desire_bandwidth(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let videos = peer
                .subscriptions
                .iter()
                .filter(|sub| sub.kind == MediaKind::Video)
                .count() as u64;
            peer.rtc
                .bwe()
                .set_desired_bitrate(Bitrate::bps(DESIRED_PER_VIDEO * videos.max(1)));
            self.drain(id, now);
        }
    }

    /// Tells each call's participants who speaks loudest, when that changed.
    fn choose_speakers(&mut self, now: Instant) {
        let mut tell = Vec::new();
        for (room, members) in &self.rooms {
            let loudest = members
                .iter()
                .filter_map(|id| self.peers.get(id))
                .filter(|peer| {
                    peer.loudness < SPEAKING_LEVEL
                        && peer
                            .spoke
                            .is_some_and(|at| now.duration_since(at) < SPEAKING_WINDOW)
                })
                .min_by(|a, b| a.loudness.total_cmp(&b.loudness))
                .map(|peer| peer.conn.clone());
            let told = self.speakers.entry(room.clone()).or_default();
            if *told == loudest {
                continue;
            }
            told.clone_from(&loudest);
            tell.push((members.clone(), ChannelMessage::Speaker { conn: loudest }));
        }
        for (members, message) in tell {
            for id in members {
                if let Some(peer) = self.peers.get_mut(&id)
                    && let Some(channel) = peer.channel
                {
                    if let Err(err) = peer.send(channel, &message) {
                        tracing::debug!(conn = %peer.conn, cause = %err, "speaker not told");
                    }
                    self.drain(id, now);
                }
            }
        }
    }

    /// The participants in `room`'s call other than `source`: a copy, since
    /// acting on each may change the call.
    fn others(&self, room: &RoomId, source: PeerId) -> Vec<PeerId> {
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| *id != source)
            .collect()
    }
}
