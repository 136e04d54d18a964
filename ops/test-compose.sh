#!/usr/bin/env bash
# End-to-end test of the Compose path (the README's first command) on a real Docker engine.
#
#   bash ops/test-compose.sh        # ops/test.sh runs it; prints "compose: N passed, N failed" or "compose: SKIPPED (...)"
#
# 1. Engine: installs docker.io and a Compose (the plugin, else Debian's docker-compose 1.29) when absent, starts
#    dockerd when no engine answers (and stops it at the end: only what this script started). No engine → SKIPPED.
# 2. Offline images: ops/compose-fixtures.sh builds (once; the engine's image store is the cache) the base images
#    the Dockerfile and the Compose files name, as local test fixtures (no registry is needed).
# 3. For real, each step asserted:
#    - `ops/start.sh dev` builds the images and waits until every service is healthy;
#    - the api, scheduler and worker containers run as uid 10001 (appuser), their logs are bunyan JSON;
#    - a task created over REST runs: its task_run row is read with `docker compose exec postgres psql`, and
#      `docker compose exec redis redis-cli` sees it on the orrery:runs stream;
#    - `docker compose up -d --scale worker=3`: three worker heartbeats, 300 run-now fires each run exactly once,
#      by all three workers;
#    - SIGKILL of one worker while it holds runs loses nothing (its leases expire, the runs are retried);
#    - `docker compose down` + `ops/start.sh dev` keeps the data (named volume); `ops/start.sh dev --clean` drops it;
#    - `ops/start.sh prod` with a test env file: nginx on 127.0.0.1:<port> in front of two API replicas, both
#      answering; a task created through nginx runs; read-only containers still run as appuser.
#
# Only ports published on 127.0.0.1 and `docker compose exec` reach the stacks (never a container address). Each run
# uses its own Compose project names and free ports and removes its containers, volumes and networks at the end.
# Knobs: COMPOSE_TEST_BUILD_TIMEOUT (s, default 2700: a cold build on 2 cores), COMPOSE_TEST_TIMEOUT (s, default
# 240: health and run waits), COMPOSE_TEST_KEEP=1 (leave the stacks up for inspection).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

BUILD_TIMEOUT="${COMPOSE_TEST_BUILD_TIMEOUT:-2700}"
WAIT_TIMEOUT="${COMPOSE_TEST_TIMEOUT:-240}"
STATE_DIR="${COMPOSE_TEST_STATE_DIR:-/var/tmp/orrery-compose-test}"

