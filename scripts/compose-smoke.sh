#!/usr/bin/env bash
# Smoke test of the compose deployment: brings compose.yaml up with locally
# built images (scripts/up.sh), runs `loadgen smoke` through each gateway,
# including the NATS permission check, then short runs of the load modes
# (which fail on any lost, duplicated or reordered message), and always
# takes everything down again (volumes included).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

compose() { if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi; }
teardown() {
  status=$?
  if [ "$status" -ne 0 ]; then compose logs --tail=50 || true; fi
  compose down -v --remove-orphans || true
  exit "$status"
}
trap teardown EXIT

scripts/up.sh
set -a; . ./.env; set +a
target/release/loadgen smoke \
  --gateway "ws://127.0.0.1:${CAVLO_GATEWAY_1_PORT:-8080}/ws" \
  --gateway "ws://127.0.0.1:${CAVLO_GATEWAY_2_PORT:-8081}/ws" \
  --nats-url "nats://127.0.0.1:${CAVLO_NATS_PORT:-4222}"
# Within the default chat limit (100/min per connection): 6 clients, 5/s in all.
target/release/loadgen fanout --rooms 2 --clients 3 --rate 5 --duration 3 \
  --gateway "ws://127.0.0.1:${CAVLO_GATEWAY_1_PORT:-8080}/ws" \
  --gateway "ws://127.0.0.1:${CAVLO_GATEWAY_2_PORT:-8081}/ws"
target/release/loadgen connections --count 200 --hold 1 \
  --gateway "ws://127.0.0.1:${CAVLO_GATEWAY_1_PORT:-8080}/ws"
