// MeshCall on a real CavloClient over a FakeWebSocket, with a fake
// RTCPeerConnection and a FakeClock for the polite peer's delay.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { CavloClient, MeshCall } from "../../web/cavlo.js";
import { FakeClock, NO_ICE, fakeRTCPeerConnection, fakeStream, fakeWebSocket, serverFrame, settle, watchListeners } from "./fakes.mjs";

const ROOM = "call-room";
const POLITE_OFFER_DELAY_MS = 400;

function member(connId) {
  return { conn_id: connId, user: { id: `u-${connId}`, name: connId.toUpperCase() } };
}

/**
 * A client welcomed as `me` in ROOM with `others`, and a MeshCall on it.
 * `media` defaults to a ready stream.
 */
async function callIn(
  me,
  others,
  { media = fakeStream(), rtc = fakeRTCPeerConnection(), clock = new FakeClock(), ice, callOptions = {} } = {},
) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const client = new CavloClient({ urls: ["ws://gw/ws"], token: "t", WebSocket: FakeWebSocket, timers: clock });
  client.connect();
  client.join(ROOM);
  await settle();
  const socket = sockets[0];
  socket.accept();
  socket.receive(serverFrame("welcome", { conn_id: me, user: member(me).user, ice: ice ?? NO_ICE }));
  socket.receive(serverFrame("joined", { room: ROOM, members: [me, ...others].map(member), history: [], last_seq: 0 }));
  const call = new MeshCall(client, ROOM, {
    media,
    RTCPeerConnection: rtc.FakeRTCPeerConnection,
    timers: clock,
    ...callOptions,
  });
  const events = [];
  for (const type of ["start", "stream", "peerstate", "hangup", "error", "warning"]) {
    call.addEventListener(type, ({ detail }) => events.push({ type, detail }));
  }
  /** The details of this call's events of one type. */
  const of = (type) => events.filter((e) => e.type === type).map((e) => e.detail);
  /** Signals this side sent, as [to, kind]. */
  const sentSignals = () => socket.frames("signal").map((f) => [f.to, f.kind]);
  /** Delivers a signal from `from` to this side. */
  const signal = (from, kind, data, room = ROOM) =>
    socket.receive({ type: "signal", room, from, user: member(from).user, kind, data });
  return { client, socket, call, clock, connections: rtc.connections, events, of, sentSignals, signal };
}

function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

