#!/bin/sh
# archive_command for the primary: copies one finished WAL segment into the archive, atomically, and never
# overwrites a different segment of the same name (Postgres retries a failed archive; it must not succeed
# twice with different content). Usage (postgresql.conf):
#   archive_command = '/backup/pg-archive-wal.sh %p %f'      # WAL_ARCHIVE_DIR, default /archive
set -eu
src="$1"
name="$2"
dir="${WAL_ARCHIVE_DIR:-/archive}"
dest="$dir/$name"
if [ -e "$dest" ]; then
  cmp -s "$src" "$dest" && exit 0
  echo "pg-archive-wal: $dest exists with other content" >&2
  exit 1
fi
cp "$src" "$dest.tmp.$$"
sync "$dest.tmp.$$" 2>/dev/null || true
mv "$dest.tmp.$$" "$dest"
