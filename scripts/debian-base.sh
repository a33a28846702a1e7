#!/usr/bin/env bash
# Builds the local Debian base image (bookworm, minbase, plus CA certificates
# and wget for health checks) with debootstrap, for machines that cannot pull
# images. Prints the image name. Needs root and Debian's package mirror.
set -euo pipefail

IMAGE="${CAVLO_BASE_IMAGE:-cavlo-local/debian:bookworm}"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  if ! command -v debootstrap >/dev/null; then
    apt-get update -qq >&2
    apt-get install -y -qq debootstrap >&2
  fi
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=ca-certificates,wget bookworm "$rootfs" http://deb.debian.org/debian >&2
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$IMAGE" >/dev/null
fi
echo "$IMAGE"
