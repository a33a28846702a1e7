// @ts-check
// A video call through the media service over a CavloClient (cavlo.js,
// which re-exports this module): one RTCPeerConnection, to the media node
// holding the room's call, whatever the number of participants.
// docs/client.md, "RoomCall", is the reference.

import { CallEventTarget, Connector, applyMedia, listen, tellMedia, tellNewcomer } from "./callbase.js";
import { errorText } from "./errors.js";

/**
 * @typedef {import("./cavlo.js").CavloClient} CavloClient
 * @typedef {import("./cavlo.js").Signal} Signal
 * @typedef {import("./cavlo.js").ErrorDetail} ErrorDetail
 * @typedef {import("./cavlo.js").Timers} Timers
 * @typedef {import("./callbase.js").MediaState} MediaState
 * @typedef {import("./callbase.js").CallWarning} CallWarning
 */

/**
 * @typedef {object} RoomCallEvents the detail of each of RoomCall's events
 * @property {{ stream: MediaStream | null }} start
 * @property {{ connId: string, stream: MediaStream }} stream
 * @property {{ connId: string, state: RTCPeerConnectionState }} peerstate
 * @property {{ connId: string }} hangup
 * @property {{ connId: string } & MediaState} media
 * @property {{ connId: string | null }} speaker
 * @property {{ reason: "moved" | "failed" | "reconnected" }} renegotiate
 * @property {{ error: unknown }} error
 * @property {CallWarning} warning
 */

/** `peerstate`'s connId for the connection to the media node. */
export const MEDIA_NODE = "media";

/** Errors after which joining the call again later may work. */
const RETRIED_ERRORS = new Set(["unavailable", "rate_limited"]);

/** The first wait before joining again after a failure; doubled each time, up to the next. */
const REJOIN_DELAY_MS = 500;
const MAX_REJOIN_DELAY_MS = 8000;

/**
 * The camera's simulcast layers, smallest first (the node relies on the
 * order): the node forwards each subscriber the one that fits it. Browsers
 * send fewer for small cameras (Chromium: two below 960×540).
 * @type {RTCRtpEncodingParameters[]}
 */
const LAYERS = [
  { rid: "l", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "m", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "h", maxBitrate: 1_500_000 },
];

/** @typedef {"high" | "low" | "paused"} Quality what to get of a participant's video */

/** How long a join may wait for the node's answer before it is tried again. */
const ANSWER_TIMEOUT_MS = 10000;

/**
 * A room's video call through the media service (when the gateway's
 * `welcome` says there is one: `client.mediaService`). The browser sends its
 * microphone and camera once, to the media node, and receives every other
 * participant's from it; unlike a mesh, its uplink does not grow with the
 * room.
 *
 * Create it for a room the client joined; `start` joins the call. The SDK
 * moves the call by itself when its node dies or drains (`call_moved`),
 * after a reconnect, and when the connection to the node fails, with a
 * `renegotiate` event each time. Events, as MeshCall's: `start` ({stream}),
 * `stream` ({connId, stream}, a participant's media), `peerstate` ({connId:
 * "media", state}: the connection to the node), `hangup` ({connId}),
 * `media` ({connId, audio, video}), `error` ({error}), `warning`; and
 * `speaker` ({connId}, who speaks loudest now, or null).
 * @extends {CallEventTarget<RoomCallEvents>}
 */
export class RoomCall extends CallEventTarget {
  /** @type {CavloClient} */
  #client;
  /** @type {string} */
  #room;
  /** @type {MediaStream | (() => MediaStream | Promise<MediaStream>) | null} */
  #media;
  /** @type {Connector} */
  #connector;
  /** @type {Timers} */
  #timers;

  /** @type {"idle" | "starting" | "active" | "stopped"} */
  #state = "idle";
  /** @type {MediaState} */
  #sending = { audio: true, video: true };
  /** @type {Promise<void> | null} */
  #starting = null;
  /** @type {MediaStream | null} */
  #localStream = null;
  /** @type {RTCPeerConnection | null} */
  #pc = null;
  /** @type {RTCDataChannel | null} */
  #channel = null;
  /** Whether a `call_join` waits for its answer. */
  #awaiting = false;
  /** @type {unknown} */
  #answerTimer = null;
  /** @type {unknown} */
  #rejoinTimer = null;
  #rejoinDelay = REJOIN_DELAY_MS;
  /** @type {Map<string, MediaStream>} connId → the stream of its tracks. */
  #remote = new Map();
  /** @type {Promise<void>} the data channel's messages, one at a time. */
  #applying = Promise.resolve();
  /** @type {() => void} removes the listeners on the client */
  #unlisten;
  /** @type {Map<string, Quality>} connId → what was asked of its video; "high" is not kept. */
  #qualities = new Map();
  /** @type {boolean} */
  #simulcast;

