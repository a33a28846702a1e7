// The cavlo demo: pick a name and a room, chat, start a mesh video call.
// Chat text is always rendered as text (textContent), never as HTML.
import { CavloClient, MeshCall } from "/cavlo.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// This gateway first, then any listed in ?gateways=ws://a/ws,ws://b/ws for failover.
const ownGateway = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const gateways = [ownGateway, ...(params.get("gateways") || "").split(",").filter(Boolean)];
// ?relay=1: calls go through the TURN relay only (no direct path is tried).
const iceTransportPolicy = params.get("relay") === "1" ? "relay" : "all";

/** Errors that mean the room cannot be entered at all: back to the login form. */
const JOIN_ERRORS = new Set(["room_full", "invalid_room", "too_many_rooms"]);

let client = null;
let call = null;
let room = null;
/** {name, value, expires}: the last development token, reused while it is valid. */
let token = null;

/**
 * Tokens with less left than this are renewed rather than reused: more than
 * the SDK's refresh lead (at most a minute before expiry), so that its
 * refresh gets a token that expires later, which the gateway requires.
 */
const RENEW_BEFORE_MS = 5 * 60_000;

/**
 * A development token from this gateway for `name`. One close to expiry is
 * renewed with itself, so the new one names the same user and the client's
 * refresh is accepted; a new name, or a token already expired, gets a new user.
 */
