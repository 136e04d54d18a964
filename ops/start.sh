#!/usr/bin/env bash
# Starts Orrery and waits until every part reports healthy.
#
#   ops/start.sh dev   [--build] [--clean] [--logs] [--scale N]   Docker Compose, development overlay
#   ops/start.sh prod  [--build] [--clean] [--logs] [--scale N]   Docker Compose, production overlay (.env)
#   ops/start.sh local [--debug] [--build|--no-build] [--scale N] the three binaries on this machine, no Docker
#   ops/start.sh --help
#
# Run `ops/start.sh --help` for every option and environment variable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# This script's own lines go to stderr, so stdout carries only the binaries' JSON logs in local mode
# (`ops/start.sh local | jq .`, or `> orrery.log` to keep the terminal for these lines).
log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<'EOF'
Usage: ops/start.sh dev|prod|local [options]

Modes
  dev     Docker Compose with docker-compose.dev.yml: development credentials, debug logs, API on :8080,
          PostgreSQL on :5432 and Redis on :6379 for psql / redis-cli (all on 127.0.0.1), one worker, images
          (re)built from this checkout on every start (cached: only what changed is rebuilt).
  prod    Docker Compose with docker-compose.prod.yml: configuration from .env (see .env.example), nginx on :8080
          in front of 2 API replicas, 2 schedulers, 4 workers, resource limits, log rotation. Refuses to start
          while ORRERY_ADMIN_TOKEN or POSTGRES_PASSWORD is missing or still a development/placeholder value.
  local   No Docker: builds the three binaries with cargo and runs them in the foreground against DATABASE_URL
          and REDIS_URL (local PostgreSQL and Redis are started when they are not running). Ctrl-C stops all
          of them cleanly. Their JSON logs go to stdout, this script's own lines to stderr. Without
          ORRERY_ADMIN_TOKEN, a random admin token is made once and kept in $XDG_STATE_HOME/orrery/admin-token
          (default ~/.local/state/orrery/admin-token); the banner says where.

Options
  --build      prod: build the images before starting (dev always does). local: run cargo build even with --debug.
  --no-build   local: run the binaries already in target/<profile> without calling cargo (fails if missing).
  --clean      dev: remove containers AND volumes (all data) first. prod: remove the containers first (volumes,
               i.e. the database, are kept).
  --logs       dev/prod: follow the logs once everything is healthy (Ctrl-C stops following, not Orrery).
  --scale N    number of workers (dev/prod: --scale worker=N; local: N worker processes on consecutive
               health ports starting at WORKER_HEALTH_PORT).
  --debug      local: use debug binaries (target/debug), built only when missing (same as ORRERY_PROFILE=debug).
  --timeout S  seconds to wait for health (default 180, or ORRERY_START_TIMEOUT).
  -h, --help   this text.

Environment
  COMPOSE_PROJECT_NAME  Compose project (default: orrery).
  ORRERY_API_PORT, ORRERY_PG_PORT, ORRERY_REDIS_PORT
                        dev: host ports of the API, PostgreSQL and Redis (default 8080, 5432, 6379).
  ORRERY_HTTP_PORT, ORRERY_HTTP_BIND
                        prod: host port and address of nginx (default 8080 on 0.0.0.0; from the env file).
  ORRERY_ENV_FILE       prod: the env file (default: .env).
  ORRERY_PROFILE        local: release (default) or debug.
  DATABASE_URL          local: default postgres://postgres@127.0.0.1:5432/orrery (the database is created if absent).
  REDIS_URL             local: default redis://127.0.0.1:6379.
  API_PORT, SCHEDULER_HEALTH_PORT, WORKER_HEALTH_PORT and every other variable of .env.example: local mode
  passes the environment on to the binaries.
EOF
}

# ------------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------------
MODE=""
BUILD=0
NO_BUILD=0
CLEAN=0
FOLLOW_LOGS=0
SCALE=""
PROFILE="${ORRERY_PROFILE:-release}"
TIMEOUT="${ORRERY_START_TIMEOUT:-180}"

