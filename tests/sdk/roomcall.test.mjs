// RoomCall on a real CavloClient over a FakeWebSocket, with a fake
// RTCPeerConnection and a FakeClock for its waits.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { CavloClient, RoomCall } from "../../web/cavlo.js";
import { RoomCall as RoomCallModule } from "../../web/roomcall.js";
import { FakeClock, NO_ICE, fakeRTCPeerConnection, fakeStream, fakeWebSocket, serverFrame, settle, watchListeners } from "./fakes.mjs";

const ROOM = "call-room";

function member(connId) {
  return { conn_id: connId, user: { id: `u-${connId}`, name: connId.toUpperCase() } };
}

/**
 * A client welcomed as "me" with a media service (and `ice`), in ROOM with
 * "bob", and a RoomCall on it, with `callOptions` besides its fakes.
 */
async function roomCall({ media = fakeStream(), ice = NO_ICE, callOptions = {} } = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const clock = new FakeClock();
  const rtc = fakeRTCPeerConnection();
  const client = new CavloClient({ urls: ["ws://gw/ws"], token: "t", WebSocket: FakeWebSocket, timers: clock });
  client.connect();
  client.join(ROOM);
  await settle();
  const socket = sockets[0];
  socket.accept();
  socket.receive(serverFrame("welcome", { conn_id: "me", user: member("me").user, ice, media: true }));
  socket.receive(serverFrame("joined", { room: ROOM, members: [member("me"), member("bob")], history: [], last_seq: 0 }));
  const call = new RoomCall(client, ROOM, { media, RTCPeerConnection: rtc.FakeRTCPeerConnection, timers: clock, ...callOptions });
  const events = [];
  for (const type of ["start", "stream", "peerstate", "hangup", "media", "speaker", "renegotiate", "error", "warning"]) {
    call.addEventListener(type, ({ detail }) => events.push({ type, detail }));
  }
  const of = (type) => events.filter((e) => e.type === type).map((e) => e.detail);
  return { client, socket, call, clock, connections: rtc.connections, of };
}

