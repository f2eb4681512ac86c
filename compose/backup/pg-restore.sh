#!/bin/sh
# Point-in-time restore: a base backup (pg-basebackup.sh) plus the archived WAL, replayed up to a moment.
#   pg-restore.sh BASE_BACKUP_DIR NEW_DATA_DIR [TARGET_TIME]
# WAL_ARCHIVE_DIR (default /archive) holds the archive. TARGET_TIME ('2026-12-02 09:30:00+00') stops the
# replay just before that moment (the mistake you are undoing); without it, everything archived is
# replayed. Then start Postgres on NEW_DATA_DIR: it replays, promotes itself and serves.
set -eu
base="$1"
data="$2"
target="${3:-}"
archive="${WAL_ARCHIVE_DIR:-/archive}"
[ -f "$base/base.tar.gz" ] || { echo "pg-restore: no $base/base.tar.gz" >&2; exit 1; }
if [ -e "$data" ] && [ -n "$(ls -A "$data" 2>/dev/null)" ]; then
  echo "pg-restore: $data is not empty" >&2
  exit 1
fi
mkdir -p "$data"
chmod 0700 "$data"
tar -xzf "$base/base.tar.gz" -C "$data"
[ -f "$base/pg_wal.tar.gz" ] && tar -xzf "$base/pg_wal.tar.gz" -C "$data/pg_wal"
{
  echo "restore_command = 'cp \"$archive/%f\" \"%p\"'"
  if [ -n "$target" ]; then
    echo "recovery_target_time = '$target'"
    echo "recovery_target_inclusive = off"
  fi
  echo "recovery_target_action = 'promote'"
  # The restored cluster must not archive into the production archive.
  echo "archive_mode = off"
} >> "$data/postgresql.auto.conf"
touch "$data/recovery.signal"
echo "restored into $data; start Postgres on it to replay the WAL"
