#!/usr/bin/env bash
# Runs the local stack on loopback: Postgres, Redis and an S3 server (s3s-fs) (started or installed when
# missing), the backend
# (migrated, with a demo tenant and user) and the gateway in front of it with config/dev.toml.
#   gateway  http://127.0.0.1:8080, https://127.0.0.1:8443 (dev CA in certs/), admin http://127.0.0.1:9000
#   backend  http://127.0.0.1:8081   (internal http://127.0.0.1:8082)
# Idempotent: a second run reuses the database, the role, the secret and the demo user. Ctrl-C stops it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_build_deps
ensure_postgres
ensure_redis
ensure_s3s_fs
mkdir -p "$STATE_DIR/s3/aggios"

DB=aggios
psql "$PG_ADMIN_URL" -Atqc "select 1 from pg_database where datname = '$DB'" | grep -q 1 \
  || psql "$PG_ADMIN_URL" -qc "create database $DB" >/dev/null
[ -s "$STATE_DIR/db_password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$STATE_DIR/db_password"
[ -s "$STATE_DIR/jwt_secret" ] || head -c 48 /dev/urandom | base64 > "$STATE_DIR/jwt_secret"
chmod 600 "$STATE_DIR/db_password" "$STATE_DIR/jwt_secret"
PG_HOSTPORT=$(echo "$PG_ADMIN_URL" | sed -E 's#^postgres(ql)?://[^@]*@([^/]+)/.*#\2#')
PG_ADMIN_USER=$(echo "$PG_ADMIN_URL" | sed -E 's#^postgres(ql)?://([^@:]*).*#\2#')
export DATABASE_URL="postgres://aggios_app:$(cat "$STATE_DIR/db_password")@$PG_HOSTPORT/$DB"
export DATABASE_OWNER_URL="postgres://$PG_ADMIN_USER@$PG_HOSTPORT/$DB"
export REDIS_URL="${REDIS_URL:-$REDIS_URL_DEFAULT}"
export JWT_SECRET_FILE="$STATE_DIR/jwt_secret"
export BACKEND_LISTEN=127.0.0.1:8081 BACKEND_INTERNAL_LISTEN=127.0.0.1:8082
[ -s "$STATE_DIR/s3_secret" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$STATE_DIR/s3_secret"
chmod 600 "$STATE_DIR/s3_secret"
export S3_ENDPOINT=http://127.0.0.1:8014 S3_BUCKET=aggios S3_REGION=us-east-1
export S3_ACCESS_KEY_ID=aggios-dev S3_SECRET_ACCESS_KEY="$(cat "$STATE_DIR/s3_secret")"
export TENANT_BASE_DOMAINS="aggios.localhost,aggios.app"
# The role keeps the password it was created with; make it match this machine's saved one.
psql "$PG_ADMIN_URL" -Atqc "select 1 from pg_roles where rolname = 'aggios_app'" | grep -q 1 \
  && psql "$PG_ADMIN_URL" -qc "alter role aggios_app password '$(cat "$STATE_DIR/db_password")'" >/dev/null

log "building (release)"
cargo build --release --locked -p gateway -p backend >&2
BIN="$CARGO_TARGET_DIR/release"

log "migrating"
"$BIN/backend" migrate

if ! psql "$DATABASE_OWNER_URL" -Atqc "select 1 from tenants where subdomain = 'demo'" | grep -q 1; then
  "$BIN/backend" tenant create --subdomain demo --name "Demo Agency" >/dev/null
  head -c 12 /dev/urandom | base64 | tr -d '/+=' > "$STATE_DIR/demo_password"
  "$BIN/backend" user create --tenant demo --email admin@demo.test --role admin --password-stdin < "$STATE_DIR/demo_password" >/dev/null
fi
DEMO_PASSWORD=$(cat "$STATE_DIR/demo_password" 2>/dev/null || echo "(see $STATE_DIR/demo_password)")

# HTTPS with a local CA (reused on later runs, so a CA trusted once stays trusted).
if [ ! -s certs/dev.crt ] || [ ! -s certs/dev.key ]; then
  log "making the development certificate (certs/dev-ca.crt signs certs/dev.crt)"
  "$BIN/gateway" certs dev --out certs --domain aggios.localhost --domain '*.aggios.localhost' \
    --domain localhost --domain 127.0.0.1 >&2
fi

for port in 8080 8443 8081 8082 9000; do
  wait_port 127.0.0.1 "$port" 0 && die "127.0.0.1:$port is already in use (another stack running?); stop it first"
done
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
if ! wait_port 127.0.0.1 8014 0; then
  log "starting s3s-fs (S3) on 127.0.0.1:8014, data in $STATE_DIR/s3"
  "$S3S_FS_BIN" --host 127.0.0.1 --port 8014 --access-key "$S3_ACCESS_KEY_ID" --secret-key "$S3_SECRET_ACCESS_KEY" \
    "$STATE_DIR/s3" > "$STATE_DIR/s3.log" 2>&1 &
  PIDS+=($!)
  wait_port 127.0.0.1 8014 30 || die "s3s-fs did not start: $(tail -3 "$STATE_DIR/s3.log")"
fi
MIGRATE_ON_START=0 "$BIN/backend" serve 2> "$STATE_DIR/backend.log" &
PIDS+=($!)
wait_port 127.0.0.1 8081 30 || die "backend did not start: $(tail -3 "$STATE_DIR/backend.log")"
JWT_SECRET="$(cat "$JWT_SECRET_FILE")" "$BIN/gateway" run --config config/dev.toml > "$STATE_DIR/access.log" 2> "$STATE_DIR/gateway.log" &
PIDS+=($!)
wait_port 127.0.0.1 8080 30 || die "gateway did not start: $(tail -3 "$STATE_DIR/gateway.log")"

cat <<MSG

Aggios Edge is running (logs in $STATE_DIR/). Demo tenant: demo.aggios.localhost
  demo user: admin@demo.test   password: $DEMO_PASSWORD

  curl -s -H 'Host: demo.aggios.localhost' -H 'content-type: application/json' \\
       -d '{"email":"admin@demo.test","password":"$DEMO_PASSWORD"}' http://127.0.0.1:8080/api/auth/login
  curl -s -H 'Host: demo.aggios.localhost' -H "Authorization: Bearer \$ACCESS_TOKEN" http://127.0.0.1:8080/api/users/me
  curl -s --cacert certs/dev-ca.crt https://demo.aggios.localhost:8443/api/users/me -H "Authorization: Bearer \$ACCESS_TOKEN"
  curl -s http://127.0.0.1:9000/api/routes

Ctrl-C stops the gateway and the backend.
MSG
wait
