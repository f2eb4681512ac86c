#!/bin/sh
# A base backup of the primary (tar, compressed, with the WAL needed to make it consistent), into
# $BACKUP_DIR/base-<UTC time>/. With the archived WAL since (pg-archive-wal.sh), it restores to any moment
# after it (pg-restore.sh). Connection from the libpq variables: PGHOST, PGPORT, PGUSER (a role with
# REPLICATION), PGPASSWORD. Keep two base backups and the WAL since the older; see compose/README.md.
set -eu
out="${BACKUP_DIR:?set BACKUP_DIR}/base-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
pg_basebackup -D "$out" -Ft -z -X fetch --checkpoint=fast --label "aggios-edge $(date -u +%FT%TZ)"
echo "$out"
