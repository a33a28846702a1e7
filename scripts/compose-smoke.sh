#!/usr/bin/env bash
# Smoke test of the compose deployment: brings compose.yaml up with locally
# built images (scripts/up.sh), runs `loadgen smoke` through each gateway,
# including the NATS permission check, then short runs of the load modes
# (which fail on any lost, duplicated or reordered message or any message
# not acked), checks that Prometheus (the monitoring profile) has a sample
# of every service, the archiver (its profile) included, that the TURN
# relay answers, refuses strangers, relays to public peers only and holds
# a user to its quota, that every container ends the run
# running, healthy where it has a health check and never restarted (a
# crash loop must not pass), that ports are published only as documented
# (NATS and Prometheus on loopback, no health port), and on the 3-node cluster that the chat stream
# and the rooms bucket really have 3 replicas; it always takes everything
# down again (volumes included).
# It runs as its own compose project, with its own settings file and ports,
# so it never touches a deployment started with scripts/up.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

export COMPOSE_PROJECT_NAME=cavlo-smoke
export CAVLO_GATEWAY_1_PORT=28080 CAVLO_GATEWAY_2_PORT=28081 CAVLO_NATS_PORT=24222
export CAVLO_PROMETHEUS_PORT=29091 COMPOSE_PROFILES=monitoring,archiver
export CAVLO_TURN_PORT=23478 CAVLO_TURN_RELAY_PORTS=29160-29199
export CAVLO_MEDIA_1_PORT=20000 CAVLO_MEDIA_2_PORT=20001
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
media_nodes=1
case "${COMPOSE_FILE:-}" in *compose.cluster.yaml*) media_nodes=2 ;; esac
python3 tests/compose/prometheus_has_every_service.py "http://127.0.0.1:$CAVLO_PROMETHEUS_PORT" "$media_nodes"
# The TURN relay answers STUN and is no open relay.
python3 tests/compose/turn_refuses_strangers.py 127.0.0.1 "$CAVLO_TURN_PORT"
# With the gateways' credentials: public peers only, and the user quota.
python3 tests/compose/turn_limits.py 127.0.0.1 "$CAVLO_TURN_PORT"
# Every container ends the run as it should: running, healthy if it has a
# health check, and never restarted.
unsound=0
for id in $(compose ps -q); do
  read -r name state health restarts < <(docker inspect -f \
    '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' "$id")
  if [ "$state" != running ] || [ "$restarts" != 0 ] || { [ "$health" != healthy ] && [ "$health" != none ]; }; then
    echo "${name#/}: $state, health $health, restarted $restarts times" >&2
    unsound=1
  fi
done
[ "$unsound" = 0 ] || { echo "a container is not running, not healthy, or restarted" >&2; exit 1; }
echo "every container running, healthy and never restarted"
# Published as docs/operations.md says: gateways and TURN to every
# address, NATS and Prometheus to loopback only, health ports never.
# shellcheck disable=SC2046 # one argument per container id
docker inspect $(compose ps -q) | python3 tests/compose/published_ports.py
# On the cluster: 3 nodes, and 3 replicas of the chat stream and rooms bucket.
case "${COMPOSE_FILE:-}" in
  *compose.cluster.yaml*)
    docker exec "$(compose ps -q nats)" wget -qO- 'http://127.0.0.1:8222/jsz?streams=true&config=true' |
      python3 tests/compose/cluster_replicas.py ;;
esac
