#!/usr/bin/env bash
# The checks cargo does not make: the browser SDK and the demo (web/*.js)
# type-checked by TypeScript from their JSDoc types (web/tsconfig.json:
# strict, nothing emitted), and every shell script by shellcheck. Installs
# Debian's node-typescript and shellcheck when they are missing, as on a
# fresh CI machine (that needs root).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

missing=()
command -v tsc >/dev/null || missing+=(node-typescript)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "lint.sh: needs the Debian packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "tsc $(tsc --version): web/"
tsc -p web/tsconfig.json
echo "$(shellcheck --version | sed -n 's/^version: /shellcheck /p'): scripts/, .ci/run, docker/"
shellcheck scripts/*.sh .ci/run docker/ready.sh docker/turn/entrypoint.sh