while [ $# -gt 0 ]; do
  case "$1" in
    dev | prod | local)
      [ -z "$MODE" ] || die "only one mode, got '$MODE' and '$1'"
      MODE="$1" ;;
    --build) BUILD=1 ;;
    --no-build) NO_BUILD=1 ;;
    --clean) CLEAN=1 ;;
    --logs) FOLLOW_LOGS=1 ;;
    --debug) PROFILE=debug ;;
    --release) PROFILE=release ;;
    --scale)
      [ $# -ge 2 ] || die "--scale needs a number"
      SCALE="$2"; shift ;;
    --scale=*) SCALE="${1#--scale=}" ;;
    --timeout)
      [ $# -ge 2 ] || die "--timeout needs a number of seconds"
      TIMEOUT="$2"; shift ;;
    --timeout=*) TIMEOUT="${1#--timeout=}" ;;
    -h | --help | help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
  shift
done

[ -n "$MODE" ] || { usage >&2; die "missing mode: dev, prod or local"; }
if [ -n "$SCALE" ]; then
  SCALE="${SCALE#worker=}"
  if ! [[ "$SCALE" =~ ^[0-9]+$ ]] || [ "$SCALE" -lt 1 ]; then
    die "--scale expects a number of workers >= 1, got '$SCALE'"
  fi
fi
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout expects seconds, got '$TIMEOUT'"
if [ "$BUILD" = 1 ] && [ "$NO_BUILD" = 1 ]; then die "--build and --no-build contradict each other"; fi
if [ "$NO_BUILD" = 1 ] && [ "$MODE" != local ]; then die "--no-build applies to local mode only"; fi
case "$PROFILE" in release | debug) ;; *) die "ORRERY_PROFILE must be release or debug, got '$PROFILE'" ;; esac

# ------------------------------------------------------------------------------------------------------------------
# Docker Compose modes
# ------------------------------------------------------------------------------------------------------------------
COMPOSE=()
COMPOSE_V1=0

detect_compose() {
  command -v docker >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 ||
    die "Docker is not installed (https://docs.docker.com/engine/install/); without Docker use: ops/start.sh local"
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
    COMPOSE_V1=1
  else
    die "Docker Compose is missing: install the compose plugin ('docker compose') or docker-compose"
  fi
  command -v docker >/dev/null 2>&1 || die "the docker CLI is missing (needed to read container health)"
  docker info >/dev/null 2>&1 ||
    die "the Docker daemon is not reachable (is it running, and may this user use it?); without Docker use: ops/start.sh local"
}

# Reads KEY from the environment, else from the env file (last assignment wins, surrounding quotes removed).
env_value() {
  local key="$1" file="$2" line value
  if [ -n "${!key+x}" ]; then
    printf '%s' "${!key}"
    return
  fi
  [ -f "$file" ] || return 0
  line="$(grep -E "^[[:space:]]*(export[[:space:]]+)?${key}=" "$file" | tail -n 1 || true)"
  value="${line#*=}"
  value="${value%$'\r'}"
  case "$value" in
    \"*\") value="${value#\"}"; value="${value%\"}" ;;
    \'*\') value="${value#\'}"; value="${value%\'}" ;;
  esac
  printf '%s' "$value"
}

check_prod_secrets() {
  local file="$1" token password
  token="$(env_value ORRERY_ADMIN_TOKEN "$file")"
  password="$(env_value POSTGRES_PASSWORD "$file")"
  local problems=0
  case "$token" in
    "") warn "ORRERY_ADMIN_TOKEN is not set (in $file or the environment)"; problems=1 ;;
    dev-admin-token-0123456789abcdef | ci-check-token-* | change-me* | changeme* | CHANGE-ME* | *example* | *placeholder*)
      warn "ORRERY_ADMIN_TOKEN still has a development or placeholder value"; problems=1 ;;
    *) if [ "${#token}" -lt 16 ]; then warn "ORRERY_ADMIN_TOKEN must be at least 16 characters"; problems=1; fi ;;
  esac
  case "$password" in
    "") warn "POSTGRES_PASSWORD is not set (in $file or the environment)"; problems=1 ;;
    orrery | orrery-dev-password | postgres | password | ci-check-password | change-me* | changeme* | CHANGE-ME* | *example*)
      warn "POSTGRES_PASSWORD still has a development or placeholder value"; problems=1 ;;
    *)
      if ! [[ "$password" =~ ^[A-Za-z0-9._~-]+$ ]]; then
        warn "POSTGRES_PASSWORD may contain only letters, digits and . _ ~ - (it is part of DATABASE_URL)"
        problems=1
      fi ;;
  esac
  if [ "$problems" != 0 ]; then
    printf '%s\n' "error: production refuses to start with a missing or default admin token or database password." \
      "       Copy .env.example to $file and set ORRERY_ADMIN_TOKEN (openssl rand -hex 32) and" \
      "       POSTGRES_PASSWORD (openssl rand -hex 24)." >&2
    exit 1
  fi
}

