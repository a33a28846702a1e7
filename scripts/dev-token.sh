#!/usr/bin/env bash
# Prints a development HS256 token for a user, valid for one hour.
# Usage: scripts/dev-token.sh NAME [SECRET]
# SECRET defaults to $CAVLO_GATEWAY__AUTH__HS256_SECRET, then to the
# secret scripts/run-local.sh uses. For development only. The token is
# signed by `loadgen token`, through schemas::token, like every other
# token cavlo's tools make (built here first if need be).
set -euo pipefail
name="${1:?usage: dev-token.sh NAME [SECRET]}"
secret="${2:-${CAVLO_GATEWAY__AUTH__HS256_SECRET:-local-dev-secret-change-me}}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo run --quiet --release --locked --manifest-path "$root/Cargo.toml" -p loadgen -- \
  token --secret "$secret" "$name"
