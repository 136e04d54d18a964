#!/usr/bin/env bash
# Offline base images for ops/test-compose.sh — TEST FIXTURES, not something users run.
#
#   ops/compose-fixtures.sh            # builds what is missing or outdated, prints what it did
#
# The Compose stack names public images (debian:bookworm-slim and rust:<version>-bookworm in the Dockerfile,
# postgres / redis / nginx in the Compose files). Where no image registry is reachable, this script builds local
# stand-ins and tags them with exactly those names, in the engine that `docker` talks to:
#
#   debian:<release>-slim            `debootstrap --variant=minbase <release>` from this machine's Debian mirror,
#                                    then `docker import` (the runtime base of the Orrery images)
#   rust:<version>-<release>         that root plus gcc and this machine's Rust toolchain (~/.rustup), plus a layer
#                                    with the crates of Cargo.lock vendored now (`cargo vendor`) and a Cargo config
#                                    that uses them: the unchanged Dockerfile builds without network
#   postgres:… redis:… nginx:…       that root plus Debian's postgresql-15, redis-server and nginx-light packages, behind
#                                    entrypoints honouring the variables, volumes, ports and health commands the
#                                    Compose files use with the official images (ops/compose-fixtures/)
#
# Every image it makes carries the label org.orrery.test-fixture=<recipe hash>. A tag that already exists WITHOUT
# that label (a real image pulled from a registry) is never replaced: it is used as it is. A fixture is rebuilt
# only when its recipe changed (and the rust one when Cargo.lock changed), so the engine's image store is the cache:
# a warm run takes seconds. Needs root (debootstrap, chroot) only when something has to be built.
set -euo pipefail
# The classic builder (the engine may have no buildx); also keeps newer CLIs from printing a deprecation notice.
export DOCKER_BUILDKIT=0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FIXTURES="$ROOT/ops/compose-fixtures"

log() { printf '==> fixtures: %s\n' "$*"; }
die() { printf 'error: fixtures: %s\n' "$*" >&2; exit 1; }

# --- what the Dockerfile and the Compose files name -----------------------------------------------------------------
dockerfile_arg() { sed -n "s/^ARG $1=\(.*\)$/\1/p" Dockerfile | head -n 1; }
RUST_VERSION="$(dockerfile_arg RUST_VERSION)"
DEBIAN_RELEASE="$(dockerfile_arg DEBIAN_RELEASE)"
if [ -z "$RUST_VERSION" ] || [ -z "$DEBIAN_RELEASE" ]; then
  die "cannot read RUST_VERSION / DEBIAN_RELEASE from the Dockerfile"
fi
RUNTIME_TAG="debian:${DEBIAN_RELEASE}-slim"
RUST_TAG="rust:${RUST_VERSION}-${DEBIAN_RELEASE}"
compose_image() {
  sed -n "s/^[[:space:]]*image:[[:space:]]*\"\{0,1\}\($1:[^\"[:space:]]*\)\"\{0,1\}[[:space:]]*$/\1/p" \
    docker-compose.yml docker-compose.dev.yml docker-compose.prod.yml | head -n 1
}
POSTGRES_TAG="$(compose_image postgres)"
REDIS_TAG="$(compose_image redis)"
NGINX_TAG="$(compose_image nginx)"
if [ -z "$POSTGRES_TAG" ] || [ -z "$REDIS_TAG" ] || [ -z "$NGINX_TAG" ]; then
  die "cannot find the postgres, redis and nginx images in the Compose files"
fi

# --- this machine's Rust toolchain ----------------------------------------------------------------------------------
RUSTUP_DIR="${RUSTUP_HOME:-$HOME/.rustup}"
TOOLCHAIN=""
for dir in "$RUSTUP_DIR/toolchains/$RUST_VERSION"-x86_64-unknown-linux-gnu \
  "$RUSTUP_DIR/toolchains/$RUST_VERSION".*-x86_64-unknown-linux-gnu; do
  [ -x "$dir/bin/cargo" ] && TOOLCHAIN="$dir"
done
if [ -z "$TOOLCHAIN" ]; then
  command -v rustc >/dev/null 2>&1 || die "no Rust toolchain on this machine (the builder image copies it)"
  TOOLCHAIN="$(rustc --print sysroot)"
  [ -x "$TOOLCHAIN/bin/cargo" ] || die "the toolchain in $TOOLCHAIN has no cargo"
  printf 'warning: fixtures: no %s toolchain in %s; the builder image gets %s\n' \
    "$RUST_VERSION" "$RUSTUP_DIR" "$("$TOOLCHAIN/bin/rustc" --version)" >&2
fi
TOOLCHAIN_VERSION="$("$TOOLCHAIN/bin/rustc" --version)"

