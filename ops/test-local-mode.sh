#!/usr/bin/env bash
# End-to-end test of `ops/start.sh local` (no Docker): runs it in the background against a fresh database, a unique
# Redis key prefix and free ports, waits for the three health checks, creates a task over REST and waits for its
# successful run in task_run, then sends SIGINT and checks that start.sh exits 0 and all three processes are gone.
# It also checks what the README promises a first-time user: no ORRERY_ADMIN_TOKEN needed (start.sh makes one and
# keeps it in $XDG_STATE_HOME/orrery/admin-token), `--no-build` runs existing binaries, and start.sh's own lines
# (stderr) are kept apart from the binaries' JSON logs (stdout).
#
#   ops/test-local-mode.sh          # uses DATABASE_URL (a server URL; default postgres://postgres@127.0.0.1:5432/postgres)
#                                   # and REDIS_URL (default redis://127.0.0.1:6379), like ops/test.sh
#
# Debug binaries (decision 21): built only when target/debug lacks them. Prints "local-mode: N passed, N failed".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
HEALTH_TIMEOUT="${LOCAL_MODE_HEALTH_TIMEOUT:-120}"
RUN_TIMEOUT="${LOCAL_MODE_RUN_TIMEOUT:-90}"
STOP_TIMEOUT="${LOCAL_MODE_STOP_TIMEOUT:-60}"

passed=0
failed=0
log() { printf '==> %s\n' "$*"; }
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*" >&2; }

for tool in psql redis-cli curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is required" >&2; exit 1; }
done

# Same replacement as the test kit's with_database() (testing/src/lib.rs): keep credentials, host and query.
with_database() {
  local scheme="${1%%://*}" rest="${1#*://}" query="" authority
  case "$rest" in *\?*) query="?${rest#*\?}"; rest="${rest%%\?*}" ;; esac
  authority="${rest%%/*}"
  printf '%s://%s/%s%s' "$scheme" "$authority" "$2" "$query"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if port_free "$p" && port_free "$((p + 1))" && port_free "$((p + 2))"; then
      printf '%s' "$p"
      return 0
    fi
  done
  echo "error: no free ports found" >&2
  exit 1
}

# --- binaries -----------------------------------------------------------------------------------------------------
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
if [ ! -x "$BIN/orrery-api" ] || [ ! -x "$BIN/orrery-scheduler" ] || [ ! -x "$BIN/orrery-worker" ]; then
  log "building debug binaries"
  cargo build --workspace --bins
fi

# --- isolated database, Redis prefix, ports, token ----------------------------------------------------------------
SUFFIX="$$_$(date +%s)_$RANDOM"
DB="orrery_localmode_$SUFFIX"
MAINT_URL="$(with_database "$BASE_URL" postgres)"
export DATABASE_URL
DATABASE_URL="$(with_database "$BASE_URL" "$DB")"
export REDIS_KEY_PREFIX="orrery-localmode-$SUFFIX:"
PORT="$(pick_port)"
export API_PORT="$PORT" SCHEDULER_HEALTH_PORT="$((PORT + 1))" WORKER_HEALTH_PORT="$((PORT + 2))"
unset ORRERY_ADMIN_TOKEN
STATE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/orrery-local-mode-state.XXXXXX")"
export XDG_STATE_HOME="$STATE_DIR"
export LOG_LEVEL="${LOG_LEVEL:-info}"
LOG_FILE="$(mktemp "${TMPDIR:-/tmp}/orrery-local-mode.XXXXXX")"
ERR_FILE="$(mktemp "${TMPDIR:-/tmp}/orrery-local-mode-stderr.XXXXXX")"
START_PID=""

