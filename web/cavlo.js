// @ts-check
// cavlo browser SDK: a client for the cavlo protocol (docs/protocol.md); the
// call helpers, MeshCall (a mesh of peers) and RoomCall (through the media
// service), are in meshcall.js and roomcall.js, re-exported here. Plain ES modules,
// no dependencies, no build step; they touch no DOM and no network until
// `connect` or `start` is called, and never write to the console.
//
//   import { CavloClient, MeshCall } from "/cavlo.js";
//   const client = new CavloClient({ urls: ["ws://host:8080/ws"], token: () => fetchToken() });
//   client.addEventListener("chat", (e) => show(e.detail));
//   client.connect();
//   client.join("lobby");
//   const sending = client.send("lobby", "hello"); // sending.id: the message id
//   const ack = await sending; // once stored: ack.seq
//
// What it does for you: reconnects with exponential backoff and full jitter
// (unbounded by default), fails over across gateway URLs, rejoins every
// room with `since` so nothing is missed or repeated, and keeps chat that
// was not acknowledged in an outbox that is resent after reconnecting.
// docs/client.md is the reference.

import { errorText } from "./errors.js";

export { MeshCall } from "./meshcall.js";
export { MEDIA_NODE, RoomCall } from "./roomcall.js";

/** `WebSocket.OPEN`, the same number in every implementation. */
const WS_OPEN = 1;

/**
 * Close codes 4000–4099 are terminal: reconnecting with the same credentials
 * fails again. 4100–4199 ask for a reconnect and resume; every other code
 * (1006 when a gateway dies, 1001 when it goes away, …) is retried too,
 * unless the client closed the socket itself. See "Close codes" in
 * docs/protocol.md and `CloseCode` in schemas/src/code.rs.
 * @param {number} code
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
 * Keys of server frames whose values go to the app as the server sent them,
 * not camelCased: a signal's `data` is the peers' own payload, and ICE
 * `servers` go as they are into `RTCPeerConnection`.
 */
const AS_SENT = new Set(["data", "servers"]);

// --- types ------------------------------------------------------------------
// The event details, as the app sees them: the server's frames
// (docs/protocol.md) with camelCase keys and without `type`.

/**
 * @typedef {{ setTimeout(fn: () => void, ms: number): unknown, clearTimeout(id: unknown): void }} Timers
 *   a clock: `globalThis`, or a fake one in tests
 * @typedef {"connecting" | "open" | "closed"} ConnectionState
 * @typedef {{ id: string, name: string }} User
 * @typedef {{ connId: string, user: User }} Member
 * @typedef {{ servers: RTCIceServer[], expiresIn: number }} Ice
 * @typedef {{ maxFrameBytes: number, maxRooms: number, historyLimit: number }} Limits
 * @typedef {{ connId: string, user: User, gateway: string, limits: Limits, expiresIn?: number, ice?: Ice, media?: boolean }} Welcome
 * @typedef {{ room: string, sdp: string }} CallAnswer
 * @typedef {{ room: string }} CallMoved
 * @typedef {{ room: string, seq: number, id: string, from: Member, text: string, ts: number }} Chat
 * @typedef {{ room: string, members: Member[], history: Chat[], lastSeq: number, truncated: boolean }} Joined
 * @typedef {{ room: string }} Left
 * @typedef {{ id: string, room: string, seq?: number, text: string }} Ack
 *   `seq` is missing when a resent message's original already left the backlog
 * @typedef {{ room: string, event: "join" | "leave", member: Member }} Presence
 * @typedef {{ room: string, from: string, user: User, kind: string, data: any }} Signal
 * @typedef {{ code: string, message: string, id?: string, room?: string, request?: string, closeCode?: number, reason?: string }} ErrorDetail
 * @typedef {{ code: string, message: string, error?: unknown, data?: unknown, url?: string }} Warning
 *   something the SDK skipped or could not do, which does not stop it
 */

/**
 * @typedef {object} ClientEvents the detail of each of CavloClient's events
 * @property {{ state: ConnectionState }} state
 * @property {Welcome} welcome
 * @property {Joined} joined
 * @property {Left} left
 * @property {Chat} chat
 * @property {Ack} ack
 * @property {Presence} presence
 * @property {Signal} signal
 * @property {Ice} ice
 * @property {CallAnswer} callanswer
 * @property {CallMoved} callmoved
 * @property {ErrorDetail} error
 * @property {Warning} warning
 */

