#!/usr/bin/env bash
# Writes a settings file for compose.yaml: .env.example's documented
# defaults, then fresh random secrets and the names of the locally built
# images.
#
#   scripts/new-env.sh FILE
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
file="${1:?usage: new-env.sh FILE}"
# nats-server parses $VAR references as config values, so a password must
# read as a plain string: a letter first, then letters and digits.
secret() { python3 -c 'import secrets; print("k" + secrets.token_hex(24))'; }
umask 077
{
  cat "$root/.env.example"
  echo
  echo "# Written by scripts/new-env.sh on $(date -u +%Y-%m-%d)."
  echo "CAVLO_NATS_GATEWAY_PASSWORD=$(secret)"
  echo "CAVLO_NATS_MODERATOR_PASSWORD=$(secret)"
  echo "CAVLO_NATS_HISTORY_PASSWORD=$(secret)"
  echo "CAVLO_NATS_ARCHIVER_PASSWORD=$(secret)"
  echo "CAVLO_NATS_MEDIA_PASSWORD=$(secret)"
  echo "CAVLO_GATEWAY__AUTH__HS256_SECRET=$(secret)"
  echo "CAVLO_TURN_SECRET=$(secret)"
  echo "# The demo's development tokens: anyone who can reach a gateway gets in."
  echo "CAVLO_GATEWAY__DEV_TOKENS=true"
  echo "CAVLO_NATS_IMAGE=cavlo-local/nats:2.14.0"
  echo "CAVLO_IMAGE_PREFIX=cavlo-local"
} > "$file"
