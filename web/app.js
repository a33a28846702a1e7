// @ts-check
// The cavlo demo: pick a name and a room, chat, start a video call: through
// the media service when the gateway offers one (RoomCall), else a mesh
// (MeshCall).
// Chat text is always rendered as text (textContent), never as HTML.
import { CavloClient, MEDIA_NODE, MeshCall, RoomCall } from "./cavlo.js";

/**
 * The page's element with this id, which must be a `type` (HTMLElement
 * unless given).
 * @template {HTMLElement} [T=HTMLElement]
 * @param {string} id
 * @param {new () => T} [type]
 * @returns {T}
 */
function $(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof (type ?? HTMLElement))) throw new Error(`the page has no #${id} of that kind`);
  return /** @type {T} */ (element);
}
const input = (/** @type {string} */ id) => $(id, HTMLInputElement);
const button = (/** @type {string} */ id) => $(id, HTMLButtonElement);
const params = new URLSearchParams(location.search);
// This gateway first, then any listed in ?gateways=ws://a/ws,ws://b/ws for failover.
const ownGateway = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const gateways = [ownGateway, ...(params.get("gateways") || "").split(",").filter(Boolean)];
// ?relay=1: calls go through the TURN relay only (no direct path is tried).
const iceTransportPolicy = params.get("relay") === "1" ? "relay" : "all";

/** Errors that mean the room cannot be entered at all: back to the login form. */
const JOIN_ERRORS = new Set(["room_full", "invalid_room", "too_many_rooms"]);

/** @type {CavloClient | null} */
let client = null;
/** @type {MeshCall | RoomCall | null} */
let call = null;
/** @type {string} */
let room = "";
/** @type {{ name: string, value: string, expires: number } | null} the last development token, reused while it is valid. */
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
 * @param {string} name
 * @returns {Promise<string>}
 */
async function devToken(name) {
  const current = token && token.name === name && token.expires > Date.now() ? token : null;
  if (current && current.expires > Date.now() + RENEW_BEFORE_MS) return current.value;
  const request = (/** @type {{ name: string, token?: string }} */ body) =>
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

/**
 * Shows a problem that does not end the session; empty text clears it.
 * @param {string} text
 */
function showError(text) {
  $("app-error").textContent = text;
}

/**
 * @param {string} id
 * @returns {HTMLLIElement | null}
 */
function messageLine(id) {
  return document.querySelector(`#messages li[data-id="${CSS.escape(id)}"]`);
}

/**
 * Adds a line to the chat, and returns it.
 * @param {string} who
 * @param {string} text
 * @param {{ id?: string, pending?: boolean }} options
 */
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
  return li;
}

/**
 * Our own line, now stored: it shows the text as stored, which is what everyone else sees.
 * @param {HTMLLIElement} li
 * @param {string} text
 */
function markStored(li, text) {
  li.classList.remove("pending");
  /** @type {HTMLElement} */ (li.querySelector(".text")).textContent = text;
}

/** @param {CavloClient} client */
function renderMembers(client) {
  const list = $("members");
  list.replaceChildren();
  for (const member of client.membersOf(room).values()) {
    const li = document.createElement("li");
    li.textContent = member.connId === client.connId ? `${member.user.name} (you)` : member.user.name;
    li.dataset.connId = member.connId;
    list.append(li);
  }
}

/**
 * The name to show for a connection of this room.
 * @param {CavloClient} client
 * @param {string} connId
 */
function nameOf(client, connId) {
  if (connId === client.connId) return `${client.user?.name ?? "You"} (you)`;
  return client.membersOf(room).get(connId)?.user.name ?? "Someone";
}

/**
 * The tile of a connection in the call, made on first use: its video, its
 * name, and what it has turned off.
 * @param {CavloClient} client
 * @param {string} connId
 * @returns {HTMLElement}
 */
function tileFor(client, connId) {
  /** @type {HTMLElement | null} */
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
  const name = nameOf(client, connId);
  /** @type {HTMLElement} */ (tile.querySelector(".name")).textContent = name;
  videoOf(tile).title = connId === client.connId ? "you" : name;
  return tile;
}

/**
 * A tile's video.
 * @param {HTMLElement} tile
 */
function videoOf(tile) {
  return /** @type {HTMLVideoElement} */ (tile.querySelector("video"));
}

/**
 * Shows what a tile's person has turned off.
 * @param {HTMLElement} tile
 * @param {{ audio: boolean, video: boolean }} media
 */
function showMedia(tile, { audio, video }) {
  tile.dataset.audio = audio ? "on" : "off";
  tile.dataset.video = video ? "on" : "off";
  const off = [!audio && "muted", !video && "camera off"].filter(Boolean);
  /** @type {HTMLElement} */ (tile.querySelector(".state")).textContent = off.join(" · ");
}

