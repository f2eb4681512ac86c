#!/bin/sh
# `mc` for the offline MinIO stand-in (compose/offline/s3.Dockerfile): the subset compose/minio/init.sh and
# the health check call. Real: `ready local`, `alias set NAME URL KEY SECRET`, `mb [--ignore-existing]
# NAME/BUCKET` (a SigV4-signed PUT). Not available in s3s-fs, reported on stderr: version, encrypt, admin,
# replicate.
set -eu
aliases=${MC_STANDIN_ALIASES:-/tmp/mc-standin-aliases}
lookup() { # NAME -> "URL KEY SECRET"
  grep "^$1 " "$aliases" 2>/dev/null | tail -1 | cut -d' ' -f2- || true
}
cmd=${1:-}; [ $# -gt 0 ] && shift
case "$cmd" in
  ready)
    # Any HTTP answer from the local server (s3s-fs answers an anonymous request 403) means it serves.
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:9000/ || true)
    [ "$code" != 000 ] ;;
  alias)
    [ "${1:-}" = set ] || { echo "mc stand-in: only 'alias set'" >&2; exit 2; }
    echo "$2 $3 $4 $5" >> "$aliases" ;;
  mb)
    ignore=0; [ "${1:-}" = --ignore-existing ] && { ignore=1; shift; }
    target=${1:?mc stand-in: mb NAME/BUCKET}; name=${target%%/*}; bucket=${target#*/}
    set -- $(lookup "$name"); [ $# -eq 3 ] || { echo "mc stand-in: no alias $name" >&2; exit 1; }
    region=${S3_REGION:-us-east-1}
    empty_sha256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
    code=$(curl -s -o /tmp/mc-standin-body -w '%{http_code}' -X PUT -H 'content-length: 0' \
      -H "x-amz-content-sha256: $empty_sha256" \
      --aws-sigv4 "aws:amz:$region:s3" --user "$2:$3" "$1/$bucket")
    case "$code" in
      200) echo "Bucket created successfully \`$target\`." ;;
      409) [ $ignore = 1 ] || { cat /tmp/mc-standin-body >&2; exit 1; }; echo "Bucket \`$target\` exists." ;;
      *) echo "mc stand-in: PUT bucket answered $code" >&2; cat /tmp/mc-standin-body >&2; exit 1 ;;
    esac ;;
  version|encrypt|admin|replicate)
    echo "mc stand-in: \`mc $cmd $*\` skipped: s3s-fs has no such feature (the offline run does not check it)" >&2 ;;
  *) echo "mc stand-in: unsupported command $cmd" >&2; exit 2 ;;
esac
