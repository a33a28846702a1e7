#!/usr/bin/env bash
# The Autobahn|Testsuite WebSocket conformance cases (kosoku's native runner)
# against the gateway's own socket stack: a debug gateway built with the
# `conformance` feature echoes at /conformance/echo with the same handshake,
# limits and close handling as /ws. Two runs:
#   1. every case on default settings: messages past gateway.max_frame_bytes
#      must be refused with a clean 1009 close;
#   2. section 9 (messages up to 16 MiB) with the limit raised to 16 MiB:
#      every case must pass.
# tests/conformance/verdict.py judges each run; reports go to
# target/autobahn/. Ports: CAVLO_AUTOBAHN_PORT (18299) for the gateway and
# the next one for its nats-server.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

port="${CAVLO_AUTOBAHN_PORT:-18299}"
nats_port=$((port + 1))
out="$root/target/autobahn"
rm -rf "$out"
mkdir -p "$out"

python3 -m pip install --quiet --disable-pip-version-check --require-hashes \
  -r tests/conformance/requirements.txt
kosoku="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/kosoku"
nats="$(scripts/nats-server.sh)"
cargo build --locked -p gateway --features conformance --bin gateway

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$nats" -a 127.0.0.1 -p "$nats_port" > "$out/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
  sleep 0.2
done

# Runs the cases in $1 (a kosoku glob) against a gateway whose largest
# message is $2 bytes, and judges them with the verdict's extra flags.
run() {
  local name="$1" include="$2" max_frame="$3"
  shift 3
  CAVLO_NATS__URL="nats://127.0.0.1:$nats_port" \
    CAVLO_GATEWAY__LISTEN="127.0.0.1:$port" \
    CAVLO_HEALTH__LISTEN="127.0.0.1:0" \
    CAVLO_GATEWAY__MAX_FRAME_BYTES="$max_frame" \
    CAVLO_GATEWAY__AUTH__HS256_SECRET="conformance-run-only-0123456789abcdef" \
    target/debug/gateway > "$out/gateway-$name.log" 2>&1 &
  local gateway=$!
  pids+=("$gateway")
  scripts/wait-ready.sh "$port"
  echo "autobahn: $name ($include, max_frame_bytes $max_frame)"
  # kosoku's exit code counts deflate's UNIMPLEMENTED cases as failures;
  # the verdict decides.
  "$kosoku" --parallelism 2 --include "$include" --outdir "$out/$name" \
    "ws://127.0.0.1:$port/conformance/echo" > "$out/kosoku-$name.log" 2>&1 || true
  kill "$gateway"
  wait "$gateway" 2>/dev/null || true
  python3 tests/conformance/verdict.py "$out/$name" "$@"
}

run default '*' 131072 --cases 517 --limit-closes
run large '9.*' 16777216 --cases 54
echo "autobahn: ok"