/**
 * The call controls for `inCall`, with the mute and camera state.
 * @param {boolean} inCall
 */
function showCallControls(inCall) {
  button("call").hidden = inCall;
  button("call").disabled = false;
  $("call-controls").hidden = !inCall;
  const media = call?.media ?? { audio: true, video: true };
  $("mic").textContent = media.audio ? "Mute" : "Unmute";
  $("mic").setAttribute("aria-pressed", String(!media.audio));
  $("camera").textContent = media.video ? "Camera off" : "Camera on";
  $("camera").setAttribute("aria-pressed", String(!media.video));
}

/**
 * What an error says, whatever was thrown.
 * @param {unknown} err
 */
function messageOf(err) {
  return String(/** @type {any} */ (err)?.message ?? err);
}

/** Tiles narrower than this (CSS pixels) get a participant's small layer. */
const SMALL_TILE_PX = 320;

/**
 * Asks for each remote tile's layer by its size, once the layout settled.
 * @param {RoomCall} roomCall
 */
function askQualities(roomCall) {
  requestAnimationFrame(() => {
    for (const connId of roomCall.participants) {
      const tile = document.querySelector(`#videos figure[data-conn-id="${CSS.escape(connId)}"]`);
      if (tile instanceof HTMLElement) roomCall.setQuality(connId, tile.clientWidth < SMALL_TILE_PX ? "low" : "high");
    }
  });
}

/**
 * The room's call: through the media service when the gateway offers one
 * (it starts on a click), else a mesh (it starts on a click or on the
 * first incoming offer).
 * @param {CavloClient} client
 */
function prepareCall(client) {
  /** @type {{ media: () => Promise<MediaStream>, iceTransportPolicy: RTCIceTransportPolicy }} */
  const options = {
    media: () => navigator.mediaDevices.getUserMedia({ video: true, audio: true }),
    iceTransportPolicy,
  };
  const made = client.mediaService ? new RoomCall(client, room, options) : new MeshCall(client, room, options);
  call = made;
  if (made instanceof RoomCall) {
    // Small tiles get the small layer of a participant's camera.
    made.addEventListener("stream", () => askQualities(made));
    made.addEventListener("hangup", () => askQualities(made));
    made.addEventListener("speaker", ({ detail }) => {
      for (const tile of document.querySelectorAll("#videos figure")) {
        tile.classList.toggle("speaking", tile instanceof HTMLElement && tile.dataset.connId === detail.connId);
      }
    });
  }
  // Both kinds of call have these events, with these details.
  const next = /** @type {MeshCall} */ (/** @type {unknown} */ (made));
  next.addEventListener("start", ({ detail }) => {
    const mine = tileFor(client, client.connId ?? "");
    const video = videoOf(mine);
    video.muted = true;
    video.srcObject = detail.stream;
    showMedia(mine, next.media);
    showCallControls(true);
  });
  /**
   * @param {string} connId
   * @param {string} state
   */
  const showPeerState = (connId, state) => {
    const tile = tileFor(client, connId);
    tile.dataset.peerState = state;
    videoOf(tile).dataset.peerState = state;
  };
  // Through the media service one connection carries every participant:
  // its state is each remote tile's.
  let nodeState = "new";
  next.addEventListener("stream", ({ detail }) => {
    const video = videoOf(tileFor(client, detail.connId));
    video.srcObject = detail.stream;
    video.play().catch(() => {});
    if (made instanceof RoomCall) showPeerState(detail.connId, nodeState);
  });
  next.addEventListener("peerstate", ({ detail }) => {
    if (made instanceof RoomCall && detail.connId === MEDIA_NODE) {
      nodeState = detail.state;
      for (const connId of made.participants) showPeerState(connId, detail.state);
    } else {
      showPeerState(detail.connId, detail.state);
    }
  });
  next.addEventListener("media", ({ detail }) => showMedia(tileFor(client, detail.connId), detail));
  next.addEventListener("hangup", ({ detail }) => {
    document.querySelector(`#videos figure[data-conn-id="${CSS.escape(detail.connId)}"]`)?.remove();
  });
  next.addEventListener("error", ({ detail }) => showError(`Cannot join the call: ${messageOf(detail.error)}`));
  // The SDK never logs; the demo shows what it skipped in the console.
  next.addEventListener("warning", ({ detail }) => console.warn("cavlo call:", detail.message, detail.error ?? ""));
}

