#!/usr/bin/env bash
# Waits until /ready answers 200 on each given port of this machine, for at
# most 120 s each. Exits non-zero, naming the port, if one never does.
#
#   scripts/wait-ready.sh 8080 8081
set -euo pipefail
for port in "$@"; do
  ready=""
  for _ in $(seq 120); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/ready', timeout=2)" 2>/dev/null; then
      ready=yes
      break
    fi
    sleep 1
  done
  [ -n "$ready" ] || { echo "nothing ready on port $port after 120 s" >&2; exit 1; }
done