cleanup() {
  local status=$?
  if [ -n "$START_PID" ] && kill -0 "$START_PID" 2>/dev/null; then
    # start.sh runs in its own process group (set -m below): stop the whole group.
    kill -TERM -- "-$START_PID" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$START_PID" 2>/dev/null || true
  fi
  psql "$MAINT_URL" -qtAc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 ||
    echo "warning: could not drop database $DB" >&2
  redis-cli -u "$REDIS_URL" --scan --pattern "${REDIS_KEY_PREFIX}*" 2>/dev/null |
    while read -r key; do redis-cli -u "$REDIS_URL" DEL "$key" >/dev/null 2>&1 || true; done
  if [ "$failed" != 0 ] || [ "$status" != 0 ]; then
    echo "----- ops/start.sh stderr ($ERR_FILE) -----" >&2
    tail -n 40 "$ERR_FILE" >&2 || true
    echo "----- last 60 lines of the ops/start.sh stdout ($LOG_FILE) -----" >&2
    tail -n 60 "$LOG_FILE" >&2 || true
  else
    rm -f "$LOG_FILE" "$ERR_FILE"
  fi
  rm -rf "$STATE_DIR"
}
trap cleanup EXIT

log "creating database $DB"
psql "$MAINT_URL" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$DB\"" >/dev/null

# --- start ----------------------------------------------------------------------------------------------------------
log "ops/start.sh local --debug --no-build (API :$API_PORT, scheduler :$SCHEDULER_HEALTH_PORT, worker :$WORKER_HEALTH_PORT, prefix $REDIS_KEY_PREFIX)"
# Job control gives start.sh its own process group and, unlike a plain `&`, does not make it ignore SIGINT.
set -m
ops/start.sh local --debug --no-build --timeout "$HEALTH_TIMEOUT" >"$LOG_FILE" 2>"$ERR_FILE" &
START_PID=$!
set +m

healthy() {
  API_PORT="$API_PORT" "$BIN/orrery-api" healthcheck >/dev/null 2>&1 &&
    SCHEDULER_HEALTH_PORT="$SCHEDULER_HEALTH_PORT" "$BIN/orrery-scheduler" healthcheck >/dev/null 2>&1 &&
    WORKER_HEALTH_PORT="$WORKER_HEALTH_PORT" "$BIN/orrery-worker" healthcheck >/dev/null 2>&1
}

deadline=$((SECONDS + HEALTH_TIMEOUT))
until healthy; do
  if ! kill -0 "$START_PID" 2>/dev/null; then break; fi
  [ "$SECONDS" -lt "$deadline" ] || break
  sleep 0.5
done
if healthy; then
  pass "all three binaries report healthy (healthcheck subcommands)"
else
  fail "the three binaries did not all become healthy within ${HEALTH_TIMEOUT}s"
  echo "local-mode: $passed passed, $failed failed"
  exit 1
fi

CHILDREN="$(ps -o pid=,comm= --ppid "$START_PID" | awk '$2 ~ /^orrery-/ {print $1}' | tr '\n' ' ')"
read -r -a CHILD_PIDS <<<"$CHILDREN"
if [ "${#CHILD_PIDS[@]}" = 3 ]; then
  pass "start.sh runs three child processes (${CHILD_PIDS[*]})"
else
  fail "expected 3 orrery-* children of start.sh, found '${CHILDREN}'"
fi

# --- the admin token start.sh made ------------------------------------------------------------------------------------
TOKEN_FILE="$STATE_DIR/orrery/admin-token"
TOKEN="$(cat "$TOKEN_FILE" 2>/dev/null || true)"
if [ "${#TOKEN}" -ge 32 ] && [ "$(stat -c %a "$TOKEN_FILE")" = 600 ]; then
  pass "without ORRERY_ADMIN_TOKEN, start.sh made one in \$XDG_STATE_HOME/orrery/admin-token (mode 600)"
else
  fail "no admin token file at $TOKEN_FILE (or not mode 600)"
fi
if grep -q "admin token.*$TOKEN_FILE" "$ERR_FILE"; then
  pass "the banner says where the admin token is"
else
  fail "the banner does not mention $TOKEN_FILE"
fi

