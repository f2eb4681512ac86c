# syntax=docker/dockerfile:1.7
# The gateway image: build from the repository root (`docker build -f compose/gateway.Dockerfile .`, or
# `docker compose build`). Dependencies are cooked in their own layer (cargo-chef): a change to our code
# rebuilds only our crates. The runtime is Debian slim, as a non-root user; the binary carries
# CAP_NET_BIND_SERVICE as a file capability to bind 80 and 443, and compose drops every other capability.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim
# BINARIES=build (the default, the production path) compiles the binary in the image. BINARIES=host takes
# the release binary the host already built, from compose/.host-bin/ (scripts/compose-test.sh puts it there),
# so that CI does not compile twice; with RUNTIME_IMAGE set to a local Debian base, no image is pulled.
ARG BINARIES=build

FROM ${RUST_IMAGE} AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make pkg-config \
 && rm -rf /var/lib/apt/lists/* \
 && cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin gateway

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin gateway
COPY . .
RUN cargo build --release --locked -p gateway --bin gateway \
 && install -D -m 0755 target/release/gateway /out/gateway

FROM ${RUNTIME_IMAGE} AS binaries-host
COPY compose/.host-bin/gateway /out/gateway

FROM builder AS binaries-build

FROM binaries-${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS runtime
# One layer: the binary is installed from a bind mount of the binaries stage and given its capability in
# the same step (a COPY then `setcap` would store the binary twice, once per layer). Buildah's cache does
# not look into a bind mount: BINARY_DIGEST (the binary's sha256, passed by scripts/compose-test.sh) makes
# a new binary miss the cache instead of shipping the old one.
ARG BINARY_DIGEST=
RUN --mount=type=bind,from=binaries,source=/out,target=/mnt/binaries \
    apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libcap2-bin \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin aggios \
 && install -d -o aggios -g aggios /run/aggios-edge /etc/aggios-edge \
 && install -m 0755 /mnt/binaries/gateway /usr/local/bin/gateway \
 && setcap cap_net_bind_service=+ep /usr/local/bin/gateway \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
EXPOSE 80 443 9000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s CMD curl -fsS http://127.0.0.1:9000/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run", "--config", "/etc/aggios-edge/gateway.toml"]
