#!/usr/bin/env bash
# OpenAPI-driven fuzzing of orrery-api with schemathesis: starts the API (debug build by default, or
# FUZZ_PROFILE=release) against a scratch database and a private Redis key prefix, then runs
# `schemathesis run` on its own /openapi.json with two checks: no server errors, and every response conforms
# to the documented schema (status codes, bodies, the error envelope). Self-contained: installs schemathesis
# from PyPI when missing, creates and drops its database, stops the API on exit.
#
# Environment: DATABASE_URL (any database on the server; default postgres://postgres@127.0.0.1:5432/postgres),
# REDIS_URL (default redis://127.0.0.1:6379), FUZZ_PROFILE (debug|release), FUZZ_MAX_EXAMPLES (per operation,
# default 40), FUZZ_SEED (reproduce a run), FUZZ_MAX_TIME (seconds, optional). Long-polls of POST /jobs/claim are
# capped at 1 s (API_JOBS_MAX_WAIT_SECONDS) so that generated wait_seconds values do not stall the run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> fuzz-api: %s\n' "$*"; }

BASE_DB_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
PROFILE="${FUZZ_PROFILE:-debug}"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-40}"
SUFFIX="$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DB_NAME="orrery_fuzz_${SUFFIX}"
ADMIN_TOKEN="fuzz-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Secrets enabled, so /secrets is fuzzed for real (without a key it answers 503 by design).
SECRETS_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# postgres://user@host:port/db?query → postgres://user@host:port/<name>
url_with_db() { local base="${BASE_DB_URL%%\?*}"; printf '%s/%s' "${base%/*}" "$1"; }
ADMIN_DB_URL="$(url_with_db postgres)"
FUZZ_DB_URL="$(url_with_db "$DB_NAME")"

command -v psql >/dev/null || { echo "fuzz-api: psql is required (apt-get install postgresql-client)" >&2; exit 1; }
if ! command -v schemathesis >/dev/null; then
  log "installing schemathesis from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi
command -v schemathesis >/dev/null || { echo "fuzz-api: schemathesis is not on PATH after pip install" >&2; exit 1; }

if [ "$PROFILE" = release ]; then
  cargo build --quiet --release -p orrery-api
else
  cargo build --quiet -p orrery-api
fi
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/orrery-api"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
API_PID=""
LOG_FILE="$(mktemp -t orrery-fuzz-api.XXXXXX.log)"
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [ -n "$API_PID" ] && kill -0 "$API_PID" 2>/dev/null; then
    kill -TERM "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
  fi
  psql "$ADMIN_DB_URL" -qAtc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "scratch database $DB_NAME"
psql "$ADMIN_DB_URL" -qAtc "CREATE DATABASE $DB_NAME" >/dev/null

log "starting $BIN on 127.0.0.1:$PORT"
env -i PATH="$PATH" HOME="${HOME:-/root}" \
  DATABASE_URL="$FUZZ_DB_URL" REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="fuzz:${SUFFIX}:" \
  API_HOST=127.0.0.1 API_PORT="$PORT" API_WORKERS=2 ORRERY_ADMIN_TOKEN="$ADMIN_TOKEN" ORRERY_SECRETS_KEY="$SECRETS_KEY" LOG_LEVEL=warn \
  API_JOBS_MAX_WAIT_SECONDS=1 \
  "$BIN" >"$LOG_FILE" 2>&1 &
API_PID=$!
for _ in $(seq 1 200); do
  if curl -fsS -m 2 "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1; then break; fi
  kill -0 "$API_PID" 2>/dev/null || { cat "$LOG_FILE" >&2; echo "fuzz-api: the API exited" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -m 2 "http://127.0.0.1:$PORT/health/ready" >/dev/null || { cat "$LOG_FILE" >&2; echo "fuzz-api: the API never became ready" >&2; exit 1; }

# A few real rows so that list endpoints return populated bodies (checked against their schemas too).
AUTH="Authorization: Bearer $ADMIN_TOKEN"
curl -fsS -m 5 -o /dev/null -X POST "http://127.0.0.1:$PORT/tasks" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"title":"fuzz seed","schedule_kind":"cron","schedule_expr":"*/5 * * * *","payload":{"pipeline":[{"id":"n","uses":"noop"}]}}'
curl -fsS -m 5 -o /dev/null -X POST "http://127.0.0.1:$PORT/tasks" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"title":"fuzz events","schedule_kind":"event","schedule_expr":"fuzz.*","payload":{"pipeline":[]}}'
curl -fsS -m 5 -o /dev/null -X POST "http://127.0.0.1:$PORT/events" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"topic":"fuzz.seed","payload":{"n":1}}'

ARGS=(run "http://127.0.0.1:$PORT/openapi.json"
  --checks "not_a_server_error,response_schema_conformance"
  --header "$AUTH"
  --max-examples "$MAX_EXAMPLES"
  --workers 1
  --request-timeout 15
  --suppress-health-check all
  --generation-database none
  --no-color)
# The console's run feed is an endless Server-Sent Events stream: it would only ever time out here (it is
# covered by services/api/tests/console_api.rs).
ARGS+=(--exclude-path /console/runs/stream)
[ -n "${FUZZ_SEED:-}" ] && ARGS+=(--seed "$FUZZ_SEED")
[ -n "${FUZZ_MAX_TIME:-}" ] && ARGS+=(--max-time "$FUZZ_MAX_TIME")

log "schemathesis ${ARGS[*]//$ADMIN_TOKEN/***}"
status=0
schemathesis "${ARGS[@]}" || status=$?
# A 500 is logged by the API as "internal error" (or "server error outside a handler"); actix's own protocol
# errors on deliberately malformed requests (e.g. a NUL byte in a header) are not server errors.
if grep -E '"msg":"(internal error|server error outside a handler)' "$LOG_FILE" >/dev/null 2>&1; then
  log "server errors were logged:"
  grep -E '"msg":"(internal error|server error outside a handler)' "$LOG_FILE" | head -n 20 >&2
  status=1
fi
if [ "$status" = 0 ]; then log "passed"; else log "FAILED (exit $status); API log: $LOG_FILE"; fi
exit "$status"
