// Fakes for the SDK's collaborators: a WebSocket the test plays the gateway
// on, a clock the test advances by hand, and an RTCPeerConnection with the
// signaling states MeshCall and RoomCall depend on; and the server frames
// they deliver.
import { appendFileSync, readFileSync } from "node:fs";

/**
 * One server frame of every type, generated from the gateway's Rust types
 * (schemas/tests/sdk_fixtures.rs), for tests to build theirs from.
 */
const FRAMES = JSON.parse(readFileSync(new URL("./fixtures/server-frames.json", import.meta.url), "utf8"));

/** The fixture frame of `type`, with `fields` replacing its own. */
export function serverFrame(type, fields = {}) {
  if (!FRAMES[type]) throw new Error(`no fixture frame of type ${type}`);
  return { ...structuredClone(FRAMES[type]), ...fields };
}

/** The ICE servers of a gateway without TURN, as its `welcome` has them. */
export const NO_ICE = { servers: [], expires_in: 0 };

/**
 * Every frame object a test delivered, as JSON. When CAVLO_SDK_FRAMES names
 * a file they are appended to it as the test process ends, and
 * scripts/test.sh has the Rust types judge each one
 * (schemas/examples/check_sdk_frames.rs): a frame the gateway could not
 * send fails. Frames delivered as strings are the deliberately malformed
 * ones, and are left out.
 */
const delivered = [];
process.on("exit", () => {
  const file = process.env.CAVLO_SDK_FRAMES;
  if (file && delivered.length > 0) appendFileSync(file, delivered.map((frame) => `${frame}\n`).join(""));
});

