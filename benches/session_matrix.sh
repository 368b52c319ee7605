#!/usr/bin/env bash
# One run of both managers at 2, 4 and 8 nodes (docs/PERFORMANCE.md): how the frames and bytes a
# change costs grow with N. Same send options for both (async), then the BackupManager with its
# default (sync-ack). Usage: bash benches/session_matrix.sh [UPDATES]
set -euo pipefail
cd "$(dirname "$0")/.."
updates=${1:-50000}
cargo build --release --example session_bench >/dev/null 2>&1
bench=target/release/examples/session_bench
for n in 2 4 8; do
  for m in delta backup; do
    $bench --nodes "$n" --sessions 1000 --updates "$updates" --attr-size 1024 --manager "$m" --options async
  done
done
for n in 2 4 8; do
  $bench --nodes "$n" --sessions 1000 --updates $((updates / 5)) --attr-size 1024 --manager backup
done
