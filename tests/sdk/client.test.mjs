// CavloClient against a fake gateway: the test plays the server's side of a
// FakeWebSocket and moves a FakeClock by hand, so nothing here sleeps.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { describe, test } from "node:test";

import { CavloClient, CavloError, MeshCall } from "../../web/cavlo.js";
import { MeshCall as MeshCallModule } from "../../web/meshcall.js";
import { FakeClock, NO_ICE, fakeWebSocket, serverFrame, settle } from "./fakes.mjs";

const USER = { id: "u1", name: "Ann" };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function welcome(connId = "c1", expiresIn = 3600) {
  return serverFrame("welcome", { conn_id: connId, user: USER, expires_in: expiresIn, ice: NO_ICE });
}

/** A chat message from Bob (c9). */
function chat(room, seq, text = `message ${seq}`) {
  return serverFrame("chat", { room, seq, id: `other-${seq}`, text, ts: 1764115200000 + seq });
}

/** A `joined` frame; `history` may hold chat frames: its entries are their messages. */
function joined(room, { history = [], lastSeq = 0, members = [] } = {}) {
  const messages = history.map(({ type: _chat, ...message }) => message);
  return serverFrame("joined", { room, members, history: messages, last_seq: lastSeq, truncated: false });
}

/** A client with fakes injected, not yet connected. */
function makeClient(options = {}) {
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const clock = new FakeClock();
  const client = new CavloClient({
    urls: ["ws://gw1/ws", "ws://gw2/ws"],
    token: "t0",
    WebSocket: FakeWebSocket,
    timers: clock,
    ...options,
  });
  const events = [];
  for (const type of ["state", "welcome", "joined", "left", "chat", "ack", "presence", "signal", "ice", "error", "warning"]) {
    client.addEventListener(type, ({ detail }) => events.push({ type, detail }));
  }
  const of = (type) => events.filter((e) => e.type === type).map((e) => e.detail);
  return { client, sockets, clock, events, of };
}

/** Lets the client open its next socket, and welcomes it. */
async function welcomeNext(sockets, connId) {
  await settle();
  const socket = sockets.at(-1);
  socket.accept();
  socket.receive(welcome(connId));
  return socket;
}

/** A client that is connected and welcomed. */
async function connected(options) {
  const made = makeClient(options);
  made.client.connect();
  const socket = await welcomeNext(made.sockets, "c1");
  return { ...made, socket };
}

/**
 * A client with a token function answering t1, t2, …, welcomed with a token
 * valid for `expiresIn` seconds.
 */
async function welcomedWithTokenFunction(expiresIn) {
  let calls = 0;
  const made = makeClient({ token: async () => `t${++calls}` });
  made.client.connect();
  await settle();
  const socket = made.sockets.at(-1);
  socket.accept();
  socket.receive(welcome("c1", expiresIn));
  return { ...made, socket };
}

