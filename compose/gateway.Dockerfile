# syntax=docker/dockerfile:1.7
# The gateway image: build from the repository root (`docker build -f compose/gateway.Dockerfile .`, or
# `docker compose build`). Dependencies are cooked in their own layer (cargo-chef): a change to our code
# rebuilds only our crates. The runtime is Debian slim, as a non-root user; the binary carries
# CAP_NET_BIND_SERVICE as a file capability to bind 80 and 443, and compose drops every other capability.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.12-slim

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
RUN cargo build --release --locked -p gateway --bin gateway

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin aggios \
 && install -d -o aggios -g aggios /run/aggios-edge /etc/aggios-edge
COPY --from=builder /src/target/release/gateway /usr/local/bin/gateway
RUN setcap cap_net_bind_service=+ep /usr/local/bin/gateway \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y
USER 10001:10001
EXPOSE 80 443 9000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s CMD curl -fsS http://127.0.0.1:9000/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run", "--config", "/etc/aggios-edge/gateway.toml"]
