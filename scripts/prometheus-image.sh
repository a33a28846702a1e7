#!/usr/bin/env bash
# Builds the local Prometheus image (Debian's prometheus package on the
# local Debian base, with docker/prometheus/prometheus.yml) for compose's
# monitoring profile, so nothing is pulled from a container registry.
# Prints the image name.
set -euo pipefail

IMAGE="${CAVLO_PROMETHEUS_IMAGE:-cavlo-local/prometheus:2.42}"
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  base="$("$root/scripts/debian-base.sh")"
  docker build --quiet --build-arg "BASE=$base" --tag "$IMAGE" "$root/docker/prometheus" >/dev/null
fi
echo "$IMAGE"
