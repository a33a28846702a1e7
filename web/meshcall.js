// A mesh video call over a CavloClient (cavlo.js, which re-exports this
// module): one RTCPeerConnection per other member of a room. docs/client.md,
// "MeshCall", is the reference.

/**
 * How long the polite side of a call waits before offering. When both peers
 * offered at once, rolling back an offer Chromium 156 was still setting
 * sometimes left the connection gathering no ICE candidates (about 1 run in
 * 7); waiting lets the crossing offer arrive first.
 */
const POLITE_OFFER_DELAY_MS = 400;

/**
 * Signals a call keeps from before it started. Past this, newer ones are
 * dropped: a peer sends at most one description and, per room, 100
 * candidates (docs/protocol.md), so only a crowd of callers can reach it.
 */
const MAX_EARLY_SIGNALS = 200;

/**
 * A mesh video call in one room: one RTCPeerConnection per other member,
 * negotiated with the "perfect negotiation" pattern so that two peers
 * starting at once do not collide.
 *
 * Create it when you join the room, before any call: until it starts it
 * keeps the room's call signals, and an incoming offer starts it (the call
 * answers by itself). Its ICE servers are the gateway's (`client.iceServers`,
 * TURN credentials included), kept current as the client renews them; a
 * connection that fails restarts ICE. `setMedia` turns the microphone and
 * camera off and on, and tells the peers. Events: `start` ({stream}, the local stream), `stream`
 * ({connId, stream}), `peerstate` ({connId, state}), `hangup` ({connId}),
 * `media` ({connId, audio, video}: a peer's microphone and camera),
 * `error` ({error}, when answering could not get the local media).
 */
export class MeshCall extends EventTarget {
  #client;
  #room;
  #media;
  /** Explicit ICE servers, or null for the gateway's. */
  #iceServers;
  #iceTransportPolicy;
  #RTCPeerConnection;
  #timers;

  /** "idle", "starting" (waiting for media), "active" or "stopped". */
  #state = "idle";
  /** Whether this side's microphone and camera are on. */
  #sending = { audio: true, video: true };
  #starting = null;
  #localStream = null;
  /** remote conn_id → {pc, polite, makingOffer, ignoreOffer, answered, offerTimer}. */
  #peers = new Map();
  /** This room's signals from before the call started, oldest first. */
  #early = [];
  /**
   * Signals are applied one at a time, in arrival order: a candidate must
   * not race the description it belongs to.
   */
  #applying = Promise.resolve();
  #onSignal;
  #onPresence;
  #onIce;

