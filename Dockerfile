# switchboard: one static-ish binary (web UI embedded). Multi-stage: build with the Rust
# toolchain, run on a slim Debian as a non-root user with data under /data.
# The build step is the same `cargo build --release` that CI and the README use.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchboard

FROM debian:bookworm-slim
# libssl3 for https backends (awc uses OpenSSL), ca-certificates to verify them. Unpinned on
# purpose: these two must take Debian's security updates on every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin switchboard \
    && mkdir -p /data \
    && chown switchboard:switchboard /data
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
USER 10001:10001
# Public mode: set SWITCHBOARD_UI_PASSWORD and SWITCHBOARD_API_KEYS (startup refuses without).
ENV SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_DATA_DIR=/data \
    SWITCHBOARD_TRUST_PROXY=1 \
    PORT=8080
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/switchboard"]
