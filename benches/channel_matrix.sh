#!/usr/bin/env bash
# The channel_bench matrix of docs/PERFORMANCE.md: sizes x modes, R=2, each point RUNS times,
# receivers as threads and as processes (--spawn). Usage: bash benches/channel_matrix.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release --example channel_bench >/dev/null 2>&1
bench=target/release/examples/channel_bench
uname -r; nproc
for spawn in "" "--spawn"; do
  for mode in async sync-ack; do
    for size in 128 1024 16384; do
      if [ "$mode" = async ]; then count=$(( size <= 1024 ? 1000000 : 200000 )); else count=30000; fi
      for _ in $(seq "$runs"); do
        echo "$($bench --size "$size" --count "$count" --receivers 2 --mode "$mode" $spawn)${spawn:+ spawn}"
      done
    done
  done
done
# Synchronous acks against the raw-socket floor, interleaved so both see the same machine.
for _ in $(seq "$runs"); do
  $bench --size 1024 --count 20000 --receivers 2 --mode raw-ack
  $bench --size 1024 --count 20000 --receivers 2 --mode sync-ack
  $bench --size 1024 --count 20000 --receivers 2 --mode ack
  $bench --size 1024 --count 30000 --receivers 2 --mode sync-ack --threads 4
done