compose() { "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" "$@"; }

# Prints "<container-id> <service> <state> <health>" for every container of the project.
container_states() {
  local ids
  ids="$(compose ps -a -q 2>/dev/null || true)"
  [ -n "$ids" ] || return 0
  # shellcheck disable=SC2086  # one argument per container id
  # One-off containers (`compose run`) are not part of the deployment: skip them.
  docker inspect --format \
    '{{.Id}} {{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{index .Config.Labels "com.docker.compose.oneoff"}}' \
    $ids 2>/dev/null | awk '$5 != "True" { print $1, $2, $3, $4 }' || true
}

wait_for_compose_health() {
  local deadline=$((SECONDS + TIMEOUT)) states pending failed line id service state health
  log "waiting up to ${TIMEOUT}s for every container to be healthy"
  while :; do
    states="$(container_states)"
    pending="" failed=""
    [ -n "$states" ] || pending="(no containers yet)"
    while read -r id service state health; do
      [ -n "${id:-}" ] || continue
      case "$state/$health" in
        running/healthy | running/none) ;;
        exited/* | dead/* | */unhealthy) failed="$failed $service" ;;
        *) pending="$pending $service($state/$health)" ;;
      esac
    done <<<"$states"
    if [ -n "$failed" ]; then
      printf 'error: not healthy:%s\n' "$failed" >&2
      report_failure "$failed"
      exit 1
    fi
    if [ -z "$pending" ]; then
      log "all containers are healthy:"
      while read -r line; do
        [ -n "$line" ] && printf '    %s\n' "$(cut -d' ' -f2- <<<"$line" | sed 's/^/ /; s/ running / running, /')"
      done <<<"$states"
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf 'error: timed out after %ss; still waiting for:%s\n' "$TIMEOUT" "$pending" >&2
      report_failure "$(sed -E 's/\([^)]*\)//g' <<<"$pending")"
      exit 1
    fi
    sleep 2
  done
}

report_failure() {
  local services service seen=" "
  read -r -a services <<<"$1"
  for service in "${services[@]}"; do
    case "$seen" in *" $service "*) continue ;; esac
    seen="$seen$service "
    printf '\n----- last 80 log lines of %s -----\n' "$service" >&2
    compose logs --no-color --tail 80 "$service" >&2 || true
  done
  printf '\nInspect with: %s ps\n' "${COMPOSE[*]} ${COMPOSE_ARGS[*]}" >&2
}