describe("perfect negotiation", () => {
  test("the impolite peer (smaller conn id) offers at once and ignores a colliding offer", async () => {
    const side = await callIn("a", ["b"]);
    await side.call.start();
    await settle();
    const [pc] = side.connections;
    assert.deepEqual(side.sentSignals(), [["b", "offer"]]);
    assert.equal(pc.signalingState, "have-local-offer");

    side.signal("b", "offer", { type: "offer", sdp: "offer-from-b" });
    side.signal("b", "candidate", { candidate: "cand-for-ignored-offer", sdpMid: "0", sdpMLineIndex: 0 });
    await settle();
    assert.deepEqual(side.sentSignals(), [["b", "offer"]], "no answer to the colliding offer");
    assert.ok(!pc.log.some((entry) => entry.startsWith("remote offer")), pc.log.join(", "));
    assert.equal(pc.signalingState, "have-local-offer");

    side.signal("b", "answer", { type: "answer", sdp: "answer-from-b" });
    await settle();
    assert.equal(pc.signalingState, "stable");
    assert.deepEqual(pc.remoteDescription, { type: "answer", sdp: "answer-from-b" });
  });

  test("the polite peer (larger conn id) waits, offers, and answers a colliding offer", async () => {
    const side = await callIn("b", ["a"]);
    await side.call.start();
    await settle();
    const [pc] = side.connections;
    assert.deepEqual(side.sentSignals(), [], "waits before offering");
    side.clock.advance(POLITE_OFFER_DELAY_MS);
    await settle();
    assert.deepEqual(side.sentSignals(), [["a", "offer"]]);

    side.signal("a", "offer", { type: "offer", sdp: "offer-from-a" });
    await settle();
    assert.deepEqual(side.sentSignals(), [["a", "offer"], ["a", "answer"]]);
    assert.deepEqual(pc.log, ["offer", "rollback", "remote offer offer-from-a", "answer"]);
    assert.equal(pc.signalingState, "stable");
  });

  test("the polite peer skips its own offer if it answered one while waiting", async () => {
    const side = await callIn("b", ["a"]);
    await side.call.start();
    await settle();
    side.signal("a", "offer", { type: "offer", sdp: "offer-from-a" });
    await settle();
    assert.deepEqual(side.sentSignals(), [["a", "answer"]]);
    side.clock.advance(POLITE_OFFER_DELAY_MS);
    await settle();
    assert.deepEqual(side.sentSignals(), [["a", "answer"]], "no offer after the wait");
    assert.deepEqual(side.connections[0].log, ["remote offer offer-from-a", "answer"]);
  });

  // Whether the polite delay ends before the impolite offer reaches the
  // polite peer (offers cross), or while that offer is being set.
  for (const politeOffersFirst of [true, false]) {
    test(`two peers starting at once settle on the impolite offer (${politeOffersFirst ? "offers cross" : "delay ends while answering"})`, async () => {
      const ann = await callIn("a", ["b"]);
      const bob = await callIn("b", ["a"]);
      const relayed = new Map([[ann, 0], [bob, 0]]);
      /** Delivers every signal not yet delivered, both ways. */
      const relay = () => {
        for (const [from, to] of [[ann, bob], [bob, ann]]) {
          const frames = from.socket.frames("signal");
          for (const f of frames.slice(relayed.get(from))) to.signal(from.client.connId, f.kind, f.data);
          relayed.set(from, frames.length);
        }
      };
      const tick = () => {
        ann.clock.advance(POLITE_OFFER_DELAY_MS);
        bob.clock.advance(POLITE_OFFER_DELAY_MS);
      };
      await Promise.all([ann.call.start(), bob.call.start()]);
      for (let round = 0; round < 4; round++) {
        await settle();
        if (politeOffersFirst) {
          tick();
          await settle();
          relay();
        } else {
          relay();
          tick();
        }
      }
      await settle();
      const [annPc] = ann.connections;
      const [bobPc] = bob.connections;
      assert.equal(annPc.signalingState, "stable");
      assert.equal(bobPc.signalingState, "stable");
      // Ann (impolite) offered and Bob answered: each holds the other's description.
      assert.equal(annPc.localDescription.type, "offer");
      assert.equal(bobPc.remoteDescription.sdp, annPc.localDescription.sdp);
      assert.equal(annPc.remoteDescription.sdp, bobPc.localDescription.sdp);
      assert.deepEqual(ann.sentSignals(), [["b", "offer"]]);
      assert.deepEqual(bob.sentSignals(), politeOffersFirst ? [["a", "offer"], ["a", "answer"]] : [["a", "answer"]]);
      assert.deepEqual([...ann.of("warning"), ...bob.of("warning")], []);
    });
  }
});

describe("failures", () => {
  test("an offer that cannot be made is a warning, not a crash", async () => {
    const rtc = fakeRTCPeerConnection();
    class Failing extends rtc.FakeRTCPeerConnection {
      setLocalDescription() {
        return Promise.reject(new Error("no codecs"));
      }
    }
    const side = await callIn("a", ["b"], { rtc: { FakeRTCPeerConnection: Failing, connections: rtc.connections } });
    await side.call.start();
    await settle();
    assert.deepEqual(side.sentSignals(), []);
    const [warning] = side.of("warning");
    assert.equal(warning.code, "offer_failed");
    assert.equal(warning.connId, "b");
    assert.match(warning.message, /no codecs/);
    assert.equal(side.call.state, "active");
  });
});