describe("connecting", () => {
  test("authenticates first, is open after welcome, and exposes who it is", async () => {
    const { client, socket, of } = await connected();
    assert.deepEqual(socket.sent[0], { type: "auth", token: "t0" });
    assert.equal(socket.url, "ws://gw1/ws");
    assert.equal(client.state, "open");
    assert.equal(client.connId, "c1");
    assert.deepEqual(client.user, USER);
    assert.deepEqual(of("state").map((d) => d.state), ["connecting", "open"]);
    assert.equal(of("welcome").length, 1);
  });

  test("asks a token function before every connect", async () => {
    let calls = 0;
    const { client, sockets, clock } = makeClient({ token: async () => `t${++calls}`, random: () => 0 });
    client.connect();
    const first = await welcomeNext(sockets, "c1");
    first.drop(1006);
    clock.advance(0);
    const second = await welcomeNext(sockets, "c2");
    assert.equal(first.sent[0].token, "t1");
    assert.equal(second.sent[0].token, "t2");
  });

  test("refreshes a token function's token before it expires, again after each refresh", async () => {
    const { client, socket, clock } = await welcomedWithTokenFunction(100);
    // 100 s left: refreshed when a fifth of that (20 s) remains.
    clock.advance(79_999);
    await settle();
    assert.equal(socket.sent.filter((f) => f.type === "refresh").length, 0);
    clock.advance(1);
    await settle();
    assert.deepEqual(socket.sent.at(-1), { type: "refresh", token: "t2" });
    // 1,000 s left: a minute before.
    socket.receive({ type: "refreshed", expires_in: 1000 });
    clock.advance(939_999);
    await settle();
    assert.equal(socket.sent.filter((f) => f.type === "refresh").length, 1);
    clock.advance(1);
    await settle();
    assert.deepEqual(socket.sent.at(-1), { type: "refresh", token: "t3" });
    // Dropped: the pending refresh goes with the socket.
    socket.receive({ type: "refreshed", expires_in: 100 });
    client.close();
    clock.advance(100_000);
    await settle();
    assert.equal(socket.sent.filter((f) => f.type === "refresh").length, 2);
  });

  test("after a reconnect the refresh follows the new socket's token, not the old one's", async () => {
    let calls = 0;
    const { sockets, clock, client } = makeClient({ token: async () => `t${++calls}`, random: () => 0 });
    client.connect();
    await settle();
    const first = sockets.at(-1);
    first.accept();
    first.receive(welcome("c1", 100));
    // Dropped 50 s in; the new connection's token has 1,000 s.
    clock.advance(50_000);
    first.drop(1006);
    clock.advance(0);
    await settle();
    const second = sockets.at(-1);
    second.accept();
    second.receive(welcome("c2", 1000));
    // The old schedule (at 80 s) is gone: nothing at 100 s on either socket.
    clock.advance(50_000);
    await settle();
    assert.equal(first.sent.filter((f) => f.type === "refresh").length, 0);
    assert.equal(second.sent.filter((f) => f.type === "refresh").length, 0);
    // The new one is refreshed a minute before its end, on its own socket.
    clock.advance(890_000);
    await settle();
    assert.deepEqual(second.sent.filter((f) => f.type === "refresh"), [{ type: "refresh", token: "t3" }]);
    assert.equal(first.sent.filter((f) => f.type === "refresh").length, 0);
  });

  test("a token valid for a year is refreshed near its end, not at once", async () => {
    const { client, socket, clock } = await welcomedWithTokenFunction(365 * 24 * 3600);
    for (let day = 0; day < 364; day += 1) {
      clock.advance(24 * 3600 * 1000);
      await settle();
    }
    assert.equal(socket.sent.filter((f) => f.type === "refresh").length, 0);
    clock.advance(24 * 3600 * 1000);
    await settle();
    assert.deepEqual(socket.sent.at(-1), { type: "refresh", token: "t2" });
  });

  test("a fixed token is never refreshed; its expiry (4105) reconnects", async () => {
    const { client, socket, sockets, clock } = await connected({ random: () => 0 });
    socket.receive({ type: "refreshed", expires_in: 1 });
    clock.advance(10_000);
    await settle();
    assert.equal(socket.sent.filter((f) => f.type === "refresh").length, 0);
    socket.drop(4105);
    clock.advance(0);
    await welcomeNext(sockets, "c2");
    assert.equal(client.state, "open");
  });

  test("keeps its state private: only getters, and they hand out copies", async () => {
    const { client, socket } = await connected();
    client.join("lobby");
    socket.receive(joined("lobby", { members: [{ conn_id: "c1", user: USER }] }));
    client.send("lobby", "hi");
    assert.deepEqual(Object.keys(client), []);
    client.outbox.clear();
    client.rooms.clear();
    client.membersOf("lobby").clear();
    assert.equal(client.outbox.size, 1);
    assert.deepEqual([...client.rooms.keys()], ["lobby"]);
    assert.equal(client.membersOf("lobby").size, 1);
    assert.throws(() => {
      client.state = "open";
    }, TypeError);
  });
});