/**
 * An EventTarget whose events are `CustomEvent`s with, per type, the detail
 * `Events` names. Only a type: at run time it is EventTarget.
 * @template Events
 * @typedef {{
 *   addEventListener<K extends keyof Events & string>(type: K, listener: ((event: CustomEvent<Events[K]>) => void) | null, options?: boolean | AddEventListenerOptions): void,
 *   removeEventListener<K extends keyof Events & string>(type: K, listener: ((event: CustomEvent<Events[K]>) => void) | null, options?: boolean | EventListenerOptions): void,
 *   dispatchEvent(event: Event): boolean,
 * }} TypedEventTarget
 */

/**
 * The promise `send` returns: it resolves with the ack once the message is
 * stored, and carries the message's client id at once.
 * @typedef {Promise<Ack> & { readonly id: string }} Sending
 */

/**
 * @typedef {object} Pending a chat message not yet acked
 * @property {string} room
 * @property {string} text
 * @property {(ack: Ack) => void} resolve
 * @property {(error: CavloError) => void} reject
 */

/**
 * Why a message sent with `send` will not be stored: the server refused it
 * (its error `code`: `invalid_message`, `too_large`, `not_in_room`, …), or
 * the app left the room first (`left`).
 */
export class CavloError extends Error {
  /**
   * @param {{ code: string, message: string, id?: string, room?: string }} detail
   */
  constructor({ code, message, id, room }) {
    super(message);
    this.name = "CavloError";
    this.code = code;
    this.id = id;
    this.room = room;
  }
}

/** @param {string} key */
function camelCase(key) {
  return key.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
}

/**
 * A server frame as the app sees it: every key camelCased (`conn_id` →
 * `connId`), at every depth but under AS_SENT's keys. Own properties only,
 * so a `__proto__` key stays a plain key.
 * @param {unknown} value
 * @returns {any}
 */
function fromWire(value) {
  if (Array.isArray(value)) return value.map(fromWire);
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value).map(([key, v]) => [camelCase(key), AS_SENT.has(key) ? v : fromWire(v)]),
  );
}

/**
 * A random message id: a UUID. `crypto.randomUUID` exists only in secure
 * contexts (https, localhost); elsewhere the same version-4 UUID is made
 * from `crypto.getRandomValues`, which is everywhere.
 */
function messageId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}


const ClientEventTarget = /** @type {new () => TypedEventTarget<ClientEvents>} */ (
  /** @type {unknown} */ (EventTarget)
);

/**
 * A connection to cavlo gateways. Events (all `CustomEvent`, data in
 * `detail`, keys in camelCase): `state` ({state}: "connecting" | "open" |
 * "closed"), `welcome`, `joined`, `left`, `chat`, `ack`, `presence`,
 * `signal`, `error`, `ice` ({servers, expiresIn}: fresh ICE servers, see
 * `iceServers`) and `warning` ({code, message}: a frame skipped, a socket
 * that could not be opened).
 */
export class CavloClient extends ClientEventTarget {
  /** @type {string[]} */
  #urls;
  /** @type {string | (() => string | Promise<string>)} */
  #token;
  /** @type {number} */
  #baseDelay;
  /** @type {number} */
  #maxDelay;
  /** @type {number} */
  #maxAttempts;
  /** @type {typeof WebSocket} */
  #WebSocket;
  /** @type {() => number} */
  #random;
  /** @type {Timers} */
  #timers;

  /** @type {ConnectionState} */
  #state = "closed";
  /** @type {string | null} */
  #connId = null;
  /** @type {User | null} */
  #user = null;
  /** Whether the last `welcome` offered a media service. */
  #mediaService = false;
  /** @type {Map<string, number | null>} room → highest seq seen in `history` or `chat`, or null before any. */
  #rooms = new Map();
  /** @type {Map<string, Pending>} client message id → its message, in sending order, until acked. */
  #outbox = new Map();
  /** @type {Map<string, Map<string, Member>>} room → Map connId → member. */
  #members = new Map();
  /**
   * room → the connection that was admitted there. A rejoin from a newer
   * connection names it in `replaces`, so the seat passes over at once
   * instead of staying taken until the old connection's gateway lets go.
   * @type {Map<string, string | null>}
   */
  #seats = new Map();
  /** @type {WebSocket | null} */
  #ws = null;
  #urlIndex = 0;
  #attempt = 0;
  #stopped = true;
  /**
   * Bumped by `connect` and `close`: an attempt whose token arrives after
   * either belongs to an old session and opens nothing.
   */
  #session = 0;
  /** @type {unknown} */
  #retryTimer = null;
  /** @type {Set<unknown>} Timers of chat messages waiting to be resent after a retryable error. */
  #resendTimers = new Set();
  /** @type {unknown} Fires when the token should be refreshed (only with a token function). */
  #refreshTimer = null;
  /** @type {unknown} Fires when a draining gateway asked this client to move. */
  #moveTimer = null;
  /** @type {unknown} Fires when the TURN credentials should be renewed. */
  #iceTimer = null;
  /** @type {RTCIceServer[]} */
  #iceServers = [];
  /**
   * Whether the connection since the last `welcome` already got a fresh
   * token after a 4001: a second refusal is final.
   */
  #refusedOnce = false;

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
   * @param {Timers} [options.timers=globalThis]
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

