"""Calls through the media service in real Chromium pages: four pages on two
gateways, each sending one video and one audio stream to the media node and
decoding the three others; the same four pages in a mesh for comparison;
and the call moving when its media node is killed or drained.

Set CAVLO_BROWSER_FIGURES=FILE to have the tests append what they measured
(streams and uplink per page) to FILE as JSON lines, for docs/benchmarks.md.
"""

import json
import os
import re
import time
import urllib.request
import uuid

import pytest
from playwright.sync_api import expect

PAGES = 4
NAMES = ["Ann", "Bob", "Cy", "Dee"]
TIMEOUT_S = 60
# Frames a remote video must decode, over a check, to count as playing:
# the fake camera sends about 30 a second, far fewer with four pages on
# two cores.
PLAYING_FRAMES = 5

# What one page sends and decodes, from its connections' getStats():
# outbound streams by kind (simulcast layers of one track count once), the
# bytes they sent, and every inbound video's decoded frames by track.
STATS = """async () => {
  const reports = await window.cavloDemo.call.stats();
  const out = {audio: new Set(), video: new Set()}, decoded = {};
  let sent = 0;
  for (const report of reports.values()) {
    report.forEach((s) => {
      if (s.type === "outbound-rtp") { out[s.kind].add(s.mediaSourceId || s.id); sent += s.bytesSent; }
      if (s.type === "inbound-rtp" && s.kind === "video") decoded[s.trackIdentifier || s.id] = s.framesDecoded || 0;
    });
  }
  return {audio: out.audio.size, video: out.video.size, sent, decoded};
}"""


def room():
    return f"call-{uuid.uuid4().hex[:12]}"