describe("reconnecting", () => {
  const BASE = 100;
  const MAX = 1000;

  /** Fails `attempts` connects in a row and returns the backoff delays asked for. */
  async function failRepeatedly(random, attempts) {
    const { client, sockets, clock } = makeClient({ baseDelay: BASE, maxDelay: MAX, random });
    client.connect();
    for (let i = 0; i < attempts; i++) {
      await settle();
      assert.equal(sockets.length, i + 1, `attempt ${i} opened a socket`);
      sockets[i].drop(1006);
      assert.equal(clock.pending, 1, `attempt ${i} scheduled one retry`);
      clock.advance(clock.delays.at(-1));
    }
    await settle();
    client.close();
    return { delays: clock.delays, urls: sockets.map((s) => s.url) };
  }

  const ceiling = (attempt) => Math.min(MAX, BASE * 2 ** attempt);

  for (const r of [0, 0.5, 0.999999]) {
    test(`backoff is random × min(maxDelay, baseDelay·2ⁿ), random = ${r}`, async () => {
      const { delays } = await failRepeatedly(() => r, 8);
      assert.deepEqual(
        delays,
        Array.from({ length: 8 }, (_, n) => r * ceiling(n)),
      );
    });
  }

  test("with Math.random every delay stays within its jittered bounds", async () => {
    const { delays } = await failRepeatedly(Math.random, 12);
    delays.forEach((delay, n) => {
      assert.ok(delay >= 0 && delay < ceiling(n), `attempt ${n}: ${delay} not in [0, ${ceiling(n)})`);
    });
    assert.ok(delays.slice(4).every((delay) => delay < MAX), "capped at maxDelay");
  });

  test("a draining gateway's client moves to the next gateway when told, and resumes", async () => {
    const { client, socket, sockets, clock, of } = await connected();
    client.join("lobby");
    socket.receive(joined("lobby", { lastSeq: 7 }));
    socket.receive({ type: "draining", reconnect_in_ms: 2500 });
    // Until then the connection works as before.
    clock.advance(2499);
    await settle();
    assert.equal(sockets.length, 1);
    assert.equal(socket.closedWith, null);
    clock.advance(1);
    await settle();
    assert.equal(socket.closedWith, 1000, "the old connection is closed by the client");
    assert.equal(sockets.length, 2);
    const next = sockets[1];
    assert.equal(next.url, "ws://gw2/ws", "to the next gateway, at once");
    next.accept();
    next.receive(welcome("c2"));
    assert.deepEqual(next.sent.find((f) => f.type === "join"), {
      type: "join",
      room: "lobby",
      since: 7,
      replaces: "c1",
    });
    assert.equal(client.state, "open");
    assert.equal(of("error").length, 0, "a move is not an error");
  });

  test("a draining notice is dropped with its connection", async () => {
    const { socket, sockets, clock } = await connected({ random: () => 0 });
    socket.receive({ type: "draining", reconnect_in_ms: 5000 });
    socket.drop(4101);
    clock.advance(0);
    const second = await welcomeNext(sockets, "c2");
    clock.advance(10_000);
    await settle();
    assert.equal(second.closedWith, null, "the old notice does not move the new connection");
    assert.equal(sockets.length, 2);
  });

  test("fails over to the next gateway on every attempt", async () => {
    const { urls } = await failRepeatedly(() => 0, 4);
    assert.deepEqual(urls, ["ws://gw1/ws", "ws://gw2/ws", "ws://gw1/ws", "ws://gw2/ws", "ws://gw1/ws"]);
  });

  test("a welcome resets the backoff", async () => {
    const { client, sockets, clock } = makeClient({ baseDelay: BASE, maxDelay: MAX, random: () => 0.999999 });
    client.connect();
    await settle();
    sockets[0].drop(1006);
    clock.advance(clock.delays.at(-1));
    await settle();
    sockets[1].drop(1006);
    clock.advance(clock.delays.at(-1));
    const third = await welcomeNext(sockets, "c3");
    third.drop(1006);
    assert.deepEqual(clock.delays, [0.999999 * 100, 0.999999 * 200, 0.999999 * 100]);
  });

  test("maxAttempts gives up with an error", async () => {
    const { client, sockets, clock, of } = makeClient({ maxAttempts: 2, random: () => 0 });
    client.connect();
    for (let i = 0; i < 3; i++) {
      await settle();
      sockets[i].drop(1006);
      clock.advance(0);
    }
    await settle();
    assert.equal(sockets.length, 3);
    assert.equal(clock.pending, 0);
    assert.equal(client.state, "closed");
    assert.equal(of("error").at(-1).code, "closed");
  });

  test("a failing token function is reported and retried", async () => {
    let fail = true;
    const { client, sockets, clock, of } = makeClient({
      token: async () => {
        if (fail) throw new Error("no token today");
        return "t1";
      },
      random: () => 0,
    });
    client.connect();
    await settle();
    assert.equal(sockets.length, 0);
    assert.equal(of("error")[0].code, "token_failed");
    assert.match(of("error")[0].message, /no token today/);
    fail = false;
    clock.advance(0);
    await welcomeNext(sockets, "c1");
    assert.equal(client.state, "open");
  });
});

describe("close codes", () => {
  const CASES = [
    { code: 4001, reconnects: false },
    { code: 4000, reconnects: false },
    { code: 4042, reconnects: false },
    { code: 4099, reconnects: false },
    { code: 4100, reconnects: true },
    { code: 4101, reconnects: true },
    { code: 4102, reconnects: true },
    { code: 4150, reconnects: true },
    { code: 4199, reconnects: true },
    { code: 1000, reconnects: true },
    { code: 1001, reconnects: true },
    { code: 1006, reconnects: true },
    { code: 1009, reconnects: true },
    { code: 1011, reconnects: true },
  ];

  for (const { code, reconnects } of CASES) {
    for (const tokenKind of ["string", "function"]) {
      // With a token function the first 4001 asks for a fresh token: below.
      if (code === 4001 && tokenKind === "function") continue;
      test(`${code} from the gateway ${reconnects ? "reconnects" : "is terminal"} (token ${tokenKind})`, async () => {
        const token = tokenKind === "string" ? "t0" : () => "t0";
        const { client, sockets, clock, of } = await connected({ token, random: () => 0.5 });
        sockets[0].drop(code, "bye");
        assert.equal(client.state, "closed");
        clock.advance(60_000);
        await settle();
        if (reconnects) {
          assert.equal(sockets.length, 2, `${code}: a new socket`);
          assert.equal(client.state, "connecting");
          assert.deepEqual(of("error"), []);
        } else {
          assert.equal(sockets.length, 1, `${code}: no new socket`);
          assert.equal(clock.pending, 0, `${code}: no timer left`);
          const [error] = of("error");
          assert.equal(error.code, "closed");
          assert.equal(error.closeCode, code);
          assert.equal(error.reason, "bye");
        }
      });
    }
  }

  test("with a token function, a 4001 gets a fresh token once; a second in a row is final", async () => {
    let calls = 0;
    const { client, sockets, clock, of } = await connected({ token: () => `t${++calls}`, random: () => 0 });
    sockets[0].drop(4001, "token refused");
    clock.advance(0);
    await settle();
    assert.equal(sockets.length, 2, "reconnected");
    sockets[1].accept();
    await settle();
    assert.deepEqual(sockets[1].sent[0], { type: "auth", token: "t2" }, "with a fresh token");
    assert.deepEqual(of("error"), []);
    sockets[1].drop(4001, "token refused");
    clock.advance(60_000);
    await settle();
    assert.equal(sockets.length, 2, "no third attempt");
    assert.equal(client.state, "closed");
    assert.equal(of("error")[0].closeCode, 4001);
  });

  test("a welcome in between makes the next 4001 a first one again", async () => {
    let calls = 0;
    const { sockets, clock } = await connected({ token: () => `t${++calls}`, random: () => 0 });
    for (const n of [1, 2, 3]) {
      sockets.at(-1).drop(4001);
      clock.advance(0);
      await welcomeNext(sockets, `c${n + 1}`);
    }
    assert.equal(sockets.length, 4, "each refusal after a welcome got its retry");
  });

  test("the client's own close does not reconnect", async () => {
    const { client, sockets, clock } = await connected();
    client.close();
    assert.equal(sockets[0].closedWith, 1000);
    await settle(); // the close event arrives
    clock.advance(60_000);
    await settle();
    assert.equal(sockets.length, 1);
    assert.equal(client.state, "closed");
  });

  test("a terminal close rejects every unacked send with code closed", async () => {
    const { client, sockets } = await connected();
    client.join("a");
    const pending = client.send("a", "hello");
    sockets[0].drop(4003, "too many invalid messages");
    await assert.rejects(pending, (err) => {
      assert.ok(err instanceof CavloError);
      assert.equal(err.code, "closed");
      assert.equal(err.id, pending.id);
      assert.equal(err.room, "a");
      return true;
    });
    assert.equal(client.outbox.size, 0);
  });

  test("connect after a terminal close starts over", async () => {
    const { client, sockets } = await connected();
    sockets[0].drop(4001);
    client.connect();
    await welcomeNext(sockets, "c2");
    assert.equal(client.state, "open");
    assert.equal(client.connId, "c2");
  });
});