# prod: the credentials go to the containers as Compose secrets (files under /run/secrets, read through the
# binaries' <VARIABLE>_FILE support), never as environment variables that `docker inspect` would show. They are
# written here from the env file (or the environment) into ORRERY_SECRETS_DIR (default ./secrets, mode 700; the
# files are 644 so that the containers' unprivileged users can read their bind mounts). A Redis password that the
# env file does not set is generated once and kept.
write_secret() { # write_secret FILE VALUE
  (umask 022 && printf '%s' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1")
}
write_prod_secret_files() {
  local file="$1" dir user db password redis_password key
  dir="$(env_value ORRERY_SECRETS_DIR "$file")"
  dir="${dir:-$ROOT/secrets}"
  mkdir -p "$dir"
  chmod 700 "$dir"
  user="$(env_value POSTGRES_USER "$file")"
  user="${user:-orrery}"
  db="$(env_value POSTGRES_DB "$file")"
  db="${db:-orrery}"
  password="$(env_value POSTGRES_PASSWORD "$file")"
  redis_password="$(env_value REDIS_PASSWORD "$file")"
  if [ -z "$redis_password" ]; then
    if [ -s "$dir/redis_password" ]; then
      redis_password="$(cat "$dir/redis_password")"
    else
      redis_password="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
    fi
  fi
  [[ "$redis_password" =~ ^[A-Za-z0-9._~-]+$ ]] ||
    die "REDIS_PASSWORD may contain only letters, digits and . _ ~ - (it is part of REDIS_URL)"
  key="$(env_value ORRERY_SECRETS_KEY "$file")"
  write_secret "$dir/orrery_admin_token" "$(env_value ORRERY_ADMIN_TOKEN "$file")"
  write_secret "$dir/postgres_password" "$password"
  write_secret "$dir/database_url" "postgres://$user:$password@postgres:5432/$db"
  write_secret "$dir/redis_password" "$redis_password"
  write_secret "$dir/redis_url" "redis://:$redis_password@redis:6379"
  write_secret "$dir/redis_conf" "requirepass $redis_password"
  write_secret "$dir/orrery_secrets_key" "$key"
  export ORRERY_SECRETS_DIR="$dir"
  log "credentials written as Compose secrets to $dir"
}

run_compose_mode() {
  local overlay="docker-compose.$MODE.yml"
  local env_file="${ORRERY_ENV_FILE:-.env}"
  if [ "$MODE" = prod ]; then
    check_prod_secrets "$env_file"
    write_prod_secret_files "$env_file"
  fi
  detect_compose
  COMPOSE_ARGS=(-p "${COMPOSE_PROJECT_NAME:-orrery}")
  if [ "$MODE" = prod ]; then
    if [ "$env_file" != ".env" ]; then
      [ -f "$env_file" ] || die "ORRERY_ENV_FILE=$env_file does not exist"
      COMPOSE_ARGS+=(--env-file "$env_file")
    fi
  fi
  # docker-compose 1.x applies deploy: (replicas, resource limits) only in compatibility mode.
  [ "$COMPOSE_V1" = 0 ] || COMPOSE_ARGS+=(--compatibility)
  COMPOSE_ARGS+=(-f docker-compose.yml -f "$overlay")

  log "checking the Compose files (${COMPOSE[*]})"
  compose config -q

  if [ "$CLEAN" = 1 ]; then
    if [ "$MODE" = dev ]; then
      log "removing the dev containers and volumes"
      compose down --volumes --remove-orphans
    else
      log "removing the prod containers (volumes are kept)"
      compose down --remove-orphans
    fi
  fi

  local up=(up -d --remove-orphans)
  # dev images are this checkout: always rebuild them (cached layers make an unchanged rebuild take seconds), so
  # that `ops/start.sh dev` never runs binaries older than the sources.
  if [ "$BUILD" = 1 ] || [ "$MODE" = dev ]; then up+=(--build); fi
  [ -z "$SCALE" ] || up+=(--scale "worker=$SCALE")
  log "starting: ${COMPOSE[*]} ${COMPOSE_ARGS[*]} ${up[*]}"
  if ! compose "${up[@]}"; then
    printf 'error: %s up failed\n' "${COMPOSE[*]}" >&2
    report_failure "$(container_states | awk '$3 != "running" || $4 == "unhealthy" {print $2}' | tr '\n' ' ')"
    exit 1
  fi
  wait_for_compose_health

  local c="${COMPOSE[*]} ${COMPOSE_ARGS[*]}"
  # The values Compose used: the environment, else .env (which Compose reads in dev mode too), else the default.
  local port pg_port redis_port
  if [ "$MODE" = dev ]; then port="$(env_value ORRERY_API_PORT .env)"; else port="$(env_value ORRERY_HTTP_PORT "$env_file")"; fi
  port="${port:-8080}"
  pg_port="$(env_value ORRERY_PG_PORT .env)"
  pg_port="${pg_port:-5432}"
  redis_port="$(env_value ORRERY_REDIS_PORT .env)"
  redis_port="${redis_port:-6379}"
  cat <<EOF

Orrery ($MODE) is up.
  API            http://localhost:$port          (OpenAPI: http://localhost:$port/openapi.json)
  health         http://localhost:$port/health   /health/ready   /metrics
EOF
  if [ "$MODE" = dev ]; then
    cat <<EOF
  admin token    dev-admin-token-0123456789abcdef
                 curl -H 'Authorization: Bearer dev-admin-token-0123456789abcdef' http://localhost:$port/tasks
  psql           psql postgres://orrery:orrery-dev-password@localhost:$pg_port/orrery
  redis-cli      redis-cli -h localhost -p $redis_port
EOF
  fi
  cat <<EOF

Debugging
  $c ps
  $c logs -f api scheduler worker
  $c exec postgres psql -U ${POSTGRES_USER:-orrery} ${POSTGRES_DB:-orrery}
  $c exec redis redis-cli XINFO GROUPS events
  $c exec worker orrery-worker healthcheck && echo ready
  $c up -d --scale worker=N        # more or fewer workers
  $c down                          # stop (add --volumes to delete the data)
EOF
  if [ "$FOLLOW_LOGS" = 1 ]; then
    log "following logs (Ctrl-C stops following; Orrery keeps running)"
    compose logs -f --tail 20 || true
  fi
}

# ------------------------------------------------------------------------------------------------------------------
# Local mode: the binaries on this machine
# ------------------------------------------------------------------------------------------------------------------
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orrery}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing $* and cannot install it here (not root or no apt-get); install it and retry"
  fi
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# postgres://user:pw@host:port/db?query → the parts local mode needs.
url_authority() { local rest="${1#*://}"; rest="${rest%%\?*}"; printf '%s' "${rest%%/*}"; }
url_host() {
  local a; a="$(url_authority "$1")"; a="${a##*@}"
  case "$a" in \[*) a="${a#\[}"; printf '%s' "${a%%\]*}" ;; *) printf '%s' "${a%%:*}" ;; esac
}
url_port() {
  local a default="$2"; a="$(url_authority "$1")"; a="${a##*@}"; a="${a##*\]}"
  case "$a" in *:*) printf '%s' "${a##*:}" ;; *) printf '%s' "$default" ;; esac
}
url_database() {
  local rest="${1#*://}" db; rest="${rest%%\?*}"
  case "$rest" in */*) db="${rest#*/}" ;; *) db="" ;; esac
  printf '%s' "$db"
}
url_with_database() {
  local scheme="${1%%://*}" rest="${1#*://}" query=""
  case "$rest" in *\?*) query="?${rest#*\?}" ;; esac
  printf '%s://%s/%s%s' "$scheme" "$(url_authority "$1")" "$2" "$query"
}
is_local_host() { case "$1" in "" | 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac; }

