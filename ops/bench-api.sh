#!/usr/bin/env bash
# Benchmark of orrery-api as production runs it (auth, audit, metrics on): a release build against a scratch
# database on the local PostgreSQL, driven by wrk with 64 connections.
#
#   GET  /tasks/{id}   (agent token with tasks:read: token lookup + cache, owner check, one SELECT)
#   POST /tasks        (lua script: a new cron task per request: validation, schedule math, INSERT + audit
#                       in one transaction, task-changes hint on Redis)
#   GET  /health/live
#
# Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL,
# BENCH_DURATION (seconds per run, default 20), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# API_WORKERS (default: one per core), DATABASE_POOL_SIZE (default 32: concurrent creates share WAL flushes), BENCH_ONLY (subset of
# "get_task post_task health_live").
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> bench-api: %s\n' "$*"; }

BASE_DB_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
DURATION="${BENCH_DURATION:-20}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
SUFFIX="$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DB_NAME="orrery_bench_${SUFFIX}"
ADMIN_TOKEN="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
url_with_db() { local base="${BASE_DB_URL%%\?*}"; printf '%s/%s' "${base%/*}" "$1"; }
ADMIN_DB_URL="$(url_with_db postgres)"
BENCH_DB_URL="$(url_with_db "$DB_NAME")"

command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y -qq wrk >/dev/null; }
command -v psql >/dev/null || { echo "bench-api: psql is required" >&2; exit 1; }

cargo build --quiet --release -p orrery-api
BIN="${CARGO_TARGET_DIR:-target}/release/orrery-api"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"
WORK="$(mktemp -d -t orrery-bench.XXXXXX)"
API_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$API_PID" ] && kill -0 "$API_PID" 2>/dev/null; then
    kill -TERM "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
  fi
  psql "$ADMIN_DB_URL" -qAtc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "bench:${SUFFIX}:*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql "$ADMIN_DB_URL" -qAtc "CREATE DATABASE $DB_NAME" >/dev/null
env -i PATH="$PATH" HOME="${HOME:-/root}" \
  DATABASE_URL="$BENCH_DB_URL" REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="bench:${SUFFIX}:" \
  API_HOST=127.0.0.1 API_PORT="$PORT" API_WORKERS="${API_WORKERS:-0}" DATABASE_POOL_SIZE="${DATABASE_POOL_SIZE:-32}" \
  ORRERY_ADMIN_TOKEN="$ADMIN_TOKEN" LOG_LEVEL=warn "$BIN" >"$WORK/api.log" 2>&1 &
API_PID=$!
for _ in $(seq 1 200); do
  curl -fsS -m 2 "$BASE/health/ready" >/dev/null 2>&1 && break
  kill -0 "$API_PID" 2>/dev/null || { cat "$WORK/api.log" >&2; exit 1; }
  sleep 0.1
done

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
AGENT_TOKEN="$(curl -fsS -X POST "$BASE/agents" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"bench","scopes":["tasks:read","tasks:write"]}' | json "['token']")"
TASK_ID="$(curl -fsS -X POST "$BASE/tasks" -H "Authorization: Bearer $AGENT_TOKEN" -H 'Content-Type: application/json' \
  -d '{"title":"bench target","schedule_kind":"cron","schedule_expr":"*/5 * * * *","timezone":"UTC","payload":{"pipeline":[{"id":"n","uses":"noop"}]}}' \
  | json "['id']")"

cat >"$WORK/post_task.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ORRERY_BENCH_TOKEN")
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"title":"bench %d","schedule_kind":"cron","schedule_expr":"*/5 * * * *",'
    .. '"timezone":"Europe/Berlin","priority":%d,"payload":{"params":{"n":%d},'
    .. '"pipeline":[{"id":"call","uses":"http.request","with":{"url":"https://example.com/${params.n}"}}]}}',
    n, (n % 9) + 1, n)
  return wrk.format(nil, nil, nil, body)
end
LUA

declare -A RPS P99 ERRS
ONLY="${BENCH_ONLY:-get_task post_task health_live}"
run() { # name, wrk args...
  local name="$1"; shift
  case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
  wrk -t"$THREADS" -c"$CONNECTIONS" -d5s "$@" >/dev/null 2>&1 || true # warm-up
  log "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency $*"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" | tee "$WORK/$name.txt"
  RPS[$name]="$(awk '/^Requests\/sec/ {print $2}' "$WORK/$name.txt")"
  P99[$name]="$(awk '$1 == "99%" {print $2}' "$WORK/$name.txt")"
  ERRS[$name]="$(awk '/Non-2xx or 3xx responses/ {print $5}' "$WORK/$name.txt")"
}

run get_task -H "Authorization: Bearer $AGENT_TOKEN" "$BASE/tasks/$TASK_ID"
ORRERY_BENCH_TOKEN="$AGENT_TOKEN" run post_task -s "$WORK/post_task.lua" "$BASE/tasks"
run health_live "$BASE/health/live"

created="$(psql "$BENCH_DB_URL" -qAtc "SELECT count(*) FROM task")"
audited="$(psql "$BENCH_DB_URL" -qAtc "SELECT count(*) FROM audit_log WHERE action = 'task.create'")"
echo
echo "| endpoint | req/s | p99 | non-2xx |"
echo "|---|---|---|---|"
row() { if [ -n "${RPS[$2]:-}" ]; then echo "| $1 | ${RPS[$2]} | ${P99[$2]} | ${ERRS[$2]:-0} |"; fi; }
row "GET /tasks/{id}" get_task
row "POST /tasks" post_task
row "GET /health/live" health_live
echo
echo "tasks created: $created, task.create audit rows: $audited (one per create)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(psql "$ADMIN_DB_URL" -qAtc 'SHOW server_version'), load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
bad=0
for k in get_task post_task health_live; do [ -n "${ERRS[$k]:-}" ] && bad=1; done
exit "$bad"
