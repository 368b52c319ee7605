#!/usr/bin/env bash
# Footprint of one http_node process (release build), on 127.0.0.1 with OS-chosen ports:
#  - resident memory (VmRSS, VmHWM from /proc/<pid>/status) and thread count (/proc/<pid>/task)
#    at idle, in a two-node cluster;
#  - the same holding 10,000 sessions of 1 KiB (made at start with --preload, replicated to the
#    peer, which is measured too: right after the burst, and 1 s later);
#  - the time from process start to its first member seen (static membership, the peer already
#    up): the node's own log line ("first member [...] seen N ms after start", from main()) and,
#    from outside, the launch time taken just before exec to the wall-clock stamp of that line.
# Usage: bash benches/footprint.sh [SESSIONS] [SIZE]   (BIN=path/to/http_node to measure another build;
# NODE_ARGS="..." adds flags to every node, e.g. "--max-active-sessions 200000 --send-options 6")
# MANAGER=backup (or NODE_ARGS with "--manager backup") measures the BackupManager: it has no
# state transfer, so the joiner is measured once the primary's re-placement has moved its share
# of the backups to it (the peer's and the joiner's copies add up to SESSIONS again).
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-10000}
SIZE=${2:-1024}
MANAGER=${MANAGER:-delta}
if [[ " ${NODE_ARGS:-} " =~ " --manager backup " ]]; then
  MANAGER=backup
elif [[ $MANAGER == backup ]]; then
  NODE_ARGS="${NODE_ARGS:-} --manager backup"
fi
# BIN=path runs another build (an earlier commit's, to compare) instead of this checkout's.
if [[ -z "${BIN:-}" ]]; then
  cargo build --quiet --release --example http_node
  BIN=${CARGO_TARGET_DIR:-target}/release/examples/http_node
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_for FILE PATTERN: up to 30 s for a line matching PATTERN.
wait_for() {
  local deadline=$((SECONDS + 30))
  until grep -q "$2" "$1" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "timed out waiting for '$2' in $1" >&2
      cat "$1" >&2
      exit 1
    fi
    sleep 0.01
  done
}

# start NAME ARGS...: starts a node in the background; sets PID and LAUNCH_MS.
start() {
  local name=$1
  shift
  LAUNCH_MS=$(date +%s%3N)
  # shellcheck disable=SC2086 # NODE_ARGS is a list of flags, split on purpose
  "$BIN" --name "$name" --http 127.0.0.1:0 --receiver 127.0.0.1:0 ${NODE_ARGS:-} "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PID=$!
  PIDS+=("$PID")
  wait_for "$WORK/$name.out" "listening on"
}