  /**
   * Whether the gateway's last `welcome` said a media service holds calls:
   * then a room's call is a RoomCall, else a MeshCall.
   */
  get mediaService() {
    return this.#mediaService;
  }

  /** A copy: room → highest seq seen (null before any), for every joined room. */
  get rooms() {
    return new Map(this.#rooms);
  }

  /**
   * A copy: client message id → {room, text}, for chat not yet acked.
   * @returns {Map<string, { room: string, text: string }>}
   */
  get outbox() {
    return new Map([...this.#outbox].map(([id, { room, text }]) => [id, { room, text }]));
  }

  /**
   * A copy of a room's members, Map connId → member.
   * @param {string} room
   * @returns {Map<string, Member>}
   */
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

  /**
   * Joins a room; after a reconnect the SDK rejoins it by itself.
   * @param {string} room
   */
  join(room) {
    if (!this.#rooms.has(room)) this.#rooms.set(room, null);
    this.#send({ type: "join", room });
  }

  /**
   * Leaves a room and forgets its unsent chat: their `send` promises
   * reject with code `left`.
   * @param {string} room
   */
  leave(room) {
    this.#rooms.delete(room);
    this.#members.delete(room);
    this.#seats.delete(room);
    for (const [id, pending] of this.#outbox) {
      if (pending.room !== room) continue;
      this.#outbox.delete(id);
      pending.reject(new CavloError({ code: "left", message: "left the room before the message was stored", id, room }));
    }
    this.#send({ type: "leave", room });
  }

  /**
   * Sends chat. It stays in the outbox, and is resent after reconnects,
   * until the server acknowledges it. Returns a promise of the ack, with
   * the message's client id as its `id`. It rejects with a CavloError when
   * the message will not be stored (a server error other than
   * `unavailable` or `rate_limited`, which are resent; or `leave`). An
   * ignored promise never reports an unhandled rejection.
   * @param {string} room
   * @param {string} text
   * @returns {Sending}
   */
  send(room, text) {
    const id = messageId();
    /** @type {Pending | undefined} */
    let pending;
    const acked = new Promise((resolve, reject) => {
      pending = { room, text, resolve, reject };
    });
    // The executor ran synchronously.
    this.#outbox.set(id, /** @type {Pending} */ (pending));
    // Handled here, so that an app that only listens to events is not
    // told of an unhandled rejection; `await` still sees it.
    acked.catch(() => {});
    Object.defineProperty(acked, "id", { value: id, enumerable: true });
    this.#send({ type: "chat", room, id, text });
    return /** @type {Sending} */ (acked);
  }

  /**
   * Sends a WebRTC signal to one member of a room; dropped while disconnected.
   * @param {string} room
   * @param {string} to the member's connId
   * @param {string} kind "offer", "answer", "candidate", "bye" or "media"
   * @param {object} data
   */
  signal(room, to, kind, data) {
    this.#send({ type: "signal", room, to, kind, data });
  }

  /**
   * Joins a room's call on the media service with an SDP offer; the answer
   * comes as a `callanswer` event, a refusal as an `error` naming the room.
   * Dropped while disconnected. RoomCall calls it for you.
   * @param {string} room
   * @param {string} sdp
   */
  callJoin(room, sdp) {
    this.#send({ type: "call_join", room, sdp });
  }

  /**
   * Hangs up a room's call on the media service.
   * @param {string} room
   */
  callLeave(room) {
    this.#send({ type: "call_leave", room });
  }

  // --- internals -----------------------------------------------------------

  /** @param {ConnectionState} state */
  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", { state });
  }

  /**
   * @template {keyof ClientEvents} K
   * @param {K} type
   * @param {ClientEvents[K]} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * @param {string} code
   * @param {string} message
   * @param {Partial<Warning>} [more]
   */
  #warn(code, message, more = {}) {
    this.#emit("warning", { ...more, code, message });
  }

  /**
   * Sends while welcomed. Otherwise the frame is covered on (re)connect:
   * rooms are rejoined and the outbox resent; signals are dropped, as peers
   * renegotiate anyway.
   * @param {object} frame
   */
  #send(frame) {
    if (this.#state === "open") this.#write(frame);
  }

  /** @param {object} frame */
  #write(frame) {
    if (this.#ws && this.#ws.readyState === WS_OPEN) this.#ws.send(JSON.stringify(frame));
  }

  async #open() {
    const session = this.#session;
    this.#setState("connecting");
    /** @type {string} */
    let token;
    try {
      token = typeof this.#token === "function" ? await this.#token() : this.#token;
    } catch (err) {
      if (session !== this.#session) return;
      this.#emit("error", { code: "token_failed", message: `cannot get a token: ${errorText(err)}` });
      return this.#retry();
    }
    if (session !== this.#session) return;
    const url = this.#urls[this.#urlIndex % this.#urls.length];
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (err) {
      this.#warn("socket_failed", `cannot open a WebSocket to ${url}: ${errorText(err)}`, { url, error: err });
      return this.#retry();
    }
    this.#ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (event) => {
      if (this.#ws === ws) this.#receive(event.data);
    };
    ws.onclose = (event) => this.#closed(ws, event);
  }

  /**
   * @param {WebSocket} ws
   * @param {{ code: number, reason: string }} event
   */
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
      this.#abandon(`the gateway closed the connection for good (${code}) before the message was acked`);
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
   * @param {number | undefined} expiresIn seconds
   */
  #scheduleRefresh(expiresIn) {
    this.#timers.clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const tokenFn = this.#token;
    if (typeof tokenFn !== "function" || typeof expiresIn !== "number") return;
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
        token = await tokenFn();
      } catch (err) {
        this.#emit("error", { code: "token_failed", message: `cannot refresh the token: ${errorText(err)}` });
        return;
      }
      if (this.#ws === ws) this.#write({ type: "refresh", token });
    }, delay);
  }

