#!/usr/bin/env bash
# Runs every test: unit and integration tests (nats-server in Docker through
# testcontainers), the Autobahn WebSocket cases, the compose smoke test, the
# demo in a real browser, the load verdict against deliberate breaks, then
# the short fault suite. CAVLO_TEST_NATS_IMAGE
# names the NATS image; unless it is set, the image is built locally
# (scripts/nats-image.sh), so no registry is needed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if [ -z "${CAVLO_TEST_NATS_IMAGE:-}" ]; then
  CAVLO_TEST_NATS_IMAGE="$(scripts/nats-image.sh)"
  export CAVLO_TEST_NATS_IMAGE
fi
echo "testing against NATS image $CAVLO_TEST_NATS_IMAGE"
# Each step says when it began: the whole run must stay under 30 minutes.
step() { echo "== $* ($SECONDS s into the tests)"; }
# The browser SDK's unit tests; every server frame they deliver is recorded
# and must be one the gateway's types could send.
mkdir -p target/sdk
CAVLO_SDK_FRAMES="$root/target/sdk/server-frames.jsonl"
rm -f "$CAVLO_SDK_FRAMES"
step "SDK unit tests"
CAVLO_SDK_FRAMES="$CAVLO_SDK_FRAMES" node --test tests/sdk/
cargo run --locked --quiet -p schemas --example check_sdk_frames -- "$CAVLO_SDK_FRAMES"
step "cargo test"
cargo test --workspace --locked
# RFC 6455: the Autobahn|Testsuite cases against the gateway's socket stack.
step "Autobahn"
scripts/autobahn.sh
step "compose smoke, single node"
scripts/compose-smoke.sh
# The same on a 3-node NATS cluster (chat stream and rooms bucket on 3 replicas).
step "compose smoke, cluster"
COMPOSE_FILE=compose.yaml:compose.cluster.yaml scripts/compose-smoke.sh
step "browser tests"
scripts/browser-test.sh
# The load verdict fails on a system broken on purpose (acks without seq,
# repeated acks, deliveries dropped, doubled, reordered or misrouted) and
# passes the same run unbroken: what the fault suite below stands on.
step "verdict breaks"
scripts/verdict-breaks.sh
# The short fault suite: the cluster deployment under load through every
# fault (a gateway, a moderator, the stream's NATS leader or another node
# killed, the whole NATS cluster restarted, a gateway stopped, a gateway or
# a NATS node cut off the network, a client that stops reading), then the
# operations runs: a rolling restart of every service and NATS node, and
# scaling out and in (with the archiver started live). Nothing acked may
# be lost, duplicated, reordered or misdelivered, every message must be
# acked, and each run must show its fault's effects from outside and end
# with every service healthy (faults.sh says which). The full suite is
# `scripts/faults.sh` (docs/reliability.md, docs/operations.md).
step "short fault suite"
scripts/faults.sh --short kill-gateway kill-moderator kill-nats-leader kill-nats-follower \
  restart-nats stop-gateway cut-gateway cut-nats slow-consumer rolling-restart scale
step "done"
