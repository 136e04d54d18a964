# Test fixture, built by ops/compose-fixtures.sh and tagged with the name the Dockerfile's builder stage uses
# (rust:<RUST_VERSION>-bookworm), only inside the engine ops/test-compose.sh runs against. FIXTURE_ROOT is the
# Debian root with gcc and this machine's Rust toolchain in /usr/local/rust; this layer adds the crates of
# Cargo.lock, vendored at test time (`cargo vendor`), and a Cargo configuration that uses them instead of crates.io,
# so the unchanged Dockerfile builds without network.
ARG FIXTURE_ROOT
FROM ${FIXTURE_ROOT}
ARG CARGO_LOCK_SHA256
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_NET_OFFLINE=true
COPY vendor /usr/local/cargo/vendor
COPY config.toml /usr/local/cargo/config.toml
LABEL org.orrery.test-fixture.cargo-lock-sha256="${CARGO_LOCK_SHA256}"