  /**
   * Keeps `ice` as the current ICE servers and asks for new ones when four
   * fifths of their credentials' life has passed (`expiresIn` 0: they do
   * not expire).
   * @param {Ice | undefined} ice
   */
  #setIce(ice) {
    this.#timers.clearTimeout(this.#iceTimer);
    this.#iceTimer = null;
    if (!ice) return;
    this.#iceServers = ice.servers;
    if (ice.expiresIn > 0) {
      const delay = Math.min(MAX_TIMER_MS, ice.expiresIn * 800);
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
   * @param {unknown} delayMs
   */
  #moveAfter(delayMs) {
    const ws = this.#ws;
    this.#timers.clearTimeout(this.#moveTimer);
    this.#moveTimer = this.#timers.setTimeout(() => {
      this.#moveTimer = null;
      if (this.#ws !== ws || this.#stopped) return;
      this.#detach()?.close(1000);
      this.#urlIndex += 1;
      this.#open();
    }, Math.max(0, Number(delayMs) || 0));
  }

  /**
   * Rejects every unacked `send` with code `closed` and forgets it: the
   * client stopped for good by itself, and a promise that never settles
   * would hang its caller. The message may have been stored; resending it
   * with its id after `connect` is safe.
   * @param {string} message
   */
  #abandon(message) {
    for (const [id, pending] of this.#outbox) {
      pending.reject(new CavloError({ code: "closed", message, id, room: pending.room }));
    }
    this.#outbox.clear();
  }

  /** Schedules the next attempt on the next gateway, with full jitter. */
  #retry() {
    if (this.#stopped) return;
    if (this.#attempt >= this.#maxAttempts) {
      this.close();
      this.#abandon(`gave up reconnecting before the message was acked`);
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
      /** @type {{ type: "join", room: string, since?: number, replaces?: string }} */
      const frame = { type: "join", room };
      if (since !== null) frame.since = since;
      const seat = this.#seats.get(room);
      if (seat != null && seat !== this.#connId) frame.replaces = seat;
      this.#write(frame);
    }
    for (const [id, { room, text }] of this.#outbox) this.#write({ type: "chat", room, id, text });
  }

  /**
   * One frame from the server; a malformed one is skipped with a `warning`.
   * @param {unknown} data
   */
  #receive(data) {
    let frame;
    try {
      frame = JSON.parse(String(data));
    } catch {
      this.#warn("bad_frame", "skipped a frame that is not JSON", { data });
      return;
    }
    if (frame === null || typeof frame !== "object") {
      this.#warn("bad_frame", "skipped a frame that is not a JSON object", { data });
      return;
    }
    try {
      this.#handle(frame);
    } catch (err) {
      this.#warn("bad_frame", `skipped a malformed frame: ${errorText(err)}`, { data, error: err });
    }
  }

  /**
   * One server frame, its keys camelCased here, once, for everything after.
   * @param {{ type?: unknown }} raw
   */
  #handle(raw) {
    const { type, ...body } = raw;
    const frame = fromWire(body);
    switch (type) {
      case "welcome": {
        /** @type {Welcome} */
        const welcome = frame;
        this.#connId = welcome.connId;
        this.#user = welcome.user;
        this.#mediaService = welcome.media === true;
        this.#attempt = 0;
        // Before anyone hears of it, so frames sent from a listener come
        // after the rejoins.
        this.#resume();
        this.#scheduleRefresh(welcome.expiresIn);
        this.#setIce(welcome.ice);
        this.#refusedOnce = false;
        this.#setState("open");
        this.#emit("welcome", welcome);
        break;
      }
      case "refreshed":
        this.#scheduleRefresh(frame.expiresIn);
        break;
      case "joined": {
        /** @type {Joined} */
        const joined = frame;
        if (!this.#rooms.has(joined.room)) break;
        this.#members.set(joined.room, new Map(joined.members.map((m) => [m.connId, m])));
        this.#seats.set(joined.room, this.#connId);
        for (const chat of joined.history) this.#deliver(chat);
        // Only when there was no history: a live message may already carry
        // a seq between the last one in `history` and `lastSeq`.
        if (joined.history.length === 0) this.#seen(joined.room, joined.lastSeq);
        this.#emit("joined", joined);
        break;
      }
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
        /** @type {Ack} */
        const ack = { ...frame, text: frame.text ?? pending.text };
        this.#emit("ack", ack);
        pending.resolve(ack);
        break;
      }
      case "presence": {
        /** @type {Presence} */
        const presence = frame;
        const members = this.#members.get(presence.room);
        if (!members) break;
        if (presence.event === "join") members.set(presence.member.connId, presence.member);
        else members.delete(presence.member.connId);
        this.#emit("presence", presence);
        break;
      }
      case "signal":
        this.#emit("signal", frame);
        break;
      case "ice":
        this.#setIce(frame);
        this.#emit("ice", frame);
        break;
      case "call_answer":
        this.#emit("callanswer", frame);
        break;
      case "call_moved":
        this.#emit("callmoved", frame);
        break;
      case "pong":
        break;
      case "draining":
        this.#moveAfter(frame.reconnectInMs);
        break;
      case "error": {
        /** @type {ErrorDetail} */
        const error = frame;
        const pending = error.id === undefined ? undefined : this.#outbox.get(error.id);
        if (error.id !== undefined && pending) {
          if (RETRYABLE_ERRORS.has(error.code)) this.#resendLater(error.id);
          else this.#outbox.delete(error.id);
        }
        this.#emit("error", error);
        if (pending && !RETRYABLE_ERRORS.has(error.code)) pending.reject(new CavloError(error));
        break;
      }
      default:
        this.#warn("unknown_frame", `skipped a frame of unknown type ${JSON.stringify(type)}`, { data: raw });
    }
  }

  /**
   * Emits a chat message once, in seq order, and remembers its seq.
   * @param {Chat} chat
   */
  #deliver(chat) {
    const since = this.#rooms.get(chat.room);
    if (since === undefined || (since !== null && chat.seq <= since)) return;
    this.#rooms.set(chat.room, chat.seq);
    this.#emit("chat", chat);
  }

  /**
   * @param {string} room
   * @param {number} seq
   */
  #seen(room, seq) {
    const since = this.#rooms.get(room);
    if (since === undefined) return;
    if (since === null || seq > since) this.#rooms.set(room, seq);
  }

  /** @param {string} id */
  #resendLater(id) {
    const timer = this.#timers.setTimeout(() => {
      this.#resendTimers.delete(timer);
      const pending = this.#outbox.get(id);
      if (pending) this.#send({ type: "chat", room: pending.room, id, text: pending.text });
    }, RESEND_DELAY_MS + this.#random() * RESEND_JITTER_MS);
    this.#resendTimers.add(timer);
  }
}
