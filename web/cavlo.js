// cavlo browser SDK: a client for the cavlo protocol (docs/protocol.md) and
// a mesh-call helper. Plain ES module, no dependencies, no build step; it
// touches no DOM and no network until `connect` or `start` is called.
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
// docs/client.md is the reference.

/** `WebSocket.OPEN`, the same number in every implementation. */
const WS_OPEN = 1;

/**
 * Close codes 4000–4099 are terminal: reconnecting with the same credentials
 * fails again. 4100–4199 ask for a reconnect and resume; every other code
 * (1006 when a gateway dies, 1001 when it goes away, …) is retried too,
 * unless the client closed the socket itself. See "Close codes" in
 * docs/protocol.md and `CloseCode` in schemas/src/code.rs.
 */
function isTerminalClose(code) {
  return code >= 4000 && code <= 4099;
}

/** The close code of a refused token (`CloseCode::Unauthorized`). */
const UNAUTHORIZED_CLOSE = 4001;

/** The longest delay setTimeout honours (2³¹ − 1 ms); longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Error codes after which the same chat message is resent later. */
const RETRYABLE_ERRORS = new Set(["unavailable", "rate_limited"]);

/**
 * A chat message refused with a retryable error is resent after this long
 * plus up to RESEND_JITTER_MS, so that clients throttled together do not
 * come back together.
 */
const RESEND_DELAY_MS = 1000;
const RESEND_JITTER_MS = 2000;

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
 * A connection to cavlo gateways. Events (all `CustomEvent`, data in
 * `detail`): `state` ({state}: "connecting" | "open" | "closed"),
 * `welcome`, `joined`, `left`, `chat`, `ack`, `presence`, `signal`, `error`,
 * and `ice` ({servers}: fresh ICE servers, see `iceServers`).
 */
export class CavloClient extends EventTarget {
  #urls;
  #token;
  #baseDelay;
  #maxDelay;
  #maxAttempts;
  #WebSocket;
  #random;
  #timers;

  #state = "closed";
  #connId = null;
  #user = null;
  /** room → highest seq seen in `history` or `chat`, or null before any. */
  #rooms = new Map();
  /** client message id → {room, text}, in sending order, until acked. */
  #outbox = new Map();
  /** room → Map conn_id → member. */
  #members = new Map();
  /**
   * room → the connection that was admitted there. A rejoin from a newer
   * connection names it in `replaces`, so the seat passes over at once
   * instead of staying taken until the old connection's gateway lets go.
   */
  #seats = new Map();
  #ws = null;
  #urlIndex = 0;
  #attempt = 0;
  #stopped = true;
  /**
   * Bumped by `connect` and `close`: an attempt whose token arrives after
   * either belongs to an old session and opens nothing.
   */
  #session = 0;
  #retryTimer = null;
  /** Timers of chat messages waiting to be resent after a retryable error. */
  #resendTimers = new Set();
  /** Fires when the token should be refreshed (only with a token function). */
  #refreshTimer = null;
  /** Fires when a draining gateway asked this client to move. */
  #moveTimer = null;
  /** Fires when the TURN credentials should be renewed. */
  #iceTimer = null;
  #iceServers = [];
  /**
   * Whether the connection since the last `welcome` already got a fresh
   * token after a 4001: a second refusal is final.
   */
  #refusedOnce = false;
  #counter = 0;

  /**
   * @param {object} options
   * @param {string[]} options.urls gateway WebSocket URLs, tried in turn
   * @param {string | (() => string | Promise<string>)} options.token a token,
   *   or a function returning a fresh one, called before every (re)connect
   * @param {number} [options.baseDelay=500] first backoff ceiling, ms
   * @param {number} [options.maxDelay=30000] largest backoff ceiling, ms
   * @param {number} [options.maxAttempts=Infinity] reconnect attempts before giving up
   * @param {typeof WebSocket} [options.WebSocket=globalThis.WebSocket] the
   *   WebSocket class to use (tests pass a fake)
   * @param {() => number} [options.random=Math.random] jitter source, in [0, 1)
   * @param {{setTimeout: Function, clearTimeout: Function}} [options.timers=globalThis]
   */
  constructor({
    urls,
    token,
    baseDelay = 500,
    maxDelay = 30000,
    maxAttempts = Infinity,
    WebSocket = globalThis.WebSocket,
    random = Math.random,
    timers = globalThis,
  }) {
    super();
    if (!urls || urls.length === 0) throw new Error("cavlo: at least one gateway URL");
    if (typeof WebSocket !== "function") throw new Error("cavlo: no WebSocket here; pass options.WebSocket");
    this.#urls = [...urls];
    this.#token = token;
    this.#baseDelay = baseDelay;
    this.#maxDelay = maxDelay;
    this.#maxAttempts = maxAttempts;
    this.#WebSocket = WebSocket;
    this.#random = random;
    this.#timers = timers;
  }

