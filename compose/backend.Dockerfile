# syntax=docker/dockerfile:1.7
# The backend image (also runs `backend migrate` as the compose stack's one-shot migration service).
# Build from the repository root: `docker build -f compose/backend.Dockerfile .`. Dependencies are cooked
# in their own layer (cargo-chef); the runtime is Debian slim as a non-root user, with no capability.
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
RUN cargo chef prepare --recipe-path recipe.json --bin backend

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin backend
COPY . .
RUN cargo build --release --locked -p backend --bin backend \
 && install -D -m 0755 target/release/backend /out/backend

FROM ${RUNTIME_IMAGE} AS binaries-host
COPY compose/.host-bin/backend /out/backend

FROM builder AS binaries-build

FROM binaries-${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin aggios
COPY --from=binaries /out/backend /usr/local/bin/backend
USER 10001:10001
ENV BACKEND_LISTEN=0.0.0.0:8081 BACKEND_INTERNAL_LISTEN=0.0.0.0:8082
EXPOSE 8081 8082
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s CMD curl -fsS http://127.0.0.1:8081/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/backend"]
CMD ["serve"]
