#!/usr/bin/env bash
# Smoke test of the compose deployment: brings compose.yaml up with locally
# built images (scripts/up.sh), runs `loadgen smoke` through each gateway,
# including the NATS permission check, then short runs of the load modes
# (which fail on any lost, duplicated or reordered message or any message
# not acked), checks that Prometheus (the monitoring profile) has a sample
# of every service, the archiver (its profile) included, that the TURN
# relay answers and refuses strangers, and always takes everything down again (volumes
# included).
# It runs as its own compose project, with its own settings file and ports,
# so it never touches a deployment started with scripts/up.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

export COMPOSE_PROJECT_NAME=cavlo-smoke
export CAVLO_GATEWAY_1_PORT=28080 CAVLO_GATEWAY_2_PORT=28081 CAVLO_NATS_PORT=24222
export CAVLO_PROMETHEUS_PORT=29091 COMPOSE_PROFILES=monitoring,archiver
export CAVLO_TURN_PORT=23478 CAVLO_TURN_RELAY_PORTS=29160-29199
mkdir -p target/compose
export CAVLO_ENV_FILE="$root/target/compose/smoke.env"
scripts/new-env.sh "$CAVLO_ENV_FILE"
compose() { if docker compose version >/dev/null 2>&1; then docker compose --env-file "$CAVLO_ENV_FILE" "$@"; else docker-compose --env-file "$CAVLO_ENV_FILE" "$@"; fi; }
teardown() {
  status=$?
  if [ "$status" -ne 0 ]; then compose logs --tail=50 || true; fi
  compose down -v --remove-orphans || true
  exit "$status"
}
trap teardown EXIT

scripts/up.sh
set -a
# shellcheck source=/dev/null # a settings file written at run time (new-env.sh)
. "$CAVLO_ENV_FILE"
set +a
target/release/loadgen smoke \
  --gateway "ws://127.0.0.1:$CAVLO_GATEWAY_1_PORT/ws" \
  --gateway "ws://127.0.0.1:$CAVLO_GATEWAY_2_PORT/ws" \
  --nats-url "nats://127.0.0.1:$CAVLO_NATS_PORT"
# Within the default chat limit (100/min per connection): 6 clients, 5/s in all.
target/release/loadgen fanout --rooms 2 --clients 3 --rate 5 --duration 3 \
  --gateway "ws://127.0.0.1:$CAVLO_GATEWAY_1_PORT/ws" \
  --gateway "ws://127.0.0.1:$CAVLO_GATEWAY_2_PORT/ws"
target/release/loadgen connections --count 200 --hold 1 \
  --gateway "ws://127.0.0.1:$CAVLO_GATEWAY_1_PORT/ws"
# Prometheus scrapes every 5 s: within a minute every service has a sample.
python3 tests/compose/prometheus_has_every_service.py "http://127.0.0.1:$CAVLO_PROMETHEUS_PORT"
# The TURN relay answers STUN and is no open relay.
python3 tests/compose/turn_refuses_strangers.py 127.0.0.1 "$CAVLO_TURN_PORT"
