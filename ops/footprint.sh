#!/usr/bin/env bash
# Measures what docs/benchmarks/footprint.md reports: the size of the three binaries (as built, and after the
# `strip --strip-debug` the Dockerfile applies) and the idle resident memory of each binary once healthy.
#
#   cargo build --release --workspace --bins
#   ops/footprint.sh [BIN_DIR]          # default target/release; IDLE_SECONDS (default 15) of idling before reading
#
# Uses DATABASE_URL (a server URL, default postgres://postgres@127.0.0.1:5432/postgres) to create and drop a scratch
# database, REDIS_URL (default redis://127.0.0.1:6379) with a unique key prefix, and free ports.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BIN_DIR="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
IDLE_SECONDS="${IDLE_SECONDS:-15}"
BASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
NAMES=(orrery-api orrery-scheduler orrery-worker)

for n in "${NAMES[@]}"; do [ -x "$BIN_DIR/$n" ] || { echo "error: $BIN_DIR/$n is missing" >&2; exit 1; }; done

with_database() {
  local scheme="${1%%://*}" rest="${1#*://}" query=""
  case "$rest" in *\?*) query="?${rest#*\?}"; rest="${rest%%\?*}" ;; esac
  printf '%s://%s/%s%s' "$scheme" "${rest%%/*}" "$2" "$query"
}
mib() { awk -v n="$1" -v d="$2" 'BEGIN { printf "%.1f", n / d }'; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=""
for _ in $(seq 1 200); do
  p=$((20000 + RANDOM % 40000))
  if port_free "$p" && port_free "$((p + 1))" && port_free "$((p + 2))"; then PORT="$p"; break; fi
done
[ -n "$PORT" ] || { echo "error: no free ports" >&2; exit 1; }

DB="orrery_footprint_$$_$RANDOM"
MAINT_URL="$(with_database "$BASE_URL" postgres)"
export DATABASE_URL
DATABASE_URL="$(with_database "$BASE_URL" "$DB")"
export REDIS_KEY_PREFIX="orrery-footprint-$$:"
export API_PORT="$PORT" SCHEDULER_HEALTH_PORT="$((PORT + 1))" WORKER_HEALTH_PORT="$((PORT + 2))"
export ORRERY_ADMIN_TOKEN="footprint-token-0123456789abcdef" LOG_LEVEL=warn
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$MAINT_URL" -qtAc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "${REDIS_KEY_PREFIX}*" 2>/dev/null |
    while read -r key; do redis-cli -u "$REDIS_URL" DEL "$key" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

echo "## Binary sizes ($BIN_DIR)"
echo
echo "| binary | as built (bytes) | MiB | after strip --strip-debug (bytes) | MiB |"
echo "|---|---:|---:|---:|---:|"
total=0
tmp="$(mktemp -d)"
for n in "${NAMES[@]}"; do
  size=$(stat -c %s "$BIN_DIR/$n")
  cp "$BIN_DIR/$n" "$tmp/$n"
  strip --strip-debug "$tmp/$n"
  stripped=$(stat -c %s "$tmp/$n")
  total=$((total + stripped))
  printf '| %s | %s | %s | %s | %s |\n' "$n" "$size" "$(mib "$size" 1048576)" "$stripped" "$(mib "$stripped" 1048576)"
done
rm -rf "$tmp"
printf '| **binaries layer** | | | %s | %s |\n' "$total" "$(mib "$total" 1048576)"
echo

psql "$MAINT_URL" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$DB\"" >/dev/null
for n in "${NAMES[@]}"; do
  "$BIN_DIR/$n" >/dev/null 2>&1 &
  PIDS+=("$!")
done
deadline=$((SECONDS + 120))
for n in "${NAMES[@]}"; do
  until "$BIN_DIR/$n" healthcheck >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "error: $n did not become healthy" >&2; exit 1; }
    sleep 0.2
  done
done
sleep "$IDLE_SECONDS"

echo "## Idle memory (healthy, then ${IDLE_SECONDS}s idle; one process each, same scratch database; $(nproc) cores)"
echo
echo "| binary | VmRSS (KiB) | MiB | VmHWM peak (KiB) | threads |"
echo "|---|---:|---:|---:|---:|"
for i in "${!NAMES[@]}"; do
  status="/proc/${PIDS[$i]}/status"
  rss=$(awk '/^VmRSS:/ {print $2}' "$status")
  hwm=$(awk '/^VmHWM:/ {print $2}' "$status")
  threads=$(awk '/^Threads:/ {print $2}' "$status")
  printf '| %s | %s | %s | %s | %s |\n' "${NAMES[$i]}" "$rss" "$(mib "$rss" 1024)" "$hwm" "$threads"
done