describe("before the call starts", () => {
  test("an incoming offer starts the call, and signals that came meanwhile are applied in order", async () => {
    const media = deferred();
    const stream = fakeStream();
    const side = await callIn("b", ["a"], { media: () => media.promise });
    assert.equal(side.call.state, "idle");

    side.signal("a", "offer", { type: "offer", sdp: "offer-from-a" });
    side.signal("a", "candidate", { candidate: "c1", sdpMid: "0", sdpMLineIndex: 0 });
    await settle();
    side.signal("a", "candidate", { candidate: "c2", sdpMid: "0", sdpMLineIndex: 0 });
    await settle();
    assert.equal(side.call.state, "starting");
    assert.equal(side.connections.length, 0, "nothing is negotiated before there is media");

    media.resolve(stream);
    await settle();
    assert.equal(side.call.state, "active");
    assert.equal(side.call.localStream, stream);
    assert.deepEqual(side.events.filter((e) => e.type === "start").map((e) => e.detail.stream), [stream]);
    const [pc] = side.connections;
    assert.deepEqual(pc.tracks.map((t) => t.track), [stream.track]);
    assert.deepEqual(pc.log, ["remote offer offer-from-a", "answer"]);
    assert.deepEqual(pc.candidates.map((c) => c.candidate), ["c1", "c2"]);
    assert.deepEqual(side.sentSignals(), [["a", "answer"]]);
  });

  test("only an offer starts the call; start() twice is one start", async () => {
    const media = deferred();
    const side = await callIn("a", ["b"], { media: () => media.promise });
    side.signal("b", "candidate", { candidate: "stray", sdpMid: "0", sdpMLineIndex: 0 });
    side.signal("b", "answer", { type: "answer", sdp: "stray" });
    await settle();
    assert.equal(side.call.state, "idle");
    assert.equal(side.connections.length, 0);
    const started = side.call.start();
    assert.equal(side.call.start(), started);
    assert.equal(side.call.state, "starting");
    media.resolve(fakeStream());
    await started;
    assert.equal(side.call.state, "active");
    assert.equal(side.connections.length, 1);
    // The stray signals fail once applied, each with a warning.
    await settle();
    assert.deepEqual(
      side.of("warning").map(({ code, connId, kind }) => ({ code, connId, kind })),
      [
        { code: "signal_failed", connId: "b", kind: "candidate" },
        { code: "signal_failed", connId: "b", kind: "answer" },
      ],
    );
    assert.ok(side.of("warning").every((w) => w.error instanceof Error && w.message.includes(w.error.message)));
  });

  test("a bye or a leave forgets what that member sent", async () => {
    const media = deferred();
    const side = await callIn("c", ["a", "b"], { media: () => media.promise });
    side.signal("a", "offer", { type: "offer", sdp: "offer-from-a" });
    side.signal("b", "offer", { type: "offer", sdp: "offer-from-b" });
    side.signal("a", "bye", {});
    side.socket.receive({ type: "presence", room: ROOM, event: "leave", member: member("b") });
    media.resolve(fakeStream());
    await settle();
    // Only a is still a member; it said bye, so its offer is not answered.
    assert.equal(side.connections.length, 1);
    assert.ok(!side.connections[0].log.some((entry) => entry.startsWith("remote")));
    assert.ok(!side.sentSignals().some(([, kind]) => kind === "answer"));
  });

  test("signals of another room are not the call's", async () => {
    const side = await callIn("b", ["a"]);
    side.signal("a", "offer", { type: "offer", sdp: "x" }, "elsewhere");
    await settle();
    assert.equal(side.call.state, "idle");
  });

  test("when the media cannot be had, an answering call reports it and is idle again", async () => {
    let fail = true;
    const side = await callIn("b", ["a"], {
      media: async () => {
        if (fail) throw new Error("camera denied");
        return fakeStream();
      },
    });
    side.signal("a", "offer", { type: "offer", sdp: "offer-from-a" });
    await settle();
    const errors = side.events.filter((e) => e.type === "error");
    assert.equal(errors.length, 1);
    assert.match(errors[0].detail.error.message, /camera denied/);
    assert.equal(side.call.state, "idle");

    fail = false;
    await side.call.start();
    await settle();
    assert.equal(side.call.state, "active");
    assert.deepEqual(side.sentSignals(), [["a", "answer"]], "the kept offer is answered");
  });
});

describe("stop", () => {
  test("says bye to every peer, cancels the polite delay and ignores later signals", async () => {
    const side = await callIn("z", ["a", "b"]);
    await side.call.start();
    await settle();
    assert.equal(side.clock.pending, 2, "one polite delay per peer");
    side.call.stop();
    assert.equal(side.clock.pending, 0);
    assert.equal(side.call.state, "stopped");
    assert.deepEqual(side.sentSignals(), [["a", "bye"], ["b", "bye"]]);
    assert.deepEqual(side.connections.map((pc) => pc.signalingState), ["closed", "closed"]);
    assert.deepEqual(side.events.filter((e) => e.type === "hangup").map((e) => e.detail.connId), ["a", "b"]);

    side.signal("a", "offer", { type: "offer", sdp: "late" });
    await settle();
    assert.equal(side.connections.length, 2);
    await assert.rejects(side.call.start());
  });

  test("stops listening to the client", async () => {
    const { client } = await callIn("a", ["b"]);
    const listening = watchListeners(client);
    const call = new MeshCall(client, ROOM, { media: fakeStream() });
    assert.ok(listening() > 0);
    call.stop();
    assert.equal(listening(), 0);
  });

  test("a member who leaves is hung up on", async () => {
    const side = await callIn("a", ["b"]);
    await side.call.start();
    await settle();
    side.socket.receive({ type: "presence", room: ROOM, event: "leave", member: member("b") });
    assert.equal(side.connections[0].signalingState, "closed");
    assert.deepEqual(side.events.filter((e) => e.type === "hangup").map((e) => e.detail.connId), ["b"]);
  });
});

