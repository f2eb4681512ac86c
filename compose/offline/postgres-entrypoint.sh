#!/bin/sh
# The offline Postgres image's entrypoint (compose/offline/postgres.Dockerfile): what the compose stack
# relies on from the official image's docker-entrypoint.sh, no more.
#  - started as root: make PGDATA the postgres user's (as the official image does, and nothing else),
#    then run again as postgres;
#  - an empty PGDATA: initdb (scram-sha-256 over TCP from anywhere, trust on the local socket), the owner
#    role POSTGRES_USER with POSTGRES_PASSWORD and its database POSTGRES_DB, then every
#    /docker-entrypoint-initdb.d/*.sh against a server listening on the socket only;
#  - then exec the command (`postgres -c …`).
set -eu
if [ "$(id -u)" = 0 ]; then
  install -d -o postgres -g postgres -m 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required on first start}"
  POSTGRES_USER=${POSTGRES_USER:-postgres}
  POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql --username "$POSTGRES_USER" --dbname postgres \
      -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
  fi
  export PGHOST=/var/run/postgresql POSTGRES_USER POSTGRES_DB
  for f in /docker-entrypoint-initdb.d/*.sh; do
    [ -e "$f" ] || continue
    echo "docker-entrypoint: running $f"
    sh "$f"
  done
  unset PGHOST
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "docker-entrypoint: the database is initialised"
fi
exec "$@"
