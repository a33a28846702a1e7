# shellcheck shell=bash
# Sourced, not run: a fresh local cavlo system for benchmarks and verdict
# checks (scripts/bench.sh, scripts/verdict-breaks.sh). nats-server with
# JetStream, history, a moderator, two gateways and a media node as
# processes on this machine (loopback only: NATS on 14222, gateways on
# 18080 and 18081, media on UDP 18300),
# with chat rate limits lifted and room for many connections. Tokens are
# signed with the secret `bench-secret`.
#
#   start_system DIR   starts the services built in DIR (target/release)
#   stop_system        stops them and removes their state (also on exit)
#
# After start_system, pid[NAME] is each process's id (names: nats history
# moderator gw1 gw2 media) and $state the directory holding their logs.

nats_server="$(scripts/nats-server.sh)"
# shellcheck disable=SC2034 # used by the scripts that source this one
names=(nats history moderator gw1 gw2 media)
declare -A pid
state=""

export CAVLO_LOG__FILTER=warn
export CAVLO_NATS__URL=nats://127.0.0.1:14222
export CAVLO_GATEWAY__AUTH__HS256_SECRET=bench-secret
export CAVLO_GATEWAY__MAX_CONNECTIONS=250000
export CAVLO_MODERATOR__CHAT_RATE_PER_MINUTE=100000000
export CAVLO_MODERATOR__CHAT_BURST=1000000
export CAVLO_MODERATOR__ROOM_CAPACITY=1000

wait_for() {
  for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('$1')" 2>/dev/null && return
    sleep 0.1
  done
  echo "local system: $1 did not answer" >&2
  return 1
}

# Starts nats-server and the services built in directory $1; their logs go
# to the state directory, so reports stay readable.
start_system() {
  local bin="$1"
  state="$(mktemp -d)"
  "$nats_server" --jetstream --store_dir "$state/js" --addr 127.0.0.1 --port 14222 --http_port 18222 >"$state/nats.log" 2>&1 &
  pid[nats]=$!
  wait_for http://127.0.0.1:18222/healthz
  "$bin/history" >"$state/history.log" 2>&1 & pid[history]=$!
  "$bin/moderator" >"$state/moderator.log" 2>&1 & pid[moderator]=$!
  # Each gateway's NATS connection has its own name, to find it in connz.
  CAVLO_GATEWAY__LISTEN=127.0.0.1:18080 CAVLO_NATS__NAME=gw1 "$bin/gateway" >"$state/gw1.log" 2>&1 & pid[gw1]=$!
  CAVLO_GATEWAY__LISTEN=127.0.0.1:18081 CAVLO_NATS__NAME=gw2 "$bin/gateway" >"$state/gw2.log" 2>&1 & pid[gw2]=$!
  CAVLO_MEDIA__UDP_LISTEN=127.0.0.1:18300 CAVLO_HEALTH__LISTEN=127.0.0.1:18301 "$bin/media" >"$state/media.log" 2>&1 & pid[media]=$!
  wait_for http://127.0.0.1:18080/ready
  wait_for http://127.0.0.1:18081/ready
  wait_for http://127.0.0.1:18301/ready
}

# The gateways first, then the other services, then NATS, as an operator
# would: a gateway stopping beside the moderator waits out the departures
# of its last clients (up to 10 s per stop).
stop_system() {
  [ -n "$state" ] || return 0
  local group name
  for group in "gw1 gw2" "history moderator media" "nats"; do
    # A service start_system never reached has no pid.
    for name in $group; do [ -z "${pid[$name]:-}" ] || kill "${pid[$name]}" 2>/dev/null || true; done
    for name in $group; do [ -z "${pid[$name]:-}" ] || wait "${pid[$name]}" 2>/dev/null || true; done
  done
  rm -rf "$state"
  state=""
  pid=()
}
trap stop_system EXIT
