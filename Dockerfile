# syntax=docker/dockerfile:1
#
# m3query container image.
#
#   docker build -t m3query .
#   docker run -p 7201:7201 -v m3query-data:/var/lib/m3query m3query
#
# The image runs `m3query --config /etc/m3query/m3query.yml` as an unprivileged user; the
# config baked in is config/m3query.yml (the defaults), so mount your own over it. Data lives in
# the /var/lib/m3query volume. `docker run m3query check-config /etc/m3query/m3query.yml`
# checks a config.
#
# Base images are pinned; bump them together (the runtime must have the build's glibc or newer:
# both are Debian 13 "trixie").
ARG RUST_IMAGE=rust:1.95.0-slim-trixie
ARG RUNTIME_IMAGE=debian:trixie-20260406-slim

# ---- build ---------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the binary is built from, so edits to docs, scripts or sample configs reuse the
# cached build. The context has no .git, so pass the commit for build info:
#   --build-arg M3QUERY_GIT_REVISION=$(git rev-parse HEAD) --build-arg M3QUERY_GIT_BRANCH=main
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY crates ./crates
COPY config/m3query.yml ./config/m3query.yml
# Reproducible builds: pass --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct).
ARG SOURCE_DATE_EPOCH
ARG M3QUERY_GIT_REVISION
ARG M3QUERY_GIT_BRANCH
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin m3query \
    && install -D -m 0755 target/release/m3query /out/m3query

# ---- runtime -------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
# ca-certificates: TLS to LightStep satellites, OTLP collectors and remote-read stores.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 m3query \
    && useradd --system --uid 10001 --gid m3query --home-dir /var/lib/m3query \
       --shell /usr/sbin/nologin m3query \
    && install -d -o m3query -g m3query -m 0750 /var/lib/m3query

COPY --from=build /out/m3query /usr/local/bin/m3query
COPY scripts/healthcheck /usr/local/bin/m3query-healthcheck
COPY config/m3query.yml /etc/m3query/m3query.yml

USER 10001:10001
WORKDIR /var/lib/m3query
VOLUME ["/var/lib/m3query"]
EXPOSE 7201
# GET /health on the listen port; set M3QUERY_HEALTH_ADDR when the config moves it.
ENV M3QUERY_HEALTH_ADDR=127.0.0.1:7201
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/m3query-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/m3query"]
CMD ["--config", "/etc/m3query/m3query.yml"]
