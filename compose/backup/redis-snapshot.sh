#!/bin/sh
# An RDB snapshot of Redis copied off the server's volume: BGSAVE, wait until it is done, copy dump.rdb.
#   REDISCLI_AUTH=… redis-snapshot.sh HOST PORT DATA_DIR BACKUP_DIR
# Redis holds rate-limit counters, the token denylist, API-key cache and (storage = "redis") the sealed
# ACME certificates: losing it costs certificate re-orders and a window of un-revoked tokens, no data.
set -eu
host="$1"; port="$2"; data="$3"; out="$4"
before=$(redis-cli -h "$host" -p "$port" LASTSAVE)
redis-cli -h "$host" -p "$port" BGSAVE >/dev/null
i=0
while [ "$(redis-cli -h "$host" -p "$port" LASTSAVE)" = "$before" ]; do
  i=$((i + 1)); [ "$i" -gt 600 ] && { echo "redis-snapshot: BGSAVE did not finish" >&2; exit 1; }
  sleep 0.5
done
mkdir -p "$out"
cp "$data/dump.rdb" "$out/dump-$(date -u +%Y%m%dT%H%M%SZ).rdb"
