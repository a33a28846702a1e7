// The cavlo demo: pick a name and a room, chat, start a mesh video call.
// Chat text is always rendered as text (textContent), never as HTML.
import { CavloClient, MeshCall } from "/cavlo.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// This gateway first, then any listed in ?gateways=ws://a/ws,ws://b/ws for failover.
const ownGateway = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const gateways = [ownGateway, ...(params.get("gateways") || "").split(",").filter(Boolean)];

let client = null;
let call = null;
let room = null;
let token = null;

/** A development token from this gateway, reused while it is valid. */
async function devToken(name) {
  if (token && token.expires > Date.now() + 60_000) return token.value;
  const response = await fetch("/auth/dev-token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (!response.ok) throw new Error(`the gateway gave no token (${response.status})`);
  const value = (await response.json()).token;
  const claims = JSON.parse(atob(value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  token = { value, expires: claims.exp * 1000 };
  return value;
}

function addMessage(who, text, { id, pending = false } = {}) {
  const li = document.createElement("li");
  if (id) li.dataset.id = id;
  if (pending) li.classList.add("pending");
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  li.append(name, document.createTextNode(text));
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
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

function videoFor(connId, label) {
  let video = document.querySelector(`video[data-conn-id="${CSS.escape(connId)}"]`);
  if (!video) {
    video = document.createElement("video");
    video.dataset.connId = connId;
    video.autoplay = true;
    video.playsInline = true;
    video.title = label;
    $("videos").append(video);
  }
  return video;
}

/** The room's call: it starts on a click or on the first incoming offer. */
function prepareCall() {
  call = new MeshCall(client, room, {
    media: () => navigator.mediaDevices.getUserMedia({ video: true, audio: true }),
  });
  call.addEventListener("start", ({ detail }) => {
    const mine = videoFor(client.connId, "you");
    mine.muted = true;
    mine.srcObject = detail.stream;
    $("call").textContent = "In call";
    $("call").disabled = true;
  });
  call.addEventListener("stream", ({ detail }) => {
    const video = videoFor(detail.connId, client.membersOf(room).get(detail.connId)?.user.name || "peer");
    video.srcObject = detail.stream;
    video.play().catch(() => {});
  });
  call.addEventListener("peerstate", ({ detail }) => {
    videoFor(detail.connId, "peer").dataset.peerState = detail.state;
  });
  call.addEventListener("hangup", ({ detail }) => {
    document.querySelector(`video[data-conn-id="${CSS.escape(detail.connId)}"]`)?.remove();
  });
  call.addEventListener("error", ({ detail }) => console.warn("cannot join the call", detail.error));
}

function enter(name, roomName) {
  room = roomName;
  client = new CavloClient({ urls: gateways, token: () => devToken(name) });
  client.addEventListener("state", ({ detail }) => {
    $("status").textContent = detail.state;
    $("status").dataset.state = detail.state;
  });
  client.addEventListener("joined", renderMembers);
  client.addEventListener("presence", renderMembers);
  client.addEventListener("chat", ({ detail }) => {
    if (detail.room !== room) return;
    // Our own message, back from the backlog after a reconnect: already shown.
    const shown = document.querySelector(`#messages li[data-id="${CSS.escape(detail.id)}"]`);
    if (shown) return shown.classList.remove("pending");
    addMessage(detail.from.user.name, detail.text, { id: detail.id });
  });
  client.addEventListener("ack", ({ detail }) => {
    document.querySelector(`#messages li[data-id="${CSS.escape(detail.id)}"]`)?.classList.remove("pending");
  });
  client.addEventListener("error", ({ detail }) => {
    if (detail.code === "room_full") $("status").textContent = "room is full";
  });
  prepareCall();
  client.connect();
  client.join(room);

  $("room-title").textContent = room;
  $("login").hidden = true;
  $("app").hidden = false;
  $("text").focus();
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  enter($("name").value.trim(), $("room").value.trim());
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  const id = client.send(room, text);
  addMessage(client.user?.name || $("name").value, text, { id, pending: true });
  $("text").value = "";
});

$("call").addEventListener("click", () => call.start().catch((err) => alert(`Cannot start the call: ${err}`)));

$("leave").addEventListener("click", () => {
  call?.stop();
  client.close();
  location.reload();
});