pg_up() { pg_isready -q -d "$DATABASE_URL" >/dev/null 2>&1; }
redis_up() { redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; }

# Same approach as ops/test.sh: detect, else start the packaged cluster, else install it and start it.
ensure_local_postgres() {
  if ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    apt_install postgresql-client
  fi
  if pg_up; then log "PostgreSQL is reachable"; return; fi
  local host port
  host="$(url_host "$DATABASE_URL")"
  port="$(url_port "$DATABASE_URL" 5432)"
  is_local_host "$host" || die "PostgreSQL at $host:$port is not reachable (DATABASE_URL); start it and retry"
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  command -v pg_ctlcluster >/dev/null 2>&1 ||
    die "PostgreSQL is not running on $host:$port and this is not a Debian-style install: start it and retry"
  local version
  version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if [ -w "$hba" ] && ! grep -q "orrery-test trust" "$hba" 2>/dev/null; then
    # Trust auth on loopback, as ops/test.sh sets up on the development machines.
    sed -i '1i host all all 127.0.0.1/32 trust # orrery-test trust\nhost all all ::1/128 trust # orrery-test trust\nlocal all all trust # orrery-test trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main restart || true
  local _
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || die "PostgreSQL did not come up on $host:$port"
}

ensure_local_database() {
  local db maint exists
  db="$(url_database "$DATABASE_URL")"
  [ -n "$db" ] || return 0
  [[ "$db" =~ ^[A-Za-z0-9_]+$ ]] || { warn "not checking for database '$db' (unusual name)"; return 0; }
  maint="$(url_with_database "$DATABASE_URL" postgres)"
  exists="$(psql "$maint" -v ON_ERROR_STOP=1 -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" 2>/dev/null || true)"
  if [ "$exists" != 1 ]; then
    log "creating database $db"
    psql "$maint" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$db\"" >/dev/null ||
      die "cannot create database $db (create it yourself or point DATABASE_URL at an existing one)"
  fi
}

ensure_local_redis() {
  command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
  if redis_up; then log "Redis is reachable"; return; fi
  local host port
  host="$(url_host "$REDIS_URL")"
  port="$(url_port "$REDIS_URL" 6379)"
  is_local_host "$host" || die "Redis at $host:$port is not reachable (REDIS_URL); start it and retry"
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  local dir="${XDG_STATE_HOME:-$HOME/.local/state}/orrery/redis"
  mkdir -p "$dir"
  log "starting Redis on port $port (AOF everysec, data in $dir)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
    --dir "$dir" --logfile "$dir/redis.log"
  local _
  for _ in $(seq 1 60); do redis_up && break; sleep 0.25; done
  redis_up || die "Redis did not come up on port $port (see $dir/redis.log)"
}