# --- a task over REST, run by the worker ----------------------------------------------------------------------------
API="http://127.0.0.1:$API_PORT"
AUTH="Authorization: Bearer $TOKEN"
FIRE_AT="$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)"
BODY='{"title":"local mode smoke test","schedule_kind":"once","schedule_expr":"'"$FIRE_AT"'","timezone":"UTC","payload":{"pipeline":[{"id":"n","uses":"noop"}]}}'
RESPONSE="$(curl -sS -m 10 -o - -w '\n%{http_code}' -X POST "$API/tasks" -H "$AUTH" -H 'Content-Type: application/json' -d "$BODY" || true)"
CODE="${RESPONSE##*$'\n'}"
RESPONSE_BODY="${RESPONSE%$'\n'*}"
TASK_ID="$(sed -n 's/.*"id"[[:space:]]*:[[:space:]]*"\([0-9a-fA-F-]\{36\}\)".*/\1/p' <<<"$RESPONSE_BODY" | head -n 1)"
if [ "$CODE" = 201 ] && [ -n "$TASK_ID" ]; then
  pass "POST /tasks → 201 (task $TASK_ID, once at $FIRE_AT)"
else
  fail "POST /tasks answered $CODE: ${RESPONSE_BODY:0:300}"
fi

if [ -n "$TASK_ID" ]; then
  deadline=$((SECONDS + RUN_TIMEOUT))
  runs=0
  while [ "$SECONDS" -lt "$deadline" ]; do
    runs="$(psql "$DATABASE_URL" -qtAc "SELECT count(*) FROM task_run WHERE task_id = '$TASK_ID' AND success" 2>/dev/null || echo 0)"
    [ "${runs:-0}" -ge 1 ] 2>/dev/null && break
    sleep 0.5
  done
  if [ "${runs:-0}" -ge 1 ] 2>/dev/null; then
    pass "task_run has a successful run of the task (within $((SECONDS - deadline + RUN_TIMEOUT))s)"
  else
    last="$(psql "$DATABASE_URL" -qtAc "SELECT coalesce(string_agg(success::text || ' ' || coalesce(error_kind, '') || ' ' || coalesce(left(error, 200), ''), '; '), 'no runs') FROM task_run WHERE task_id = '$TASK_ID'" 2>/dev/null || true)"
    fail "no successful task_run within ${RUN_TIMEOUT}s (runs: ${last:-?})"
  fi
else
  fail "no task to wait for (the REST part did not work)"
fi

# --- SIGINT: everything stops, start.sh exits 0 ---------------------------------------------------------------------
log "sending SIGINT to ops/start.sh (pid $START_PID)"
kill -INT "$START_PID"
deadline=$((SECONDS + STOP_TIMEOUT))
while kill -0 "$START_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
if kill -0 "$START_PID" 2>/dev/null; then
  fail "ops/start.sh still running ${STOP_TIMEOUT}s after SIGINT"
else
  code=0
  wait "$START_PID" || code=$?
  START_PID=""
  if [ "$code" = 0 ]; then pass "ops/start.sh exited 0 after SIGINT"; else fail "ops/start.sh exited $code after SIGINT"; fi
fi
left=""
for pid in "${CHILD_PIDS[@]}"; do
  if ps -p "$pid" >/dev/null 2>&1; then left="$left $pid"; fi
done
if [ -z "$left" ] && [ "${#CHILD_PIDS[@]}" -gt 0 ]; then
  pass "all three processes exited"
else
  fail "processes still running after SIGINT:${left:- (none recorded)}"
fi
if grep -q 'exited with code' "$ERR_FILE"; then
  fail "a binary exited non-zero: $(grep 'exited with code' "$ERR_FILE" | tr '\n' ' ')"
fi

# --- start.sh's own lines apart from the JSON logs -------------------------------------------------------------------
json_lines="$(grep -c '^{' "$LOG_FILE" || true)"
other_lines="$(grep -cv '^{' "$LOG_FILE" || true)"
if [ "${json_lines:-0}" -gt 0 ] && [ "${other_lines:-0}" = 0 ]; then
  pass "stdout holds only the binaries' JSON log lines ($json_lines)"
else
  fail "stdout has $other_lines non-JSON line(s): $(grep -v '^{' "$LOG_FILE" | head -n 3 | tr '\n' '|')"
fi
if grep -q '^==> ' "$ERR_FILE" && ! grep -q '^{' "$ERR_FILE"; then
  pass "start.sh's own lines are on stderr, without JSON logs"
else
  fail "stderr mixes JSON log lines with start.sh's lines (or has none of them)"
fi

echo "local-mode: $passed passed, $failed failed"
[ "$failed" = 0 ]
