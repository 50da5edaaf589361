# switchboard: one static-ish binary (web UI embedded). Multi-stage: build with the Rust
# toolchain, run on a slim Debian as a non-root user with data under /data.
# The build step is the same `cargo build --release --locked -p switchboard` that CI and the
# README use.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: only the manifests and the lock file, with empty
# stand-in sources, so the (long) dependency build is cached until a manifest or Cargo.lock
# changes. Every workspace member's manifest is needed for cargo to load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/
COPY fixtures/mockllm/Cargo.toml fixtures/mockllm/
COPY bench/Cargo.toml bench/
RUN mkdir -p src actors/src fixtures/mockllm/src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > fixtures/mockllm/src/main.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && touch actors/src/lib.rs fixtures/mockllm/src/lib.rs \
    && cargo build --release --locked -p switchboard \
    && rm -rf src actors/src fixtures/mockllm/src bench/src
# Then the tree. The stand-ins were built after the real files' timestamps, so touch the real
# sources: cargo must see them as newer, or it would keep the empty stand-in binary.
COPY . .
RUN find src actors/src fixtures/mockllm/src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p switchboard

FROM debian:bookworm-slim
# libssl3 for https backends (awc uses OpenSSL), ca-certificates to verify them. Unpinned on
# purpose: these two must take Debian's security updates on every rebuild. (setpriv, used by
# the entrypoint, is in util-linux, which slim already has.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin switchboard \
    && mkdir -p /data \
    && chown switchboard:switchboard /data \
    && chmod 0700 /data
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY docker/entrypoint.sh /usr/local/bin/switchboard-entrypoint
# Public mode: set SWITCHBOARD_UI_PASSWORD and SWITCHBOARD_API_KEYS (startup refuses without).
ENV SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_DATA_DIR=/data \
    SWITCHBOARD_TRUST_PROXY=1 \
    PORT=8080
EXPOSE 8080
VOLUME ["/data"]
# For `docker run` and compose (Railway uses healthcheckPath in railway.toml instead). Slim has
# no curl or wget, and installing one only for this adds a package to patch; bash's /dev/tcp
# speaks the few bytes of HTTP needed. /health answers 200 while serving and 503 while
# draining, so a draining container reads as unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-8080} && printf 'GET /health HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
# No USER line: the entrypoint starts as root only to hand a root-owned volume (Railway mounts
# them so) to uid 10001, then drops to 10001 with setpriv before the broker runs. Started as
# another user (`--user 10001`), it runs the broker directly. See docker/entrypoint.sh.
ENTRYPOINT ["/usr/local/bin/switchboard-entrypoint"]
