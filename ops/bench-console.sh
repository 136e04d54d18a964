#!/usr/bin/env bash
# Console benchmark (not part of the test command): a release build of orrery-bench-console against a scratch
# database on the local PostgreSQL. It loads 10,000 tasks and 1,000,000 task_run rows, starts the API in
# process and measures the console's endpoints one request at a time, then prints the query plans.
# Results are recorded in docs/benchmarks/console.md.
#
# Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL,
# BENCH_TASKS (10000), BENCH_RUNS (1000000), BENCH_SAMPLES (200 per endpoint).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> bench-console: %s\n' "$*"; }

BASE_DB_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
SUFFIX="$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DB_NAME="orrery_bench_console_${SUFFIX}"
url_with_db() { local base="${BASE_DB_URL%%\?*}"; printf '%s/%s' "${base%/*}" "$1"; }
ADMIN_DB_URL="$(url_with_db postgres)"
BENCH_DB_URL="$(url_with_db "$DB_NAME")"

command -v psql >/dev/null || { echo "bench-console: psql is required" >&2; exit 1; }
cargo build --quiet --release -p orrery-api --bin orrery-bench-console
BIN="${CARGO_TARGET_DIR:-target}/release/orrery-bench-console"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() { psql "$ADMIN_DB_URL" -qAtc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
psql "$ADMIN_DB_URL" -qAtc "CREATE DATABASE $DB_NAME" >/dev/null
log "machine: $(nproc) vCPU, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(psql "$ADMIN_DB_URL" -qAtc 'SHOW server_version')"
DATABASE_URL="$BENCH_DB_URL" "$BIN"