async function devToken(name) {
  const current = token && token.name === name && token.expires > Date.now() ? token : null;
  if (current && current.expires > Date.now() + RENEW_BEFORE_MS) return current.value;
  const request = (body) =>
    fetch("/auth/dev-token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  let response = await request(current ? { name, token: current.value } : { name });
  // A gateway restarted with another secret cannot renew: start afresh.
  if (current && response.status === 401) response = await request({ name });
  if (!response.ok) throw new Error(`the gateway gave no token (HTTP ${response.status})`);
  const value = (await response.json()).token;
  const claims = JSON.parse(atob(value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  token = { name, value, expires: claims.exp * 1000 };
  return value;
}

/** Shows a problem that does not end the session; empty text clears it. */
function showError(text) {
  $("app-error").textContent = text;
}

function messageLine(id) {
  return document.querySelector(`#messages li[data-id="${CSS.escape(id)}"]`);
}

function addMessage(who, text, { id, pending = false } = {}) {
  const li = document.createElement("li");
  if (id) li.dataset.id = id;
  if (pending) li.classList.add("pending");
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(name, body);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

/** Our own line, now stored: it shows the text as stored, which is what everyone else sees. */
function markStored(li, text) {
  li.classList.remove("pending");
  li.querySelector(".text").textContent = text;
}

function renderMembers() {
  const list = $("members");
  list.replaceChildren();
  for (const member of client.membersOf(room).values()) {
    const li = document.createElement("li");
    li.textContent = member.conn_id === client.connId ? `${member.user.name} (you)` : member.user.name;
    li.dataset.connId = member.conn_id;
    list.append(li);
  }
}

/** The name to show for a connection of this room. */
function nameOf(connId) {
  if (connId === client.connId) return `${client.user?.name ?? "You"} (you)`;
  return client.membersOf(room).get(connId)?.user.name ?? "Someone";
}

/**
 * The tile of a connection in the call, made on first use: its video, its
 * name, and what it has turned off.
 */
function tileFor(connId) {
  let tile = document.querySelector(`#videos figure[data-conn-id="${CSS.escape(connId)}"]`);
  if (!tile) {
    tile = document.createElement("figure");
    tile.dataset.connId = connId;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "name";
    const state = document.createElement("span");
    state.className = "state";
    caption.append(name, state);
    tile.append(video, caption);
    $("videos").append(tile);
  }
  const name = nameOf(connId);
  tile.querySelector(".name").textContent = name;
  tile.querySelector("video").title = connId === client.connId ? "you" : name;
  return tile;
}

/** Shows what a tile's person has turned off. */
function showMedia(tile, { audio, video }) {
  tile.dataset.audio = audio ? "on" : "off";
  tile.dataset.video = video ? "on" : "off";
  const off = [!audio && "muted", !video && "camera off"].filter(Boolean);
  tile.querySelector(".state").textContent = off.join(" · ");
}

/** The call controls for `inCall`, with the mute and camera state. */
function showCallControls(inCall) {
  $("call").hidden = inCall;
  $("call").disabled = false;
  $("call-controls").hidden = !inCall;
  const media = call?.media ?? { audio: true, video: true };
  $("mic").textContent = media.audio ? "Mute" : "Unmute";
  $("mic").setAttribute("aria-pressed", String(!media.audio));
  $("camera").textContent = media.video ? "Camera off" : "Camera on";
  $("camera").setAttribute("aria-pressed", String(!media.video));
}

/** The room's call: it starts on a click or on the first incoming offer. */
function prepareCall() {
  call = new MeshCall(client, room, {
    media: () => navigator.mediaDevices.getUserMedia({ video: true, audio: true }),
    iceTransportPolicy,
  });
  call.addEventListener("start", ({ detail }) => {
    const mine = tileFor(client.connId);
    const video = mine.querySelector("video");
    video.muted = true;
    video.srcObject = detail.stream;
    showMedia(mine, call.media);
    showCallControls(true);
  });
  call.addEventListener("stream", ({ detail }) => {
    const video = tileFor(detail.connId).querySelector("video");
    video.srcObject = detail.stream;
    video.play().catch(() => {});
  });
  call.addEventListener("peerstate", ({ detail }) => {
    const tile = tileFor(detail.connId);
    tile.dataset.peerState = detail.state;
    tile.querySelector("video").dataset.peerState = detail.state;
  });
  call.addEventListener("media", ({ detail }) => showMedia(tileFor(detail.connId), detail));
  call.addEventListener("hangup", ({ detail }) => {
    document.querySelector(`#videos figure[data-conn-id="${CSS.escape(detail.connId)}"]`)?.remove();
  });
  call.addEventListener("error", ({ detail }) => showError(`Cannot join the call: ${detail.error.message}`));
}

/** Leaves the call but not the room: hangs up, releases the camera, and gets a new call ready. */
function hangUp() {
  for (const track of call?.localStream?.getTracks() ?? []) track.stop();
  call?.stop();
  $("videos").replaceChildren();
  prepareCall();
  showCallControls(false);
}

function enter(name, roomName) {
  room = roomName;
  client = new CavloClient({ urls: gateways, token: () => devToken(name) });
  let wasOpen = false;
  client.addEventListener("state", ({ detail }) => {
    // After the first welcome, any other state means the socket dropped
    // and the SDK is resuming ("closed" while it waits to retry,
    // "connecting" while it tries): say so. A final close leaves the room
    // (see the "closed" error below).
    $("status").textContent = detail.state !== "open" && wasOpen ? "reconnecting…" : detail.state;
    $("status").dataset.state = detail.state;
    wasOpen ||= detail.state === "open";
  });
  client.addEventListener("welcome", () => showError(""));
  client.addEventListener("joined", renderMembers);
  client.addEventListener("presence", renderMembers);
  client.addEventListener("chat", ({ detail }) => {
    if (detail.room !== room) return;
    // Our own message, back from the backlog after a reconnect: already shown.
    const shown = messageLine(detail.id);
    if (shown) return markStored(shown, detail.text);
    addMessage(detail.from.user.name, detail.text, { id: detail.id });
  });
  client.addEventListener("ack", ({ detail }) => {
    const line = messageLine(detail.id);
    if (line) markStored(line, detail.text);
  });
  client.addEventListener("error", ({ detail }) => {
    if (detail.code === "closed") {
      // Terminal: a refused token is not worth keeping.
      token = null;
      return exit(`Disconnected: ${detail.message}.`);
    }
    if (JOIN_ERRORS.has(detail.code) && detail.room === room) return exit(`Cannot enter ${room}: ${detail.message}.`);
    // A message the SDK will not resend stays on screen, marked as not sent.
    if (detail.id && !client.outbox.has(detail.id)) {
      const line = messageLine(detail.id);
      line?.classList.replace("pending", "failed");
      if (line) line.title = detail.message;
    }
    showError(detail.message);
  });
  prepareCall();
  client.connect();
  client.join(room);

  $("room-title").textContent = room;
  $("login").hidden = true;
  $("app").hidden = false;
  $("text").focus();
}

/** Ends the session and shows the login form again, with `reason` if there is one. */
function exit(reason = "") {
  for (const track of call?.localStream?.getTracks() ?? []) track.stop();
  call?.stop();
  client?.close();
  call = null;
  client = null;
  for (const id of ["messages", "members", "videos"]) $(id).replaceChildren();
  showError("");
  showCallControls(false);
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason;
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  const roomName = $("room").value.trim();
  const button = $("login").querySelector("button");
  $("login-error").textContent = "";
  button.disabled = true;
  try {
    // Fetched here, so that a gateway that gives no token is said on this form.
    await devToken(name);
  } catch (err) {
    $("login-error").textContent = `Cannot get a token: ${err.message}.`;
    return;
  } finally {
    button.disabled = false;
  }
  enter(name, roomName);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  const id = client.send(room, text);
  addMessage(client.user?.name || $("name").value, text, { id, pending: true });
  $("text").value = "";
});

$("call").addEventListener("click", () => {
  $("call").disabled = true;
  call.start().catch((err) => {
    $("call").disabled = false;
    showError(`Cannot start the call: ${err.message}`);
  });
});
/** Turns one kind of media, "audio" or "video", on or off for the call. */
function toggle(kind) {
  call.setMedia({ [kind]: !call.media[kind] });
  showMedia(tileFor(client.connId), call.media);
  showCallControls(true);
}
$("mic").addEventListener("click", () => toggle("audio"));
$("camera").addEventListener("click", () => toggle("video"));
$("hangup").addEventListener("click", hangUp);

$("leave").addEventListener("click", () => exit());

// For the browser tests and the curious: the session in the console.
window.cavloDemo = {
  get client() {
    return client;
  },
  get call() {
    return call;
  },
};