/** Lets every pending promise callback and queued task run. */
export async function settle(rounds = 10) {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A fresh FakeWebSocket class; `sockets` lists every socket it opened, oldest first. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    constructor(url) {
      this.url = url;
      this.readyState = FakeWebSocket.CONNECTING;
      /** Frames the client sent, parsed. */
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }

    send(data) {
      if (this.readyState !== FakeWebSocket.OPEN) throw new Error(`send on a socket in state ${this.readyState}`);
      this.sent.push(JSON.parse(data));
    }

    /** The client closes; like a browser, the close event comes later. */
    close(code = 1005) {
      if (this.readyState === FakeWebSocket.CLOSED) return;
      this.closedWith = code;
      this.readyState = FakeWebSocket.CLOSED;
      queueMicrotask(() => this.onclose?.({ code, reason: "" }));
    }

    // --- the gateway's side -----------------------------------------------

    accept() {
      this.readyState = FakeWebSocket.OPEN;
      this.onopen?.({});
    }

    /** Delivers a frame: an object is sent as JSON (and recorded), a string as is. */
    receive(frame) {
      const data = typeof frame === "string" ? frame : JSON.stringify(frame);
      if (typeof frame !== "string") delivered.push(data);
      this.onmessage?.({ data });
    }

    /** The gateway (or the network) ends the connection. */
    drop(code, reason = "") {
      this.readyState = FakeWebSocket.CLOSED;
      this.onclose?.({ code, reason });
    }

    /** Sent frames of one type. */
    frames(type) {
      return this.sent.filter((frame) => frame.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}

/** Timers that fire only when the test advances the clock. */
export class FakeClock {
  now = 0;
  #next = 1;
  /** id → {at, fn, delay} */
  #timers = new Map();
  /** Every delay ever asked for, in order. */
  delays = [];

  setTimeout = (fn, delay = 0) => {
    const id = this.#next++;
    // As browsers and Node do: a delay past 2³¹ − 1 ms fires at once.
    const at = this.now + (delay > 2 ** 31 - 1 ? 1 : delay);
    this.#timers.set(id, { at, fn, delay });
    this.delays.push(delay);
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** How many timers are waiting. */
  get pending() {
    return this.#timers.size;
  }

  /** Moves time forward, firing due timers in order. */
  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.#timers].filter(([, t]) => t.at <= until).sort(([, a], [, b]) => a.at - b.at)[0];
      if (!due) break;
      const [id, timer] = due;
      this.#timers.delete(id);
      this.now = timer.at;
      timer.fn();
    }
    this.now = until;
  }
}

/** A fresh FakeRTCPeerConnection class; `connections` lists every one created. */
export function fakeRTCPeerConnection() {
  const connections = [];
  let sdpCounter = 0;

  class FakeRTCPeerConnection {
    constructor(config) {
      this.config = config;
      this.signalingState = "stable";
      this.connectionState = "new";
      this.localDescription = null;
      this.remoteDescription = null;
      this.tracks = [];
      /** What happened to it, in order: "offer", "answer", "remote offer", "rollback", … */
      this.log = [];
      this.candidates = [];
      /** The promise of the last negotiationneeded handler run. */
      this.negotiation = null;
      connections.push(this);
    }

    addTrack(track, stream) {
      this.tracks.push({ track, stream });
      // Browsers fire negotiationneeded from a queued task, after the
      // current script and its promise callbacks, and only when stable:
      // an answer to an offer already carries the tracks.
      if (this.tracks.length === 1) {
        setImmediate(() => {
          if (this.signalingState === "stable" && !this.remoteDescription) this.negotiation = this.onnegotiationneeded?.();
        });
      }
    }

    /** Runs `op` after every operation before it, as a browser's operations chain does. */
    #chain = Promise.resolve();
    #enqueue(op) {
      const result = this.#chain.then(op);
      this.#chain = result.catch(() => {});
      return result;
    }

    setLocalDescription() {
      return this.#enqueue(() => {
        if (this.signalingState === "stable") {
          this.localDescription = { type: "offer", sdp: `offer-${++sdpCounter}` };
          this.signalingState = "have-local-offer";
          this.log.push("offer");
        } else if (this.signalingState === "have-remote-offer") {
          this.localDescription = { type: "answer", sdp: `answer-${++sdpCounter}` };
          this.signalingState = "stable";
          this.log.push("answer");
        } else {
          throw new Error(`setLocalDescription in ${this.signalingState}`);
        }
      });
    }

    setRemoteDescription({ type, sdp }) {
      return this.#enqueue(() => {
        if (type === "offer") {
          if (this.signalingState === "have-local-offer") {
            // Perfect negotiation's implicit rollback.
            this.log.push("rollback");
            this.localDescription = null;
          } else if (this.signalingState !== "stable") {
            throw new Error(`remote offer in ${this.signalingState}`);
          }
          this.signalingState = "have-remote-offer";
        } else if (type === "answer") {
          if (this.signalingState !== "have-local-offer") throw new Error(`remote answer in ${this.signalingState}`);
          this.signalingState = "stable";
        }
        this.remoteDescription = { type, sdp };
        this.log.push(`remote ${type} ${sdp}`);
      });
    }

    addIceCandidate(candidate) {
      return this.#enqueue(() => {
        if (!this.remoteDescription) throw new Error("candidate before a remote description");
        this.candidates.push(candidate);
      });
    }

    /** RoomCall's sending tracks: kept with `tracks`, negotiated by its own offer. */
    addTransceiver(track, { direction, streams, sendEncodings }) {
      this.tracks.push({ track, stream: streams[0], direction, sendEncodings });
    }

    /** The data channel RoomCall renegotiates over; `sent` holds what it wrote. */
    createDataChannel(label) {
      this.channel = { label, readyState: "connecting", sent: [], send(data) { this.sent.push(JSON.parse(data)); } };
      return this.channel;
    }

    setConfiguration(config) {
      this.config = config;
      this.log.push("configuration");
    }

    restartIce() {
      this.log.push("restart ice");
    }

    close() {
      this.signalingState = "closed";
      this.connectionState = "closed";
      this.log.push("close");
    }
  }
  return { FakeRTCPeerConnection, connections };
}

/**
 * Watches the listeners added to `target` from now on: the function
 * returned says how many of them are not removed yet.
 */
export function watchListeners(target) {
  /** [type, listener] of each listener added and not removed. */
  const live = [];
  const add = target.addEventListener.bind(target);
  const remove = target.removeEventListener.bind(target);
  target.addEventListener = (type, listener, options) => {
    live.push([type, listener]);
    add(type, listener, options);
  };
  target.removeEventListener = (type, listener, options) => {
    const at = live.findIndex(([t, l]) => t === type && l === listener);
    if (at >= 0) live.splice(at, 1);
    remove(type, listener, options);
  };
  return () => live.length;
}

/** A local media stream with one video track. */
export function fakeStream() {
  const track = { kind: "video", stopped: false, stop() { this.stopped = true; } };
  return { getTracks: () => [track], track };
}