passed=0
failed=0
log() { printf '==> compose: %s\n' "$*"; }
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*" >&2; }
skip() { printf 'compose: SKIPPED (%s)\n' "$*"; exit 0; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then return 1; fi
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- 1. the engine --------------------------------------------------------------------------------------------------
DOCKERD_PID=""
stop_dockerd() {
  [ -n "$DOCKERD_PID" ] || return 0
  log "stopping the dockerd this script started (pid $DOCKERD_PID)"
  kill -TERM "$DOCKERD_PID" 2>/dev/null || true
  local _
  for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID" 2>/dev/null
  DOCKERD_PID=""
}

engine_up() { timeout 20 docker info >/dev/null 2>&1; }

start_dockerd() { # start_dockerd [extra dockerd flags]
  mkdir -p "$STATE_DIR"
  log "starting dockerd $* (log: $STATE_DIR/dockerd.log)"
  setsid dockerd "$@" >"$STATE_DIR/dockerd.log" 2>&1 </dev/null &
  DOCKERD_PID=$!
  local _
  for _ in $(seq 1 60); do
    engine_up && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  stop_dockerd
  return 1
}

for tool in curl jq; do
  command -v "$tool" >/dev/null 2>&1 || apt_install "$tool" || skip "$tool is missing and cannot be installed here"
done
command -v docker >/dev/null 2>&1 || apt_install docker.io || skip "no docker CLI and docker.io cannot be installed here"
COMPOSE=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose || true
  command -v docker-compose >/dev/null 2>&1 || skip "no Compose (docker compose / docker-compose) and none can be installed here"
  COMPOSE=(docker-compose --compatibility)
fi

if engine_up; then
  log "using the running Docker engine"
else
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io || skip "no Docker engine answers and dockerd cannot be installed here"
  [ "$(id -u)" = 0 ] || skip "no Docker engine answers and starting dockerd needs root"
  if ! start_dockerd; then
    # Some sandboxes forbid iptables; the stacks only need the bridge networks and ports published on 127.0.0.1.
    start_dockerd --iptables=false --ip6tables=false ||
      skip "dockerd does not start here: $(grep -iE 'level=(error|fatal)' "$STATE_DIR/dockerd.log" | tail -n 1 | cut -c1-300)"
  fi
fi
log "engine: $(docker version --format 'Docker {{.Server.Version}}' 2>/dev/null), compose: $("${COMPOSE[@]}" version --short 2>/dev/null || echo '?')"

# --- cleanup ----------------------------------------------------------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/orrery-compose-test.XXXXXX")"
RUN_ID="$$$RANDOM"
DEV_PROJECT="orrery-ct${RUN_ID}-dev"
PROD_PROJECT="orrery-ct${RUN_ID}-prod"
PROD_TAG="compose-test-${RUN_ID}"
PROD_ENV="$TMP/prod.env"
STARTED_PROJECTS=()

dev() { "${COMPOSE[@]}" -p "$DEV_PROJECT" -f docker-compose.yml -f docker-compose.dev.yml "$@"; }
prod() { "${COMPOSE[@]}" -p "$PROD_PROJECT" --env-file "$PROD_ENV" -f docker-compose.yml -f docker-compose.prod.yml "$@"; }

diagnostics() {
  local project
  for project in "${STARTED_PROJECTS[@]}"; do
    printf '\n----- %s: containers -----\n' "$project" >&2
    if [ "$project" = "$DEV_PROJECT" ]; then dev ps >&2 || true; else prod ps >&2 || true; fi
    printf '\n----- %s: last 40 log lines per service -----\n' "$project" >&2
    if [ "$project" = "$DEV_PROJECT" ]; then
      dev logs --no-color --tail 40 >&2 || true
    else
      prod logs --no-color --tail 40 >&2 || true
    fi
  done
}

cleanup() {
  local status=$?
  set +e
  if [ "$failed" != 0 ] || [ "$status" != 0 ]; then diagnostics; fi
  if [ "${COMPOSE_TEST_KEEP:-0}" = 1 ]; then
    log "COMPOSE_TEST_KEEP=1: leaving projects ${STARTED_PROJECTS[*]} up"
  else
    local project
    for project in "${STARTED_PROJECTS[@]}"; do
      log "removing project $project (containers, volumes, networks)"
      if [ "$project" = "$DEV_PROJECT" ]; then
        dev down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
      else
        prod down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
      fi
    done
    local image
    for image in orrery/api orrery/scheduler orrery/worker; do
      docker image rm "$image:$PROD_TAG" >/dev/null 2>&1
    done
    stop_dockerd
  fi
  rm -rf "$TMP"
  if [ "$status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
  echo "compose: $passed passed, $failed failed"
  [ "$failed" = 0 ] || exit 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 2. offline base images -----------------------------------------------------------------------------------------
started=$SECONDS
log "offline base images (ops/compose-fixtures.sh)"
if timeout 1800 bash ops/compose-fixtures.sh; then
  pass "fixture base images ready ($((SECONDS - started))s)"
else
  fail "ops/compose-fixtures.sh failed"
  exit 1
fi

# --- helpers ----------------------------------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TAKEN=" "
pick_port() {
  local p _
  for _ in $(seq 1 500); do
    p=$((20000 + RANDOM % 40000))
    case "$TAKEN" in *" $p "*) continue ;; esac
    if port_free "$p"; then TAKEN="$TAKEN$p "; printf '%s' "$p"; return 0; fi
  done
  echo "error: no free port" >&2
  exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds; 1 on timeout.
wait_for() {
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf 'timed out after %ss waiting for %s\n' "$limit" "$what" >&2
      return 1
    fi
    sleep 1
  done
}

DEV_DB_USER=orrery
DEV_DB=orrery
dev_sql() { dev exec -T postgres psql -U "$DEV_DB_USER" -d "$DEV_DB" -v ON_ERROR_STOP=1 -qtAc "$1" 2>/dev/null; }
prod_sql() { prod exec -T postgres psql -U orrery -d orrery -v ON_ERROR_STOP=1 -qtAc "$1" 2>/dev/null; }

# http METHOD URL TOKEN [BODY] → prints "<status> <body>"
http() {
  local args=(-sS -m 15 -o - -w '\n%{http_code}' -X "$1" "$2" -H "Authorization: Bearer $3")
  [ $# -lt 4 ] || args+=(-H 'Content-Type: application/json' -d "$4")
  local out
  out="$(curl "${args[@]}" 2>/dev/null || true)"
  printf '%s %s' "${out##*$'\n'}" "${out%$'\n'*}"
}

# new_task VAR BASE TOKEN BODY: POST /tasks; sets VAR to the task id, or to "" with a FAIL line.
new_task() {
  local response code body id
  response="$(http POST "$2/tasks" "$3" "$4")"
  code="${response%% *}"
  body="${response#* }"
  id="$(jq -r '.id // empty' <<<"$body" 2>/dev/null || true)"
  if [ "$code" = 201 ] && [ -n "$id" ]; then
    printf -v "$1" '%s' "$id"
  else
    printf -v "$1" '%s' ""
    fail "POST $2/tasks answered $code: ${body:0:300}"
  fi
}

# Container ids of a service (running or not), one per line.
service_containers() { "$1" ps -q "$2" 2>/dev/null | sed '/^$/d'; }

# Every container of the project healthy (or running without a health check) and COUNT containers of SERVICE.
all_healthy() { # all_healthy dev|prod [service count]...
  local compose="$1" ids states
  shift
  ids="$("$compose" ps -q 2>/dev/null | tr '\n' ' ')"
  [ -n "${ids// /}" ] || return 1
  # shellcheck disable=SC2086  # one argument per container id
  states="$(docker inspect --format '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids 2>/dev/null)" || return 1
  if awk '!($2 == "running" && ($3 == "healthy" || $3 == "none")) { bad = 1 } END { exit bad ? 0 : 1 }' <<<"$states"; then
    return 1
  fi
  while [ $# -ge 2 ]; do
    [ "$(awk -v s="$1" '$1 == s' <<<"$states" | wc -l)" = "$2" ] || return 1
    shift 2
  done
}

# Lines of a container's log that are not bunyan JSON records (v, name, msg, level, time, hostname, pid).
non_bunyan_lines() {
  docker logs "$1" 2>&1 | sed '/^[[:space:]]*$/d' | jq -R -r '
    try (fromjson | if type == "object" and has("v") and has("name") and has("msg") and has("level")
                       and has("time") and has("hostname") and has("pid") then empty else . end | tostring)
    catch .' | head -n 3
}

check_users_and_logs() { # check_users_and_logs dev|prod LABEL
  local compose="$1" label="$2" svc id user uid bad lines
  for svc in api scheduler worker; do
    for id in $(service_containers "$compose" "$svc"); do
      user="$(docker inspect --format '{{.Config.User}}' "$id")"
      uid="$(docker exec "$id" id -u 2>/dev/null || echo '?')"
      if [ "$user" = "10001:10001" ] && [ "$uid" = 10001 ]; then
        pass "$label $svc ${id:0:12} runs as uid 10001 (appuser), not root"
      else
        fail "$label $svc ${id:0:12}: image user '$user', process uid '$uid' (expected 10001)"
      fi
      lines="$(docker logs "$id" 2>&1 | sed '/^[[:space:]]*$/d' | wc -l)"
      bad="$(non_bunyan_lines "$id")"
      if [ "$lines" -gt 0 ] && [ -z "$bad" ]; then
        pass "$label $svc ${id:0:12}: all $lines log lines are bunyan JSON"
      else
        fail "$label $svc ${id:0:12}: $lines log lines, not bunyan JSON: ${bad:0:300}"
      fi
      break
    done
  done
}

# --- 3a. ops/start.sh dev -------------------------------------------------------------------------------------------
API_PORT="$(pick_port)"
PG_PORT="$(pick_port)"
REDIS_PORT="$(pick_port)"
export ORRERY_API_PORT="$API_PORT" ORRERY_PG_PORT="$PG_PORT" ORRERY_REDIS_PORT="$REDIS_PORT"
# Short leases so that the runs of a killed worker are reclaimed within seconds (the default is 60 s).
export WORKER_LEASE_SECONDS=10
DEV_API="http://127.0.0.1:$API_PORT"
DEV_TOKEN=dev-admin-token-0123456789abcdef
STARTED_PROJECTS+=("$DEV_PROJECT")

log "ops/start.sh dev (project $DEV_PROJECT; API 127.0.0.1:$API_PORT, PostgreSQL :$PG_PORT, Redis :$REDIS_PORT)"
started=$SECONDS
if COMPOSE_PROJECT_NAME="$DEV_PROJECT" timeout "$BUILD_TIMEOUT" ops/start.sh dev --timeout "$WAIT_TIMEOUT" >"$TMP/start-dev.log" 2>&1; then
  DEV_START_SECONDS=$((SECONDS - started))
  pass "ops/start.sh dev built the images and reported every service healthy (${DEV_START_SECONDS}s)"
else
  fail "ops/start.sh dev failed after $((SECONDS - started))s; its last lines:"
  tail -n 60 "$TMP/start-dev.log" >&2
  exit 1
fi
if all_healthy dev postgres 1 redis 1 api 1 scheduler 1 worker 1; then
  pass "postgres, redis, api, scheduler and one worker are running and healthy"
else
  fail "not every dev container is healthy: $(dev ps 2>&1 | tail -n +3 | tr -s ' ' | tr '\n' ';')"
fi
for port in "$API_PORT" "$PG_PORT" "$REDIS_PORT"; do
  binding="$(docker ps --filter "label=com.docker.compose.project=$DEV_PROJECT" --format '{{.Ports}}' | tr ',' '\n' | grep -- "->" | grep ":$port->" || true)"
  case "$binding" in
    *127.0.0.1:"$port"-\>*) pass "port $port is published on 127.0.0.1 only (${binding// /})" ;;
    *) fail "port $port is not published on 127.0.0.1 only: '${binding}'" ;;
  esac
done
if grep -q "localhost:$API_PORT" "$TMP/start-dev.log"; then
  pass "start.sh dev prints the API URL with the chosen port"
else
  fail "start.sh dev did not print localhost:$API_PORT"
fi

# --- 3b. a task runs; psql and redis-cli see it --------------------------------------------------------------------
FIRE_AT="$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)"
new_task TASK1 "$DEV_API" "$DEV_TOKEN" '{"title":"compose smoke test","schedule_kind":"once","schedule_expr":"'"$FIRE_AT"'","timezone":"UTC","payload":{"pipeline":[{"id":"n","uses":"noop"}]}}'
if [ -n "$TASK1" ]; then
  pass "POST /tasks on 127.0.0.1:$API_PORT → 201 (task $TASK1)"
  task1_ran() { [ "$(dev_sql "SELECT count(*) FROM task_run WHERE task_id = '$TASK1' AND success")" = 1 ]; }
  if wait_for "$WAIT_TIMEOUT" "the task's run" task1_ran; then
    pass "docker compose exec postgres psql: task_run has the task's successful run"
  else
    fail "no successful task_run for $TASK1: $(dev_sql "SELECT string_agg(coalesce(error_kind, '') || ' ' || coalesce(error, ''), '; ') FROM task_run WHERE task_id = '$TASK1'")"
  fi
  stream_has_task() { dev exec -T redis redis-cli XREVRANGE orrery:runs + - COUNT 1000 2>/dev/null | grep -q "$TASK1"; }
  if wait_for 30 "orrery:runs" stream_has_task; then
    pass "docker compose exec redis redis-cli: orrery:runs (XLEN $(dev exec -T redis redis-cli XLEN orrery:runs | tr -d '\r')) has the task's run events"
  else
    fail "orrery:runs has no entry of task $TASK1 (XLEN $(dev exec -T redis redis-cli XLEN orrery:runs 2>&1 | tr -d '\r'))"
  fi
fi
check_users_and_logs dev dev

# --- 3c. three workers, 300 run-now fires, each run exactly once ----------------------------------------------------
log "docker compose up -d --scale worker=3"
if dev up -d --scale worker=3 >"$TMP/scale.log" 2>&1 &&
  wait_for "$WAIT_TIMEOUT" "three healthy workers" all_healthy dev worker 3; then
  pass "docker compose up -d --scale worker=3: three healthy worker containers"
else
  fail "scaling to three workers failed: $(tail -n 5 "$TMP/scale.log" | tr '\n' ' ')"
fi
three_heartbeats() {
  [ "$(dev_sql "SELECT count(DISTINCT worker_id) FROM worker_heartbeat WHERE state = 'running' AND last_seen > now() - interval '30 seconds'")" -ge 3 ] 2>/dev/null
}
if wait_for 60 "three worker heartbeats" three_heartbeats; then
  pass "worker_heartbeat shows three live worker ids: $(dev_sql "SELECT string_agg(worker_id, ' ') FROM worker_heartbeat WHERE state = 'running' AND last_seen > now() - interval '30 seconds'")"
else
  fail "live worker heartbeats: $(dev_sql "SELECT string_agg(worker_id || '/' || state, ' ') FROM worker_heartbeat")"
fi

FAR="$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)"
new_task TASK2 "$DEV_API" "$DEV_TOKEN" '{"title":"compose fan-out","schedule_kind":"once","schedule_expr":"'"$FAR"'","timezone":"UTC","payload":{"pipeline":[{"id":"s","uses":"sleep","with":{"seconds":0.2}}]}}'
if [ -n "$TASK2" ]; then
  log "300 x POST /tasks/$TASK2/run_now"
  seq 1 300 | xargs -P 6 -I{} curl -sS -m 15 -o /dev/null -w '%{http_code}\n' -X POST \
    -H "Authorization: Bearer $DEV_TOKEN" "$DEV_API/tasks/$TASK2/run_now" >"$TMP/run-now.codes" 2>&1 || true
  accepted="$(grep -c '^202$' "$TMP/run-now.codes" || true)"
  if [ "$accepted" = 300 ]; then
    pass "300 run-now requests answered 202"
  else
    fail "run-now answers: $(sort "$TMP/run-now.codes" | uniq -c | tr -s ' ' | tr '\n' ';')"
  fi
  fan_out_done() {
    [ "$(dev_sql "SELECT (SELECT count(*) FROM due_work WHERE task_id = '$TASK2') = 0 AND (SELECT count(*) FROM task_run WHERE task_id = '$TASK2') >= 300")" = t ]
  }
  if wait_for "$WAIT_TIMEOUT" "300 runs" fan_out_done; then
    read -r runs fires ok workers < <(dev_sql "SELECT count(*), count(DISTINCT due_work_id), count(*) FILTER (WHERE success), count(DISTINCT worker_id) FROM task_run WHERE task_id = '$TASK2'" | tr '|' ' ') || true
    if [ "$runs" = 300 ] && [ "$fires" = 300 ] && [ "$ok" = 300 ]; then
      pass "300 fires ran exactly once each (300 task_run rows, 300 distinct due_work ids, all successful)"
    else
      fail "fan-out: $runs runs, $fires distinct fires, $ok successful (expected 300 / 300 / 300)"
    fi
    split="$(dev_sql "SELECT string_agg(n::text, '+' ORDER BY n DESC) FROM (SELECT count(*) AS n FROM task_run WHERE task_id = '$TASK2' GROUP BY worker_id) s")"
    if [ "$workers" = 3 ]; then
      pass "all three workers claimed work (runs per worker: $split)"
    else
      fail "only $workers worker(s) ran the 300 fires (runs per worker: $split)"
    fi
  else
    fail "the 300 fires did not finish: $(dev_sql "SELECT count(*) FROM task_run WHERE task_id = '$TASK2'") runs, $(dev_sql "SELECT count(*) FROM due_work WHERE task_id = '$TASK2'") due_work rows left"
  fi
fi

# --- 3d. SIGKILL of one worker mid-run loses nothing ----------------------------------------------------------------
new_task TASK3 "$DEV_API" "$DEV_TOKEN" '{"title":"compose kill test","schedule_kind":"once","schedule_expr":"'"$FAR"'","timezone":"UTC","max_retries":5,"payload":{"pipeline":[{"id":"s","uses":"sleep","with":{"seconds":4}}]}}'
if [ -n "$TASK3" ]; then
  VICTIM="$(service_containers dev worker | head -n 1)"
  VICTIM_HOST="$(docker inspect --format '{{.Config.Hostname}}' "$VICTIM")"
  for _ in $(seq 1 30); do
    curl -sS -m 15 -o /dev/null -X POST -H "Authorization: Bearer $DEV_TOKEN" "$DEV_API/tasks/$TASK3/run_now" || true
  done
  victim_busy() {
    [ "$(dev_sql "SELECT count(*) FROM due_work d JOIN worker_heartbeat h ON h.worker_id = d.locked_by WHERE d.task_id = '$TASK3' AND h.hostname = '$VICTIM_HOST' AND d.locked_until > now()")" -gt 0 ] 2>/dev/null
  }
  if wait_for 60 "runs leased by worker $VICTIM_HOST" victim_busy; then
    held="$(dev_sql "SELECT count(*) FROM due_work d JOIN worker_heartbeat h ON h.worker_id = d.locked_by WHERE d.task_id = '$TASK3' AND h.hostname = '$VICTIM_HOST' AND d.locked_until > now()")"
    log "SIGKILL worker container ${VICTIM:0:12} while it holds $held run(s)"
    docker kill --signal SIGKILL "$VICTIM" >/dev/null
    kill_done() {
      [ "$(dev_sql "SELECT (SELECT count(*) FROM due_work WHERE task_id = '$TASK3') = 0 AND (SELECT count(DISTINCT due_work_id) FILTER (WHERE success) FROM task_run WHERE task_id = '$TASK3') = 30")" = t ]
    }
    if wait_for "$WAIT_TIMEOUT" "the 30 runs after the kill" kill_done; then
      read -r ok dup expired < <(dev_sql "SELECT count(*) FILTER (WHERE success), count(*) FILTER (WHERE success) - count(DISTINCT due_work_id) FILTER (WHERE success), count(*) FILTER (WHERE error_kind = 'lease_expired') FROM task_run WHERE task_id = '$TASK3'" | tr '|' ' ') || true
      if [ "$ok" = 30 ] && [ "$dup" = 0 ] && [ "${expired:-0}" -ge 1 ]; then
        pass "SIGKILL of one worker mid-run lost nothing: 30/30 fires succeeded once; $expired run(s) of the killed worker recorded lease_expired and retried"
      else
        fail "after the kill: $ok successful runs, $dup duplicates, $expired lease_expired (expected 30, 0, >= 1)"
      fi
    else
      fail "after the kill: $(dev_sql "SELECT count(DISTINCT due_work_id) FILTER (WHERE success) FROM task_run WHERE task_id = '$TASK3'")/30 fires succeeded, $(dev_sql "SELECT count(*) || ' left, ' || count(*) FILTER (WHERE state = 'dead') || ' dead' FROM due_work WHERE task_id = '$TASK3'")"
    fi
  else
    fail "worker $VICTIM_HOST never held a run of the kill test"
  fi
fi

# --- 3e. restart keeps the data; --clean drops it -------------------------------------------------------------------
log "docker compose down (volumes kept), then ops/start.sh dev"
dev down --timeout 40 >/dev/null 2>&1 || true
started=$SECONDS
if COMPOSE_PROJECT_NAME="$DEV_PROJECT" timeout "$BUILD_TIMEOUT" ops/start.sh dev --timeout "$WAIT_TIMEOUT" >"$TMP/start-dev2.log" 2>&1; then
  DEV_WARM_SECONDS=$((SECONDS - started))
  pass "ops/start.sh dev again (warm: images cached) healthy in ${DEV_WARM_SECONDS}s"
  if [ -n "$TASK1" ] && [ "$(dev_sql "SELECT count(*) FROM task WHERE id = '$TASK1'")" = 1 ] &&
    [ "$(dev_sql "SELECT count(*) FROM task_run WHERE task_id = '$TASK1' AND success")" = 1 ]; then
    pass "the restarted stack kept the data (task $TASK1 and its run, named volume)"
  else
    fail "the task or its run is gone after a restart"
  fi
  if [ "$(http GET "$DEV_API/tasks/${TASK1:-x}" "$DEV_TOKEN" | cut -d' ' -f1)" = 200 ]; then
    pass "GET /tasks/$TASK1 → 200 after the restart"
  else
    fail "GET /tasks/$TASK1 after the restart did not answer 200"
  fi
else
  fail "ops/start.sh dev (restart) failed:"
  tail -n 40 "$TMP/start-dev2.log" >&2
fi

log "ops/start.sh dev --clean"
if COMPOSE_PROJECT_NAME="$DEV_PROJECT" timeout "$BUILD_TIMEOUT" ops/start.sh dev --clean --timeout "$WAIT_TIMEOUT" >"$TMP/start-dev3.log" 2>&1; then
  if [ "$(dev_sql "SELECT count(*) FROM task")" = 0 ] && [ "$(http GET "$DEV_API/tasks/${TASK1:-x}" "$DEV_TOKEN" | cut -d' ' -f1)" = 404 ]; then
    pass "ops/start.sh dev --clean started from empty volumes (no tasks; GET of the old task → 404)"
  else
    fail "data survived ops/start.sh dev --clean: $(dev_sql "SELECT count(*) FROM task") tasks"
  fi
else
  fail "ops/start.sh dev --clean failed:"
  tail -n 40 "$TMP/start-dev3.log" >&2
fi
log "removing the dev stack"
dev down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1 || fail "docker compose down of the dev stack failed"

# --- 3f. ops/start.sh prod: nginx in front of two API replicas ------------------------------------------------------
HTTP_PORT="$(pick_port)"
PROD_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$PROD_ENV" <<EOF
ORRERY_ADMIN_TOKEN=$PROD_TOKEN
POSTGRES_PASSWORD=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
ORRERY_HTTP_PORT=$HTTP_PORT
ORRERY_HTTP_BIND=127.0.0.1
ORRERY_VERSION=$PROD_TAG
ORRERY_SECRETS_DIR=$TMP/secrets
EOF
STARTED_PROJECTS+=("$PROD_PROJECT")
PROD_API="http://127.0.0.1:$HTTP_PORT"
log "ops/start.sh prod --build (project $PROD_PROJECT; nginx on 127.0.0.1:$HTTP_PORT)"
started=$SECONDS
if env -u WORKER_LEASE_SECONDS COMPOSE_PROJECT_NAME="$PROD_PROJECT" ORRERY_ENV_FILE="$PROD_ENV" \
  timeout "$BUILD_TIMEOUT" ops/start.sh prod --build --timeout "$WAIT_TIMEOUT" >"$TMP/start-prod.log" 2>&1; then
  pass "ops/start.sh prod --build with a test env file: every service healthy ($((SECONDS - started))s)"
  if all_healthy prod postgres 1 redis 1 api 2 scheduler 2 worker 4 proxy 1; then
    pass "prod topology: 2 api, 2 scheduler, 4 worker, nginx, postgres, redis, all healthy"
  else
    fail "prod topology: $(prod ps 2>&1 | tail -n +3 | tr -s ' ' | tr '\n' ';')"
  fi
  binding="$(docker ps --filter "label=com.docker.compose.project=$PROD_PROJECT" --format '{{.Ports}}' | tr ',' '\n' | grep -- "->" || true)"
  if [ "$(wc -l <<<"$binding")" = 1 ] && [[ "$binding" == *"127.0.0.1:$HTTP_PORT->8080"* ]]; then
    pass "only nginx publishes a port: ${binding// /}"
  else
    fail "published ports of the prod stack: $(tr '\n' ' ' <<<"$binding")"
  fi
  codes=""
  for _ in $(seq 1 40); do
    codes="$codes $(curl -sS -m 10 -o /dev/null -w '%{http_code}' "$PROD_API/health" 2>/dev/null || echo 000)"
  done
  if [ -z "$(tr ' ' '\n' <<<"$codes" | sed '/^$/d;/^200$/d')" ]; then
    pass "40 x GET /health through nginx → 200"
  else
    fail "GET /health through nginx: $codes"
  fi
  api_ips="$(for id in $(service_containers prod api); do docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id"; done | tr ' ' '\n' | sed '/^$/d' | sort -u)"
  upstreams="$(prod logs --no-color --no-log-prefix proxy 2>/dev/null | jq -R -r 'try (fromjson | select(.uri == "/health") | .upstream) catch empty' | sed 's/, */\n/g' | sed 's/:8080$//; /^$/d' | sort -u)"
  if [ "$(wc -l <<<"$api_ips")" = 2 ] && [ "$upstreams" = "$api_ips" ]; then
    pass "both API replicas answered through nginx (upstreams $(tr '\n' ' ' <<<"$upstreams"))"
  else
    fail "nginx upstreams '$(tr '\n' ' ' <<<"$upstreams")' vs API replicas '$(tr '\n' ' ' <<<"$api_ips")'"
  fi
  if [ "$(http GET "$PROD_API/tasks" "$DEV_TOKEN" | cut -d' ' -f1)" = 401 ]; then
    pass "prod rejects the development admin token (401)"
  else
    fail "prod did not answer 401 to the development token"
  fi
  # Credentials are Compose secrets: no container's configuration (docker inspect) holds one.
  prod_password="$(sed -n 's/^POSTGRES_PASSWORD=//p' "$PROD_ENV")"
  leaked=""
  for id in $(prod ps -q 2>/dev/null); do
    if docker inspect "$id" | grep -q -e "$PROD_TOKEN" -e "$prod_password"; then leaked="$leaked $id"; fi
  done
  if [ -z "$leaked" ]; then
    pass "no container's docker inspect shows the admin token or the database password (Compose secrets)"
  else
    fail "docker inspect shows a credential in:$leaked"
  fi
  if prod exec -T redis redis-cli ping 2>&1 | grep -q NOAUTH; then
    pass "prod Redis requires its password (redis-cli without it: NOAUTH)"
  else
    fail "prod Redis answered without a password"
  fi
  if [ "$(http GET "$PROD_API/metrics" "" | cut -d' ' -f1)" = 404 ] &&
    prod exec -T api orrery-api healthcheck >/dev/null 2>&1; then
    pass "/metrics is not served through nginx (404); the containers still serve it on the internal network"
  else
    fail "/metrics answered through nginx"
  fi
  FIRE_AT="$(date -u -d '+3 seconds' +%Y-%m-%dT%H:%M:%SZ)"
  new_task TASK4 "$PROD_API" "$PROD_TOKEN" '{"title":"compose prod smoke test","schedule_kind":"once","schedule_expr":"'"$FIRE_AT"'","timezone":"UTC","payload":{"pipeline":[{"id":"n","uses":"noop"}]}}'
  if [ -n "$TASK4" ]; then
    task4_ran() { [ "$(prod_sql "SELECT count(*) FROM task_run WHERE task_id = '$TASK4' AND success")" = 1 ]; }
    if wait_for "$WAIT_TIMEOUT" "the prod task's run" task4_ran; then
      pass "a task created through nginx ran once (task_run via docker compose exec postgres psql)"
    else
      fail "the prod task $TASK4 did not run"
    fi
  fi
  check_users_and_logs prod prod
else
  fail "ops/start.sh prod failed after $((SECONDS - started))s; its last lines:"
  tail -n 60 "$TMP/start-prod.log" >&2
fi

[ -z "${DEV_START_SECONDS:-}" ] || log "timings: ops/start.sh dev ${DEV_START_SECONDS}s (this run's first start), ${DEV_WARM_SECONDS:-?}s (restart, warm)"