# Without ORRERY_ADMIN_TOKEN nobody could call the API: make a random one once and keep it for later starts.
TOKEN_FILE=""
ensure_local_admin_token() {
  [ -z "${ORRERY_ADMIN_TOKEN:-}" ] || return 0
  TOKEN_FILE="${XDG_STATE_HOME:-$HOME/.local/state}/orrery/admin-token"
  if [ ! -s "$TOKEN_FILE" ]; then
    mkdir -p "$(dirname "$TOKEN_FILE")"
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE")
    log "made an admin token for local mode in $TOKEN_FILE"
  fi
  ORRERY_ADMIN_TOKEN="$(cat "$TOKEN_FILE")"
  export ORRERY_ADMIN_TOKEN
}

# Name, binary path, health port and pid of every child; all parallel arrays.
NAMES=()
BINS=()
HEALTH_ENV=()
PIDS=()

alive() {
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [ -n "$stat" ] && [[ "$stat" != Z* ]]
}

stop_children() {
  local reason="$1" i code status=0 grace deadline running
  trap '' INT TERM
  grace=$(( ${WORKER_SHUTDOWN_GRACE_SECONDS:-25} + 10 ))
  log "$reason: stopping ${NAMES[*]} (SIGTERM, up to ${grace}s)"
  # A pid of 0 marks a process already reaped (never signal it: kill 0 means the whole process group).
  for i in "${!PIDS[@]}"; do
    [ "${PIDS[$i]}" = 0 ] || kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + grace))
  while :; do
    running=0
    for i in "${!PIDS[@]}"; do
      [ "${PIDS[$i]}" = 0 ] || ! alive "${PIDS[$i]}" || running=1
    done
    if [ "$running" = 0 ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
    sleep 0.2
  done
  for i in "${!PIDS[@]}"; do
    [ "${PIDS[$i]}" != 0 ] || continue
    if alive "${PIDS[$i]}"; then
      warn "${NAMES[$i]} (pid ${PIDS[$i]}) did not stop within ${grace}s: SIGKILL"
      kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    fi
    code=0
    wait "${PIDS[$i]}" 2>/dev/null || code=$?
    if [ "$code" = 0 ]; then
      log "${NAMES[$i]} (pid ${PIDS[$i]}) exited 0"
    else
      warn "${NAMES[$i]} (pid ${PIDS[$i]}) exited with code $code"
      status=1
    fi
    PIDS[i]=0
  done
  return "$status"
}

on_signal() {
  local status=0
  stop_children "$1 received" || status=$?
  [ "$status" = 0 ] && log "stopped cleanly"
  exit "$status"
}