status() { # PID -> "rss_kib hwm_kib threads"
  local rss hwm
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status")
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$1/status")
  echo "$rss $hwm $(ls "/proc/$1/task" | wc -l)"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

rx_of() { grep -o 'cluster receiver [0-9.:]*' "$WORK/$1.out" | awk '{print $3}'; }

http_of() { grep -o 'http://[0-9.:]*' "$WORK/$1.out"; }

# sessions_at URL: the sessions a node holds (its own and copies), from /app/health.
sessions_at() { curl -s "$1/app/health" | grep -o '"sessions":[0-9]*' | cut -d: -f2; }

# The peer, then the measured node, which lists it.
start peer
PEER_PID=$PID
start node --member "$(rx_of peer)"
NODE_PID=$PID
NODE_LAUNCH=$LAUNCH_MS
wait_for "$WORK/node.err" "first member"
line=$(grep "first member" "$WORK/node.err")
own_ms=$(echo "$line" | sed -E 's/.* seen ([0-9]+) ms after start.*/\1/')
# env_logger stamp: [2026-11-26T06:20:33.801Z ...]
stamp=$(echo "$line" | sed -E 's/^\[([^ ]+)Z .*/\1/')
stamp_ms=$(date -u -d "${stamp}Z" +%s%3N)
outside_ms=$((stamp_ms - NODE_LAUNCH))
# Idle: one ping round (1 s) after the member was seen.
sleep 1.5
read -r rss hwm threads < <(status "$NODE_PID")
echo "idle: VmRSS $(mib "$rss") MiB, VmHWM $(mib "$hwm") MiB, threads $threads"
echo "first member seen: ${own_ms} ms after main() (log), ${outside_ms} ms after launch (outside, 1 ms stamps)"
read -r prss phwm pthreads < <(status "$PEER_PID")
echo "peer idle: VmRSS $(mib "$prss") MiB, threads $pthreads"

# A node that makes SESSIONS sessions of SIZE bytes at start, replicated to the peer.
start loaded --member "$(rx_of peer)" --preload "$SESSIONS" --preload-size "$SIZE"
LOADED_PID=$PID
# Wait until the peer holds every session (health counts them).
peer_http=$(http_of peer)
deadline=$((SECONDS + 60))
until curl -s "$peer_http/app/health" | grep -Eq "\"sessions\":$SESSIONS[,}]"; do
  if ((SECONDS >= deadline)); then
    echo "peer never held $SESSIONS sessions: $(curl -s "$peer_http/app/health")" >&2
    exit 1
  fi
  sleep 0.05
done
grep "Preloaded" "$WORK/loaded.err" | sed -E 's/^\[[^]]*\] //'
read -r lrss lhwm lthreads < <(status "$LOADED_PID")
read -r prss phwm pthreads < <(status "$PEER_PID")
echo "with $SESSIONS sessions of $SIZE B (made here): VmRSS $(mib "$lrss") MiB, VmHWM $(mib "$lhwm") MiB, threads $lthreads"
echo "with $SESSIONS sessions of $SIZE B (replicas, peer): VmRSS $(mib "$prss") MiB, VmHWM $(mib "$phwm") MiB, threads $pthreads"
# The replica once the burst is over (the receiver gives back what it grew after 200 ms idle).
sleep 1
read -r prss phwm pthreads < <(status "$PEER_PID")
echo "the replicas 1 s later (peer): VmRSS $(mib "$prss") MiB, VmHWM $(mib "$phwm") MiB"

start joiner --member "$(rx_of loaded)"
JOINER_PID=$PID
if [[ $MANAGER == backup ]]; then
  # A BackupManager joiner takes no state transfer: the primary re-places its sessions, and
  # the joiner becomes the backup of those whose placement now names it, which the peer drops.
  joiner_http=$(http_of joiner)
  deadline=$((SECONDS + 60))
  while :; do
    j=$(sessions_at "$joiner_http")
    p=$(sessions_at "$peer_http")
    if ((${j:-0} > 0 && ${j:-0} + ${p:-0} == SESSIONS)); then
      break
    fi
    if ((SECONDS >= deadline)); then
      echo "re-placement not done: joiner ${j:-?}, peer ${p:-?} of $SESSIONS backups" >&2
      exit 1
    fi
    sleep 0.05
  done
  sleep 1
  read -r jrss jhwm jthreads < <(status "$JOINER_PID")
  read -r lrss lhwm lthreads < <(status "$LOADED_PID")
  read -r prss phwm pthreads < <(status "$PEER_PID")
  echo "joiner backing up $j of $SESSIONS sessions: VmRSS $(mib "$jrss") MiB, VmHWM $(mib "$jhwm") MiB"
  echo "the primary that re-placed them, after: VmRSS $(mib "$lrss") MiB, VmHWM $(mib "$lhwm") MiB"
  echo "the peer, left with $p backups: VmRSS $(mib "$prss") MiB, VmHWM $(mib "$phwm") MiB"
  exit 0
fi
# A DeltaManager joiner pulls every session by state transfer (chunks of 1000).
wait_for "$WORK/joiner.err" "state transfer complete, $SESSIONS session"
sleep 1
read -r jrss jhwm jthreads < <(status "$JOINER_PID")
read -r lrss lhwm lthreads < <(status "$LOADED_PID")
echo "joiner after state transfer of $SESSIONS sessions: VmRSS $(mib "$jrss") MiB, VmHWM $(mib "$jhwm") MiB"
echo "the node that sent them, after: VmRSS $(mib "$lrss") MiB, VmHWM $(mib "$lhwm") MiB"
