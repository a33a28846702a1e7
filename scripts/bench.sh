#!/usr/bin/env bash
# Runs one benchmark against a fresh local system: nats-server, history, a
# moderator and two gateways as processes on this machine (loopback only),
# with chat rate limits lifted and room for many connections. Prints the
# loadgen report and each process's CPU seconds during the run.
#
#   scripts/bench.sh fanout --rooms 10 --clients 10 --duration 20
#   scripts/bench.sh connections --count 100000 --sources 8
#   scripts/bench.sh interest --rooms 10 --clients 10 --duration 10
#
# `interest` runs fanout with every client on gateway 1 and reports what
# gateway 2 received from NATS meanwhile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mode="${1:?usage: bench.sh fanout|connections|interest [loadgen options]}"
shift

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --bins >&2
nats_server="$(scripts/nats-server.sh)"
state="$(mktemp -d)"
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$state"; }
trap stop EXIT

export CAVLO_LOG__FILTER=warn
export CAVLO_NATS__URL=nats://127.0.0.1:14222
export CAVLO_GATEWAY__AUTH__HS256_SECRET=bench-secret
export CAVLO_GATEWAY__MAX_CONNECTIONS=250000
export CAVLO_MODERATOR__CHAT_RATE_PER_MINUTE=100000000
export CAVLO_MODERATOR__CHAT_BURST=1000000
export CAVLO_MODERATOR__ROOM_CAPACITY=1000

"$nats_server" --jetstream --store_dir "$state/js" --addr 127.0.0.1 --port 14222 --http_port 18222 >"$state/nats.log" 2>&1 &
pids+=($!); nats_pid=$!
for _ in $(seq 100); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:18222/healthz")' 2>/dev/null && break
  sleep 0.1
done
target/release/history & pids+=($!); history_pid=$!
target/release/moderator & pids+=($!); moderator_pid=$!
CAVLO_GATEWAY__LISTEN=127.0.0.1:18080 target/release/gateway & pids+=($!); gw1_pid=$!
CAVLO_GATEWAY__LISTEN=127.0.0.1:18081 target/release/gateway & pids+=($!); gw2_pid=$!
for port in 18080 18081; do
  for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/ready')" 2>/dev/null && break
    sleep 0.1
  done
done

# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# Messages and bytes NATS has sent to gateway 2's connection.
gw2_in() {
  python3 - <<'PY'
import json, urllib.request
conns = json.load(urllib.request.urlopen("http://127.0.0.1:18222/connz?limit=1024"))["connections"]
gw = [c for c in conns if c.get("name") == "gateway"]
gw.sort(key=lambda c: c["cid"])
print(gw[-1]["out_msgs"], gw[-1]["out_bytes"]) if gw else print(0, 0)
PY
}

declare -A before
for name in nats history moderator gw1 gw2; do pid_var="${name}_pid"; before[$name]=$(cpu "${!pid_var}"); done
loadgen=(target/release/loadgen --secret bench-secret)
case "$mode" in
  fanout)
    "${loadgen[@]}" fanout --gateway ws://127.0.0.1:18080/ws --gateway ws://127.0.0.1:18081/ws "$@" ;;
  interest)
    read -r msgs0 bytes0 < <(gw2_in)
    "${loadgen[@]}" fanout --gateway ws://127.0.0.1:18080/ws "$@"
    read -r msgs1 bytes1 < <(gw2_in)
    echo "gateway 2 received from NATS meanwhile: $((msgs1 - msgs0)) messages, $((bytes1 - bytes0)) bytes" ;;
  connections)
    "${loadgen[@]}" connections --gateway ws://127.0.0.1:18080/ws --gateway-pid "$gw1_pid" "$@" ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
echo "CPU seconds during the run:"
for name in nats history moderator gw1 gw2; do
  pid_var="${name}_pid"
  printf '  %-10s %s\n' "$name" "$(awk -v a="${before[$name]}" -v b="$(cpu "${!pid_var}")" 'BEGIN { printf "%.2f", b - a }')"
done
