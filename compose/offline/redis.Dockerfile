# Offline stand-in for the official `redis` image (scripts/compose-test.sh): Debian's redis-server, run as
# the redis user with its data in /data (the compose file's command names every option it needs).
ARG BASE_IMAGE=debian:12.12-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o redis -g redis -m 0750 /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--dir", "/data"]