describe("RoomCall", () => {
  test("cavlo.js re-exports it, and the client says whether a media service runs", async () => {
    assert.equal(RoomCall, RoomCallModule);
    const { client } = await roomCall();
    assert.equal(client.mediaService, true);
  });

  test("start sends the offer in call_join, sending only, and applies the node's answer", async () => {
    const { socket, call, connections } = await roomCall();
    const started = call.start();
    await settle();
    const [pc] = connections;
    assert.deepEqual(pc.tracks.map((t) => t.direction), ["sendonly"]);
    assert.deepEqual(pc.tracks[0].sendEncodings.map((e) => e.rid), ["l", "m", "h"], "video in three layers, smallest first");
    assert.equal(pc.channel.label, "cavlo");
    assert.deepEqual(socket.frames("call_join"), [{ type: "call_join", room: ROOM, sdp: pc.localDescription.sdp }]);
    socket.receive(serverFrame("call_answer", { room: ROOM, sdp: "node-answer" }));
    await started;
    await settle();
    assert.equal(pc.remoteDescription.sdp, "node-answer");
    assert.equal(call.state, "active");
  });

  test("the node's offers on the data channel are answered there", async () => {
    const { socket, call, connections } = await roomCall();
    call.start();
    await settle();
    socket.receive(serverFrame("call_answer", { room: ROOM, sdp: "node-answer" }));
    await settle();
    const [pc] = connections;
    pc.channel.onmessage({ data: JSON.stringify({ type: "offer", sdp: "node-offer" }) });
    await settle();
    assert.equal(pc.remoteDescription.sdp, "node-offer");
    assert.deepEqual(pc.channel.sent, [{ type: "answer", sdp: pc.localDescription.sdp }]);
  });

  test("a participant's tracks arrive under its connection id; leaving hangs it up", async () => {
    const { socket, call, connections, of } = await roomCall();
    call.start();
    await settle();
    const [pc] = connections;
    const stream = { id: "bob", getTracks: () => [] };
    pc.ontrack({ track: {}, streams: [stream] });
    assert.deepEqual(of("stream"), [{ connId: "bob", stream }]);
    assert.deepEqual(call.participants, ["bob"]);
    socket.receive(serverFrame("presence", { room: ROOM, event: "leave", member: member("bob") }));
    assert.deepEqual(of("hangup"), [{ connId: "bob" }]);
  });

  test("call_moved closes the connection and joins again with a fresh offer", async () => {
    const { socket, call, connections, of } = await roomCall();
    call.start();
    await settle();
    socket.receive(serverFrame("call_answer", { room: ROOM, sdp: "node-answer" }));
    await settle();
    socket.receive(serverFrame("call_moved", { room: ROOM }));
    await settle();
    assert.equal(connections.length, 2);
    assert.equal(connections[0].signalingState, "closed");
    assert.equal(socket.frames("call_join").length, 2);
    assert.equal(socket.frames("call_join")[1].sdp, connections[1].localDescription.sdp);
    assert.deepEqual(of("renegotiate"), [{ reason: "moved" }]);
  });

  test("unavailable is retried after a wait; forbidden is an error; another request's refusal is not the join's", async () => {
    const { socket, call, clock, of } = await roomCall();
    call.start();
    await settle();
    // Another request's refusal in the room is not the join's.
    socket.receive(serverFrame("error", { code: "forbidden", message: "no signals", room: ROOM, request: "signal" }));
    await settle();
    assert.deepEqual(of("error"), []);
    socket.receive(serverFrame("error", { code: "unavailable", message: "no node", room: ROOM, request: "call_join" }));
    await settle();
    assert.equal(socket.frames("call_join").length, 1);
    clock.advance(500);
    await settle();
    assert.equal(socket.frames("call_join").length, 2, "joined again after 500 ms");
    socket.receive(serverFrame("error", { code: "forbidden", message: "viewer", room: ROOM, request: "call_join" }));
    await settle();
    assert.match(String(of("error")[0].error), /forbidden/);
  });

  test("a viewer joins with no media; stop hangs up", async () => {
    const { socket, call, connections } = await roomCall({ media: null });
    call.start();
    await settle();
    assert.deepEqual(connections[0].tracks, []);
    call.stop();
    assert.deepEqual(socket.frames("call_leave"), [{ type: "call_leave", room: ROOM }]);
    assert.equal(connections[0].signalingState, "closed");
  });

  test("stop stops listening to the client", async () => {
    const { client } = await roomCall();
    const listening = watchListeners(client);
    const call = new RoomCall(client, ROOM, { media: null });
    assert.ok(listening() > 0);
    call.stop();
    assert.equal(listening(), 0);
  });

  test("setQuality asks the node on the data channel, and again on a new connection", async () => {
    const { socket, call, connections } = await roomCall();
    call.start();
    await settle();
    call.setQuality("bob", "low");
    assert.deepEqual(connections[0].channel.sent, [], "not before the channel is open");
    connections[0].channel.readyState = "open";
    connections[0].channel.onopen();
    assert.deepEqual(connections[0].channel.sent, [{ type: "quality", conn: "bob", quality: "low" }]);
    socket.receive(serverFrame("call_moved", { room: ROOM }));
    await settle();
    connections[1].channel.readyState = "open";
    connections[1].channel.onopen();
    assert.deepEqual(connections[1].channel.sent, [{ type: "quality", conn: "bob", quality: "low" }]);
    call.setQuality("bob", "high");
    assert.deepEqual(connections[1].channel.sent.at(-1), { type: "quality", conn: "bob", quality: "high" });
  });

  test("the node's speaker message is a speaker event", async () => {
    const { call, connections, of } = await roomCall();
    call.start();
    await settle();
    connections[0].channel.onmessage({ data: JSON.stringify({ type: "speaker", conn: "bob" }) });
    await settle();
    assert.deepEqual(of("speaker"), [{ connId: "bob" }]);
  });
});