  /** "connecting", "open" (welcomed, frames flow) or "closed". */
  get state() {
    return this.#state;
  }

  /** This connection's id, from the last `welcome` (null before the first). */
  get connId() {
    return this.#connId;
  }

  /** The user the token names, {id, name}, from the last `welcome`. */
  get user() {
    return this.#user;
  }

  /**
   * The ICE servers the gateway gave (STUN, and TURN with credentials for
   * this user), for `RTCPeerConnection`'s `iceServers`; renewed before
   * the credentials expire, with an `ice` event. Empty before `welcome`.
   */
  get iceServers() {
    return this.#iceServers;
  }

  /** A copy: room → highest seq seen (null before any), for every joined room. */
  get rooms() {
    return new Map(this.#rooms);
  }

  /** A copy: client message id → {room, text}, for chat not yet acked. */
  get outbox() {
    return new Map([...this.#outbox].map(([id, pending]) => [id, { ...pending }]));
  }

  /** A copy of a room's members, Map conn_id → member. */
  membersOf(room) {
    return new Map(this.#members.get(room));
  }

  /** Starts connecting, and keeps reconnecting until `close`. */
  connect() {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#session += 1;
    this.#attempt = 0;
    this.#refusedOnce = false;
    this.#open();
  }

  /** Closes for good and cancels every timer; `connect` starts over. */
  close() {
    this.#stopped = true;
    this.#session += 1;
    this.#timers.clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    for (const timer of this.#resendTimers) this.#timers.clearTimeout(timer);
    this.#resendTimers.clear();
    this.#detach()?.close(1000);
    this.#setState("closed");
  }

  /**
   * Forgets the current socket, if any, and the timers that belong to it
   * (token refresh, move), and returns it. Cleared first, so that a close
   * event of that socket is not taken for a drop.
   */
  #detach() {
    const ws = this.#ws;
    this.#ws = null;
    this.#timers.clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    this.#timers.clearTimeout(this.#moveTimer);
    this.#moveTimer = null;
    this.#timers.clearTimeout(this.#iceTimer);
    this.#iceTimer = null;
    return ws;
  }

  /** Joins a room; after a reconnect the SDK rejoins it by itself. */
  join(room) {
    if (!this.#rooms.has(room)) this.#rooms.set(room, null);
    this.#send({ type: "join", room });
  }

  /** Leaves a room and forgets its unsent chat. */
  leave(room) {
    this.#rooms.delete(room);
    this.#members.delete(room);
    this.#seats.delete(room);
    for (const [id, pending] of this.#outbox) if (pending.room === room) this.#outbox.delete(id);
    this.#send({ type: "leave", room });
  }

  /**
   * Sends chat; returns its client id. It stays in the outbox, and is resent
   * after reconnects, until the server acknowledges it.
   */
  send(room, text) {
    const id = `${Date.now().toString(36)}-${(this.#counter++).toString(36)}-${this.#random().toString(36).slice(2, 8)}`;
    this.#outbox.set(id, { room, text });
    this.#send({ type: "chat", room, id, text });
    return id;
  }

  /** Sends a WebRTC signal to one member of a room; dropped while disconnected. */
  signal(room, to, kind, data) {
    this.#send({ type: "signal", room, to, kind, data });
  }

  // --- internals -----------------------------------------------------------

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * Sends while welcomed. Otherwise the frame is covered on (re)connect:
   * rooms are rejoined and the outbox resent; signals are dropped, as peers
   * renegotiate anyway.
   */
  #send(frame) {
    if (this.#state === "open") this.#write(frame);
  }

  #write(frame) {
    if (this.#ws && this.#ws.readyState === WS_OPEN) this.#ws.send(JSON.stringify(frame));
  }

  async #open() {
    const session = this.#session;
    this.#setState("connecting");
    let token;
    try {
      token = typeof this.#token === "function" ? await this.#token() : this.#token;
    } catch (err) {
      if (session !== this.#session) return;
      this.#emit("error", { code: "token_failed", message: `cannot get a token: ${err?.message ?? err}` });
      return this.#retry();
    }
    if (session !== this.#session) return;
    const url = this.#urls[this.#urlIndex % this.#urls.length];
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (err) {
      console.warn("cavlo: cannot open a WebSocket", url, err);
      return this.#retry();
    }
    this.#ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (event) => {
      if (this.#ws === ws) this.#receive(event.data);
    };
    ws.onclose = (event) => this.#closed(ws, event);
  }

  #closed(ws, { code, reason }) {
    if (this.#ws !== ws) return;
    this.#detach();
    this.#setState("closed");
    // A refused token may only be stale (the provider rotated its keys, or
    // it expired while the tab slept): with a token function, get a fresh
    // one and try once more before giving up.
    if (code === UNAUTHORIZED_CLOSE && typeof this.#token === "function" && !this.#refusedOnce) {
      this.#refusedOnce = true;
      this.#retry();
      return;
    }
    if (isTerminalClose(code)) {
      this.close();
      this.#emit("error", {
        code: "closed",
        message: `the gateway closed the connection for good (${code}${reason ? ` ${reason}` : ""})`,
        closeCode: code,
        reason,
      });
      return;
    }
    this.#retry();
  }

  /**
   * With a token function, sends a fresh token before the current one
   * expires (the gateway closes with 4105 at expiry): when a fifth of its
   * remaining life is left, at most a minute before. If getting the token
   * fails, the connection runs out and reconnects with the next one.
   */
  #scheduleRefresh(expiresIn) {
    this.#timers.clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (typeof this.#token !== "function" || typeof expiresIn !== "number") return;
    const left = expiresIn * 1000;
    const delay = Math.max(0, left - Math.min(60000, left / 5));
    if (delay > MAX_TIMER_MS) {
      // Timers fire at once past about 24.8 days: wait in steps.
      this.#refreshTimer = this.#timers.setTimeout(
        () => this.#scheduleRefresh(expiresIn - MAX_TIMER_MS / 1000),
        MAX_TIMER_MS,
      );
      return;
    }
    const ws = this.#ws;
    this.#refreshTimer = this.#timers.setTimeout(async () => {
      this.#refreshTimer = null;
      let token;
      try {
        token = await this.#token();
      } catch (err) {
        this.#emit("error", { code: "token_failed", message: `cannot refresh the token: ${err?.message ?? err}` });
        return;
      }
      if (this.#ws === ws) this.#write({ type: "refresh", token });
    }, delay);
  }

  /**
   * Keeps `ice` as the current ICE servers and asks for new ones when four
   * fifths of their credentials' life has passed (`expires_in` 0: they do
   * not expire).
   */
  #setIce(ice) {
    this.#timers.clearTimeout(this.#iceTimer);
    this.#iceTimer = null;
    if (!ice) return;
    this.#iceServers = ice.servers;
    if (ice.expires_in > 0) {
      const delay = Math.min(MAX_TIMER_MS, ice.expires_in * 800);
      this.#iceTimer = this.#timers.setTimeout(() => {
        this.#iceTimer = null;
        this.#write({ type: "ice" });
      }, delay);
    }
  }

  /**
   * The gateway is draining (it is being stopped): after the delay it chose,
   * spread so its clients do not all arrive at once elsewhere, close this
   * connection and open one to the next gateway, which resumes every room
   * as after any reconnect. The connection works until then.
   */
  #moveAfter(delayMs) {
    const ws = this.#ws;
    this.#timers.clearTimeout(this.#moveTimer);
    this.#moveTimer = this.#timers.setTimeout(() => {
      this.#moveTimer = null;
      if (this.#ws !== ws || this.#stopped) return;
      this.#detach().close(1000);
      this.#urlIndex += 1;
      this.#open();
    }, Math.max(0, Number(delayMs) || 0));
  }

  /** Schedules the next attempt on the next gateway, with full jitter. */
  #retry() {
    if (this.#stopped) return;
    if (this.#attempt >= this.#maxAttempts) {
      this.close();
      this.#emit("error", { code: "closed", message: `gave up after ${this.#attempt} reconnect attempts` });
      return;
    }
    const ceiling = Math.min(this.#maxDelay, this.#baseDelay * 2 ** this.#attempt);
    this.#attempt += 1;
    this.#urlIndex += 1;
    this.#timers.clearTimeout(this.#retryTimer);
    this.#retryTimer = this.#timers.setTimeout(() => {
      this.#retryTimer = null;
      this.#open();
    }, this.#random() * ceiling);
  }

  /** Rejoins every room after `since` and resends the outbox, in that order. */
  #resume() {
    for (const [room, since] of this.#rooms) {
      const frame = { type: "join", room };
      if (since !== null) frame.since = since;
      const seat = this.#seats.get(room);
      if (seat !== undefined && seat !== this.#connId) frame.replaces = seat;
      this.#write(frame);
    }
    for (const [id, { room, text }] of this.#outbox) this.#write({ type: "chat", room, id, text });
  }

  /** One frame from the server; a malformed one is logged and skipped. */
  #receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      console.warn("cavlo: ignoring a frame that is not JSON", data);
      return;
    }
    if (frame === null || typeof frame !== "object") {
      console.warn("cavlo: ignoring a frame that is not an object", data);
      return;
    }
    try {
      this.#handle(frame);
    } catch (err) {
      console.warn("cavlo: ignoring a malformed frame", data, err);
    }
  }

  #handle(frame) {
    switch (frame.type) {
      case "welcome":
        this.#connId = frame.conn_id;
        this.#user = frame.user;
        this.#attempt = 0;
        // Before anyone hears of it, so frames sent from a listener come
        // after the rejoins.
        this.#resume();
        this.#scheduleRefresh(frame.expires_in);
        this.#setIce(frame.ice);
        this.#refusedOnce = false;
        this.#setState("open");
        this.#emit("welcome", frame);
        break;
      case "refreshed":
        this.#scheduleRefresh(frame.expires_in);
        break;
      case "joined":
        if (!this.#rooms.has(frame.room)) break;
        this.#members.set(frame.room, new Map(frame.members.map((m) => [m.conn_id, m])));
        this.#seats.set(frame.room, this.#connId);
        for (const chat of frame.history) this.#deliver(chat);
        // Only when there was no history: a live message may already carry
        // a seq between the last one in `history` and `last_seq`.
        if (frame.history.length === 0) this.#seen(frame.room, frame.last_seq);
        this.#emit("joined", frame);
        break;
      case "left":
        this.#emit("left", frame);
        break;
      case "chat":
        this.#deliver(frame);
        break;
      case "ack": {
        // The watermark is not moved here: other members' messages with
        // lower seqs may still be on their way.
        const pending = this.#outbox.get(frame.id);
        if (!pending) break; // a second ack, for a message sent twice
        this.#outbox.delete(frame.id);
        // `text` is on the ack only when sanitizing changed what was sent.
        this.#emit("ack", { ...frame, text: frame.text ?? pending.text });
        break;
      }
      case "presence": {
        const members = this.#members.get(frame.room);
        if (!members) break;
        if (frame.event === "join") members.set(frame.member.conn_id, frame.member);
        else members.delete(frame.member.conn_id);
        this.#emit("presence", frame);
        break;
      }
      case "signal":
        this.#emit("signal", frame);
        break;
      case "ice":
        this.#setIce(frame);
        this.#emit("ice", { servers: frame.servers });
        break;
      case "pong":
        break;
      case "draining":
        this.#moveAfter(frame.reconnect_in_ms);
        break;
      case "error":
        if (frame.id && RETRYABLE_ERRORS.has(frame.code)) this.#resendLater(frame.id);
        else if (frame.id) this.#outbox.delete(frame.id);
        this.#emit("error", frame);
        break;
      default:
        console.warn("cavlo: ignoring a frame of unknown type", frame.type);
    }
  }

  /** Emits a chat message once, in seq order, and remembers its seq. */
  #deliver(chat) {
    const since = this.#rooms.get(chat.room);
    if (since === undefined || (since !== null && chat.seq <= since)) return;
    this.#rooms.set(chat.room, chat.seq);
    this.#emit("chat", chat);
  }

  #seen(room, seq) {
    const since = this.#rooms.get(room);
    if (since === undefined) return;
    if (since === null || seq > since) this.#rooms.set(room, seq);
  }

  #resendLater(id) {
    const timer = this.#timers.setTimeout(() => {
      this.#resendTimers.delete(timer);
      const pending = this.#outbox.get(id);
      if (pending) this.#send({ type: "chat", room: pending.room, id, text: pending.text });
    }, RESEND_DELAY_MS + this.#random() * RESEND_JITTER_MS);
    this.#resendTimers.add(timer);
  }
}

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
   * @param {CavloClient} client
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
