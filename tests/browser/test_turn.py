"""Calls through the TURN relay: pages that may use nothing but the relay
(iceTransportPolicy "relay", the demo's ?relay=1) connect through compose's
coturn with the credentials their gateway gave them, and coturn refuses a
wrong or expired credential."""

import base64
import hashlib
import hmac
import time

from playwright.sync_api import expect

from conftest import OUT, TURN_SECRET
from test_demo import TIMEOUT_MS, playing_remote_video, room

# The types of each connection's selected candidate pair (local, remote).
SELECTED_PAIRS = """async () => {
  const pairs = [];
  for (const report of (await window.cavloDemo.call.stats()).values()) {
    let pair = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (pair) pairs.push([report.get(pair.localCandidateId).candidateType,
                          report.get(pair.remoteCandidateId).candidateType]);
  }
  return pairs;
}"""

# How many relay candidates one ICE server yields: a TURN allocation per
# candidate, so 0 means the relay refused the credential.
RELAY_CANDIDATES = """async (server) => {
  const pc = new RTCPeerConnection({ iceServers: [server], iceTransportPolicy: "relay" });
  let relays = 0;
  pc.onicecandidate = ({ candidate }) => { if (candidate && candidate.type === "relay") relays += 1; };
  pc.createDataChannel("probe");
  await pc.setLocalDescription();
  await new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.onicegatheringstatechange = done;
    setTimeout(resolve, 10000);
    done();
  });
  pc.close();
  return relays;
}"""


def relay_page_url(system, own, other):
    return system.page_url(own, other) + "&relay=1"


def test_a_relay_only_call_connects_through_coturn(turn_system, open_demo):
    r = room()
    ann = open_demo(relay_page_url(turn_system, 0, 1), "Ann", r)
    bob = open_demo(relay_page_url(turn_system, 1, 0), "Bob", r)
    expect(ann.locator("#members li", has_text="Bob")).to_have_count(1, timeout=TIMEOUT_MS)
    turn = ann.evaluate("window.cavloDemo.client.iceServers")
    assert [server["urls"] for server in turn] == [[turn_system.turn.url]], turn
    ann.click("#call")
    playing_remote_video(ann)
    playing_remote_video(bob)
    for page in (ann, bob):
        assert page.evaluate(SELECTED_PAIRS) == [["relay", "relay"]]
    ann.screenshot(path=str(OUT / "relay-call.png"))


def test_a_relay_only_call_reaches_the_media_node_through_coturn(turn_media_system, open_demo):
    """The relay-only variant of a call through the media service: each page's
    one connection goes from its relay address to the node's."""
    system = turn_media_system
    r = room()
    ann = open_demo(relay_page_url(system, 0, 1), "Ann", r)
    bob = open_demo(relay_page_url(system, 1, 0), "Bob", r)
    expect(ann.locator("#members li", has_text="Bob")).to_have_count(1, timeout=TIMEOUT_MS)
    for page in (ann, bob):
        assert page.evaluate("window.cavloDemo.call.constructor.name") == "RoomCall"
        page.click("#call")
    playing_remote_video(ann)
    playing_remote_video(bob)
    for page in (ann, bob):
        assert page.evaluate(SELECTED_PAIRS) == [["relay", "host"]]


def credential(username, secret=TURN_SECRET):
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def test_coturn_refuses_wrong_and_expired_credentials(turn_system, open_demo):
    page = open_demo(turn_system.page_url(0, 1), "Ann", room())
    [given] = page.evaluate("window.cavloDemo.client.iceServers")
    url = [turn_system.turn.url]
    assert page.evaluate(RELAY_CANDIDATES, given) > 0, "the gateway's credential works"
    wrong = {"urls": url, "username": given["username"], "credential": credential(given["username"], "not-the-secret")}
    assert page.evaluate(RELAY_CANDIDATES, wrong) == 0, "made with another secret"
    expired_name = f"{int(time.time()) - 60}:ann"
    expired = {"urls": url, "username": expired_name, "credential": credential(expired_name)}
    assert page.evaluate(RELAY_CANDIDATES, expired) == 0, "expired a minute ago"
