# Offline stand-in for the official `postgres` image (scripts/compose-test.sh; no image registry here):
# Debian's PostgreSQL on the local Debian base, with an entrypoint that honours what the compose file uses
# of the official one — POSTGRES_DB/USER/PASSWORD on first start, /docker-entrypoint-initdb.d/*.sh, a
# `postgres …` command run as the postgres user, PGDATA=/var/lib/postgresql/data. Debian bookworm ships
# PostgreSQL 15 (the production image is 16): the features the stack uses are the same in both.
ARG BASE_IMAGE=debian:12.12-slim
FROM ${BASE_IMAGE}
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 0755 /archive /var/run/postgresql
COPY offline/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
