#!/usr/bin/env bash
# Builds the local TURN image (Debian's coturn package on the local Debian
# base, with docker/turn/turnserver.conf) for compose's `turn` service and
# the browser tests, so nothing is pulled from a container registry.
# Prints the image name.
set -euo pipefail

IMAGE="${CAVLO_TURN_IMAGE:-cavlo-local/turn:4.6}"
root="$(cd "$(dirname "$0")/.." && pwd)"

base="$("$root/scripts/debian-base.sh")"
docker build --quiet --build-arg "BASE=$base" --tag "$IMAGE" "$root/docker/turn" >/dev/null
echo "$IMAGE"