/** Leaves the call but not the room: hangs up, releases the camera, and gets a new call ready. */
function hangUp() {
  for (const track of call?.localStream?.getTracks() ?? []) track.stop();
  call?.stop();
  $("videos").replaceChildren();
  if (client) prepareCall(client);
  showCallControls(false);
}

/**
 * @param {string} name
 * @param {string} roomName
 */
function enter(name, roomName) {
  room = roomName;
  const session = new CavloClient({ urls: gateways, token: () => devToken(name) });
  client = session;
  let wasOpen = false;
  session.addEventListener("state", ({ detail }) => {
    // After the first welcome, any other state means the socket dropped
    // and the SDK is resuming ("closed" while it waits to retry,
    // "connecting" while it tries): say so. A final close leaves the room
    // (see the "closed" error below).
    $("status").textContent = detail.state !== "open" && wasOpen ? "reconnecting…" : detail.state;
    $("status").dataset.state = detail.state;
    wasOpen ||= detail.state === "open";
  });
  session.addEventListener("welcome", () => {
    showError("");
    // The kind of call follows the gateway's offer, until one starts.
    const wanted = session.mediaService ? RoomCall : MeshCall;
    if (call && call.state === "idle" && !(call instanceof wanted)) {
      call.stop();
      prepareCall(session);
    }
  });
  session.addEventListener("joined", () => renderMembers(session));
  session.addEventListener("presence", () => renderMembers(session));
  session.addEventListener("chat", ({ detail }) => {
    if (detail.room !== room) return;
    // Our own message, back from the backlog after a reconnect: already shown.
    const shown = messageLine(detail.id);
    if (shown) return markStored(shown, detail.text);
    addMessage(detail.from.user.name, detail.text, { id: detail.id });
  });
  session.addEventListener("error", ({ detail }) => {
    if (detail.code === "closed") {
      // Terminal: a refused token is not worth keeping.
      token = null;
      return exit(`Disconnected: ${detail.message}.`);
    }
    if (JOIN_ERRORS.has(detail.code) && detail.room === room) return exit(`Cannot enter ${room}: ${detail.message}.`);
    // A message the SDK will not resend is marked by its `send` promise (see the composer).
    showError(detail.message);
  });
  session.addEventListener("warning", ({ detail }) => console.warn("cavlo:", detail.message, detail.error ?? ""));
  prepareCall(session);
  session.connect();
  session.join(room);

  $("room-title").textContent = room;
  $("login").hidden = true;
  $("app").hidden = false;
  $("text").focus();
}

/**
 * Ends the session and shows the login form again, with `reason` if there is one.
 * @param {string} [reason]
 */
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
  const name = input("name").value.trim();
  const roomName = input("room").value.trim();
  const submit = /** @type {HTMLButtonElement} */ ($("login").querySelector("button"));
  $("login-error").textContent = "";
  submit.disabled = true;
  try {
    // Fetched here, so that a gateway that gives no token is said on this form.
    await devToken(name);
  } catch (err) {
    $("login-error").textContent = `Cannot get a token: ${messageOf(err)}.`;
    return;
  } finally {
    submit.disabled = false;
  }
  enter(name, roomName);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!client) return;
  const text = input("text").value;
  if (!text.trim()) return;
  const sending = client.send(room, text);
  const line = addMessage(client.user?.name || input("name").value, text, { id: sending.id, pending: true });
  input("text").value = "";
  // Stored: show it as stored. Refused for good (the error itself is shown
  // by the `error` listener): it stays on screen, marked as not sent.
  sending.then(
    (ack) => markStored(line, ack.text),
    (err) => {
      line.classList.replace("pending", "failed");
      line.title = messageOf(err);
    },
  );
});

button("call").addEventListener("click", () => {
  if (!call) return;
  button("call").disabled = true;
  call.start().catch((err) => {
    button("call").disabled = false;
    showError(`Cannot start the call: ${messageOf(err)}`);
  });
});
/**
 * Turns one kind of media, "audio" or "video", on or off for the call.
 * @param {"audio" | "video"} kind
 */
function toggle(kind) {
  if (!call || !client) return;
  call.setMedia({ [kind]: !call.media[kind] });
  showMedia(tileFor(client, client.connId ?? ""), call.media);
  showCallControls(true);
}
window.addEventListener("resize", () => {
  if (call instanceof RoomCall) askQualities(call);
});
$("mic").addEventListener("click", () => toggle("audio"));
$("camera").addEventListener("click", () => toggle("video"));
$("hangup").addEventListener("click", hangUp);

$("leave").addEventListener("click", () => exit());

// For the browser tests and the curious: the session in the console.
Object.assign(window, {
  cavloDemo: {
    get client() {
      return client;
    },
    get call() {
      return call;
    },
  },
});
