#!/usr/bin/env bash
# Shows that the load verdict (`loadgen fanout`, which the fault suite and
# the benchmarks stand on) fails on a broken system. A fresh local system
# (scripts/local-system.sh) is put behind `breaker`, a WebSocket proxy in
# front of each gateway that breaks it in one named way; fan-out load runs
# through it once per break and must fail, and once through `none` (the
# proxy changing nothing) and must pass. Prints one line per break with
# the load generator's reason, and exits non-zero if any verdict passed a
# break or failed the control run.
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
  wait_for http://127.0.0.1:18080/ready
  sleep 0.2
  status=0
  target/release/loadgen --secret bench-secret fanout --resume \
    --gateway ws://127.0.0.1:19090/ws --gateway ws://127.0.0.1:19091/ws \
    --rooms 10 --clients 5 --rate 250 --duration 5 --drain 3 >/dev/null 2>"$state/loadgen.err" || status=$?
  reason="$(tr '\r' '\n' <"$state/loadgen.err" | grep -a 'fanout:' | tail -1 || true)"
  stop_proxies
  stop_system
  if [ "$what" = none ]; then
    if [ "$status" -eq 0 ]; then echo "none: passed, as it must"; else echo "none: FAILED the control run: $reason"; failed=1; fi
  elif [ "$status" -ne 0 ]; then
    echo "$what: caught (${reason#fanout: })"
  else
    echo "$what: NOT CAUGHT: the verdict passed a broken system"
    failed=1
  fi
done
exit "$failed"
