#!/usr/bin/env bash
# The fault suite: the compose system on the 3-node NATS cluster
# (compose.cluster.yaml: two gateways, two moderators, history) under steady
# load while one fault at a time is injected. The load is
# `loadgen fanout --resume`: 100 rooms of 10 clients spread over both
# gateways, 1,000 chats/s, clients that reconnect, rejoin with `since` and
# resend as the SDK does. For each fault it prints acked messages lost,
# duplicated, delivered out of order, skipped live (a live gap) and
# misdelivered (wrong room, sender or seq), sent messages never acked, and
# acks that named no message awaiting one or came without a seq (all
# must be 0; judged by message id, tools/loadgen/src/ledger.rs), reconnects, rejoins told `truncated`, the longest time any
# client went without a delivery, and the errors clients saw. Exits
# non-zero if the load generator's verdict failed any run (anything lost,
# duplicated, reordered, skipped live, misdelivered or unacked, a bad ack,
# a client stranded, slow-consumer closing anyone but the slow client, or
# a fault without its effect on the clients: loadgen judges, in one place,
# and this script only shows its counts), if a run's fault did not
# happen and heal as seen from outside (below), or if NATS refused any
# service a permission (logged as a permissions violation).
#
#   scripts/faults.sh [--short] [FAULT ...]
#
# FAULTs (default: all but none): none (the load alone), kill-gateway
# kill-moderator kill-nats-leader kill-nats-follower restart-nats
# stop-gateway cut-gateway cut-nats slow-consumer; and, not in the default
# list, the two operations runs:
#   rolling-restart  gateways, moderators, history and each NATS node
#                    stopped and started one at a time, each waiting for
#                    the last to be healthy; gateways drain.
#   scale            scales out under load (two more moderators, a second
#                    history, an extra gateway, and the archiver started
#                    live), brings a second wave of clients, then scales
#                    back in (the extra gateway drains). Prints each
#                    instance's share of the work from its /metrics, fails
#                    if one took less than a quarter of an even share,
#                    and checks the archive: every stored message once, in
#                    order. Its load runs longer (scale_duration).
# slow-consumer makes
# chats larger (3,000 bytes) and one client stops reading for 20 s: only it
# may be closed (4100), and it resumes with `since`; it needs the full 40 s
# of load. Each run also
# reports the gateways' peak resident memory during it.
# --short: 25 s of load per fault and shorter outages (slow-consumer keeps
# its 40 s): the load outlasts each injection, which with its docker
# commands and the wait for a new leader took up to 19 s here. CI runs
# this for all nine faults and the two operations runs (scripts/test.sh).
#
# Each run must also show, judged from outside, the effects its fault must
# have, and that it healed: the injection ended while the load was still
# sending; a killed or cut gateway made clients reconnect; a gateway
# stopped past its timeout closed its clients with 4104 when it resumed
# (they keep no timer of their own there); a killed stream leader was
# replaced by another node; no rejoin was told `truncated`; and afterwards
# every service is healthy again. Faults with no effect of their own to
# see from outside (a killed moderator or follower, a NATS restart, a cut
# NATS node) are held to the rest. A run that misses any of it fails,
# however clean its deliveries.
#
# It runs as its own compose project on its own ports, so it
# never touches a deployment started with scripts/up.sh, and takes it down
# (volumes included) when done. Traffic goes to loopback only.
#
# CAVLO_FAULTS_RATE   chats/s of the load (default 1000)
# CAVLO_FAULTS_LOGS   the file every service's log is written to at the end
#                     (default target/compose/faults.log)
# CAVLO_FAULTS_KEEP   if set, leave the system running at the end
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

