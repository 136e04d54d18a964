#!/usr/bin/env bash
# Worker benchmark: builds the release binaries and runs orrery-bench-worker against the local PostgreSQL and
# Redis (it creates, then drops, the database orrery_bench). Results go to stdout; see docs/benchmarks/worker.md.
#
#   ops/bench-worker.sh                 # latency, lateness, then drain (100k rows; 1, 2, 4 processes; 3 reps)
#   ops/bench-worker.sh drain           # one step: drain | latency | lateness | all
#   JOBS=300000 PROCS="2 4" REPS=5 ops/bench-worker.sh drain
#   WORKER_BATCH_SIZE=500 ops/bench-worker.sh drain    # every WORKER_* variable reaches the workers
#
# For the anchor, run graphile-worker in the same session (same machine, same load):
#   (cd /work/shared/bench/graphile && STEPS="throughput latency" bash run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p orrery-worker
exec target/release/orrery-bench-worker "${1:-all}"