describe("resuming", () => {
  test("rejoins each room with since = the highest seq seen, then resends the outbox", async () => {
    const { client, socket, sockets, clock } = await connected({ random: () => 0 });
    client.join("a");
    client.join("b");
    client.join("c");
    socket.receive(joined("a", { history: [chat("a", 3), chat("a", 4)], lastSeq: 4 }));
    socket.receive(chat("a", 7));
    socket.receive(chat("a", 6)); // older than what was seen: not a new watermark
    socket.receive(joined("b", { lastSeq: 9 }));
    // "c" is never answered: it has no seq yet.
    const { id } = client.send("a", "unacked");
    // Our own ack does not move the watermark: others' lower seqs may be in flight.
    const acked = client.send("a", "acked").id;
    socket.receive({ type: "ack", id: acked, room: "a", seq: 12 });

    socket.drop(1006);
    clock.advance(0);
    const next = await welcomeNext(sockets, "c2");
    assert.deepEqual(next.sent, [
      { type: "auth", token: "t0" },
      { type: "join", room: "a", since: 7, replaces: "c1" },
      { type: "join", room: "b", since: 9, replaces: "c1" },
      // Never admitted on c1: no seat to take over.
      { type: "join", room: "c" },
      { type: "chat", room: "a", id, text: "unacked" },
    ]);
    assert.deepEqual(client.rooms, new Map([["a", 7], ["b", 9], ["c", null]]));
  });

  test("after resuming, history seen before is not delivered again", async () => {
    const { client, socket, sockets, clock, of } = await connected({ random: () => 0 });
    client.join("a");
    socket.receive(joined("a", { history: [chat("a", 1), chat("a", 2)], lastSeq: 2 }));
    socket.drop(1006);
    clock.advance(0);
    const next = await welcomeNext(sockets, "c2");
    next.receive(joined("a", { history: [chat("a", 2), chat("a", 3)], lastSeq: 3 }));
    next.receive(chat("a", 3));
    next.receive(chat("a", 4));
    assert.deepEqual(of("chat").map((c) => c.seq), [1, 2, 3, 4]);
  });

  test("a left room is not rejoined and its unsent chat is dropped", async () => {
    const { client, socket, sockets, clock } = await connected({ random: () => 0 });
    client.join("a");
    client.join("b");
    client.send("a", "to a");
    const kept = client.send("b", "to b").id;
    client.leave("a");
    socket.drop(1006);
    clock.advance(0);
    const next = await welcomeNext(sockets, "c2");
    assert.deepEqual(next.sent.slice(1), [
      { type: "join", room: "b" },
      { type: "chat", room: "b", id: kept, text: "to b" },
    ]);
  });

  test("a rejoin takes over the seat of the connection last admitted there", async () => {
    const { client, socket, sockets, clock } = await connected({ random: () => 0 });
    client.join("a");
    socket.receive(joined("a", { lastSeq: 1 }));
    socket.drop(1006);
    clock.advance(0);
    // c2 drops before its rejoin is answered: c1 may still hold the seat.
    const second = await welcomeNext(sockets, "c2");
    second.drop(1006);
    clock.advance(0);
    const third = await welcomeNext(sockets, "c3");
    assert.deepEqual(third.sent[1], { type: "join", room: "a", since: 1, replaces: "c1" });
    third.receive(joined("a", { lastSeq: 1 }));
    third.drop(1006);
    clock.advance(0);
    const fourth = await welcomeNext(sockets, "c4");
    assert.deepEqual(fourth.sent[1], { type: "join", room: "a", since: 1, replaces: "c3" });
  });

  test("frames sent before the first welcome are sent after it, once", async () => {
    const { client, sockets } = makeClient();
    client.connect();
    client.join("a");
    const { id } = client.send("a", "early");
    const socket = await welcomeNext(sockets, "c1");
    assert.deepEqual(socket.sent.slice(1), [
      { type: "join", room: "a" },
      { type: "chat", room: "a", id, text: "early" },
    ]);
  });

  test("frames sent from a welcome listener follow the rejoins", async () => {
    const { client, sockets } = makeClient();
    client.join("a");
    client.addEventListener("welcome", () => client.join("b"));
    client.connect();
    const socket = await welcomeNext(sockets, "c1");
    assert.deepEqual(socket.sent.slice(1).map((f) => f.room), ["a", "b"]);
  });
});

