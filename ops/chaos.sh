#!/usr/bin/env bash
# The fault suite (issue 14; docs/chaos.md): the real binaries, each scenario against a private PostgreSQL
# cluster and redis-server of its own, faults injected while they work, exact accounting from the database.
#
#   ops/chaos.sh                         # full suite (release binaries): the table in docs/chaos.md
#   ops/chaos.sh --short                 # the CI form run by ops/test.sh (debug binaries, ~2 minutes)
#   ops/chaos.sh --short --release       # binaries of either profile with either form (--debug / --release)
#   ops/chaos.sh --only redis,postgres   # some of: workers, schedulers, postgres, redis
#   ops/chaos.sh --short --self-test     # also proves the accounting can fail: after counting, damages each
#                                        # scenario's results (a success erased, one doubled, ...) and checks
#                                        # that exactly that damage is counted (ops/test.sh runs this form)
#
# Scenarios: workers SIGKILLed every 2 s while 10,000 runs drain; two schedulers with one SIGKILLed every 5 s
# over 50 two-second schedules; PostgreSQL stopped with `pg_ctl -m immediate` under load and restarted; Redis
# stopped for 15 s under load. Prints a table (runs lost, runs succeeded twice, fires missed, fires duplicated,
# events lost, time to recover) and exits 1 on any loss or duplicate, or a scenario that does not settle.
#
# Needs the PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb; run as the `postgres` user when root)
# and redis-server; it never touches the PostgreSQL and Redis the other tests use.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=--full
profile=""
only=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --short) mode=--short ;;
    --full) mode=--full ;;
    --release) profile=release ;;
    --self-test) extra+=(--self-test) ;;
    --debug) profile=debug ;;
    --only)
      [ $# -ge 2 ] || { echo "chaos.sh: --only needs a list, e.g. --only redis,postgres" >&2; exit 2; }
      only=(--only "$2")
      shift
      ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$profile" ]; then
  if [ "$mode" = --short ]; then profile=debug; else profile=release; fi
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "chaos.sh: the PostgreSQL server binaries are missing (apt-get install postgresql)" >&2
  exit 2
fi
if ! command -v redis-server >/dev/null; then
  echo "chaos.sh: redis-server is missing (apt-get install redis-server)" >&2
  exit 2
fi

build=(cargo build --locked -p orrery-api -p orrery-scheduler -p orrery-worker --bins)
if [ "$profile" = release ]; then build+=(--release); fi
echo "==> ${build[*]}"
"${build[@]}"
ORRERY_BIN_DIR="$PWD/target/$profile"
export ORRERY_BIN_DIR
echo "==> fault suite ($mode, $profile binaries)"
exec cargo test --locked -p orrery-tests --test chaos -- "$mode" ${only[@]+"${only[@]}"} ${extra[@]+"${extra[@]}"}
