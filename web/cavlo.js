// cavlo browser SDK: a client for the cavlo protocol (docs/protocol.md) and
// a mesh-call helper. Plain ES module, no dependencies, no build step.
//
//   import { CavloClient, MeshCall } from "/cavlo.js";
//   const client = new CavloClient({ urls: ["ws://host:8080/ws"], token: () => fetchToken() });
//   client.addEventListener("chat", (e) => show(e.detail));
//   client.connect();
//   client.join("lobby");
//   client.send("lobby", "hello");
//
// What it does for you: reconnects with exponential backoff and full jitter
// (unbounded by default), fails over across gateway URLs, rejoins every
// room with `since` so nothing is missed or repeated, and keeps chat that
// was not acknowledged in an outbox that is resent after reconnecting.

/** Close codes after which reconnecting cannot help (see docs/protocol.md). */
const TERMINAL_CLOSE = new Set([4001]);

/** How long the polite side of a call waits before offering (see MeshCall). */
const POLITE_OFFER_DELAY_MS = 400;

/** Error codes that mean "try the same message again later". */
const RETRYABLE = new Set(["unavailable", "rate_limited"]);

/**
 * A connection to cavlo gateways. Events (all `CustomEvent`, data in
 * `detail`): `state` ({state}: "connecting" | "open" | "closed"),
 * `welcome`, `joined`, `left`, `chat`, `ack`, `presence`, `signal`, `error`.
 */