# drain: how long the load keeps receiving after sending stops. A healed
# NATS node forces new elections (its term ran ahead while it was alone),
# so clients need time after a cut heals. Every injection must end while
# the load still sends: a 25 s cut after 10 s of warm-up, in 40 s of load.
# stop: how long stop-gateway pauses the gateway, past the gateway
# timeout (9 s), so that it must close its clients with 4104 when it
# resumes; its clients keep no timer of their own (loadgen
# --silence-timeout 0), so only the gateway can end their wait.
# settle: a drain ends early once every message was acked and every member
# got each of the others' for this many seconds in a row (loadgen
# --settle); a run that lost anything drains in full, and is judged so.
# after: how long a load goes on sending once its fault ended (its
# --duration is the most it sends).
duration=40 outage=20 cut=25 warmup=10 drain=30 stop=20 cluster_drain=45 settle=2 after=15
# scale: how long the second wave sends, and how long the main load sends,
# which must outlast scaling out, the wave and scaling back in. The load
# of a rolling restart sends until every service has restarted.
# The rolling restart's health waits took 84 s on this machine, and must
# end inside the sending window.
wave=20 scale_duration=130 restart_duration=140
# The slow consumer's pause needs 40 s of load in either form (below).
slow_duration=40
if [ "${1:-}" = "--short" ]; then
  shift
  # 15 s of load ended before a kill-nats-leader injection did (19 s);
  # with the calls bucket, a third stream on 3 replicas to catch up,
  # killed nodes took 1 s more than 25 s of load in one CI run.
  # 5 s of load after each fault (5,000 chats) still shows the system
  # serving again, and keeps CI's whole run under its 30 minutes. A
  # silence that began while sending counts whole, however long it lasts
  # into the drain (loadgen), so the shorter window caps no figure.
  duration=30 outage=8 cut=10 warmup=4 drain=15 stop=10 after=5
  # The whole cluster restarted, or a node cut off, silences every client
  # for about 20 s, ending near the end of sending: each then resends its
  # backlog under the chat rate limit (100 a minute), which 15 s of drain
  # did not always finish (2 of 25,000 unacked in one CI run), nor 30 s
  # a rejoin after cut-nats once the calls bucket was a third stream.
  # Scaling in moves the extra gateway's clients while moderators and a
  # history instance stop: on one CI machine, 15 s did not see them all
  # rejoined, so the scale run's loads drain as long.
  cluster_drain=45
  wave=10 scale_duration=100 restart_duration=120
fi
faults=("$@")
[ "${#faults[@]}" -gt 0 ] || faults=(kill-gateway kill-moderator kill-nats-leader
  kill-nats-follower restart-nats stop-gateway cut-gateway cut-nats slow-consumer)

export COMPOSE_FILE=compose.yaml:compose.cluster.yaml
export COMPOSE_PROJECT_NAME=cavlo-faults
export CAVLO_GATEWAY_1_PORT=18080 CAVLO_GATEWAY_2_PORT=18081 CAVLO_NATS_PORT=14222
export CAVLO_GATEWAY_EXTRA_PORTS=18082-18089 CAVLO_TURN_PORT=13478 CAVLO_TURN_RELAY_PORTS=19160-19199
mkdir -p target/compose
export CAVLO_ENV_FILE="$root/target/compose/faults.env"
scripts/new-env.sh "$CAVLO_ENV_FILE"
# A backlog that outlasts the longest outage at this load (10 chats/s per
# room), so every rejoin can be served in full: the suite checks the
# guarantees within their documented bounds, and a rejoin told `truncated`
# would count as lost.
echo "CAVLO_HISTORY__BACKLOG_SIZE=2000" >>"$CAVLO_ENV_FILE"
compose() { if docker compose version >/dev/null 2>&1; then docker compose --env-file "$CAVLO_ENV_FILE" "$@"; else docker-compose --env-file "$CAVLO_ENV_FILE" "$@"; fi; }
# shellcheck disable=SC2317 # run by the EXIT trap; shellcheck 0.9 takes the script's final exit for the end of every path
teardown() {
  status=$?
  local logs="${CAVLO_FAULTS_LOGS:-target/compose/faults.log}"
  compose logs --no-color >"$logs" 2>&1 || true
  # What a failed run most needs, last (a CI log shows its end): the
  # services' own warnings and errors, not the relay's start-up chatter.
  if [ "$status" -ne 0 ]; then
    echo "== the services' last warnings and errors (every log: $logs)"
    grep -aE 'WARN|ERROR|panicked' "$logs" | grep -av '^turn' | tail -60 || true
    echo "== the fault suite's verdicts (failed: see the rows and lines below)"
    cat "$summary" 2>/dev/null || true
  fi
  rm -f "$summary"
  [ -n "${CAVLO_FAULTS_KEEP:-}" ] || compose down -v --remove-orphans >/dev/null 2>&1 || true
  exit "$status"
}
summary="$(mktemp)"
trap teardown EXIT

