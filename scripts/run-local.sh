#!/usr/bin/env bash
# Runs the whole system on this machine without Docker: nats-server with
# JetStream, history, moderator and two gateways (ws://127.0.0.1:8080/ws and
# ws://127.0.0.1:8081/ws). Ctrl-C stops everything. Settings come from the
# environment as documented in .env.example.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

cargo build --release --locked --bins
nats_server="$(scripts/nats-server.sh)"
state="$root/target/run"
mkdir -p "$state"

export CAVLO_NATS__URL="${CAVLO_NATS__URL:-nats://127.0.0.1:4222}"
export CAVLO_GATEWAY__AUTH__HS256_SECRET="${CAVLO_GATEWAY__AUTH__HS256_SECRET:-local-dev-secret-change-me}"
export CAVLO_GATEWAY__DEV_TOKENS="${CAVLO_GATEWAY__DEV_TOKENS:-true}"

pids=()
stop() {
  trap - EXIT INT TERM
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$nats_server" --jetstream --store_dir "$state/jetstream" --addr 127.0.0.1 --port 4222 --http_port 8222 &
pids+=($!)
for _ in $(seq 50); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8222/healthz")' 2>/dev/null && break
  sleep 0.1
done

target/release/history & pids+=($!)
target/release/moderator & pids+=($!)
CAVLO_GATEWAY__LISTEN=127.0.0.1:8080 CAVLO_GATEWAY__ID=gw-1 target/release/gateway & pids+=($!)
CAVLO_GATEWAY__LISTEN=127.0.0.1:8081 CAVLO_GATEWAY__ID=gw-2 target/release/gateway & pids+=($!)

cat <<MSG

cavlo is running: open http://localhost:8080/ in two browser windows
(gateways: ws://127.0.0.1:8080/ws and ws://127.0.0.1:8081/ws)
health:            http://127.0.0.1:8080/health
a token for alice: $(scripts/dev-token.sh alice)
Ctrl-C stops everything.

MSG
wait -n "${pids[@]}"
