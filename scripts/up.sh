#!/usr/bin/env bash
# Brings the whole system up with docker compose on this machine, without
# pulling any image: builds every image locally (scripts/offline-images.sh),
# writes .env with fresh secrets if there is none (scripts/new-env.sh),
# starts compose.yaml and waits until both gateways are ready.
# COMPOSE_PROFILES=monitoring adds Prometheus.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/offline-images.sh

# CAVLO_ENV_FILE picks another settings file (the smoke and fault suites
# use their own, so they never touch a deployment started from .env).
export CAVLO_ENV_FILE="${CAVLO_ENV_FILE:-.env}"
if [ ! -f "$CAVLO_ENV_FILE" ]; then
  scripts/new-env.sh "$CAVLO_ENV_FILE"
  echo "wrote $CAVLO_ENV_FILE with fresh secrets"
fi

compose() { if docker compose version >/dev/null 2>&1; then docker compose --env-file "$CAVLO_ENV_FILE" "$@"; else docker-compose --env-file "$CAVLO_ENV_FILE" "$@"; fi; }
compose up -d --no-build
set -a
# shellcheck source=/dev/null # a settings file written at run time (new-env.sh)
. "$CAVLO_ENV_FILE"
set +a
if ! scripts/wait-ready.sh "${CAVLO_GATEWAY_1_PORT:-8080}" "${CAVLO_GATEWAY_2_PORT:-8081}"; then
  compose ps >&2 || true
  compose logs --tail=20 >&2 || true
  echo "cavlo did not come up; the services' last log lines are above" >&2
  exit 1
fi
echo "cavlo is up: ws://127.0.0.1:${CAVLO_GATEWAY_1_PORT:-8080}/ws and ws://127.0.0.1:${CAVLO_GATEWAY_2_PORT:-8081}/ws"
echo "open http://localhost:${CAVLO_GATEWAY_1_PORT:-8080}/ in two browser windows"
echo "a token for alice: $(scripts/dev-token.sh alice "$CAVLO_GATEWAY__AUTH__HS256_SECRET")"
case ",${COMPOSE_PROFILES:-}," in
  *,monitoring,*) echo "Prometheus: http://127.0.0.1:${CAVLO_PROMETHEUS_PORT:-9091}/ (docs/operations.md)" ;;
esac