scripts/up.sh >/dev/null
set -a
# shellcheck source=/dev/null # a settings file written at run time (new-env.sh)
. "$CAVLO_ENV_FILE"
set +a
# The services started only by the scale run: known to compose from here
# on (so that it can scale, find and take them down), but not started.
export COMPOSE_PROFILES=scale-out,archiver
network="${COMPOSE_PROJECT_NAME}_default"
# The containers of service $1, stopped ones included: asked of Docker by
# compose's labels, as `compose ps -q` would answer, but in milliseconds
# rather than the seconds docker-compose 1.29 takes to start, which the
# scale run's samples, taken while it scales, cannot spare.
container() {
  docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter "label=com.docker.compose.service=$1"
}
gateways=(--gateway "ws://127.0.0.1:$CAVLO_GATEWAY_1_PORT/ws" --gateway "ws://127.0.0.1:$CAVLO_GATEWAY_2_PORT/ws")

# A field of the chat stream's details ("cluster" or "state") and a key in
# it, from NATS node $1's monitoring endpoint.
chat_stream() {
  docker exec "$(container "$1")" wget -qO- 'http://127.0.0.1:8222/jsz?streams=true' |
    python3 -c 'import json,sys
d=json.load(sys.stdin)
print(next(s[sys.argv[1]][sys.argv[2]] for a in d.get("account_details",[]) for s in a.get("stream_detail",[]) if s["name"]=="CAVLO_CHAT"))' "$2" "$3"
}
# The NATS node leading the chat stream, as node $1 (default nats) sees it.
stream_leader() { chat_stream "${1:-nats}" cluster leader; }
# Waits up to ELECTION seconds, asking node $2, for a chat stream leader
# other than node $1, which was just killed; prints it, or fails. A
# SIGKILLed leader hands nothing over: the others elect one after their
# election timeout (6 s here; NATS draws it at random, up to about 9 s).
ELECTION=15
new_leader() {
  local leader deadline=$((SECONDS + ELECTION))
  while [ "$SECONDS" -lt "$deadline" ]; do
    leader="$(stream_leader "$2" 2>/dev/null || true)"
    if [ -n "$leader" ] && [ "$leader" != "$1" ]; then echo "$leader"; return; fi
    sleep 0.5
  done
  return 1
}
# A gateway's peak resident memory (kB) since the last reset_peak_rss, read
# and reset as the service's own user (it runs as PID 1 in its container).
# Neither may end the suite: a gateway that just died has no memory to read.
peak_rss() { docker exec -u cavlo "$(container "$1")" awk '/^VmHWM:/ { print $2 }' /proc/1/status || true; }
reset_peak_rss() { docker exec -u cavlo "$(container "$1")" sh -c 'echo 5 >/proc/1/clear_refs' || true; }
follower() { for node in nats nats-2 nats-3; do [ "$node" = "$1" ] || { echo "$node"; return; }; done; }
# Waits until every container of service $1 reports healthy; fails after
# two minutes.
healthy() {
  local id deadline=$((SECONDS + 120))
  for id in $(container "$1"); do
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; do
      [ "$SECONDS" -lt "$deadline" ] || { echo "$1 not healthy after 120 s" >&2; return 1; }
      sleep 0.5
    done
  done
}
# One line per container of service $1: its name and the value of series
# $2 in its /metrics (0 if the series is absent: a counter nothing has
# counted yet), read over the private network. A scrape that fails is a
# failure, never a 0.
sample() {
  local id ip metrics value
  for id in $(container "$1"); do
    ip="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$id")"
    metrics="$(curl -sf --max-time 2 "http://$ip:9090/metrics")" ||
      { echo "  cannot scrape $1's /metrics at $ip" >&2; return 1; }
    value="$(awk -v series="$2" '$1 == series { print $2 }' <<<"$metrics")"
    echo "$(docker inspect -f '{{.Name}}' "$id" | tr -d /) ${value:-0}"
  done
}
# The stored-chat counter of every moderator instance, as sample does.
chats_stored() {
  for service in moderator-1 moderator-2; do sample "$service" 'cavlo_moderator_requests_total{action="chat"}' || return 1; done
}
# Prints each instance's share of what a series grew by between two sample
# files ($2 before, $3 after; $1 says what it counts), and fails if any
# instance took less than a quarter of an even share (loadgen shares).
# Rooms go to moderators by rendezvous hashing, so their shares vary by a
# few rooms; a quarter still catches an instance left out.
share() { target/release/loadgen shares --what "$1" "$2" "$3"; }
# The last line loadgen's fanout wrote to its log $1 of its own, when it
# failed: its verdict or error. Its progress line ends in carriage returns,
# and its notes of a settled or stopped run are not the verdict.
verdict_line() {
  grep -a 'fanout: ' "$1" | sed 's/.*\r//' | grep -v 'settled\|told to stop' | tail -1 || true
}
# Scale out under load, a second wave of clients, scale back in (see the
# top). The extra gateway takes a third of the wave's connections;
# draining it sends them to the others, and their rejoins are the backlog
# queries the two history instances share.
scale() {
  local dir wave_report extra wave_load began=$SECONDS took=()
  dir="$(mktemp -d)" wave_report="$(mktemp)"
  compose up -d --no-recreate --no-deps --scale moderator-1=3 --scale history=2 \
    --scale gateway-extra=1 moderator-1 history gateway-extra archiver >/dev/null 2>&1
  for service in moderator-1 history gateway-extra archiver; do healthy "$service" || scale_failed=1; done
  took+=("scaled out and healthy at $((SECONDS - began)) s")
  # Every gateway hears the new moderators within a heartbeat (3 s).
  sleep 4
  # awk reads every line: `head` could end the pipe early and kill the
  # run (pipefail) with docker still writing its IPv6 line.
  extra="ws://127.0.0.1:$(docker port "$(container gateway-extra)" 8080/tcp | awk -F: 'NR == 1 { print $NF }')/ws"
  chats_stored >"$dir/chat.0" || scale_failed=1
  for gateway in gateway-1 gateway-2 gateway-extra; do sample "$gateway" cavlo_gateway_authenticated_total || scale_failed=1; done >"$dir/auth.0"
  # It sends on through scaling in, so the extra gateway's clients move
  # (and rejoin) while it still runs.
  target/release/loadgen --json fanout --resume "${gateways[@]}" --gateway "$extra" --rooms 30 --clients 10 \
    --rate 300 --duration "$((2 * wave))" --drain "$cluster_drain" --settle "$settle" --no-truncation >"$wave_report" 2>"$dir/wave.log" &
  wave_load=$!
  sleep "$((wave - 2))"
  chats_stored >"$dir/chat.1" || scale_failed=1
  for gateway in gateway-1 gateway-2 gateway-extra; do sample "$gateway" cavlo_gateway_authenticated_total || scale_failed=1; done >"$dir/auth.1"
  sample history 'cavlo_history_queries_total{outcome="answered"}' >"$dir/history.0" || scale_failed=1
  # Scale in: the extra gateway drains, and its clients rejoin elsewhere.
  took+=("scaling in from $((SECONDS - began)) s")
  compose up -d --no-recreate --no-deps --scale gateway-extra=0 gateway-extra >/dev/null 2>&1
  took+=("the extra gateway gone at $((SECONDS - began)) s")
  sample history 'cavlo_history_queries_total{outcome="answered"}' >"$dir/history.1" || scale_failed=1
  compose up -d --no-recreate --no-deps --scale moderator-1=1 --scale history=1 moderator-1 history >/dev/null 2>&1
  # Scaled back in: the fault (the operation) ends here; its second wave
  # is judged below, but need not end inside the main load.
  injected_at=$SECONDS
  took+=("scaled in at $((SECONDS - began)) s")
  local joined
  joined="$(IFS=,; echo "${took[*]}")"
  echo "  (scale, from $((began - load_began)) s into the load: ${joined//,/, })"
  share "moderators, chats stored" "$dir/chat.0" "$dir/chat.1" || scale_failed=1
  share "gateways, new connections" "$dir/auth.0" "$dir/auth.1" || scale_failed=1
  share "history, backlog queries answered" "$dir/history.0" "$dir/history.1" || scale_failed=1
  # loadgen's exit status is the verdict; the line below only shows it.
  wait "$wave_load" || { scale_failed=1; verdict_line "$dir/wave.log"; }
  python3 - "$wave_report" <<'EOF' || scale_failed=1
import json, sys
r = json.load(open(sys.argv[1]))
c = r["correctness"]
print(f'  second wave: {r["acked"]} acked; lost {c["lost"]}, duplicated {c["duplicated"]}, '
      f'out of order {c["reordered"]}, live gaps {c["live_gaps"]}, misdelivered {c["misdelivered"]}, unacked {r["unacked"]}; '
      f'{r["reconnects"]} reconnects, {r["stranded"]} clients ended early')
EOF
  rm -rf "$dir" "$wave_report"
}
# After a scale run: once the archiver has read everything, its files hold
# every stored message once, in order, with no gap (the backlog outlasts
# the run, so it loses nothing).
check_archive() {
  local dir stored gaps
  dir="$(mktemp -d)"
  local deadline=$((SECONDS + 120))
  until [ "$(sample archiver cavlo_archiver_pending | awk '{ print $2 }')" = 0 ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "  archive: the archiver has not caught up after 120 s" >&2; return 1; }
    sleep 1
  done
  docker cp -q "$(container archiver):/var/lib/cavlo/archive" "$dir"
  stored="$(chat_stream nats state messages)"
  gaps="$(sample archiver cavlo_archiver_gaps_total | awk '{ print $2 }')"
  local status=0
  target/release/loadgen archive "$dir/archive" --stored "$stored" --gaps "${gaps%.*}" || status=1
  rm -rf "$dir"
  return "$status"
}