run_local_mode() {
  [ "$CLEAN" = 0 ] || die "--clean applies to dev and prod only"
  [ "$FOLLOW_LOGS" = 0 ] || warn "--logs is implied in local mode (the binaries log to this terminal)"
  command -v cargo >/dev/null 2>&1 || [ "$PROFILE" = debug ] || [ "$NO_BUILD" = 1 ] ||
    die "cargo is missing (https://rustup.rs)"

  local target_dir="${CARGO_TARGET_DIR:-$ROOT/target}" bindir
  bindir="$target_dir/$PROFILE"
  local b missing=0
  for b in orrery-api orrery-scheduler orrery-worker; do [ -x "$bindir/$b" ] || missing=1; done
  if [ "$NO_BUILD" = 1 ]; then
    [ "$missing" = 0 ] || die "--no-build: the binaries are not all in $bindir (build them, or drop --no-build)"
    log "using the $PROFILE binaries in $bindir (--no-build)"
  elif [ "$PROFILE" = release ]; then
    log "cargo build --release (ORRERY_PROFILE=debug or --debug to use debug binaries)"
    cargo build --release --workspace --bins
  elif [ "$missing" = 1 ] || [ "$BUILD" = 1 ]; then
    log "cargo build (debug)"
    cargo build --workspace --bins
  else
    log "using the debug binaries in $bindir (add --build to rebuild them)"
  fi
  for b in orrery-api orrery-scheduler orrery-worker; do
    [ -x "$bindir/$b" ] || die "$bindir/$b is missing after the build"
  done

  ensure_local_postgres
  ensure_local_database
  ensure_local_redis
  ensure_local_admin_token
  # A development mode: let http.request call services on this machine unless told otherwise.
  export WORKER_HTTP_ALLOW_CIDRS="${WORKER_HTTP_ALLOW_CIDRS-127.0.0.0/8,::1/128}"

  local api_port="${API_PORT:-8080}" sched_port="${SCHEDULER_HEALTH_PORT:-8081}"
  local worker_port="${WORKER_HEALTH_PORT:-8082}" workers="${SCALE:-1}" i
  NAMES=(orrery-api orrery-scheduler)
  BINS=("$bindir/orrery-api" "$bindir/orrery-scheduler")
  HEALTH_ENV=("API_PORT=$api_port" "SCHEDULER_HEALTH_PORT=$sched_port")
  for ((i = 0; i < workers; i++)); do
    if [ "$workers" = 1 ]; then NAMES+=(orrery-worker); else NAMES+=("orrery-worker-$((i + 1))"); fi
    BINS+=("$bindir/orrery-worker")
    HEALTH_ENV+=("WORKER_HEALTH_PORT=$((worker_port + i))")
  done

  trap 'on_signal SIGINT' INT
  trap 'on_signal SIGTERM' TERM

  log "starting ${NAMES[*]} ($PROFILE binaries)"
  for i in "${!BINS[@]}"; do
    env "${HEALTH_ENV[$i]}" "${BINS[$i]}" &
    PIDS+=("$!")
  done

  local deadline=$((SECONDS + TIMEOUT)) ready pending code
  log "waiting up to ${TIMEOUT}s for every process to be healthy (<binary> healthcheck)"
  while :; do
    pending=""
    for i in "${!BINS[@]}"; do
      if ! alive "${PIDS[$i]}"; then
        code=0
        wait "${PIDS[$i]}" 2>/dev/null || code=$?
        PIDS[i]=0
        printf 'error: %s exited with code %s during start-up (see its log lines above)\n' "${NAMES[$i]}" "$code" >&2
        stop_children "start-up failed" || true
        exit 1
      fi
      env "${HEALTH_ENV[$i]}" "${BINS[$i]}" healthcheck >/dev/null 2>&1 || pending="$pending ${NAMES[$i]}"
    done
    [ -n "$pending" ] || break
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf 'error: timed out after %ss; not healthy:%s (is PostgreSQL reachable at DATABASE_URL?)\n' "$TIMEOUT" "$pending" >&2
      stop_children "start-up timed out" || true
      exit 1
    fi
    sleep 0.5
  done

  ready="$(for i in "${!NAMES[@]}"; do printf ' %s=%s' "${NAMES[$i]}" "${PIDS[$i]}"; done)"
  local token_hint='the ORRERY_ADMIN_TOKEN you set'
  [ -z "$TOKEN_FILE" ] || token_hint="\$(cat $TOKEN_FILE)"
  cat >&2 <<EOF

==> Orrery (local, $PROFILE) is up:$ready
  API            http://127.0.0.1:$api_port   (/health, /health/ready, /metrics, /openapi.json)
  scheduler      http://127.0.0.1:$sched_port/health/ready   /metrics
  worker         http://127.0.0.1:$worker_port/health/ready   /metrics$([ "$workers" = 1 ] || printf ' (and the next %s ports)' "$((workers - 1))")
  admin token    $token_hint
  psql           psql "\$DATABASE_URL"
  redis-cli      redis-cli -u "\$REDIS_URL" XINFO GROUPS ${REDIS_KEY_PREFIX:-}events
  logs           the binaries' JSON logs are on stdout; these lines on stderr
  stop           Ctrl-C (or SIGTERM to pid $$): every process stops cleanly

EOF

  # Stay in the foreground until a signal arrives (the trap exits) or a process dies on its own.
  while :; do
    for i in "${!PIDS[@]}"; do
      if ! alive "${PIDS[$i]}"; then
        code=0
        wait "${PIDS[$i]}" 2>/dev/null || code=$?
        PIDS[i]=0
        printf 'error: %s exited unexpectedly with code %s\n' "${NAMES[$i]}" "$code" >&2
        stop_children "${NAMES[$i]} stopped" || true
        exit 1
      fi
    done
    sleep 1 &
    wait $! || true
  done
}

case "$MODE" in
  dev | prod) run_compose_mode ;;
  local) run_local_mode ;;
esac