describe("ICE", () => {
  const turn = (username) => ({ urls: ["turn:t:3478"], username, credential: `pw-${username}` });

  test("connections use the gateway's servers, and take renewed ones", async () => {
    const side = await callIn("a", ["b"], {
      ice: { servers: [turn("1:u-a")], expires_in: 3600 },
      callOptions: { iceTransportPolicy: "relay" },
    });
    await side.call.start();
    await settle();
    const [pc] = side.connections;
    assert.deepEqual(pc.config, { iceServers: [turn("1:u-a")], iceTransportPolicy: "relay" });

    side.socket.receive({ type: "ice", servers: [turn("2:u-a")], expires_in: 3600 });
    assert.deepEqual(pc.config, { iceServers: [turn("2:u-a")], iceTransportPolicy: "relay" });
  });

  test("fixed servers stay fixed", async () => {
    const fixed = [{ urls: ["stun:mine:3478"] }];
    const side = await callIn("a", ["b"], {
      ice: { servers: [turn("1:u-a")], expires_in: 3600 },
      callOptions: { iceServers: fixed },
    });
    await side.call.start();
    await settle();
    const [pc] = side.connections;
    side.socket.receive({ type: "ice", servers: [turn("2:u-a")], expires_in: 3600 });
    assert.deepEqual(pc.config.iceServers, fixed);
    assert.ok(!pc.log.includes("configuration"));
  });

  test("a failed connection restarts ICE", async () => {
    const side = await callIn("a", ["b"]);
    await side.call.start();
    await settle();
    const [pc] = side.connections;
    pc.connectionState = "disconnected";
    pc.onconnectionstatechange();
    assert.ok(!pc.log.includes("restart ice"), "a disconnection may heal by itself");
    pc.connectionState = "failed";
    pc.onconnectionstatechange();
    assert.ok(pc.log.includes("restart ice"));
    assert.deepEqual(side.events.filter((e) => e.type === "peerstate").map((e) => e.detail.state), ["disconnected", "failed"]);
  });
});

describe("microphone and camera", () => {
  function stream() {
    const tracks = ["audio", "video"].map((kind) => ({ kind, enabled: true, stop() {} }));
    return { getTracks: () => tracks, tracks };
  }

  test("setMedia disables the tracks and tells every peer; later peers are told when they connect", async () => {
    const media = stream();
    const side = await callIn("a", ["b"], { media });
    await side.call.start();
    await settle();
    side.call.setMedia({ audio: false });
    assert.deepEqual(media.tracks.map((t) => [t.kind, t.enabled]), [["audio", false], ["video", true]]);
    assert.deepEqual(side.call.media, { audio: false, video: true });
    const media_signals = () => side.socket.frames("signal").filter((f) => f.kind === "media").map((f) => [f.to, f.data]);
    assert.deepEqual(media_signals(), [["b", { audio: false, video: true }]]);

    // c arrives and offers: the connection to it starts with the state.
    side.socket.receive({ type: "presence", room: ROOM, event: "join", member: member("c") });
    side.signal("c", "offer", { type: "offer", sdp: "offer-from-c" });
    await settle();
    assert.deepEqual(media_signals(), [["b", { audio: false, video: true }], ["c", { audio: false, video: true }]]);
  });

  test("set before the call starts, it applies to the stream when it comes", async () => {
    const media = stream();
    const side = await callIn("a", ["b"], { media });
    side.call.setMedia({ video: false });
    await side.call.start();
    await settle();
    assert.deepEqual(media.tracks.map((t) => t.enabled), [true, false]);
  });

  test("a peer's media signal is an event, even before the call starts", async () => {
    const side = await callIn("a", ["b"]);
    const seen = [];
    side.call.addEventListener("media", ({ detail }) => seen.push(detail));
    side.signal("b", "media", { audio: false, video: false });
    await settle();
    assert.deepEqual(seen, [{ connId: "b", audio: false, video: false }]);
    assert.equal(side.call.state, "idle", "it does not start the call");
  });
});
