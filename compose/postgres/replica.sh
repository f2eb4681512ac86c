#!/bin/sh
# The read replica (phase 2): on first start, a base backup of the primary with standby settings (-R),
# then Postgres as a hot standby. The backend's reads that may lag go here (DATABASE_READ_URL).
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h postgres -U replicator -d postgres -q; do sleep 1; done
  PGPASSWORD="$POSTGRES_REPLICATION_PASSWORD" pg_basebackup -h postgres -U replicator \
    -D "$PGDATA" -R -X stream -C -S replica_1 --checkpoint=fast
  chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on -c max_connections=200