# --- recipe hash: the fixture files, this script, the release and the toolchain -------------------------------------
MIRROR="${ORRERY_FIXTURE_MIRROR:-}"
if [ -z "$MIRROR" ]; then
  MIRROR="$(grep -rhoE '^(URIs:|deb)[[:space:]]+https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | awk '{print $2}' | head -n 1 || true)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
# Bump RECIPE when a change to this script changes what the images contain (the files in ops/compose-fixtures/ are
# hashed as they are). A new recipe rebuilds every fixture, and the cached Orrery build layers with them.
RECIPE=3
PACKAGES=(postgresql-15 redis-server redis-tools nginx-light wget gcc libc6-dev)
FIXTURE_ID="$(
  {
    cat "$FIXTURES"/*
    printf '%s\n' "$RECIPE" "${PACKAGES[*]}" "$DEBIAN_RELEASE" "$TOOLCHAIN_VERSION"
  } | sha256sum | cut -c1-16
)"
LOCK_SHA="$(sha256sum Cargo.lock | cut -c1-64)"
LABEL=org.orrery.test-fixture
SERVICES_ROOT="orrery-fixture/services-root:$FIXTURE_ID"
RUST_ROOT="orrery-fixture/rust-root:$FIXTURE_ID"

# "missing", "current", "outdated" (a fixture of another recipe) or "foreign" (not made here: never touched).
tag_state() {
  local label lock
  if ! label="$(docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null)"; then
    echo missing
    return
  fi
  case "$label" in
    "" | "<no value>") echo foreign; return ;;
    "$FIXTURE_ID") ;;
    *) echo outdated; return ;;
  esac
  if [ "${2:-}" = lock ]; then
    lock="$(docker image inspect --format "{{index .Config.Labels \"$LABEL.cargo-lock-sha256\"}}" "$1")"
    [ "$lock" = "$LOCK_SHA" ] || { echo outdated; return; }
  fi
  echo current
}

needs_build() {
  local state
  state="$(tag_state "$@")"
  case "$state" in
    current) log "$1: up to date (fixture $FIXTURE_ID)"; return 1 ;;
    foreign) log "$1: a real image exists, using it"; return 1 ;;
    *) log "$1: $state, building"; return 0 ;;
  esac
}

WORK=""
cleanup() {
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    umount "$WORK/root/proc" 2>/dev/null || true
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then die "missing $*; install it and retry"; fi
  if [ "$apt_updated" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Runs a command with its output kept aside, shown only when it fails.
quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" | tail -n 40 >&2
    die "failed: $*"
  fi
}

import_root() { # import_root DIR TAG [extra --change ...]
  local dir="$1" tag="$2"
  shift 2
  tar -C "$dir" --numeric-owner -c . |
    docker import --change "LABEL $LABEL=$FIXTURE_ID" \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' "$@" - "$tag" >/dev/null
}

# The Debian root (runtime base), then the same root with the packages (services and builder roots).
need_runtime=0 need_services=0 need_rust_root=0
needs_build "$RUNTIME_TAG" && need_runtime=1
if [ "$(tag_state "$SERVICES_ROOT")" != current ]; then
  for tag in "$POSTGRES_TAG" "$REDIS_TAG" "$NGINX_TAG"; do
    case "$(tag_state "$tag")" in current | foreign) ;; *) need_services=1 ;; esac
  done
fi
if [ "$(tag_state "$RUST_ROOT")" != current ]; then
  case "$(tag_state "$RUST_TAG")" in current | foreign) ;; *) need_rust_root=1 ;; esac
fi

if [ "$need_runtime$need_services$need_rust_root" != 000 ]; then
  [ "$(id -u)" = 0 ] || die "building the base images needs root (debootstrap, chroot)"
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/orrery-fixtures.XXXXXX")"
  log "debootstrap --variant=minbase $DEBIAN_RELEASE from $MIRROR"
  started=$SECONDS
  debootstrap --variant=minbase "$DEBIAN_RELEASE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed"
  }
  rm -rf "$WORK/root/var/cache/apt/archives/"*.deb "$WORK/root/var/lib/apt/lists/"* 2>/dev/null || true
  log "debootstrap took $((SECONDS - started))s"
  if [ "$need_runtime" = 1 ]; then
    import_root "$WORK/root" "$RUNTIME_TAG"
    log "imported $RUNTIME_TAG"
  fi
  if [ "$need_services$need_rust_root" != 00 ]; then
    log "installing ${PACKAGES[*]} into the root (chroot)"
    # No service starts inside the chroot, and no default cluster: the entrypoint initialises the volume.
    printf '#!/bin/sh\nexit 101\n' >"$WORK/root/usr/sbin/policy-rc.d"
    chmod +x "$WORK/root/usr/sbin/policy-rc.d"
    mkdir -p "$WORK/root/etc/postgresql-common"
    echo 'create_main_cluster = false' >"$WORK/root/etc/postgresql-common/createcluster.conf"
    cp /etc/resolv.conf "$WORK/root/etc/resolv.conf" 2>/dev/null || true
    mount -t proc proc "$WORK/root/proc"
    if ! { chroot "$WORK/root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      chroot "$WORK/root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Options::=--force-confold \
        "${PACKAGES[@]}"; } >"$WORK/apt.log" 2>&1; then
      tail -n 30 "$WORK/apt.log" >&2
      die "apt-get in the chroot failed"
    fi
    umount "$WORK/root/proc"
    chroot "$WORK/root" apt-get clean
    rm -rf "$WORK/root/var/lib/apt/lists/"*
    if [ "$need_services" = 1 ]; then
      import_root "$WORK/root" "$SERVICES_ROOT"
      log "imported $SERVICES_ROOT"
    fi
    if [ "$need_rust_root" = 1 ]; then
      log "copying the toolchain ($TOOLCHAIN_VERSION) into the builder root"
      mkdir -p "$WORK/root/usr/local/rust"
      for part in bin lib libexec; do
        [ ! -d "$TOOLCHAIN/$part" ] || cp -a "$TOOLCHAIN/$part" "$WORK/root/usr/local/rust/"
      done
      import_root "$WORK/root" "$RUST_ROOT" --change "ENV RUST_VERSION=$RUST_VERSION"
      log "imported $RUST_ROOT"
    fi
  fi
fi

build_fixture() { # build_fixture TAG DOCKERFILE
  local tag="$1" file="$2"
  needs_build "$tag" || return 0
  quiet docker build -q --build-arg "FIXTURE_ROOT=$SERVICES_ROOT" --label "$LABEL=$FIXTURE_ID" \
    -f "$FIXTURES/$file" -t "$tag" "$FIXTURES"
  log "built $tag"
}
build_fixture "$POSTGRES_TAG" postgres.Dockerfile
build_fixture "$REDIS_TAG" redis.Dockerfile
build_fixture "$NGINX_TAG" nginx.Dockerfile

if needs_build "$RUST_TAG" lock; then
  [ -n "$WORK" ] || WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/orrery-fixtures.XXXXXX")"
  ctx="$WORK/rust-context"
  mkdir -p "$ctx"
  log "cargo vendor (Cargo.lock $(cut -c1-12 <<<"$LOCK_SHA"))"
  cargo vendor --locked --quiet "$ctx/vendor" >/dev/null
  cat >"$ctx/config.toml" <<'EOF'
# Test fixture: the crates come from the copy vendored when the image was built; nothing is downloaded.
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "/usr/local/cargo/vendor"

[net]
offline = true
EOF
  cp "$FIXTURES/rust.Dockerfile" "$ctx/Dockerfile"
  quiet docker build -q --build-arg "FIXTURE_ROOT=$RUST_ROOT" --build-arg "CARGO_LOCK_SHA256=$LOCK_SHA" \
    --label "$LABEL=$FIXTURE_ID" -t "$RUST_TAG" "$ctx"
  log "built $RUST_TAG"
fi

# Older fixture roots are only cache; drop them (never an image without our label).
old_roots="$(docker image ls --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}}' |
  grep -E '^orrery-fixture/(services|rust)-root:' | grep -v ":$FIXTURE_ID\$" || true)"
for old in $old_roots; do docker image rm "$old" >/dev/null 2>&1 || true; done
# Replaced fixtures linger as untagged images: remove those of another recipe or Cargo.lock. Never a plain
# `docker image prune`: the intermediate images of the Orrery build (its layer cache, including the compiled
# dependencies) are untagged too, and inherit the labels of the rust fixture.
docker image ls -q --filter dangling=true --filter "label=$LABEL" |
  while read -r id; do
    labels="$(docker image inspect --format "{{index .Config.Labels \"$LABEL\"}} {{index .Config.Labels \"$LABEL.cargo-lock-sha256\"}}" "$id" 2>/dev/null)" || continue
    read -r fixture lock <<<"$labels"
    if [ "$fixture" != "$FIXTURE_ID" ] || { [ "$lock" != "<no" ] && [ -n "$lock" ] && [ "$lock" != "$LOCK_SHA" ]; }; then
      docker image rm "$id" >/dev/null 2>&1 || true
    fi
  done
log "ready: $RUNTIME_TAG $RUST_TAG $POSTGRES_TAG $REDIS_TAG $NGINX_TAG"
