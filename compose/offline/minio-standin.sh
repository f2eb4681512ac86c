#!/bin/sh
# `minio server DIR [--console-address …]` for the offline stand-in: s3s-fs on :9000 with the root pair.
set -eu
[ "${1:-}" = server ] || { echo "minio stand-in: only 'server DIR' is supported" >&2; exit 2; }
dir=${2:?minio stand-in: server needs a directory}
mkdir -p "$dir"
exec /usr/local/bin/s3s-fs --host 0.0.0.0 --port 9000 \
  --access-key "${MINIO_ROOT_USER:?}" --secret-key "${MINIO_ROOT_PASSWORD:?}" "$dir"
