#!/usr/bin/env bash
# Brings the whole system up with docker compose on this machine, without
# pulling any image: builds every image locally (scripts/offline-images.sh),
# writes .env with fresh secrets if there is none, starts compose.yaml and
# waits until both gateways are ready.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/offline-images.sh

if [ ! -f .env ]; then
  # nats-server parses $VAR references as config values, so a password
  # must read as a plain string: a letter first, then letters and digits.
  secret() { python3 -c 'import secrets; print("k" + secrets.token_hex(24))'; }
  {
    cat .env.example
    echo
    echo "# Written by scripts/up.sh on $(date -u +%Y-%m-%d)."
    echo "CAVLO_NATS_GATEWAY_PASSWORD=$(secret)"
    echo "CAVLO_NATS_MODERATOR_PASSWORD=$(secret)"
    echo "CAVLO_NATS_HISTORY_PASSWORD=$(secret)"
    echo "CAVLO_GATEWAY__AUTH__HS256_SECRET=$(secret)"
    echo "# The demo's development tokens: anyone who can reach a gateway gets in."
    echo "CAVLO_GATEWAY__DEV_TOKENS=true"
    echo "CAVLO_NATS_IMAGE=cavlo-local/nats:2.14.0"
    echo "CAVLO_IMAGE_PREFIX=cavlo-local"
  } > .env
  echo "wrote .env with fresh secrets"
fi

compose() { if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi; }
compose up -d --no-build
set -a; . ./.env; set +a
if ! scripts/wait-ready.sh "${CAVLO_GATEWAY_1_PORT:-8080}" "${CAVLO_GATEWAY_2_PORT:-8081}"; then
  compose ps >&2 || true
  compose logs --tail=20 >&2 || true
  echo "cavlo did not come up; the services' last log lines are above" >&2
  exit 1
fi
echo "cavlo is up: ws://127.0.0.1:${CAVLO_GATEWAY_1_PORT:-8080}/ws and ws://127.0.0.1:${CAVLO_GATEWAY_2_PORT:-8081}/ws"
echo "open http://localhost:${CAVLO_GATEWAY_1_PORT:-8080}/ in two browser windows"
echo "a token for alice: $(scripts/dev-token.sh alice "$CAVLO_GATEWAY__AUTH__HS256_SECRET")"