describe("chat", () => {
  test("the ack carries the stored text when sanitizing changed it", async () => {
    const { client, socket, of } = await connected();
    client.join("a");
    const changed = client.send("a", "hello <b>bob</b>").id;
    const same = client.send("a", "plain").id;
    socket.receive({ type: "ack", id: changed, room: "a", seq: 12, text: "hello bob" });
    socket.receive({ type: "ack", id: same, room: "a", seq: 13 });
    assert.deepEqual(of("ack"), [
      { id: changed, room: "a", seq: 12, text: "hello bob" },
      { id: same, room: "a", seq: 13, text: "plain" },
    ]);
    assert.equal(client.outbox.size, 0);
  });

  test("a second ack for the same message is not emitted", async () => {
    const { client, socket, of } = await connected();
    client.join("a");
    const { id } = client.send("a", "once");
    socket.receive({ type: "ack", id, room: "a", seq: 1 });
    socket.receive({ type: "ack", id, room: "a", seq: 1 });
    assert.equal(of("ack").length, 1);
  });

  test("unavailable and rate_limited are resent after 1–3 s; other errors drop the message", async () => {
    const { client, socket, clock, of } = await connected({ random: () => 0.5 });
    client.join("a");
    const limited = client.send("a", "slow down").id;
    const invalid = client.send("a", "bad").id;
    socket.receive({ type: "error", code: "rate_limited", message: "slow down", id: limited, room: "a" });
    socket.receive({ type: "error", code: "invalid_message", message: "bad", id: invalid, room: "a" });
    assert.deepEqual([...client.outbox.keys()], [limited]);
    assert.deepEqual(of("error").map((e) => e.code), ["rate_limited", "invalid_message"]);
    const before = socket.frames("chat").length;
    clock.advance(1999);
    assert.equal(socket.frames("chat").length, before);
    clock.advance(1);
    assert.deepEqual(socket.frames("chat").at(-1), { type: "chat", room: "a", id: limited, text: "slow down" });
  });

  test("members follow joined and presence", async () => {
    const { client, socket } = await connected();
    const bob = { conn_id: "c2", user: { id: "u2", name: "Bob" } };
    const cid = { conn_id: "c3", user: { id: "u3", name: "Cid" } };
    client.join("a");
    socket.receive(joined("a", { members: [{ conn_id: "c1", user: USER }, bob] }));
    socket.receive({ type: "presence", room: "a", event: "join", member: cid });
    socket.receive({ type: "presence", room: "a", event: "leave", member: bob });
    assert.deepEqual([...client.membersOf("a").keys()], ["c1", "c3"]);
    assert.deepEqual(client.membersOf("nowhere"), new Map());
  });
});

