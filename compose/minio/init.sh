#!/bin/sh
# One-shot MinIO set-up: the bucket with versioning and server-side encryption (SSE-S3, keys from MinIO's
# KMS secret), the backend's own user limited to that bucket, and, when MINIO_REPLICA_URL is set, bucket
# replication to a second MinIO (see compose/backup/README in compose/README.md). Safe to run again.
set -eu
mc alias set stack http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing "stack/$S3_BUCKET"
mc version enable "stack/$S3_BUCKET"
mc encrypt set sse-s3 "stack/$S3_BUCKET"
cat > /tmp/backend-policy.json <<JSON
{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:DeleteObject","s3:ListBucket","s3:GetBucketLocation"],
  "Resource":["arn:aws:s3:::$S3_BUCKET","arn:aws:s3:::$S3_BUCKET/*"]}]}
JSON
mc admin policy create stack aggios-backend /tmp/backend-policy.json 2>/dev/null || true
mc admin user add stack "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
mc admin policy attach stack aggios-backend --user "$S3_ACCESS_KEY_ID" 2>/dev/null || true
if [ -n "${MINIO_REPLICA_URL:-}" ]; then
  mc replicate add "stack/$S3_BUCKET" --remote-bucket "$MINIO_REPLICA_URL" --replicate "delete,delete-marker,existing-objects" || true
fi
mc version info "stack/$S3_BUCKET"
mc encrypt info "stack/$S3_BUCKET"