describe("RoomCall's ICE", () => {
  const turn = (username) => ({ urls: ["turn:t:3478"], username, credential: `pw-${username}` });

  test("the connection uses the gateway's servers, and takes renewed ones", async () => {
    const { socket, call, connections } = await roomCall({
      ice: { servers: [turn("1:u-me")], expires_in: 3600 },
      callOptions: { iceTransportPolicy: "relay" },
    });
    call.start();
    await settle();
    const [pc] = connections;
    assert.deepEqual(pc.config, { iceServers: [turn("1:u-me")], iceTransportPolicy: "relay" });
    socket.receive(serverFrame("ice", { servers: [turn("2:u-me")], expires_in: 3600 }));
    assert.deepEqual(pc.config, { iceServers: [turn("2:u-me")], iceTransportPolicy: "relay" });
  });

  test("fixed servers stay fixed", async () => {
    const fixed = [{ urls: ["stun:mine:3478"] }];
    const { socket, call, connections } = await roomCall({
      ice: { servers: [turn("1:u-me")], expires_in: 3600 },
      callOptions: { iceServers: fixed },
    });
    call.start();
    await settle();
    const [pc] = connections;
    assert.deepEqual(pc.config, { iceServers: fixed, iceTransportPolicy: "all" });
    socket.receive(serverFrame("ice", { servers: [turn("2:u-me")], expires_in: 3600 }));
    assert.deepEqual(pc.config.iceServers, fixed);
    assert.ok(!pc.log.includes("configuration"));
  });
});

describe("RoomCall's microphone and camera", () => {
  function stream() {
    const tracks = ["audio", "video"].map((kind) => ({ kind, enabled: true, stop() {} }));
    return { getTracks: () => tracks, tracks };
  }
  const mediaSignals = (socket) => socket.frames("signal").filter((f) => f.kind === "media").map((f) => [f.to, f.data]);

  test("setMedia disables the tracks and tells the room's other members; arriving participants are told", async () => {
    const media = stream();
    const { socket, call, connections } = await roomCall({ media });
    call.setMedia({ video: false });
    call.start();
    await settle();
    assert.deepEqual(media.tracks.map((t) => [t.kind, t.enabled]), [["audio", true], ["video", false]], "set before the start, applied at it");
    assert.deepEqual(mediaSignals(socket), [["bob", { audio: true, video: false }]], "bob, not this side");
    call.setMedia({ audio: false });
    assert.deepEqual(media.tracks.map((t) => t.enabled), [false, false]);
    assert.deepEqual(call.media, { audio: false, video: false });
    assert.deepEqual(mediaSignals(socket).at(-1), ["bob", { audio: false, video: false }]);

    const before = mediaSignals(socket).length;
    connections[0].ontrack({ track: {}, streams: [{ id: "carol", getTracks: () => [] }] });
    assert.deepEqual(mediaSignals(socket).slice(before), [["carol", { audio: false, video: false }]]);
  });

  test("a participant arriving while all is on is not told", async () => {
    const { socket, call, connections } = await roomCall();
    call.start();
    await settle();
    connections[0].ontrack({ track: {}, streams: [{ id: "bob", getTracks: () => [] }] });
    assert.deepEqual(mediaSignals(socket), []);
  });

  test("a member's media signal is an event until the call stops", async () => {
    const { socket, call, connections, of } = await roomCall();
    const media = (from) => serverFrame("signal", { room: ROOM, from, kind: "media", data: { audio: false, video: true } });
    socket.receive(media("bob"));
    assert.deepEqual(of("media"), [{ connId: "bob", audio: false, video: true }]);
    assert.equal(call.state, "idle", "it does not start the call");
    call.start();
    await settle();
    call.stop();
    socket.receive(media("bob"));
    socket.receive(serverFrame("call_moved", { room: ROOM }));
    socket.receive(serverFrame("ice", { servers: [{ urls: ["stun:new:3478"] }], expires_in: 3600 }));
    await settle();
    assert.equal(of("media").length, 1);
    assert.equal(connections.length, 1, "no new connection after stop");
    assert.ok(!connections[0].log.includes("configuration"));
  });
});