  /**
   * @param {CavloClient} client
   * @param {string} room a room the client has joined or is joining
   * @param {object} options
   * @param {MediaStream | (() => MediaStream | Promise<MediaStream>) | null} options.media
   *   the local stream, or a function getting it, called once, when the call
   *   starts; null for a viewer, who only receives
   * @param {RTCIceServer[] | null} [options.iceServers] fixed ICE servers instead of the gateway's
   * @param {RTCIceTransportPolicy} [options.iceTransportPolicy="all"] "relay" reaches the node through TURN only
   * @param {boolean} [options.simulcast=true] send the camera in three layers
   *   (the node picks one per subscriber); false sends one
   * @param {typeof RTCPeerConnection} [options.RTCPeerConnection=globalThis.RTCPeerConnection]
   * @param {Timers} [options.timers=globalThis]
   */
  constructor(client, room, options = /** @type {any} */ ({})) {
    super();
    const { media, simulcast = true, timers = globalThis } = options;
    if (media === undefined) {
      throw new Error("cavlo: a RoomCall needs `media`, a MediaStream, a function returning one, or null");
    }
    this.#client = client;
    this.#room = room;
    this.#media = media;
    this.#simulcast = simulcast;
    this.#timers = timers;
    this.#connector = new Connector(client, options);
    this.#unlisten = listen(client, {
      callanswer: ({ detail }) => {
        if (detail.room === this.#room) this.#answered(detail.sdp);
      },
      callmoved: ({ detail }) => {
        if (detail.room === this.#room) this.#renegotiate("moved");
      },
      welcome: () => {
        // A new connection: the node knows only the old one, which the
        // old gateway hung up for it.
        if (this.#state === "active") this.#renegotiate("reconnected");
      },
      error: ({ detail }) => this.#refused(detail),
      signal: ({ detail }) => this.#signal(detail),
      presence: ({ detail }) => {
        if (detail.room === this.#room && detail.event === "leave") this.#hangup(detail.member.connId);
      },
      ice: () => this.#connector.renew(this.#pc ? [this.#pc] : []),
    });
  }

  /** "idle", "starting", "active" or "stopped". */
  get state() {
    return this.#state;
  }

  /** The local stream once the call started (null for a viewer), else null. */
  get localStream() {
    return this.#localStream;
  }

  /** {audio, video}: whether this side's microphone and camera are on. */
  get media() {
    return { ...this.#sending };
  }

  /** The connection ids of the participants whose media arrives. */
  get participants() {
    return [...this.#remote.keys()];
  }

  /** The connection to the media node's `getStats()`, as a Map "media" → report. */
  async stats() {
    /** @type {Map<string, RTCStatsReport>} */
    const reports = new Map();
    if (this.#pc) reports.set(MEDIA_NODE, await this.#pc.getStats());
    return reports;
  }

  /**
   * Turns the microphone and camera on or off (the tracks keep running,
   * disabled) and tells the room's other members with `media` signals.
   * @param {Partial<MediaState>} media
   */
  setMedia({ audio = this.#sending.audio, video = this.#sending.video } = {}) {
    this.#sending = { audio: Boolean(audio), video: Boolean(video) };
    applyMedia(this.#localStream, this.#sending);
    const others = [...this.#client.membersOf(this.#room).keys()].filter((connId) => connId !== this.#client.connId);
    tellMedia(this.#client, this.#room, others, this.#sending);
  }

  /**
   * What to get of a participant's video: "high" (the largest layer the
   * bandwidth allows, the default), "low" (the smallest, for a small tile)
   * or "paused" (none, for a tile not shown). Kept across reconnections.
   * @param {string} connId
   * @param {Quality} quality
   */
  setQuality(connId, quality) {
    if (quality === "high") this.#qualities.delete(connId);
    else this.#qualities.set(connId, quality);
    this.#tellQuality(connId, quality);
  }

  /**
   * @param {string} connId
   * @param {Quality} quality
   */
  #tellQuality(connId, quality) {
    if (this.#channel?.readyState === "open") {
      this.#channel.send(JSON.stringify({ type: "quality", conn: connId, quality }));
    }
  }

  /**
   * Gets the local media and joins the room's call. Resolves once the
   * node's answer is applied; calling it again returns the same promise.
   * @returns {Promise<void>}
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

  /** Hangs up; a stopped call cannot start again. */
  stop() {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    this.#client.callLeave(this.#room);
    this.#close();
    this.#timers.clearTimeout(this.#rejoinTimer);
    this.#unlisten();
  }

  // --- internals -----------------------------------------------------------

  async #begin() {
    this.#state = "starting";
    const media = this.#media;
    const stream = typeof media === "function" ? await media() : media;
    if (/** @type {string} */ (this.#state) === "stopped") {
      if (typeof media === "function" && stream) for (const track of stream.getTracks()) track.stop();
      return;
    }
    this.#localStream = stream;
    applyMedia(stream, this.#sending);
    this.#state = "active";
    this.#emit("start", { stream });
    await this.#join();
  }

  /** A fresh connection to the node, and a `call_join` with its offer. */
  async #join() {
    // A rejoin planned before this one must not close it later.
    this.#timers.clearTimeout(this.#rejoinTimer);
    this.#close();
    const pc = this.#connector.connect();
    this.#pc = pc;
    const stream = this.#localStream;
    for (const track of stream?.getTracks() ?? []) {
      /** @type {RTCRtpTransceiverInit} */
      const init = { direction: "sendonly", streams: [/** @type {MediaStream} */ (stream)] };
      if (track.kind === "video" && this.#simulcast) init.sendEncodings = LAYERS;
      pc.addTransceiver(track, init);
    }
    const channel = pc.createDataChannel("cavlo");
    this.#channel = channel;
    // What was asked before this connection, asked again.
    channel.onopen = () => {
      for (const [connId, quality] of this.#qualities) this.#tellQuality(connId, quality);
    };
    channel.onmessage = ({ data }) => {
      this.#applying = this.#applying.then(() => this.#onChannel(pc, channel, String(data)));
    };
    pc.ontrack = ({ track, streams }) => this.#track(pc, track, streams[0]);
    pc.onconnectionstatechange = () => {
      if (pc !== this.#pc) return;
      this.#emit("peerstate", { connId: MEDIA_NODE, state: pc.connectionState });
      if (pc.connectionState === "failed") this.#renegotiate("failed");
      if (pc.connectionState === "connected") this.#rejoinDelay = REJOIN_DELAY_MS;
    };
    await pc.setLocalDescription();
    if (pc !== this.#pc) return;
    this.#awaiting = true;
    this.#timers.clearTimeout(this.#answerTimer);
    this.#answerTimer = this.#timers.setTimeout(() => {
      if (!this.#awaiting || pc !== this.#pc) return;
      // A late answer to this offer is not applied to the next one's.
      this.#awaiting = false;
      this.#rejoinLater("no answer from the media service");
    }, ANSWER_TIMEOUT_MS);
    this.#client.callJoin(this.#room, /** @type {RTCSessionDescription} */ (pc.localDescription).sdp);
  }

  /** @param {string} sdp */
  async #answered(sdp) {
    const pc = this.#pc;
    if (!this.#awaiting || !pc) return;
    this.#awaiting = false;
    this.#timers.clearTimeout(this.#answerTimer);
    try {
      await pc.setRemoteDescription({ type: "answer", sdp });
    } catch (err) {
      this.#warn({ code: "answer_failed", message: `applying the node's answer failed: ${errorText(err)}`, connId: MEDIA_NODE, error: err });
      this.#rejoinLater("the node's answer failed");
    }
  }

  /**
   * An error answering a `call_join` in this room while a join waits: the
   * join's refusal (another request's, such as a mute `signal`'s, is not).
   * One that names no request nor id (the gateway could not parse the
   * frame) is taken for the join's too.
   * @param {ErrorDetail} error
   */
  #refused(error) {
    if (!this.#awaiting || error.room !== this.#room) return;
    const answersJoin = error.request === "call_join" || (error.request === undefined && error.id === undefined);
    if (!answersJoin) return;
    this.#awaiting = false;
    this.#timers.clearTimeout(this.#answerTimer);
    if (RETRIED_ERRORS.has(error.code)) return this.#rejoinLater(error.message);
    this.#emit("error", { error: new Error(`cavlo: the call was refused: ${error.code}: ${error.message}`) });
  }

  /**
   * Closes the connection to the node and joins again with a new one.
   * @param {"moved" | "failed" | "reconnected"} reason
   */
  #renegotiate(reason) {
    if (this.#state !== "active") return;
    this.#emit("renegotiate", { reason });
    if (reason === "failed") return this.#rejoinLater("the connection to the media node failed");
    this.#join().catch((err) => this.#rejoinLater(errorText(err)));
  }

  /** @param {string} why */
  #rejoinLater(why) {
    if (this.#state !== "active") return;
    this.#warn({ code: "rejoin", message: `joining the call again: ${why}`, connId: MEDIA_NODE });
    this.#timers.clearTimeout(this.#rejoinTimer);
    const delay = this.#rejoinDelay;
    this.#rejoinDelay = Math.min(delay * 2, MAX_REJOIN_DELAY_MS);
    this.#rejoinTimer = this.#timers.setTimeout(() => {
      this.#join().catch((err) => this.#rejoinLater(errorText(err)));
    }, delay);
  }

  /**
   * A message from the node on the data channel.
   * @param {RTCPeerConnection} pc
   * @param {RTCDataChannel} channel
   * @param {string} text
   */
  async #onChannel(pc, channel, text) {
    if (pc !== this.#pc) return;
    /** @type {any} */
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return this.#warn({ code: "bad_message", message: "the media node sent a message that is not JSON", connId: MEDIA_NODE });
    }
    try {
      if (message.type === "offer") {
        await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
        await pc.setLocalDescription();
        const answer = /** @type {RTCSessionDescription} */ (pc.localDescription);
        channel.send(JSON.stringify({ type: "answer", sdp: answer.sdp }));
      } else if (message.type === "speaker") {
        this.#emit("speaker", { connId: message.conn ?? null });
      } else if (message.type === "error") {
        this.#warn({ code: "node_refused", message: `the media node refused: ${message.message}`, connId: MEDIA_NODE });
      }
    } catch (err) {
      this.#warn({ code: "renegotiation_failed", message: `renegotiating with the media node failed: ${errorText(err)}`, connId: MEDIA_NODE, error: err });
    }
  }

  /**
   * A participant's track arrived: its stream id is its connection id.
   * @param {RTCPeerConnection} pc
   * @param {MediaStreamTrack} track
   * @param {MediaStream | undefined} stream
   */
  #track(pc, track, stream) {
    if (pc !== this.#pc || !stream) return;
    const connId = stream.id;
    this.#remote.set(connId, stream);
    // The node stops a participant's lines when it leaves: its tracks end.
    stream.onremovetrack = () => {
      if (stream.getTracks().length === 0 && this.#remote.get(connId) === stream) this.#hangup(connId);
    };
    track.onended = () => {
      if (stream.getTracks().every((t) => t.readyState === "ended") && this.#remote.get(connId) === stream) this.#hangup(connId);
    };
    this.#emit("stream", { connId, stream });
    // Whoever arrives learns what this side turned off.
    tellNewcomer(this.#client, this.#room, connId, this.#sending);
  }

  /** @param {Signal} signal */
  #signal(signal) {
    if (signal.room !== this.#room || signal.kind !== "media" || this.#state === "stopped") return;
    const { audio, video } = signal.data;
    this.#emit("media", { connId: signal.from, audio, video });
  }

  /** @param {string} connId */
  #hangup(connId) {
    if (!this.#remote.delete(connId)) return;
    this.#emit("hangup", { connId });
  }

  /** Closes the connection to the node; its participants' media stops. */
  #close() {
    this.#awaiting = false;
    this.#timers.clearTimeout(this.#answerTimer);
    this.#channel = null;
    const pc = this.#pc;
    this.#pc = null;
    pc?.close();
    for (const connId of [...this.#remote.keys()]) this.#hangup(connId);
  }

  /** @param {CallWarning} warning */
  #warn(warning) {
    this.#emit("warning", warning);
  }

  /**
   * @template {keyof RoomCallEvents} K
   * @param {K} type
   * @param {RoomCallEvents[K]} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