inject() {
  case "$1" in
    kill-gateway) docker kill "$(container gateway-1)" >/dev/null; sleep "$outage"; docker start "$(container gateway-1)" >/dev/null ;;
    kill-moderator) docker kill "$(container moderator-1)" >/dev/null; sleep "$outage"; docker start "$(container moderator-1)" >/dev/null ;;
    kill-nats-leader | kill-nats-follower)
      node="$(stream_leader)"
      [ "$1" = kill-nats-leader ] || node="$(follower "$node")"
      docker kill "$(container "$node")" >/dev/null
      local since=$SECONDS leader
      if [ "$1" = kill-nats-follower ]; then
        echo "  ($1: $node)"
      elif leader="$(new_leader "$node" "$(follower "$node")")"; then
        echo "  ($1: $node; $leader leads the chat stream $((SECONDS - since)) s later)"
      else
        effects+=("no other node took the chat stream's lead within ${ELECTION} s")
      fi
      sleep "$((outage - (SECONDS - since) > 0 ? outage - (SECONDS - since) : 0))"
      docker start "$(container "$node")" >/dev/null ;;
    restart-nats) compose restart nats nats-2 nats-3 >/dev/null 2>&1 ;;
    stop-gateway) docker kill -s STOP "$(container gateway-1)" >/dev/null; sleep "$stop"; docker kill -s CONT "$(container gateway-1)" >/dev/null ;;
    cut-gateway) docker network disconnect "$network" "$(container gateway-1)"; sleep "$cut"; docker network connect "$network" "$(container gateway-1)" ;;
    cut-nats) docker network disconnect "$network" "$(container nats-3)"; sleep "$cut"; docker network connect "$network" "$(container nats-3)" ;;
    rolling-restart)
      local took=()
      for service in gateway-1 gateway-2 moderator-1 moderator-2 history nats-3 nats-2 nats; do
        local start=$SECONDS
        # As an orchestrator does: SIGTERM with room for the drain, then
        # the next one only once this one is healthy again (for a NATS
        # node, /healthz: its streams have caught up with the others).
        docker stop -t 35 "$(container "$service")" >/dev/null
        docker start "$(container "$service")" >/dev/null
        healthy "$service"
        took+=("$service $((SECONDS - start)) s")
      done
      local joined
      joined="$(IFS=,; echo "${took[*]}")"
      echo "  (restarted, each until healthy: ${joined//,/, })" ;;
    scale) scale ;;
    none | slow-consumer) ;;
    *) echo "unknown fault $1" >&2; return 2 ;;
  esac
}