  /**
   * @param {import("./cavlo.js").CavloClient} client
   * @param {string} room a room the client has joined or is joining
   * @param {object} options
   * @param {MediaStream | (() => MediaStream | Promise<MediaStream>)} options.media
   *   the local stream, or a function getting it, called once, when the call
   *   starts; it is the place to ask the user, and throwing declines
   * @param {RTCIceServer[]} [options.iceServers] fixed ICE servers instead of
   *   the gateway's (`client.iceServers`, renewed as they expire)
   * @param {"all" | "relay"} [options.iceTransportPolicy="all"] "relay" uses
   *   TURN only, hiding the peers' addresses from each other
   * @param {typeof RTCPeerConnection} [options.RTCPeerConnection=globalThis.RTCPeerConnection]
   * @param {{setTimeout: Function, clearTimeout: Function}} [options.timers=globalThis]
   */
  constructor(
    client,
    room,
    {
      media,
      iceServers = null,
      iceTransportPolicy = "all",
      RTCPeerConnection = globalThis.RTCPeerConnection,
      timers = globalThis,
    } = {},
  ) {
    super();
    if (!media) throw new Error("cavlo: a MeshCall needs `media`, a MediaStream or a function returning one");
    this.#client = client;
    this.#room = room;
    this.#media = media;
    this.#iceServers = iceServers;
    this.#iceTransportPolicy = iceTransportPolicy;
    this.#RTCPeerConnection = RTCPeerConnection;
    this.#timers = timers;
    this.#onSignal = ({ detail }) => this.#receive(detail);
    this.#onPresence = ({ detail }) => {
      if (detail.room === this.#room && detail.event === "leave") this.#forget(detail.member.conn_id);
    };
    // Renewed TURN credentials: for ICE restarts and new candidates of the
    // connections already open, too.
    this.#onIce = () => {
      if (this.#iceServers) return;
      for (const { pc } of this.#peers.values()) pc.setConfiguration(this.#configuration());
    };
    client.addEventListener("signal", this.#onSignal);
    client.addEventListener("presence", this.#onPresence);
    client.addEventListener("ice", this.#onIce);
  }

  /** "idle", "starting", "active" or "stopped". */
  get state() {
    return this.#state;
  }

  /**
   * Each connection's `getStats()` report, as a Map conn_id →
   * RTCStatsReport: for a call-quality display, or to see the path a call
   * took (the selected candidate pair's types: "host", "srflx", "relay").
   */
  async stats() {
    const reports = new Map();
    for (const [connId, { pc }] of this.#peers) reports.set(connId, await pc.getStats());
    return reports;
  }

  /** {audio, video}: whether this side's microphone and camera are on. */
  get media() {
    return { ...this.#sending };
  }

  /**
   * Turns this side's microphone (`audio`) and camera (`video`) on or off
   * (the tracks keep running, disabled: no renegotiation) and tells every
   * peer with a `media` signal; peers that connect later are told when they
   * do. Fields left out stay as they are.
   */
  setMedia({ audio = this.#sending.audio, video = this.#sending.video } = {}) {
    this.#sending = { audio: Boolean(audio), video: Boolean(video) };
    this.#applyMedia();
    for (const connId of this.#peers.keys()) this.#client.signal(this.#room, connId, "media", this.#sending);
  }

  #applyMedia() {
    for (const track of this.#localStream?.getTracks() ?? []) {
      track.enabled = this.#sending[track.kind] ?? true;
    }
  }

  /** The local stream once the call started, else null. */
  get localStream() {
    return this.#localStream;
  }

  /**
   * Gets the local media and calls every current member of the room.
   * Resolves once the call is active; calling it again returns the same
   * promise. If getting the media fails, it rejects and the call is idle again.
   */
  start() {
    if (this.#state === "stopped") return Promise.reject(new Error("cavlo: this call was stopped"));
    this.#starting ??= this.#begin().catch((err) => {
      this.#starting = null;
      if (this.#state === "starting") this.#state = "idle";
      throw err;
    });
    return this.#starting;
  }

  /** Hangs up on everyone; a stopped call cannot start again. */
  stop() {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    for (const connId of [...this.#peers.keys()]) {
      this.#client.signal(this.#room, connId, "bye", {});
      this.#drop(connId);
    }
    this.#early = [];
    this.#client.removeEventListener("signal", this.#onSignal);
    this.#client.removeEventListener("presence", this.#onPresence);
    this.#client.removeEventListener("ice", this.#onIce);
  }

  // --- internals -----------------------------------------------------------

  async #begin() {
    this.#state = "starting";
    const stream = typeof this.#media === "function" ? await this.#media() : this.#media;
    if (this.#state === "stopped") {
      // Nobody else was handed this stream: release the camera.
      if (typeof this.#media === "function") for (const track of stream.getTracks()) track.stop();
      return;
    }
    this.#localStream = stream;
    this.#applyMedia();
    this.#state = "active";
    this.#emit("start", { stream });
    for (const connId of this.#client.membersOf(this.#room).keys()) {
      if (connId !== this.#client.connId) this.#peer(connId);
    }
    for (const signal of this.#early.splice(0)) this.#enqueue(signal);
  }

  #receive(signal) {
    if (signal.room !== this.#room) return;
    if (signal.kind === "media") {
      if (this.#state === "stopped") return;
      const { audio, video } = signal.data;
      return this.#emit("media", { connId: signal.from, audio, video });
    }
    if (this.#state === "active") return this.#enqueue(signal);
    if (this.#state === "stopped") return;
    if (signal.kind === "bye") {
      this.#early = this.#early.filter((early) => early.from !== signal.from);
      return;
    }
    if (this.#early.length < MAX_EARLY_SIGNALS) this.#early.push(signal);
    if (signal.kind === "offer" && this.#state === "idle") {
      this.start().catch((error) => this.#emit("error", { error }));
    }
  }

  /** A member left the room: hang up on it, or forget what it sent. */
  #forget(connId) {
    this.#early = this.#early.filter((early) => early.from !== connId);
    this.#drop(connId);
  }

  #enqueue(signal) {
    this.#applying = this.#applying.then(() => this.#apply(signal));
  }

  /** The connection to `connId`, created on first use. */
  #peer(connId) {
    let peer = this.#peers.get(connId);
    if (peer) return peer;
    const pc = new this.#RTCPeerConnection(this.#configuration());
    // The peer with the larger connection id yields in a collision.
    peer = { pc, polite: this.#client.connId > connId, makingOffer: false, ignoreOffer: false, answered: 0, offerTimer: null };
    this.#peers.set(connId, peer);
    for (const track of this.#localStream.getTracks()) pc.addTrack(track, this.#localStream);
    if (!this.#sending.audio || !this.#sending.video) this.#client.signal(this.#room, connId, "media", this.#sending);
    pc.onnegotiationneeded = async () => {
      try {
        // The polite side lets a crossing offer arrive first (see
        // POLITE_OFFER_DELAY_MS). If it answered one meanwhile, that
        // negotiation already carried its tracks.
        if (peer.polite) {
          const answered = peer.answered;
          await new Promise((resolve) => {
            peer.offerTimer = this.#timers.setTimeout(resolve, POLITE_OFFER_DELAY_MS);
          });
          peer.offerTimer = null;
          if (peer.answered !== answered || pc.signalingState !== "stable") return;
        }
        peer.makingOffer = true;
        await pc.setLocalDescription();
        this.#client.signal(this.#room, connId, pc.localDescription.type, {
          type: pc.localDescription.type,
          sdp: pc.localDescription.sdp,
        });
      } catch (err) {
        console.warn("cavlo: offering failed", err);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      this.#client.signal(this.#room, connId, "candidate", {
        candidate: candidate ? candidate.candidate : null,
        sdpMid: candidate ? candidate.sdpMid : null,
        sdpMLineIndex: candidate ? candidate.sdpMLineIndex : null,
      });
    };
    pc.ontrack = ({ streams }) => this.#emit("stream", { connId, stream: streams[0] });
    pc.onconnectionstatechange = () => {
      // A path that stopped working (a network change, an expired relay
      // allocation): look for a new one. The renegotiation this causes
      // goes through onnegotiationneeded like any other.
      if (pc.connectionState === "failed") pc.restartIce();
      this.#emit("peerstate", { connId, state: pc.connectionState });
    };
    return peer;
  }

  #configuration() {
    return {
      iceServers: this.#iceServers ?? this.#client.iceServers,
      iceTransportPolicy: this.#iceTransportPolicy,
    };
  }

  async #apply(signal) {
    if (this.#state !== "active") return;
    const connId = signal.from;
    if (signal.kind === "bye") return this.#drop(connId);
    // Only an offer opens a connection; an answer or candidate without one is stale.
    const peer = signal.kind === "offer" ? this.#peer(connId) : this.#peers.get(connId);
    if (!peer) return;
    const { pc } = peer;
    try {
      if (signal.kind === "offer" || signal.kind === "answer") {
        const collision = signal.kind === "offer" && (peer.makingOffer || pc.signalingState !== "stable");
        peer.ignoreOffer = !peer.polite && collision;
        if (peer.ignoreOffer) return;
        // Counted before it is set: a polite offer whose delay ends while
        // this offer is being set must stand down too, or its
        // setLocalDescription would take this answer and ours would become
        // a new offer.
        if (signal.kind === "offer") peer.answered += 1;
        await pc.setRemoteDescription({ type: signal.kind, sdp: signal.data.sdp });
        if (signal.kind === "offer") {
          await pc.setLocalDescription();
          this.#client.signal(this.#room, connId, "answer", { type: "answer", sdp: pc.localDescription.sdp });
        }
      } else if (signal.kind === "candidate") {
        const c = signal.data;
        await pc.addIceCandidate(c.candidate === null ? null : { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
      }
    } catch (err) {
      if (!(signal.kind === "candidate" && peer.ignoreOffer)) console.warn("cavlo: signaling failed", err);
    }
  }

  #drop(connId) {
    const peer = this.#peers.get(connId);
    if (!peer) return;
    this.#timers.clearTimeout(peer.offerTimer);
    peer.pc.close();
    this.#peers.delete(connId);
    this.#emit("hangup", { connId });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