describe("send's promise", () => {
  /** Whether `promise` has settled, once pending callbacks have run. */
  async function settled(promise) {
    let done = false;
    promise.then(
      () => (done = true),
      () => (done = true),
    );
    await settle();
    return done;
  }

  test("carries the message id at once and resolves with the ack", async () => {
    const { client, socket } = await connected();
    client.join("a");
    const sending = client.send("a", "hello <b>bob</b>");
    assert.ok(sending instanceof Promise);
    assert.match(sending.id, UUID);
    assert.deepEqual(socket.frames("chat"), [{ type: "chat", room: "a", id: sending.id, text: "hello <b>bob</b>" }]);
    assert.equal(await settled(sending), false, "pending until acked");
    socket.receive({ type: "ack", id: sending.id, room: "a", seq: 12, text: "hello bob" });
    assert.deepEqual(await sending, { id: sending.id, room: "a", seq: 12, text: "hello bob" });
  });

  test("resolves once across a reconnect, with the ack of the resent message", async () => {
    const { client, socket, sockets, clock } = await connected({ random: () => 0 });
    client.join("a");
    const sending = client.send("a", "across");
    socket.drop(1006);
    clock.advance(0);
    const next = await welcomeNext(sockets, "c2");
    assert.equal(next.frames("chat").at(-1).id, sending.id, "resent");
    // No seq: the original already left the backlog.
    next.receive({ type: "ack", id: sending.id, room: "a" });
    next.receive({ type: "ack", id: sending.id, room: "a", seq: 3 });
    assert.deepEqual(await sending, { id: sending.id, room: "a", text: "across" });
  });

  test("rejects with a CavloError when the server refuses the message for good", async () => {
    const { client, socket, of } = await connected();
    client.join("a");
    const refused = client.send("a", "x".repeat(20000));
    socket.receive({ type: "error", code: "too_large", message: "chat text too large", id: refused.id, room: "a" });
    await assert.rejects(refused, (err) => {
      assert.ok(err instanceof CavloError && err instanceof Error);
      assert.deepEqual(
        { name: err.name, code: err.code, message: err.message, id: err.id, room: err.room },
        { name: "CavloError", code: "too_large", message: "chat text too large", id: refused.id, room: "a" },
      );
      return true;
    });
    assert.deepEqual(of("error").map((e) => e.code), ["too_large"], "and the error event as before");
    assert.equal(client.outbox.size, 0);
  });

  test("stays pending through unavailable and rate_limited, which are resent", async () => {
    const { client, socket, clock } = await connected({ random: () => 0 });
    client.join("a");
    const sending = client.send("a", "later");
    for (const code of ["unavailable", "rate_limited"]) {
      socket.receive({ type: "error", code, message: code, id: sending.id, room: "a" });
      assert.equal(await settled(sending), false, code);
      clock.advance(1000);
    }
    assert.equal(socket.frames("chat").filter((f) => f.id === sending.id).length, 3, "sent, then resent twice");
    socket.receive({ type: "ack", id: sending.id, room: "a", seq: 7 });
    assert.equal((await sending).seq, 7);
  });

  test("rejects with code left when the room is left first", async () => {
    const { client } = await connected();
    client.join("a");
    client.join("b");
    const dropped = client.send("a", "gone");
    const kept = client.send("b", "kept");
    client.leave("a");
    await assert.rejects(dropped, { name: "CavloError", code: "left", id: dropped.id, room: "a" });
    assert.equal(await settled(kept), false);
  });

  test("an ignored refusal is not an unhandled rejection", async () => {
    const unhandled = [];
    const onUnhandled = (reason) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      const { client, socket } = await connected();
      client.join("a");
      const { id } = client.send("a", "ignored");
      socket.receive({ type: "error", code: "invalid_message", message: "bad", id, room: "a" });
      client.send("a", "left behind");
      client.leave("a");
      await settle();
      await new Promise((resolve) => setTimeout(resolve, 0));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });
});

describe("message ids", () => {
  test("come from crypto.randomUUID", async (t) => {
    let n = 0;
    t.mock.method(globalThis.crypto, "randomUUID", () => `00000000-0000-4000-8000-00000000000${++n}`);
    const { client, socket } = await connected();
    client.join("a");
    assert.equal(client.send("a", "one").id, "00000000-0000-4000-8000-000000000001");
    assert.equal(client.send("a", "two").id, "00000000-0000-4000-8000-000000000002");
    assert.deepEqual(socket.frames("chat").map((f) => f.id), [...client.outbox.keys()]);
  });

  test("are version-4 UUIDs where randomUUID is missing (pages not served securely)", async () => {
    Object.defineProperty(globalThis.crypto, "randomUUID", { value: undefined, configurable: true });
    try {
      const { client } = await connected();
      client.join("a");
      const ids = Array.from({ length: 100 }, () => client.send("a", "x").id);
      for (const id of ids) assert.match(id, UUID);
      assert.equal(new Set(ids).size, ids.length);
    } finally {
      delete globalThis.crypto.randomUUID;
    }
    assert.equal(typeof globalThis.crypto.randomUUID, "function", "restored");
  });
});