# Every run's row, its verdict and effects, kept for the teardown to show
# again after the services' logs: a CI log shows only its end.
run_faults() {
  printf '%-19s %6s %6s %6s %5s %6s %7s %8s %10s %7s %9s %10s %8s  %s\n' fault lost dup order gaps misdel unacked bad_acks reconnects peak/s truncated silence_ms gw_rss_mb "errors; closes"
  failed=0 scale_failed=
  for fault in "${faults[@]}"; do
    [ -n "$fault" ] || continue
    scripts/wait-ready.sh "$CAVLO_GATEWAY_1_PORT" "$CAVLO_GATEWAY_2_PORT"
    report="$(mktemp)" log="$(mktemp)"
    shape=(--rate "${CAVLO_FAULTS_RATE:-1000}")
    # 3,000-byte chats fill the slow client's socket buffers in about 5 s;
    # the gateway's write then blocks, and 10 s later (its write timeout) it
    # closes the client with 4100, whose frame waits up to 10 s more for the
    # client to read again: the 20 s pause ends mid-way through that.
    if [ "$fault" = slow-consumer ]; then
      # Straight to gateway 1's container: Docker's port proxy would buffer
      # megabytes the client does not read, and the gateway never notice.
      direct="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$(container gateway-1)")"
      shape+=(--size 3000 --slow 1 --slow-pause 20 --slow-gateway "ws://$direct:8080/ws")
    fi
    # What the fault must have caused, judged by loadgen with the rest. The
    # backlog outlasts every outage (above): a rejoin told `truncated` is a
    # failure here, where loadgen would otherwise excuse an ack without seq.
    # Gateway 1 holds half of the load's 1,000 clients: every one of them
    # must reconnect after it is killed or cut off, and, paused past its
    # timeout, it must close every one with 4104 when it resumes.
    shape+=(--no-truncation)
    case "$fault" in
      kill-gateway | cut-gateway) shape+=(--expect-reconnects 500) ;;
      stop-gateway) shape+=(--silence-timeout 0 --expect-close 4104 --expect-closes 500) ;;
    esac
    for gateway in gateway-1 gateway-2; do reset_peak_rss "$gateway"; done
    case "$fault" in
      scale) length="$scale_duration" ;;
      rolling-restart) length="$restart_duration" ;;
      slow-consumer) length="$slow_duration" ;;
      *) length="$duration" ;;
    esac
    case "$fault" in
      restart-nats | cut-nats | scale) run_drain="$cluster_drain" ;;
      *) run_drain="$drain" ;;
    esac
    effects=()
    target/release/loadgen --json fanout --resume "${gateways[@]}" --rooms 100 --clients 10 "${shape[@]}" \
      --duration "$length" --drain "$run_drain" --settle "$settle" >"$report" 2>"$log" &
    load=$!
    load_began=$SECONDS sending_until=$((SECONDS + length)) injected_at=""
    sleep "$warmup"
    inject "$fault"
    : "${injected_at:=$SECONDS}"
    [ "$injected_at" -le "$sending_until" ] || effects+=("the fault ended $((injected_at - sending_until)) s after the load stopped sending")
    # The load sends `after` s past the fault's end, not longer: loadgen
    # stops sending on SIGUSR1, drains, and ends once settled. A slow
    # consumer's pause, or the load alone, has no end to wait for.
    case "$fault" in
      none | slow-consumer) ;;
      *)
        if [ "$((sending_until - SECONDS))" -gt "$after" ]; then
          sleep "$after"
          kill -USR1 "$load" 2>/dev/null || true
        fi ;;
    esac
    # loadgen's exit status is the verdict (Report::verdict, one place);
    # the row below only shows what it judged.
    wait "$load" || failed=1
    rss="$(for gateway in gateway-1 gateway-2; do peak_rss "$gateway"; done | sort -n | tail -1)"
    python3 - "$fault" "$report" "$rss" <<'EOF' || failed=1
