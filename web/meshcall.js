// @ts-check
// A mesh video call over a CavloClient (cavlo.js, which re-exports this
// module): one RTCPeerConnection per other member of a room. docs/client.md,
// "MeshCall", is the reference.

import { CallEventTarget, Connector, applyMedia, listen, tellMedia, tellNewcomer } from "./callbase.js";
import { errorText } from "./errors.js";

/**
 * @typedef {import("./cavlo.js").CavloClient} CavloClient
 * @typedef {import("./cavlo.js").Signal} Signal
 * @typedef {import("./cavlo.js").Timers} Timers
 * @typedef {import("./callbase.js").MediaState} MediaState
 * @typedef {import("./callbase.js").CallWarning} CallWarning
 */

/**
 * @typedef {object} CallEvents the detail of each of MeshCall's events
 * @property {{ stream: MediaStream }} start
 * @property {{ connId: string, stream: MediaStream }} stream
 * @property {{ connId: string, state: RTCPeerConnectionState }} peerstate
 * @property {{ connId: string }} hangup
 * @property {{ connId: string } & MediaState} media
 * @property {{ error: unknown }} error
 * @property {CallWarning} warning
 */

/**
 * @typedef {object} Peer the connection to one other member
 * @property {RTCPeerConnection} pc
 * @property {boolean} polite whether this side yields when offers collide
 * @property {boolean} makingOffer
 * @property {boolean} ignoreOffer
 * @property {number} answered offers answered so far
 * @property {unknown} offerTimer the polite side's wait before offering
 */

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
 * `error` ({error}, when answering could not get the local media),
 * `warning` ({code, message, connId, error}: an offer or a peer's signal
 * that failed).
 * @extends {CallEventTarget<CallEvents>}
 */
export class MeshCall extends CallEventTarget {
  /** @type {CavloClient} */
  #client;
  /** @type {string} */
  #room;
  /** @type {MediaStream | (() => MediaStream | Promise<MediaStream>)} */
  #media;
  /** @type {Connector} */
  #connector;
  /** @type {Timers} */
  #timers;

  /** @type {"idle" | "starting" | "active" | "stopped"} waiting for media while "starting" */
  #state = "idle";
  /** @type {MediaState} Whether this side's microphone and camera are on. */
  #sending = { audio: true, video: true };
  /** @type {Promise<void> | null} */
  #starting = null;
  /** @type {MediaStream | null} */
  #localStream = null;
  /** @type {Map<string, Peer>} remote connId → its connection. */
  #peers = new Map();
  /** @type {Signal[]} This room's signals from before the call started, oldest first. */
  #early = [];
  /**
   * Signals are applied one at a time, in arrival order: a candidate must
   * not race the description it belongs to.
   * @type {Promise<void>}
   */
  #applying = Promise.resolve();
  /** @type {() => void} removes the listeners on the client */
  #unlisten;

