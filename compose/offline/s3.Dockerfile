# Offline stand-in for MinIO (`minio/minio`) and its client (`minio/mc`), used for both the minio and the
# minio-init services by docker-compose.offline.yml (scripts/compose-test.sh): MinIO has no Debian package
# and no registry is reachable here. The server is s3s-fs (the S3 server our tests use; it verifies SigV4),
# started by an entrypoint that takes MinIO's `server DIR …` arguments and root credentials. s3s-fs knows
# one key pair: the offline run gives the backend the root pair. `mc` is a shim for the commands
# compose/minio/init.sh and the health check use: `ready`, `alias set` and `mb` are real requests; bucket
# versioning, encryption, users, policies and replication are MinIO features s3s-fs does not have, and the
# shim says so on stderr instead of pretending (the offline run does not check them).
ARG BASE_IMAGE=debian:12.12-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10003 --home-dir /data --no-create-home minio \
 && install -d -o minio -g minio /data
COPY .host-bin/s3s-fs /usr/local/bin/s3s-fs
COPY offline/minio-standin.sh /usr/local/bin/minio
COPY offline/mc-standin.sh /usr/local/bin/mc
USER 10003
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/minio"]
CMD ["server", "/data"]