import json, sys
fault, path, rss = sys.argv[1], sys.argv[2], int(sys.argv[3] or 0)
try:
    r = json.load(open(path))
except ValueError:
    print(f"{fault:<19} no report: the load generator failed:")
    sys.exit(1)
c = r["correctness"]
bad_acks = r["unknown_acks"] + r["acked_without_seq"]
print(f'{fault:<19} {c["lost"]:>6} {c["duplicated"]:>6} {c["reordered"]:>6} {c["live_gaps"]:>5} {c["misdelivered"]:>6} {r["unacked"]:>7} '
      f'{bad_acks:>8} {r["reconnects"]:>10} {r["peak_reconnects_per_second"]:>7} {r["truncated"]:>9} {r["longest_silence_ms"]:>10} {rss // 1024:>8}  '
      f'{r["errors"]}; {r["closes"]}')
EOF
    # The load generator's own verdict, when it failed (it says why last).
    verdict_line "$log"
    # The fault's effect on the system, seen from outside.
    for service in nats nats-2 nats-3 gateway-1 gateway-2 moderator-1 moderator-2 history; do
      healthy "$service" 2>/dev/null || effects+=("$service not healthy 120 s after the run")
    done
    for effect in "${effects[@]}"; do echo "  $fault: $effect"; failed=1; done
    if [ "$fault" = scale ]; then
      check_archive || failed=1
      [ -z "$scale_failed" ] || failed=1
    fi
    rm -f "$report" "$log"
  done
  # NATS must have refused no service anything: a permission a service
  # lacks may show only after a fault (a watch made again once its node
  # was lost), and the service then goes on without what it asked for.
  # Both sides' lines count: the servers' ("Publish Violation") and the
  # services' own ("Permissions Violation", which a stricter log filter
  # could hide). Containers scaled in are gone, and their logs with them.
  local logs refused
  if ! logs="$(compose logs --no-color 2>&1)"; then
    echo "cannot read the services' logs to check NATS permissions"
    return 1
  fi
  refused="$(grep -aE '(Permissions|Publish|Subscription) Violation' <<<"$logs" || true)"
  if [ -n "$refused" ]; then
    echo "NATS refused a service $(wc -l <<<"$refused") times; the last:"
    tail -3 <<<"$refused"
    failed=1
  fi
  return "$failed"
}
run_faults 2>&1 | tee "$summary"
