#!/usr/bin/env bash
# The demo app in a real browser: installs Debian's chromium and the Python
# test requirements if missing, builds the release binaries, and runs
# tests/browser (Playwright drives chromium with fake camera and
# microphone; calls also go through coturn's image, see scripts/turn-image.sh). Screenshots go to target/browser-tests/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -r tests/browser/requirements.txt
cargo build --release --locked --bins
# The TURN relay of compose, for the relay-only call.
CAVLO_TURN_IMAGE="$(scripts/turn-image.sh)"
export CAVLO_TURN_IMAGE
python3 -m pytest tests/browser -q --durations=8
