#!/usr/bin/env bash
# The test command: makes sure PostgreSQL and Redis are reachable (detect, else start, else install and start),
# then runs formatting, lints and every test against them, and finally the Compose stack on a Docker engine
# (ops/test-compose.sh). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

PGHOST_ADDR=127.0.0.1
PGPORT_NUM=5432
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@${PGHOST_ADDR}:${PGPORT_NUM}/postgres}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h "$PGHOST_ADDR" -p "$PGPORT_NUM" 2>/dev/null; }
redis_up() { redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; }

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_up; then log "PostgreSQL is reachable"; return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -V | tail -n 1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q "orrery-test trust" "$hba" 2>/dev/null; then
    # Trust auth on loopback for the test user, as on the development machines.
    sed -i '1i host all all 127.0.0.1/32 trust # orrery-test trust\nhost all all ::1/128 trust # orrery-test trust\nlocal all all trust # orrery-test trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main restart || true
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || { echo "PostgreSQL did not come up" >&2; exit 1; }
}

ensure_redis() {
  if command -v redis-cli >/dev/null && redis_up; then log "Redis is reachable"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 60); do redis_up && break; sleep 0.25; done
  redis_up || { echo "Redis did not come up" >&2; exit 1; }
}

ensure_tools() {
  command -v pg_isready >/dev/null || apt_install postgresql-client
  command -v redis-cli >/dev/null || apt_install redis-tools
  command -v docker-compose >/dev/null || apt_install docker-compose
  command -v shellcheck >/dev/null || apt_install shellcheck
  # Fault-injection tests run a private cluster with initdb/pg_ctl and a private redis-server.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
  command -v redis-server >/dev/null || apt_install redis-server
  # The console's browser tests drive Debian's headless Chromium through chromedriver.
  { command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver
}

ensure_tools
ensure_postgres
ensure_redis

log "cargo fmt --check"
cargo fmt --all -- --check
log "unused dependencies (cargo-machete)"
command -v cargo-machete >/dev/null || cargo install --locked cargo-machete
cargo machete
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "building binaries"
cargo build --workspace --bins --locked
log "shellcheck"
shellcheck ops/*.sh ops/compose-fixtures/*.sh .ci/run
log "compose files"
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml -f docker-compose.dev.yml config -q
ORRERY_ADMIN_TOKEN=ci-check-token-0123456789 POSTGRES_PASSWORD=ci-check-password \
  docker-compose --env-file .env.example -f docker-compose.yml -f docker-compose.prod.yml config -q
log "cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
log "fault suite, short form (ops/chaos.sh --short; the full suite is docs/chaos.md)"
bash ops/chaos.sh --short --self-test
log "local mode end to end (ops/start.sh local)"
bash ops/test-local-mode.sh
log "OpenAPI-driven fuzzing of the API (schemathesis)"
bash ops/fuzz-api.sh
log "the Compose stack on a Docker engine (ops/test-compose.sh; SKIPPED when no engine can be reached or started)"
bash ops/test-compose.sh
