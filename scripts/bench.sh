#!/usr/bin/env bash
# Runs benchmarks against a fresh local system: nats-server, history, a
# moderator and two gateways as processes on this machine (loopback only),
# with chat rate limits lifted and room for many connections.
#
#   scripts/bench.sh rates 500,2000,4000,8000 [--against REV] [loadgen fanout options]
#   scripts/bench.sh fanout --rooms 10 --clients 10 --duration 20
#   scripts/bench.sh connections --count 100000 --sources 8
#   scripts/bench.sh interest --rooms 10 --clients 10 --duration 10
#   scripts/bench.sh media --rooms 4 --participants 5 --rate 50 --duration 20
#
# `rates` runs fan-out (rooms of 10 over both gateways, 20 s each unless
# given) at each total chat rate on a fresh system and prints one table:
# the load generator's verdict (a failed run keeps its row, marked failed
# with the reason), deliveries/s, send → delivery p50 / p99, acked / sent,
# lost / duplicated / reordered / misdelivered, errors by code, and each
# process's CPU per 1,000 deliveries. With `--against REV` it
# first builds REV's services (in target/bench/) and runs the same rates on
# them, then on this tree, so a comparison with an older commit is one
# command; the load generator is this tree's in both.
#
# Six processes share two cores here, so each runs with one worker thread
# (TOKIO_WORKER_THREADS=1 for the services, GOMAXPROCS=1 for nats-server):
# fewer threads waking each other. BENCH_WORKERS=0 keeps the runtimes'
# defaults (one thread per core); docs/benchmarks.md has both.
#
# `fanout` and `connections` print the load generator's report and each
# process's CPU seconds during the run. `media` runs calls through the
# media node (synthetic participants, `loadgen media`) and adds the media
# node's CPU per 1,000 forwarded frames. `interest` runs fan-out with every
# client on gateway 1 and reports what gateway 2 received from NATS meanwhile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mode="${1:?usage: bench.sh rates|fanout|connections|interest [options]}"
shift

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --bins >&2
# The load generator keeps its runtime's default threads (see `workers`).
loadgen=(env -u TOKIO_WORKER_THREADS -u GOMAXPROCS target/release/loadgen --secret bench-secret)
gateways=(--gateway ws://127.0.0.1:18080/ws --gateway ws://127.0.0.1:18081/ws)

workers="${BENCH_WORKERS:-1}"
if [[ "$workers" != 0 ]]; then export TOKIO_WORKER_THREADS="$workers" GOMAXPROCS="$workers"; fi
# shellcheck source=scripts/local-system.sh
. scripts/local-system.sh

# CPU seconds (user + system) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
declare -A cpu_before
cpu_mark() { for name in "${names[@]}"; do cpu_before[$name]=$(cpu "${pid[$name]}"); done; }
# "died" for a process that ended during the run: its CPU cannot be read.
cpu_used() {
  local run_state
  run_state="$(awk '{ print $3 }' "/proc/${pid[$1]}/stat" 2>/dev/null || true)"
  if [[ -z "$run_state" || "$run_state" == Z ]]; then echo died; return; fi
  awk -v a="${cpu_before[$1]}" -v b="$(cpu "${pid[$1]}")" 'BEGIN { printf "%.2f", b - a }'
}

# Messages and bytes NATS has sent to gateway 2's connection (named gw2 by
# local-system.sh); fails unless exactly one such connection is found.
gw2_in() {
  python3 - <<'PY'
import json, sys, urllib.request
conns = json.load(urllib.request.urlopen("http://127.0.0.1:18222/connz?limit=1024"))["connections"]
gw = [c for c in conns if c.get("name") == "gw2"]
if len(gw) != 1:
    sys.exit(f"bench: {len(gw)} NATS connections named gw2, not one")
print(gw[0]["out_msgs"], gw[0]["out_bytes"])
PY
}

# One row per rate for the services in directory $1: fan-out at each rate
# of the comma-separated list $2, with the remaining loadgen options.
rates_table() {
  local bin="$1" list="$2"
  shift 2
  printf '| chats/s offered | verdict | deliveries/s | p50 / p99 ms | acked / sent | lost / dup / reordered / misdelivered | errors | CPU ms per 1,000 deliveries: total (nats, moderator, gateways, history) |\n'
  printf '|---|---|---|---|---|---|---|---|\n'
  # The table's defaults, unless given: loadgen refuses an option twice.
  local defaults=() option
  for option in "--rooms 10" "--clients 10" "--duration 20"; do
    [[ " $* " == *" ${option% *} "* ]] || defaults+=("${option% *}" "${option#* }")
  done
  local rate report status
  for rate in ${list//,/ }; do
    start_system "$bin"
    cpu_mark
    # A run that fails its verdict still prints its report: the row shows
    # its figures, marked failed, with the load generator's reason.
    status=0
    report="$("${loadgen[@]}" --json fanout "${gateways[@]}" "${defaults[@]}" "$@" --rate "$rate" 2>"$state/loadgen.err")" || status=$?
    local used=() failure
    for name in "${names[@]}"; do used+=("$name=$(cpu_used "$name")"); done
    # The load generator's last words, after its progress line.
    failure="$(tr '\r' '\n' <"$state/loadgen.err" | tail -1 | sed 's/^sent .*   //')"
    stop_system
    REPORT="$report" FAILURE="$failure" STATUS="$status" python3 - "$rate" "${used[@]}" <<'PY'
import json, os, sys
rate, used = sys.argv[1], dict(arg.split("=") for arg in sys.argv[2:])
failure = os.environ["FAILURE"] or "no reason given"
try:
    r = json.loads(os.environ["REPORT"])
except ValueError:
    print(f"| {rate} | FAILED: {failure}, no report | | | | | | |")
    sys.exit()
died = [n for n, v in used.items() if v == "died"]
verdict = "ok" if os.environ["STATUS"] == "0" else f"FAILED: {failure}"
if died:
    verdict = f"FAILED: {', '.join(died)} died during the run"
d = r["deliveries"]
per = lambda *names: sum(float(used[n]) for n in names) * 1e6 / d if d and not died else float("nan")
c, lat = r["correctness"], r["delivery_latency"]
errors = ", ".join(f"{code} {n}" for code, n in r["errors"].items()) or "none"
print(f"| {rate} | {verdict} | {r['deliveries_per_second']:,.0f} | {lat['p50']/1000:.2f} / {lat['p99']/1000:.2f}"
      f" | {r['acked']} / {r['sent']} | {c['lost']} / {c['duplicated']} / {c['reordered']} / {c['misdelivered']} | {errors}"
      f" | {per('nats','moderator','gw1','gw2','history'):.1f} ({per('nats'):.1f}, {per('moderator'):.1f},"
      f" {per('gw1'):.1f} + {per('gw2'):.1f}, {per('history'):.2f}) |")
PY
  done
}

case "$mode" in
  rates)
    list="${1:?usage: bench.sh rates RATE,RATE,... [--against REV] [loadgen fanout options]}"
    shift
    echo "Worker threads per process: ${TOKIO_WORKER_THREADS:-one per core} (BENCH_WORKERS)"
    against=""
    if [ "${1:-}" = "--against" ]; then against="${2:?--against needs a revision}"; shift 2; fi
    if [ -n "$against" ]; then
      commit="$(git rev-parse --short "$against^{commit}")"
      src="target/bench/src-$commit"
      # A worktree left by an interrupted run goes first.
      git worktree remove --force "$src" 2>/dev/null || true
      git worktree prune
      git worktree add --force --detach "$src" "$commit" >&2
      (cd "$src" && CARGO_TARGET_DIR="$root/target/bench/target" cargo build --release --locked --bins -p gateway -p moderator -p history >&2)
      git worktree remove --force "$src"
      echo "Services of $commit:"
      rates_table "target/bench/target/release" "$list" "$@"
      echo
    fi
    echo "Services of $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!docs' || echo ' with uncommitted changes'):"
    rates_table target/release "$list" "$@"
    ;;
  fanout)
    start_system target/release; cpu_mark
    "${loadgen[@]}" fanout "${gateways[@]}" "$@" ;;
  interest)
    start_system target/release; cpu_mark
    read -r msgs0 bytes0 < <(gw2_in)
    "${loadgen[@]}" fanout --gateway ws://127.0.0.1:18080/ws "$@"
    read -r msgs1 bytes1 < <(gw2_in)
    echo "gateway 2 received from NATS meanwhile: $((msgs1 - msgs0)) messages, $((bytes1 - bytes0)) bytes" ;;
  media)
    start_system target/release; cpu_mark
    media_status=0
    report="$("${loadgen[@]}" --json media "${gateways[@]}" "$@")" || media_status=$?
    echo "$report"
    REPORT="$report" python3 - "$(cpu_used media)" <<'PY'
import json, os, sys
report = json.loads(os.environ["REPORT"])
print(f"media node: {float(sys.argv[1]) * 1e6 / max(report['received'], 1):.1f} CPU ms per 1,000 forwarded frames")
PY
    ;;
  connections)
    start_system target/release; cpu_mark
    "${loadgen[@]}" connections --gateway ws://127.0.0.1:18080/ws --gateway-pid "${pid[gw1]}" "$@" ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
if [ "$mode" != rates ]; then
  echo "CPU seconds during the run:"
  for name in "${names[@]}"; do printf '  %-10s %s\n' "$name" "$(cpu_used "$name")"; done
fi
exit "${media_status:-0}"
