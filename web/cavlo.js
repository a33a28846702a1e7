// cavlo browser SDK: a client for the cavlo protocol (docs/protocol.md); the
// mesh-call helper is in meshcall.js, re-exported here. Plain ES modules,
// no dependencies, no build step; they touch no DOM and no network until
// `connect` or `start` is called.
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

export { MeshCall } from "./meshcall.js";

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
