"""A whole cavlo system of real processes, and a real Chromium, for the demo tests.

The system is nats-server (the binary scripts/nats-server.sh provides) and
the release binaries of history, moderator and two gateways, on free
loopback ports, with development tokens on; with `media_system`, two media
nodes too, on loopback UDP. Each test gets a fresh one.
With `turn_system`, the gateways hand out TURN credentials for compose's
coturn image (CAVLO_TURN_IMAGE, built by scripts/turn-image.sh), run on
this host's loopback.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
CHROMIUM = os.environ.get("CAVLO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
OUT = ROOT / "target" / "browser-tests"
STARTUP_SECONDS = 30
TURN_IMAGE = os.environ.get("CAVLO_TURN_IMAGE", "cavlo-local/turn:4.6")
TURN_SECRET = "browser-test-turn-secret"
# Relay ports for the test's coturn: apart from compose's (49160-49199).
TURN_RELAY_PORTS = (49500, 49539)

sys.path.insert(0, str(ROOT / "tests" / "compose"))
import turn_refuses_strangers  # noqa: E402  (the same STUN check as the compose smoke)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url):
    """Polls url until it answers 200: a new process has no other way to say it is ready."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never became ready")
        time.sleep(0.1)


class System:
    def __init__(self, tmp, gateway_env=None, moderator_env=None, media_nodes=0):
        self.tmp = tmp
        self.procs = {}
        self.gateway_ports = [free_port(), free_port()]
        nats_port, monitor_port = free_port(), free_port()
        origins = ",".join(f"http://127.0.0.1:{p}" for p in self.gateway_ports)
        self.env = {
            **os.environ,
            "CAVLO_NATS__URL": f"nats://127.0.0.1:{nats_port}",
            "CAVLO_GATEWAY__AUTH__HS256_SECRET": "browser-test-secret",
            "CAVLO_GATEWAY__DEV_TOKENS": "true",
            "CAVLO_GATEWAY__ALLOWED_ORIGINS": f"[{origins}]",
            "CAVLO_LOG__FILTER": "warn",
            # A page still open at teardown keeps a draining gateway for its
            # drain; no test here measures the gateway's drain (the fault
            # suite does).
            "CAVLO_GATEWAY__DRAIN_TIMEOUT": "1s",
        }
        nats = subprocess.check_output([ROOT / "scripts" / "nats-server.sh"], text=True).strip()
        self.start("nats", [nats, "--jetstream", "--store_dir", str(tmp / "js"), "--addr", "127.0.0.1",
                            "--port", str(nats_port), "--http_port", str(monitor_port)])
        wait_for(f"http://127.0.0.1:{monitor_port}/healthz")
        self.start("history", [BIN / "history"])
        self.start("moderator", [BIN / "moderator"], **(moderator_env or {}))
        self.media_ports = []
        self.media_health = {}
        for i in range(media_nodes):
            self.start_media(i)
        for i, port in enumerate(self.gateway_ports):
            # The demo page may connect to its own gateway and fail over to the other one.
            other = self.gateway_ports[1 - i]
            self.start(f"gateway{i + 1}", [BIN / "gateway"], CAVLO_GATEWAY__LISTEN=f"127.0.0.1:{port}",
                       CAVLO_GATEWAY__ID=f"gateway-{i + 1}",
                       CAVLO_GATEWAY__DEMO_GATEWAYS=f"[ws://127.0.0.1:{other}/ws]", **(gateway_env or {}))
        for port in self.gateway_ports:
            wait_for(f"http://127.0.0.1:{port}/ready")
        self.wait_for_media(media_nodes)

    def start_media(self, i):
        """Media node `i` on a free loopback UDP port, which browsers reach
        directly (its advertised address); its health on a free TCP port."""
        udp, health = free_port(socket.SOCK_DGRAM), free_port()
        self.media_ports.append(udp)
        self.media_health[f"media{i + 1}"] = f"127.0.0.1:{health}"
        self.start(f"media{i + 1}", [BIN / "media"], CAVLO_MEDIA__UDP_LISTEN=f"127.0.0.1:{udp}",
                   CAVLO_HEALTH__LISTEN=f"127.0.0.1:{health}")
        wait_for(f"http://127.0.0.1:{health}/ready")

    def wait_for_media(self, count):
        """Until every gateway has heard `count` media nodes' heartbeats."""
        deadline = time.monotonic() + STARTUP_SECONDS
        for port in self.gateway_ports:
            while self.health(port)["media_nodes"] != count:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway {port} did not hear {count} media nodes")
                time.sleep(0.1)

    @staticmethod
    def health(port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return json.load(r)

    def start(self, name, argv, **env):
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen([str(a) for a in argv], env={**self.env, **env}, stdout=log, stderr=log)

    def kill(self, name):
        self.procs[name].kill()
        self.procs[name].wait()

    def terminate(self, name):
        """SIGTERM: the service drains and stops; returns at once."""
        self.procs[name].terminate()

    def stop(self):
        """The gateways first, then the other services, then NATS, as an
        operator would: a service stopping while what it needs is already
        gone waits out its timeouts. Every test spent 15 s here when NATS
        stopped with the others, and a call test 10 s when the gateway
        holding its pages told a moderator already gone that they left."""
        gateways = [proc for name, proc in self.procs.items() if name.startswith("gateway")]
        backend = [proc for name, proc in self.procs.items() if name != "nats" and proc not in gateways]
        for group in (gateways, backend, [self.procs["nats"]]):
            for proc in group:
                proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()

    def connections(self, i):
        """How many WebSocket connections gateway `i` serves, by its /health."""
        return self.health(self.gateway_ports[i])["connections"]

    def page_url(self, own, other):
        """The demo on gateway `own`, failing over to gateway `other`."""
        return (f"http://127.0.0.1:{self.gateway_ports[own]}/"
                f"?gateways=ws://127.0.0.1:{self.gateway_ports[other]}/ws")


@pytest.fixture
def system(tmp_path):
    system = System(tmp_path)
    yield system
    system.stop()


class Turn:
    """coturn from compose's image on this host's loopback (host network), so
    that it relays between pages on the same machine, where each page's
    peer is the other's relay address, 127.0.0.1."""

    def __init__(self):
        self.port = free_port()
        self.url = f"turn:127.0.0.1:{self.port}"
        self.container = subprocess.check_output([
            "docker", "run", "-d", "--rm", "--network", "host",
            "-e", f"CAVLO_TURN_SECRET={TURN_SECRET}", TURN_IMAGE,
            "--listening-ip=127.0.0.1", f"--listening-port={self.port}",
            f"--min-port={TURN_RELAY_PORTS[0]}", f"--max-port={TURN_RELAY_PORTS[1]}",
            # Loopback peers are refused unless allowed outright, even as the
            # relay's own address; only this test, all on one host, needs it.
            "--allow-loopback-peers",
        ], text=True).strip()
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if turn_refuses_strangers.check(("127.0.0.1", self.port)) is None:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("coturn never answered")
            time.sleep(0.2)

    def stop(self):
        subprocess.run(["docker", "rm", "-f", self.container], stdout=subprocess.DEVNULL, check=False)


@pytest.fixture
def media_system(tmp_path):
    """The system with two media nodes: calls go through the media service."""
    system = System(tmp_path, media_nodes=2)
    yield system
    system.stop()


def with_turn(tmp_path, media_nodes=0):
    """A system whose gateways hand out credentials for a real coturn."""
    turn = Turn()
    try:
        system = System(tmp_path, media_nodes=media_nodes, gateway_env={
            "CAVLO_GATEWAY__ICE__TURN_URLS": f"[{turn.url}]",
            "CAVLO_GATEWAY__ICE__TURN_SECRET": TURN_SECRET,
        })
        system.turn = turn
        yield system
        system.stop()
    finally:
        turn.stop()


@pytest.fixture
def turn_system(tmp_path):
    """The system with the gateways handing out credentials for a real coturn."""
    yield from with_turn(tmp_path)


@pytest.fixture
def turn_media_system(tmp_path):
    """The same, with a media node: calls reach it through the relay."""
    yield from with_turn(tmp_path, media_nodes=1)


@pytest.fixture
def short_token_system(tmp_path):
    """The same, with development tokens valid for 8 s."""
    system = System(tmp_path, gateway_env={"CAVLO_GATEWAY__DEV_TOKEN_TTL": "8s"})
    yield system
    system.stop()


@pytest.fixture
def chatty_system(tmp_path):
    """The same, with chat limits high enough for a corpus sent at once."""
    system = System(tmp_path, moderator_env={
        "CAVLO_MODERATOR__CHAT_RATE_PER_MINUTE": "6000",
        "CAVLO_MODERATOR__CHAT_BURST": "200",
    })
    yield system
    system.stop()


# Runs in every page before its own scripts: records what a successful
# injection would do (an alert) and any Content-Security-Policy violation.
WATCH = """
window.__alerts = [];
window.alert = (message) => window.__alerts.push(String(message));
window.__csp = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture(scope="session")
def browser():
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def open_demo(browser):
    """Opens the demo at `url` and enters `room` as `name`."""
    contexts = []

    def open_demo(url, name, room):
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        context.add_init_script(WATCH)
        contexts.append(context)
        page = context.new_page()
        # Every text frame the page's sockets receive, for tests that must
        # see the server's answer itself (not the request that asked).
        page.frames_received = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: page.frames_received.append(payload)))
        page.goto(url)
        page.fill("#name", name)
        page.fill("#room", room)
        page.click("#login button")
        expect(page.locator("#status")).to_have_text("open")
        expect(page.locator("#login")).to_be_hidden()
        return page

    yield open_demo
    for context in contexts:
        context.close()