describe("event details", () => {
  const BOB = { conn_id: "c2", user: { id: "u2", name: "Bob" } };
  const CAMEL_BOB = { connId: "c2", user: { id: "u2", name: "Bob" } };
  const SERVERS = [{ urls: ["turn:t:3478"], username: "9:u1", credential: "pw" }];

  // Each server frame that becomes an event, and the detail it becomes:
  // camelCase keys at every depth, no `type`, a signal's `data` and ICE
  // servers as they were sent.
  const CASES = [
    {
      frame: {
        ...welcome("c1"),
        ice: { servers: SERVERS, expires_in: 3600 },
      },
      event: "welcome",
      detail: {
        connId: "c1",
        user: USER,
        gateway: "gw-1",
        limits: { maxFrameBytes: 131072, maxRooms: 16, historyLimit: 50 },
        expiresIn: 3600,
        ice: { servers: SERVERS, expiresIn: 3600 },
        media: false,
      },
    },
    {
      // Stored chat has no `type` on the wire.
      frame: joined("a", { members: [BOB], history: [{ ...chat("a", 4), type: undefined }], lastSeq: 4 }),
      event: "joined",
      detail: {
        room: "a",
        members: [CAMEL_BOB],
        history: [
          { room: "a", seq: 4, id: "other-4", from: { connId: "c9", user: { id: "u9", name: "Bob" } }, text: "message 4", ts: 1764115200004 },
        ],
        lastSeq: 4,
        truncated: false,
      },
    },
    {
      frame: chat("a", 5),
      event: "chat",
      detail: { room: "a", seq: 5, id: "other-5", from: { connId: "c9", user: { id: "u9", name: "Bob" } }, text: "message 5", ts: 1764115200005 },
    },
    {
      before: joined("a"),
      frame: { type: "presence", room: "a", event: "join", member: BOB },
      event: "presence",
      detail: { room: "a", event: "join", member: CAMEL_BOB },
    },
    {
      frame: { type: "signal", room: "a", from: "c2", user: BOB.user, kind: "offer", data: { type: "offer", sdp: "v=0", app_field: 1 } },
      event: "signal",
      detail: { room: "a", from: "c2", user: BOB.user, kind: "offer", data: { type: "offer", sdp: "v=0", app_field: 1 } },
    },
    {
      frame: { type: "ice", servers: SERVERS, expires_in: 60 },
      event: "ice",
      detail: { servers: SERVERS, expiresIn: 60 },
    },
    {
      frame: { type: "error", code: "not_in_room", message: "join first", room: "b" },
      event: "error",
      detail: { code: "not_in_room", message: "join first", room: "b" },
    },
    { frame: { type: "left", room: "a" }, event: "left", detail: { room: "a" } },
  ];

  for (const { before, frame, event, detail } of CASES) {
    test(`${event}: camelCase keys, no type`, async () => {
      const { client, sockets, of } = makeClient();
      client.join("a");
      client.connect();
      const socket = await welcomeNext(sockets, "c1");
      if (before) socket.receive(before);
      socket.receive(frame);
      assert.deepEqual(of(event).at(-1), detail);
    });
  }

  test("ack: camelCase, and the members of membersOf too", async () => {
    const { client, socket, of } = await connected();
    client.join("a");
    const { id } = client.send("a", "hi");
    socket.receive(joined("a", { members: [{ conn_id: "c1", user: USER }, BOB] }));
    socket.receive({ type: "ack", id, room: "a", seq: 1 });
    assert.deepEqual(of("ack"), [{ id, room: "a", seq: 1, text: "hi" }]);
    assert.deepEqual(client.membersOf("a").get("c2"), CAMEL_BOB);
  });

  test("no event of a whole session has a snake_case key, but in signal data and ICE servers", async () => {
    const { client, socket, sockets, clock, events } = await connected({ random: () => 0 });
    client.join("a");
    client.send("a", "x");
    for (const { before, frame } of CASES) {
      if (before) socket.receive(before);
      socket.receive(frame);
    }
    socket.receive({ type: "presence", room: "a", event: "leave", member: BOB });
    socket.receive({ type: "refreshed", expires_in: 100 });
    socket.receive({ type: "draining", reconnect_in_ms: 10 });
    socket.drop(4003, "too many invalid messages");
    clock.advance(100);
    assert.equal(sockets.length, 1);
    /** The snake_case keys in `value`, as paths. */
    const snake = (value, path = "") => {
      if (value === null || typeof value !== "object") return [];
      return Object.entries(value).flatMap(([key, v]) => [
        ...(key.includes("_") ? [`${path}.${key}`] : []),
        ...(key === "data" || key === "servers" ? [] : snake(v, `${path}.${key}`)),
      ]);
    };
    assert.ok(events.length > 10);
    assert.deepEqual(events.flatMap(({ type, detail }) => snake(detail, type)), []);
  });
});

