# Offline stand-in for the `prom/prometheus` image (scripts/compose-test.sh): Debian's Prometheus, with the
# official image's layout (entrypoint the binary, working and data directory /prometheus, user nobody)
# so that the compose file's command and health check (wget) work unchanged.
ARG BASE_IMAGE=debian:12.12-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o nobody -g nogroup /prometheus
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