  /**
   * @param {CavloClient} client
   * @param {string} room a room the client has joined or is joining
   * @param {object} options
   * @param {MediaStream | (() => MediaStream | Promise<MediaStream>)} options.media
   *   the local stream, or a function getting it, called once, when the call
   *   starts; it is the place to ask the user, and throwing declines
   * @param {RTCIceServer[] | null} [options.iceServers] fixed ICE servers instead of
   *   the gateway's (`client.iceServers`, renewed as they expire)
   * @param {RTCIceTransportPolicy} [options.iceTransportPolicy="all"] "relay" uses
   *   TURN only, hiding the peers' addresses from each other
   * @param {typeof RTCPeerConnection} [options.RTCPeerConnection=globalThis.RTCPeerConnection]
   * @param {Timers} [options.timers=globalThis]
   */
  constructor(client, room, options = /** @type {any} */ ({})) {
    super();
    const { media, timers = globalThis } = options;
    if (!media) throw new Error("cavlo: a MeshCall needs `media`, a MediaStream or a function returning one");
    this.#client = client;
    this.#room = room;
    this.#media = media;
    this.#timers = timers;
    this.#connector = new Connector(client, options);
    this.#unlisten = listen(client, {
      signal: ({ detail }) => this.#receive(detail),
      presence: ({ detail }) => {
        if (detail.room === this.#room && detail.event === "leave") this.#forget(detail.member.connId);
      },
      ice: () => this.#connector.renew([...this.#peers.values()].map(({ pc }) => pc)),
    });
  }

  /** "idle", "starting", "active" or "stopped". */
  get state() {
    return this.#state;
  }

  /**
   * Each connection's `getStats()` report, as a Map connId →
   * RTCStatsReport: for a call-quality display, or to see the path a call
   * took (the selected candidate pair's types: "host", "srflx", "relay").
   */
  async stats() {
    /** @type {Map<string, RTCStatsReport>} */
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
   * @param {Partial<MediaState>} media
   */
  setMedia({ audio = this.#sending.audio, video = this.#sending.video } = {}) {
    this.#sending = { audio: Boolean(audio), video: Boolean(video) };
    applyMedia(this.#localStream, this.#sending);
    tellMedia(this.#client, this.#room, this.#peers.keys(), this.#sending);
  }

  /** The local stream once the call started, else null. */
  get localStream() {
    return this.#localStream;
  }

  /**
   * Gets the local media and calls every current member of the room.
   * Resolves once the call is active; calling it again returns the same
   * promise. If getting the media fails, it rejects and the call is idle again.
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

  /** Hangs up on everyone; a stopped call cannot start again. */
  stop() {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    for (const connId of [...this.#peers.keys()]) {
      this.#client.signal(this.#room, connId, "bye", {});
      this.#drop(connId);
    }
    this.#early = [];
    this.#unlisten();
  }

  // --- internals -----------------------------------------------------------

  async #begin() {
    this.#state = "starting";
    const stream = typeof this.#media === "function" ? await this.#media() : this.#media;
    // `stop` may have run while the media was being got.
    if (/** @type {string} */ (this.#state) === "stopped") {
      // Nobody else was handed this stream: release the camera.
      if (typeof this.#media === "function") for (const track of stream.getTracks()) track.stop();
      return;
    }
    this.#localStream = stream;
    applyMedia(stream, this.#sending);
    this.#state = "active";
    this.#emit("start", { stream });
    for (const connId of this.#client.membersOf(this.#room).keys()) {
      if (connId !== this.#client.connId) this.#peer(connId, stream);
    }
    for (const signal of this.#early.splice(0)) this.#enqueue(signal);
  }

  /** @param {Signal} signal */
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

  /**
   * A member left the room: hang up on it, or forget what it sent.
   * @param {string} connId
   */
  #forget(connId) {
    this.#early = this.#early.filter((early) => early.from !== connId);
    this.#drop(connId);
  }

  /** @param {Signal} signal */
  #enqueue(signal) {
    this.#applying = this.#applying.then(() => this.#apply(signal));
  }

  /**
   * The connection to `connId`, created on first use with the tracks of
   * `stream`, the local stream.
   * @param {string} connId
   * @param {MediaStream} stream
   */
  #peer(connId, stream) {
    const known = this.#peers.get(connId);
    if (known) return known;
    const pc = this.#connector.connect();
    /** @type {Peer} */
    const peer = {
      pc,
      // The peer with the larger connection id yields in a collision.
      polite: (this.#client.connId ?? "") > connId,
      makingOffer: false,
      ignoreOffer: false,
      answered: 0,
      offerTimer: null,
    };
    this.#peers.set(connId, peer);
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    tellNewcomer(this.#client, this.#room, connId, this.#sending);
    pc.onnegotiationneeded = async () => {
      try {
        // The polite side lets a crossing offer arrive first (see
        // POLITE_OFFER_DELAY_MS). If it answered one meanwhile, that
        // negotiation already carried its tracks.
        if (peer.polite) {
          const answered = peer.answered;
          await new Promise((resolve) => {
            peer.offerTimer = this.#timers.setTimeout(() => resolve(undefined), POLITE_OFFER_DELAY_MS);
          });
          peer.offerTimer = null;
          if (peer.answered !== answered || pc.signalingState !== "stable") return;
        }
        peer.makingOffer = true;
        await pc.setLocalDescription();
        const offer = /** @type {RTCSessionDescription} */ (pc.localDescription);
        this.#client.signal(this.#room, connId, offer.type, { type: offer.type, sdp: offer.sdp });
      } catch (err) {
        this.#warn({ code: "offer_failed", message: `offering to ${connId} failed: ${errorText(err)}`, connId, error: err });
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

  /** @param {Signal} signal */
  async #apply(signal) {
    if (this.#state !== "active" || !this.#localStream) return;
    const connId = signal.from;
    if (signal.kind === "bye") return this.#drop(connId);
    // Only an offer opens a connection; an answer or candidate without one is stale.
    const peer = signal.kind === "offer" ? this.#peer(connId, this.#localStream) : this.#peers.get(connId);
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
          const answer = /** @type {RTCSessionDescription} */ (pc.localDescription);
          this.#client.signal(this.#room, connId, "answer", { type: "answer", sdp: answer.sdp });
        }
      } else if (signal.kind === "candidate") {
        const c = signal.data;
        // `null` ends the candidates (the DOM types do not allow for it yet).
        const end = /** @type {RTCIceCandidateInit} */ (/** @type {unknown} */ (null));
        await pc.addIceCandidate(c.candidate === null ? end : { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex });
      }
    } catch (err) {
      // Candidates of an offer this side ignored fail as expected.
      if (!(signal.kind === "candidate" && peer.ignoreOffer)) {
        this.#warn({
          code: "signal_failed",
          message: `applying ${signal.kind} from ${connId} failed: ${errorText(err)}`,
          connId,
          kind: signal.kind,
          error: err,
        });
      }
    }
  }

  /** @param {string} connId */
  #drop(connId) {
    const peer = this.#peers.get(connId);
    if (!peer) return;
    this.#timers.clearTimeout(peer.offerTimer);
    peer.pc.close();
    this.#peers.delete(connId);
    this.#emit("hangup", { connId });
  }

  /** @param {CallWarning} warning */
  #warn(warning) {
    this.#emit("warning", warning);
  }

  /**
   * @template {keyof CallEvents} K
   * @param {K} type
   * @param {CallEvents[K]} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
