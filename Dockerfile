# syntax=docker/dockerfile:1
#
# Orrery images: one build, three runnable targets.
#
#   docker build --target api       -t orrery/api .
#   docker build --target scheduler -t orrery/scheduler .
#   docker build --target worker    -t orrery/worker .
#   docker build -t orrery .          # default (last stage): the API
#
# Every target holds all three binaries (a few MB each, shared layer); the targets differ only in the command,
# the exposed port and the HEALTHCHECK, which runs the binary's own `healthcheck` subcommand (exit 0 only when its
# /health/ready answers 200), so the image needs no curl.
#
# Works with the classic builder and with BuildKit (no cache mounts, no heredocs). The dependency layer is cached the
# cargo-chef way without cargo-chef: a planner stage reduces the workspace to its manifests plus stub sources
# (ops/cargo-skeleton.sh), the dependencies are compiled against that skeleton, and only then come the real sources.
# The skeleton takes every Cargo.toml in the context, so workspace members can be added without touching this file;
# only the three service binaries are built.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

########################################################################################################################
# 1. Builder: dependencies first (cached until a manifest, Cargo.lock or the set of targets changes), then the
#    workspace itself.
########################################################################################################################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS planner
WORKDIR /src
# The whole workspace (the .dockerignore keeps target/, .git/, docs, ops and secrets out of the context).
COPY . .
RUN bash ops/cargo-skeleton.sh /src /skeleton

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5

# Dependencies, compiled against the skeleton: this layer is reused as long as the skeleton is byte-identical.
COPY --from=planner /skeleton/ ./
RUN set -eux; \
    cargo fetch --locked; \
    cargo build --release --locked -p orrery-api -p orrery-scheduler -p orrery-worker \
                --bin orrery-api --bin orrery-scheduler --bin orrery-worker
# Forget the stub builds of our own crates so that the real sources are always recompiled below
# (COPY keeps the files' modification times, which may be older than the stub artifacts).
RUN rm -rf target/release/.fingerprint/orrery* target/release/build/orrery* \
           target/release/deps/orrery* target/release/deps/liborrery* \
           target/release/orrery* target/release/liborrery*

# The real sources.
COPY . .
RUN set -eux; \
    find . -path ./target -prune -o -name '*.rs' -exec touch {} +; \
    cargo build --release --locked -p orrery-api -p orrery-scheduler -p orrery-worker \
                --bin orrery-api --bin orrery-scheduler --bin orrery-worker; \
    mkdir -p /out; \
    for bin in orrery-api orrery-scheduler orrery-worker; do \
      cp "target/release/$bin" /out/; \
      strip --strip-debug "/out/$bin" || true; \
      "/out/$bin" --version; \
    done

########################################################################################################################
# 2. Runtime base: Debian slim plus a non-root user and the binaries. Nothing else is installed: the binaries link
#    only glibc/libgcc, TLS roots for http.request are compiled in (reqwest + rustls + webpki-roots) and so is the
#    time zone database (chrono-tz), so no ca-certificates or tzdata package is needed.
########################################################################################################################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN set -eux; \
    groupadd --system --gid 10001 appuser; \
    useradd --system --uid 10001 --gid appuser --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin appuser
COPY --from=builder /out/orrery-api /out/orrery-scheduler /out/orrery-worker /usr/local/bin/
ENV TZ=UTC \
    API_HOST=0.0.0.0 \
    API_PORT=8080 \
    SCHEDULER_HEALTH_PORT=8081 \
    WORKER_HEALTH_PORT=8082
# appuser, numerically so that runtimes enforcing runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /tmp
# The binaries handle SIGTERM themselves (api/scheduler exit within 5 s; a busy worker waits up to
# WORKER_SHUTDOWN_GRACE_SECONDS). They run as PID 1 directly (exec form), so signals reach them.
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="Orrery" \
      org.opencontainers.image.description="Self-hosted scheduler and job orchestrator" \
      org.opencontainers.image.licenses="Apache-2.0"

########################################################################################################################
# 3. Targets.
########################################################################################################################
FROM runtime AS scheduler
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["orrery-scheduler", "healthcheck"]
CMD ["orrery-scheduler"]

FROM runtime AS worker
EXPOSE 8082
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["orrery-worker", "healthcheck"]
CMD ["orrery-worker"]

# Last, so that a plain `docker build .` produces the API image.
FROM runtime AS api
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["orrery-api", "healthcheck"]
CMD ["orrery-api"]
