#!/usr/bin/env bash
# Smoke test of the compose deployment: brings compose.yaml up with locally
# built images (scripts/up.sh), runs `loadgen smoke` through each gateway,
# including the NATS permission check, and always takes everything down
# again (volumes included).
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
