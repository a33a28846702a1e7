#!/usr/bin/env bash
# Builds the local NATS image (nats-server v2.14.0 on the local Debian base)
# from the binary scripts/nats-server.sh provides, so nothing is pulled from
# a container registry. Prints the image name.
set -euo pipefail

IMAGE="${CAVLO_NATS_IMAGE:-cavlo-local/nats:2.14.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  base="$("$root/scripts/debian-base.sh")"
  binary="$("$root/scripts/nats-server.sh")"
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  cp "$binary" "$context/nats-server"
  cp "$root/docker/nats/Dockerfile" "$context/Dockerfile"
  docker build --quiet --build-arg "BASE=$base" --tag "$IMAGE" "$context" >/dev/null
fi
echo "$IMAGE"
