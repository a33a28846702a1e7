// @ts-check
// What the two video calls, MeshCall (meshcall.js) and RoomCall
// (roomcall.js), do alike: their typed events, their client listeners, how
// they make their RTCPeerConnections, and how they turn the local tracks on
// and off and tell the room. One copy, so that the two cannot drift apart.

/**
 * @typedef {import("./cavlo.js").CavloClient} CavloClient
 * @typedef {import("./cavlo.js").ClientEvents} ClientEvents
 * @typedef {import("./cavlo.js").Warning} Warning
 */

/**
 * @template Events
 * @typedef {import("./cavlo.js").TypedEventTarget<Events>} TypedEventTarget
 */

/**
 * @typedef {{ audio: boolean, video: boolean }} MediaState whether a
 *   microphone and a camera are on
 * @typedef {Warning & { connId: string, kind?: string }} CallWarning
 * @typedef {{ [K in keyof ClientEvents]?: (event: CustomEvent<ClientEvents[K]>) => void }} ClientListeners
 */

/**
 * The class a call extends: EventTarget, typed so that its events are
 * `CustomEvent`s whose detail the class's `@extends {CallEventTarget<Events>}`
 * names. Only a type: at run time it is EventTarget.
 * @type {new <Events>() => TypedEventTarget<Events>}
 */
export const CallEventTarget = /** @type {any} */ (EventTarget);

/**
 * Adds `listeners` to the client's events, for as long as a call lasts.
 * @param {CavloClient} client
 * @param {ClientListeners} listeners
 * @returns {() => void} removes them
 */
export function listen(client, listeners) {
  const entries = /** @type {Array<[keyof ClientEvents, (event: CustomEvent<any>) => void]>} */ (
    Object.entries(listeners)
  );
  for (const [type, listener] of entries) client.addEventListener(type, listener);
  return () => {
    for (const [type, listener] of entries) client.removeEventListener(type, listener);
  };
}

/**
 * Makes a call's RTCPeerConnections, configured with its ICE servers: the
 * fixed ones it was given, or else the gateway's (`client.iceServers`, TURN
 * credentials included), which `renew` brings to the open connections.
 */
export class Connector {
  /** @type {CavloClient} */
  #client;
  /** @type {RTCIceServer[] | null} Explicit ICE servers, or null for the gateway's. */
  #iceServers;
  /** @type {RTCIceTransportPolicy} */
  #iceTransportPolicy;
  /** @type {typeof RTCPeerConnection} */
  #RTCPeerConnection;

  /**
   * @param {CavloClient} client
   * @param {object} options the call's options of the same names
   * @param {RTCIceServer[] | null} [options.iceServers=null]
   * @param {RTCIceTransportPolicy} [options.iceTransportPolicy="all"]
   * @param {typeof RTCPeerConnection} [options.RTCPeerConnection=globalThis.RTCPeerConnection]
   */
  constructor(
    client,
    { iceServers = null, iceTransportPolicy = "all", RTCPeerConnection = globalThis.RTCPeerConnection } = {},
  ) {
    this.#client = client;
    this.#iceServers = iceServers;
    this.#iceTransportPolicy = iceTransportPolicy;
    this.#RTCPeerConnection = RTCPeerConnection;
  }

  /** A new connection. */
  connect() {
    return new this.#RTCPeerConnection(this.#configuration());
  }

  /**
   * The client renewed its ICE servers (TURN credentials): gives them to
   * `pcs`, the connections already open, for their ICE restarts and new
   * candidates. Nothing changes for fixed ICE servers.
   * @param {Iterable<RTCPeerConnection>} pcs
   */
  renew(pcs) {
    if (this.#iceServers) return;
    for (const pc of pcs) pc.setConfiguration(this.#configuration());
  }

  /** @returns {RTCConfiguration} */
  #configuration() {
    return {
      iceServers: this.#iceServers ?? this.#client.iceServers,
      iceTransportPolicy: this.#iceTransportPolicy,
    };
  }
}

/**
 * Enables or disables the tracks of `stream`, the local stream (if any),
 * as `sending` says: they keep running, so nothing is renegotiated.
 * @param {MediaStream | null} stream
 * @param {MediaState} sending
 */
export function applyMedia(stream, sending) {
  for (const track of stream?.getTracks() ?? []) {
    const kind = /** @type {keyof MediaState} */ (track.kind);
    track.enabled = sending[kind] ?? true;
  }
}

/**
 * Tells each of `connIds`, with a `media` signal, whether this side's
 * microphone and camera are on (`setMedia` changed them).
 * @param {CavloClient} client
 * @param {string} room
 * @param {Iterable<string>} connIds
 * @param {MediaState} sending
 */
export function tellMedia(client, room, connIds, sending) {
  for (const connId of connIds) client.signal(room, connId, "media", sending);
}

/**
 * Tells `connId`, who just connected and takes both for on, what this side
 * turned off, if anything.
 * @param {CavloClient} client
 * @param {string} room
 * @param {string} connId
 * @param {MediaState} sending
 */
export function tellNewcomer(client, room, connId, sending) {
  if (!sending.audio || !sending.video) tellMedia(client, room, [connId], sending);
}