describe("the library", () => {
  test("cavlo.js re-exports MeshCall from meshcall.js", () => {
    assert.equal(MeshCall, MeshCallModule);
  });

  test("never writes to the console: it has warning events instead", async (t) => {
    for (const file of ["cavlo.js", "meshcall.js", "roomcall.js", "callbase.js", "errors.js"]) {
      const source = await readFile(new URL(`../../web/${file}`, import.meta.url), "utf8");
      // `console.warn(`, `console["log"]`, … (but not the word in a comment).
      assert.doesNotMatch(source, /\bconsole\s*(\.\s*[A-Za-z_$]|\[)/, file);
    }
    const calls = [];
    for (const method of ["log", "info", "warn", "error", "debug", "trace"]) {
      t.mock.method(console, method, (...args) => calls.push([method, ...args]));
    }
    const { client, socket, of } = await connected();
    client.join("a");
    for (const data of ["{nope", "null", JSON.stringify({ type: "teleport" }), JSON.stringify({ type: "joined", room: "a" })]) {
      socket.receive(data);
    }
    assert.equal(of("warning").length, 4);
    assert.ok(new MeshCall(client, "a", { media: {} }));
    assert.deepEqual(calls, []);
  });
});

describe("malformed frames", () => {
  const CASES = [
    { name: "not JSON", data: "{nope", code: "bad_frame" },
    { name: "a number", data: "42", code: "bad_frame" },
    { name: "null", data: "null", code: "bad_frame" },
    { name: "an unknown type", data: JSON.stringify({ type: "teleport", room: "a" }), code: "unknown_frame" },
    { name: "no type", data: JSON.stringify({ room: "a" }), code: "unknown_frame" },
    { name: "joined without members", data: JSON.stringify({ type: "joined", room: "a", history: [] }), code: "bad_frame" },
  ];

  for (const { name, data, code } of CASES) {
    test(`${name} is skipped with a ${code} warning`, async () => {
      const { client, socket, of } = await connected();
      client.join("a");
      assert.doesNotThrow(() => socket.receive(data));
      const warnings = of("warning");
      assert.equal(warnings.length, 1, name);
      assert.equal(warnings[0].code, code, name);
      assert.equal(typeof warnings[0].message, "string", name);
      // The connection carries on.
      assert.equal(client.state, "open");
      socket.receive(joined("a", { history: [chat("a", 1)], lastSeq: 1 }));
      assert.deepEqual(of("chat").map((c) => c.seq), [1]);
    });
  }

  test("pong is understood and not warned about", async () => {
    const { socket, of } = await connected();
    socket.receive({ type: "pong" });
    assert.deepEqual(of("warning"), []);
  });

  test("a WebSocket that cannot be opened is a warning, and the next gateway is tried", async () => {
    const { FakeWebSocket, sockets } = fakeWebSocket();
    let refuse = true;
    class Refusing extends FakeWebSocket {
      constructor(url) {
        if (refuse) throw new SyntaxError(`bad URL ${url}`);
        super(url);
      }
    }
    const { client, clock, of } = makeClient({ WebSocket: Refusing, random: () => 0 });
    client.connect();
    await settle();
    assert.deepEqual(
      of("warning").map(({ code, url, error }) => ({ code, url, error: error.name })),
      [{ code: "socket_failed", url: "ws://gw1/ws", error: "SyntaxError" }],
    );
    assert.match(of("warning")[0].message, /bad URL ws:\/\/gw1\/ws/);
    refuse = false;
    clock.advance(0);
    await settle();
    assert.deepEqual(sockets.map((s) => s.url), ["ws://gw2/ws"]);
  });
});

describe("close()", () => {
  test("cancels a pending reconnect", async () => {
    const { client, sockets, clock } = await connected();
    sockets[0].drop(1006);
    assert.equal(clock.pending, 1);
    client.close();
    assert.equal(clock.pending, 0);
  });

  test("cancels pending resends", async () => {
    const { client, socket, clock } = await connected();
    client.join("a");
    for (const text of ["one", "two"]) {
      const { id } = client.send("a", text);
      socket.receive({ type: "error", code: "unavailable", message: "later", id, room: "a" });
    }
    assert.equal(clock.pending, 2);
    client.close();
    assert.equal(clock.pending, 0);
  });

  test("while a token is being fetched, no socket opens afterwards", async () => {
    let resolve;
    const { client, sockets, clock } = makeClient({ token: () => new Promise((r) => (resolve = r)) });
    client.connect();
    await settle();
    client.close();
    resolve("late");
    await settle();
    assert.equal(sockets.length, 0);
    assert.equal(clock.pending, 0);
    assert.equal(client.state, "closed");
  });

  test("with real timers, leaves no timer behind", async () => {
    const timeouts = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
    const before = timeouts();
    const { FakeWebSocket, sockets } = fakeWebSocket();
    const client = new CavloClient({ urls: ["ws://gw1/ws"], token: "t0", WebSocket: FakeWebSocket });
    client.connect();
    await settle();
    sockets[0].accept();
    sockets[0].receive(welcome());
    client.join("a");
    const { id } = client.send("a", "x");
    sockets[0].receive({ type: "error", code: "rate_limited", message: "later", id, room: "a" });
    sockets[0].drop(1006);
    assert.equal(timeouts(), before + 2);
    client.close();
    assert.equal(timeouts(), before);
  });
});

describe("ICE servers", () => {
  const TURN = (username) => ({ urls: ["turn:turn.example.com:3478"], username, credential: `pw-${username}` });

  test("come with welcome and are renewed at four fifths of their life", async () => {
    const { client, sockets, clock } = makeClient();
    const renewed = [];
    client.addEventListener("ice", ({ detail }) => renewed.push(detail.servers));
    assert.deepEqual(client.iceServers, [], "none before welcome");
    client.connect();
    await settle();
    const socket = sockets[0];
    socket.accept();
    socket.receive({ ...welcome("c1"), ice: { servers: [TURN("100:u1")], expires_in: 100 } });
    assert.deepEqual(client.iceServers, [TURN("100:u1")]);

    clock.advance(79_999);
    assert.equal(socket.frames("ice").length, 0, "not yet");
    clock.advance(1);
    assert.equal(socket.frames("ice").length, 1, "asked at 80 s of 100");

    socket.receive({ type: "ice", servers: [TURN("200:u1")], expires_in: 100 });
    assert.deepEqual(client.iceServers, [TURN("200:u1")]);
    assert.deepEqual(renewed, [[TURN("200:u1")]]);
    clock.advance(80_000);
    assert.equal(socket.frames("ice").length, 2, "and again for the new ones");
  });

  test("without expiry are not renewed, and a closed client asks nothing", async () => {
    const { client, sockets, clock } = makeClient();
    client.connect();
    await settle();
    const socket = sockets[0];
    socket.accept();
    socket.receive({ ...welcome("c1"), ice: { servers: [{ urls: ["stun:s:3478"] }], expires_in: 0 } });
    clock.advance(10 * 3600_000);
    assert.equal(socket.frames("ice").length, 0);

    socket.receive({ ...welcome("c1"), ice: { servers: [TURN("100:u1")], expires_in: 100 } });
    client.close();
    clock.advance(200_000);
    assert.equal(socket.frames("ice").length, 0);
  });
});