export class CavloClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string[]} options.urls gateway WebSocket URLs, tried in turn
   * @param {string | (() => Promise<string>)} options.token a token, or a
   *   function returning a fresh one, called before every (re)connect
   * @param {number} [options.baseDelay=500] first backoff ceiling, ms
   * @param {number} [options.maxDelay=30000] largest backoff ceiling, ms
   * @param {number} [options.maxAttempts=Infinity] reconnect attempts before giving up
   */
  constructor({ urls, token, baseDelay = 500, maxDelay = 30000, maxAttempts = Infinity }) {
    super();
    if (!urls || urls.length === 0) throw new Error("cavlo: at least one gateway URL");
    this.urls = urls;
    this.token = token;
    this.baseDelay = baseDelay;
    this.maxDelay = maxDelay;
    this.maxAttempts = maxAttempts;
    this.state = "closed";
    this.connId = null;
    this.user = null;
    /** room → highest seq seen (or null before any message) */
    this.rooms = new Map();
    /** client message id → {room, text}, in sending order */
    this.outbox = new Map();
    this.members = new Map();
    this.ws = null;
    this.urlIndex = 0;
    this.attempt = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.counter = 0;
  }

  /** Starts connecting (and keeps reconnecting until `close`). */
  connect() {
    this.stopped = false;
    this.open();
  }

  /** Closes for good. */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
    this.setState("closed");
  }

  /** Joins a room; after a reconnect the SDK rejoins it by itself. */
  join(room) {
    if (!this.rooms.has(room)) this.rooms.set(room, null);
    this.sendFrame({ type: "join", room });
  }

  /** Leaves a room. */
  leave(room) {
    this.rooms.delete(room);
    this.members.delete(room);
    for (const [id, pending] of this.outbox) if (pending.room === room) this.outbox.delete(id);
    this.sendFrame({ type: "leave", room });
  }

  /**
   * Sends chat; returns its client id. It stays in the outbox, and is resent
   * after reconnects, until the server acknowledges it.
   */
  send(room, text) {
    const id = `${Date.now().toString(36)}-${(this.counter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    this.outbox.set(id, { room, text });
    this.sendFrame({ type: "chat", room, id, text });
    return id;
  }

  /** Sends a WebRTC signal to one member of a room. */
  signal(room, to, kind, data) {
    this.sendFrame({ type: "signal", room, to, kind, data });
  }

  /** Current members of a room, as a Map conn_id → member. */
  membersOf(room) {
    return this.members.get(room) || new Map();
  }

  // --- internals -----------------------------------------------------------

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  sendFrame(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.state === "open") {
      this.ws.send(JSON.stringify(frame));
    }
    // Otherwise the frame is covered on (re)connect: rooms are rejoined and
    // the outbox resent; signals are dropped, as peers renegotiate anyway.
  }

  async open() {
    if (this.stopped) return;
    this.setState("connecting");
    let token;
    try {
      token = typeof this.token === "function" ? await this.token() : this.token;
    } catch (err) {
      this.emit("error", { code: "unauthorized", message: `token: ${err}` });
      return this.retry();
    }
    const url = this.urls[this.urlIndex % this.urls.length];
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (event) => this.onFrame(JSON.parse(event.data));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.setState("closed");
      if (this.stopped) return;
      if (TERMINAL_CLOSE.has(event.code) && typeof this.token !== "function") {
        this.stopped = true;
        this.emit("error", { code: "unauthorized", message: "token refused" });
        return;
      }
      this.retry();
    };
  }

  /** Schedules the next attempt on the next gateway, with full jitter. */
  retry() {
    if (this.stopped) return;
    if (this.attempt >= this.maxAttempts) {
      this.stopped = true;
      return;
    }
    const ceiling = Math.min(this.maxDelay, this.baseDelay * 2 ** this.attempt);
    this.attempt += 1;
    this.urlIndex += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), Math.random() * ceiling);
  }

  onFrame(frame) {
    switch (frame.type) {
      case "welcome":
        this.connId = frame.conn_id;
        this.user = frame.user;
        this.attempt = 0;
        this.setState("open");
        this.emit("welcome", frame);
        for (const [room, since] of this.rooms) {
          const join = { type: "join", room };
          if (since !== null) join.since = since;
          this.ws.send(JSON.stringify(join));
        }
        for (const [id, pending] of this.outbox) {
          this.ws.send(JSON.stringify({ type: "chat", room: pending.room, id, text: pending.text }));
        }
        break;
      case "joined": {
        if (!this.rooms.has(frame.room)) break;
        this.members.set(frame.room, new Map(frame.members.map((m) => [m.conn_id, m])));
        for (const chat of frame.history) this.deliver(chat);
        if (frame.history.length === 0) this.seen(frame.room, frame.last_seq);
        this.emit("joined", frame);
        break;
      }
      case "left":
        this.emit("left", frame);
        break;
      case "chat":
        this.deliver(frame);
        break;
      case "ack":
        // The watermark is not moved here: other members' messages with
        // lower seqs may still be on their way.
        this.outbox.delete(frame.id);
        this.emit("ack", frame);
        break;
      case "presence": {
        const members = this.members.get(frame.room) || new Map();
        if (frame.event === "join") members.set(frame.member.conn_id, frame.member);
        else members.delete(frame.member.conn_id);
        this.members.set(frame.room, members);
        this.emit("presence", frame);
        break;
      }
      case "signal":
        this.emit("signal", frame);
        break;
      case "error":
        if (frame.id && !RETRYABLE.has(frame.code)) this.outbox.delete(frame.id);
        if (frame.id && RETRYABLE.has(frame.code)) this.retryLater(frame.id);
        this.emit("error", frame);
        break;
    }
  }

  /** Emits a chat message once, in seq order, and remembers its seq. */
  deliver(chat) {
    const since = this.rooms.get(chat.room);
    if (since === undefined || (since !== null && chat.seq <= since)) return;
    this.rooms.set(chat.room, chat.seq);
    this.emit("chat", chat);
  }

  seen(room, seq) {
    const since = this.rooms.get(room);
    if (since === undefined) return;
    if (since === null || seq > since) this.rooms.set(room, seq);
  }

  retryLater(id) {
    setTimeout(() => {
      const pending = this.outbox.get(id);
      if (pending) this.sendFrame({ type: "chat", room: pending.room, id, text: pending.text });
    }, 1000 + Math.random() * 2000);
  }
}

/**
 * A mesh video call in one room: one RTCPeerConnection per other member,
 * negotiated with the "perfect negotiation" pattern so that two peers
 * starting at once do not collide. Events: `stream` ({connId, stream}),
 * `peerstate` ({connId, state}), `hangup` ({connId}).
 */
export class MeshCall extends EventTarget {
  /**
   * @param {CavloClient} client a connected client that has joined `room`
   * @param {string} room
   * @param {MediaStream} localStream
   * @param {RTCIceServer[]} [iceServers=[]]
   */
  constructor(client, room, localStream, iceServers = []) {
    super();
    this.client = client;
    this.room = room;
    this.localStream = localStream;
    this.iceServers = iceServers;
    this.peers = new Map();
    // Signals are applied one at a time, in arrival order: a candidate must
    // not race the description it belongs to.
    this.applying = Promise.resolve();
    this.onSignal = (e) => this.handleSignal(e.detail);
    this.onPresence = (e) => {
      const p = e.detail;
      if (p.room !== this.room) return;
      if (p.event === "leave") this.drop(p.member.conn_id);
    };
    client.addEventListener("signal", this.onSignal);
    client.addEventListener("presence", this.onPresence);
  }

  /** Calls every current member of the room. */
  start() {
    for (const connId of this.client.membersOf(this.room).keys()) {
      if (connId !== this.client.connId) this.peer(connId);
    }
  }

  /** Hangs up on everyone. */
  stop() {
    for (const connId of [...this.peers.keys()]) {
      this.client.signal(this.room, connId, "bye", {});
      this.drop(connId);
    }
    this.client.removeEventListener("signal", this.onSignal);
    this.client.removeEventListener("presence", this.onPresence);
  }

  /** The connection to `connId`, created on first use. */
  peer(connId) {
    let peer = this.peers.get(connId);
    if (peer) return peer;
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    // The peer with the larger connection id yields in a collision.
    peer = { pc, polite: this.client.connId > connId, makingOffer: false, ignoreOffer: false, answered: 0 };
    this.peers.set(connId, peer);
    for (const track of this.localStream.getTracks()) pc.addTrack(track, this.localStream);
    pc.onnegotiationneeded = async () => {
      try {
        // The polite side lets a crossing offer arrive first: when both
        // start at once, the rollback a collision needs sometimes left
        // Chromium gathering no ICE candidates. If it answered an offer
        // meanwhile, that negotiation already carried its tracks.
        if (peer.polite) {
          const answered = peer.answered;
          await new Promise((resolve) => setTimeout(resolve, POLITE_OFFER_DELAY_MS));
          if (peer.answered !== answered || pc.signalingState !== "stable") return;
        }
        peer.makingOffer = true;
        await pc.setLocalDescription();
        this.client.signal(this.room, connId, pc.localDescription.type, {
          type: pc.localDescription.type,
          sdp: pc.localDescription.sdp,
        });
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      this.client.signal(this.room, connId, "candidate", {
        candidate: candidate ? candidate.candidate : null,
        sdpMid: candidate ? candidate.sdpMid : null,
        sdpMLineIndex: candidate ? candidate.sdpMLineIndex : null,
      });
    };
    pc.ontrack = ({ streams }) => this.emit("stream", { connId, stream: streams[0] });
    pc.onconnectionstatechange = () => this.emit("peerstate", { connId, state: pc.connectionState });
    return peer;
  }

  /** Applies a signal after those before it; returns when it is applied. */
  handleSignal(signal) {
    this.applying = this.applying.then(() => this.applySignal(signal));
    return this.applying;
  }

  async applySignal(signal) {
    if (signal.room !== this.room) return;
    const connId = signal.from;
    if (signal.kind === "bye") return this.drop(connId);
    const peer = this.peer(connId);
    const { pc } = peer;
    try {
      if (signal.kind === "offer" || signal.kind === "answer") {
        const collision = signal.kind === "offer" && (peer.makingOffer || pc.signalingState !== "stable");
        peer.ignoreOffer = !peer.polite && collision;
        if (peer.ignoreOffer) return;
        await pc.setRemoteDescription({ type: signal.kind, sdp: signal.data.sdp });
        if (signal.kind === "offer") {
          peer.answered += 1;
          await pc.setLocalDescription();
          this.client.signal(this.room, connId, "answer", { type: "answer", sdp: pc.localDescription.sdp });
        }
      } else if (signal.kind === "candidate") {
        const c = signal.data;
        await pc.addIceCandidate(c.candidate === null ? null : { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
      }
    } catch (err) {
      if (!(signal.kind === "candidate" && peer.ignoreOffer)) console.warn("cavlo: signaling failed", err);
    }
  }

  drop(connId) {
    const peer = this.peers.get(connId);
    if (!peer) return;
    peer.pc.close();
    this.peers.delete(connId);
    this.emit("hangup", { connId });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
