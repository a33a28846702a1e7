#!/usr/bin/env bash
# Shows that the load verdict (`loadgen fanout`, which the fault suite and
# the benchmarks stand on) fails on a broken system. A fresh local system
# (scripts/local-system.sh) is put behind `breaker`, a WebSocket proxy in
# front of each gateway that breaks it in one named way; fan-out load runs
# through it once per break and must fail for the reason that break
# causes, and once through `none` (the proxy changing nothing) and must
# pass. Prints one line per break with the load generator's reason, and
# exits non-zero if any verdict passed a break, failed it for another
# reason, or failed the control run (printing the logs' last lines).
#
#   scripts/verdict-breaks.sh [BREAK ...]
#
# BREAKs (default: all): none ack-without-seq repeated-ack wrong-room
# dropped-delivery doubled-delivery reordered-delivery; each is described
# in tools/breaker/src/breaks.rs. CI runs them all (about a minute).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

breaks=("$@")
[ "${#breaks[@]}" -gt 0 ] || breaks=(none ack-without-seq repeated-ack wrong-room
  dropped-delivery doubled-delivery reordered-delivery)

cargo build --release --locked --bins >&2
# shellcheck source=scripts/local-system.sh
. scripts/local-system.sh

# The reason loadgen must give for each break (a pattern of its last line).
declare -A expected=(
  [ack-without-seq]='acks came without a seq'
  [repeated-ack]='acks named no message awaiting one'
  [wrong-room]='misdelivered: [1-9]'
  [dropped-delivery]='lost: [1-9]'
  [doubled-delivery]='duplicated: [1-9]'
  [reordered-delivery]='reordered: [1-9]'
)

# Waits until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1).close()" 2>/dev/null && return
    sleep 0.1
  done
  echo "verdict-breaks: nothing listens on port $1" >&2
  return 1
}

proxies=()
stop_proxies() {
  [ "${#proxies[@]}" -eq 0 ] || { kill "${proxies[@]}" 2>/dev/null || true; wait "${proxies[@]}" 2>/dev/null || true; }
  proxies=()
}
trap 'stop_proxies; stop_system' EXIT

failed=0
for what in "${breaks[@]}"; do
  # A fresh system each time: one run's unacked messages or closed
  # connections cannot spill into the next.
  start_system target/release
  for n in 0 1; do
    target/release/breaker --listen "127.0.0.1:1909$n" --upstream "ws://127.0.0.1:1808$n/ws" --break "$what" \
      2>>"$state/breaker.log" &
    proxies+=($!)
  done
  wait_port 19090
  wait_port 19091
  status=0
  target/release/loadgen --secret bench-secret fanout --resume \
    --gateway ws://127.0.0.1:19090/ws --gateway ws://127.0.0.1:19091/ws \
    --rooms 10 --clients 5 --rate 250 --duration 5 --drain 3 >/dev/null 2>"$state/loadgen.err" || status=$?
  reason="$(tr '\r' '\n' <"$state/loadgen.err" | grep -a 'fanout:' | tail -1 || true)"
  if [ "$what" = none ]; then
    if [ "$status" -eq 0 ]; then
      echo "none: passed, as it must"
    else
      echo "none: FAILED the control run: ${reason:-no reason given}"
      tail -n 5 "$state"/*.log "$state/loadgen.err" >&2 || true
      failed=1
    fi
  elif [ "$status" -eq 0 ]; then
    echo "$what: NOT CAUGHT: the verdict passed a broken system"
    failed=1
  elif grep -Eq "${expected[$what]:?no expected reason for break $what}" <<<"$reason"; then
    echo "$what: caught (${reason#fanout: })"
  else
    echo "$what: failed for another reason than the break: ${reason:-no reason given}"
    failed=1
  fi
  stop_proxies
  stop_system
done
exit "$failed"
