#!/bin/sh
# An RDB snapshot of Redis copied off the server's volume: BGSAVE, wait until it is done, copy dump.rdb.
#   REDISCLI_AUTH=… redis-snapshot.sh HOST PORT DATA_DIR BACKUP_DIR
# Redis holds rate-limit counters, the token denylist, API-key cache and (storage = "redis") the sealed
# ACME certificates: losing it costs certificate re-orders and a window of un-revoked tokens, no data.
# "Done" is read from INFO persistence (Redis 7+): the count of saves went up and the last one succeeded.
# (LASTSAVE has a one-second resolution: a save in the same second as the one before, or as the server's
# start, leaves it unchanged.) A save already running ends first; a refused or failed save is an error.
set -eu
host="$1"; port="$2"; data="$3"; out="$4"
cli() { redis-cli -h "$host" -p "$port" "$@"; }
field() { cli INFO persistence | tr -d '\r' | sed -n "s/^$1://p"; }
fail() { echo "redis-snapshot: $*" >&2; exit 1; }
wait_idle() {
  i=0
  while [ "$(field rdb_bgsave_in_progress)" != 0 ]; do
    i=$((i + 1)); [ "$i" -gt 600 ] && fail "a background save still runs after 300 s"
    sleep 0.5
  done
}

saves=$(field rdb_saves)
[ -n "$saves" ] || fail "cannot read INFO persistence from $host:$port (Redis 7 or later; REDISCLI_AUTH set?)"
wait_idle
saves=$(field rdb_saves)
reply=$(cli BGSAVE 2>&1)
case "$reply" in
  "Background saving started"*) ;;
  *) fail "BGSAVE refused: $reply" ;;
esac
wait_idle
[ "$(field rdb_last_bgsave_status)" = ok ] && [ "$(field rdb_saves)" -gt "$saves" ] \
  || fail "the background save failed (rdb_last_bgsave_status $(field rdb_last_bgsave_status); see the Redis log)"
mkdir -p "$out"
cp "$data/dump.rdb" "$out/dump-$(date -u +%Y%m%dT%H%M%SZ).rdb"