def record(figures):
    path = os.environ.get("CAVLO_BROWSER_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


def open_call(system, open_demo, pages=PAGES, mesh=False):
    """`pages` pages in one room, alternating between the two gateways, each
    in the call. Through the media service each page joins with its click;
    in a mesh the first page's call is answered by the others."""
    r = room()
    opened = [open_demo(system.page_url(i % 2, 1 - i % 2), NAMES[i], r) for i in range(pages)]
    for page in opened:
        expect(page.locator("#members li")).to_have_count(pages, timeout=TIMEOUT_S * 1000)
    assert [system.connections(0), system.connections(1)] == [pages - pages // 2, pages // 2]
    for page in opened[:1] if mesh else opened:
        page.click("#call")
    for page in opened:
        expect(page.locator("#hangup")).to_be_visible(timeout=TIMEOUT_S * 1000)
    return opened


def decoding(page, count, within=TIMEOUT_S, every_ms=1000):
    """Waits until `count` remote videos each decode PLAYING_FRAMES more
    frames across one check; returns the page's last stats."""
    deadline = time.monotonic() + within
    before = page.evaluate(STATS)["decoded"]
    while True:
        page.wait_for_timeout(every_ms)
        stats = page.evaluate(STATS)
        rising = [t for t, frames in stats["decoded"].items() if frames >= before.get(t, 0) + PLAYING_FRAMES]
        if len(rising) >= count:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(rising)} of {count} remote videos decoding: {stats}")
        before = stats["decoded"]


def uplink_kbits(page, seconds=5):
    """What the page sends, in kbit/s, over `seconds`."""
    first = page.evaluate(STATS)["sent"]
    page.wait_for_timeout(seconds * 1000)
    return (page.evaluate(STATS)["sent"] - first) * 8 / 1000 / seconds


def tile(page, name):
    return page.locator("#videos figure", has=page.locator(".name", has_text=name))


def test_four_pages_call_through_the_media_service(media_system, open_demo):
    system = media_system
    pages = open_call(system, open_demo)
    for page in pages:
        assert page.evaluate("window.cavloDemo.client.mediaService") is True
        assert page.evaluate("window.cavloDemo.call.constructor.name") == "RoomCall"
    for page in pages:
        stats = decoding(page, PAGES - 1)
        assert (stats["audio"], stats["video"]) == (1, 1), f"one outbound audio and video: {stats}"
    record({"mode": "media", "pages": PAGES, "uplink_kbits": [round(uplink_kbits(p)) for p in pages],
            "outbound_video": [page.evaluate(STATS)["video"] for page in pages]})

    # Mute and camera state reach the others.
    pages[0].click("#mic")
    for page in pages[1:]:
        expect(tile(page, "Ann")).to_have_attribute("data-audio", "off", timeout=TIMEOUT_S * 1000)
    # A page that leaves the call disappears from the others.
    pages[3].click("#hangup")
    for page in pages[:3]:
        expect(tile(page, "Dee")).to_have_count(0, timeout=TIMEOUT_S * 1000)


# The widths of the video frames a page decodes, from its connection to the node.
INBOUND_WIDTHS = """async () => {
  const widths = [];
  for (const report of (await window.cavloDemo.call.stats()).values()) {
    report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video" && s.frameWidth) widths.push(s.frameWidth); });
  }
  return widths;
}"""


def width_until(page, done, within):
    """Polls the page's one remote video's frame width until `done(width)`; returns it."""
    deadline = time.monotonic() + within
    widths = []
    while time.monotonic() < deadline:
        widths = page.evaluate(INBOUND_WIDTHS)
        if len(widths) == 1 and done(widths[0]):
            return widths[0]
        page.wait_for_timeout(250)
    raise AssertionError(f"frame widths {widths} never as expected")


def test_a_subscriber_asking_for_the_small_layer_gets_it_and_back(media_system, open_demo):
    """Simulcast: Ann sends her camera in layers; Bob gets the largest, asks
    for the small one (as for a small tile) and its frames shrink, then
    asks for the large one again and they grow back."""
    ann, bob = open_call(media_system, open_demo, pages=2)
    decoding(bob, 1)
    # The browser adds its larger layers as its bandwidth estimate grows.
    page_deadline = time.monotonic() + 10
    wide = 0
    while time.monotonic() < page_deadline:
        wide = max([wide, *bob.evaluate(INBOUND_WIDTHS)])
        bob.wait_for_timeout(500)
    assert wide > 0
    ann_conn = bob.evaluate("window.cavloDemo.call.participants[0]")
    bob.evaluate("([conn, quality]) => window.cavloDemo.call.setQuality(conn, quality)", [ann_conn, "low"])
    narrow = width_until(bob, lambda width: width < wide, within=15)
    bob.evaluate("([conn, quality]) => window.cavloDemo.call.setQuality(conn, quality)", [ann_conn, "high"])
    width_until(bob, lambda width: width == wide, within=20)
    decoding(bob, 1)
    record({"mode": "media-layers", "wide": wide, "narrow": narrow})


@pytest.mark.skipif(not os.environ.get("CAVLO_BROWSER_FIGURES"),
                    reason="the mesh comparison runs when figures are recorded (docs/benchmarks.md)")
def test_four_pages_in_a_mesh_send_three_streams_each(system, open_demo):
    """The comparison: without a media service each page sends its camera
    to every other. Not in CI, to keep it under 30 minutes: the command in
    docs/benchmarks.md runs it."""
    pages = open_call(system, open_demo, mesh=True)
    for page in pages:
        assert page.evaluate("window.cavloDemo.call.constructor.name") == "MeshCall"
    for page in pages:
        stats = decoding(page, PAGES - 1)
        assert stats["video"] == PAGES - 1, f"one outbound video per peer: {stats}"
    record({"mode": "mesh", "pages": PAGES, "uplink_kbits": [round(uplink_kbits(p)) for p in pages],
            "outbound_video": [page.evaluate(STATS)["video"] for page in pages]})


def media_holding_the_call(system):
    """The running media node whose participants gauge is not zero: exactly one."""
    holding = []
    for name, addr in system.media_health.items():
        if system.procs[name].poll() is not None:
            continue
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        match = re.search(r"^cavlo_media_participants (\d+)", metrics, re.M)
        if match and int(match.group(1)) > 0:
            holding.append(name)
    assert len(holding) == 1, f"the call is on one node: {holding}"
    return holding[0]


def test_a_killed_media_node_moves_the_call_within_10_s(media_system, open_demo):
    system = media_system
    pages = open_call(system, open_demo)
    for page in pages:
        decoding(page, PAGES - 1)
    holder = media_holding_the_call(system)
    killed = time.monotonic()
    system.kill(holder)
    for page in pages:
        decoding(page, PAGES - 1, within=10 - (time.monotonic() - killed) + 3)
    back = time.monotonic() - killed
    assert media_holding_the_call(system) != holder
    record({"mode": "media-kill", "pages": PAGES, "video_back_s": round(back, 1)})


def test_a_draining_media_node_moves_the_call_within_2_s(media_system, open_demo):
    """From SIGTERM to each page's first decoded frame of the new node's
    tracks: the pages are polled in turn every 100 ms, which the bound's
    0.5 s over the issue's 2 s allows for."""
    system = media_system
    pages = open_call(system, open_demo, pages=2)
    for page in pages:
        decoding(page, 1)
    before = [set(page.evaluate(STATS)["decoded"]) for page in pages]
    holder = media_holding_the_call(system)
    stopped = time.monotonic()
    system.terminate(holder)
    back = [None] * len(pages)
    while None in back and time.monotonic() - stopped < 10:
        for i, page in enumerate(pages):
            if back[i] is None:
                decoded = page.evaluate(STATS)["decoded"]
                if any(frames > 0 for track, frames in decoded.items() if track not in before[i]):
                    back[i] = time.monotonic() - stopped
        pages[0].wait_for_timeout(100)
    assert None not in back, f"no new video after a drain: {back}"
    record({"mode": "media-drain", "pages": 2, "video_back_s": round(max(back), 2)})
    assert max(back) < 2.5, f"video back {max(back):.2f} s after the drain began"
