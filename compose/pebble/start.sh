#!/bin/sh
# Makes pebble's HTTPS certificate (a throw-away CA, published for the gateway on /shared), starts the
# challenge DNS server answering every name with the gateway's address, then pebble itself.
set -eu
cd /var/lib/pebble
if [ ! -s pebble.crt ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=aggios-edge pebble CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pebble" \
    -keyout pebble.key -out pebble.csr 2>/dev/null
  printf 'subjectAltName=DNS:pebble,DNS:localhost,IP:127.0.0.1\n' > san.ext
  openssl x509 -req -in pebble.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile san.ext -out pebble.crt 2>/dev/null
fi
cp ca.crt /shared/pebble.minica.pem
pebble-challtestsrv -defaultIPv4 "${GATEWAY_IP:?}" -defaultIPv6 "" -dns01 127.0.0.1:8053 \
  -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:8055 &
# Without its DNS server pebble resolves no name and every validation fails: wait until it serves (its
# management API answers at all), or stop here (the container restarts and says why in its log).
i=0
until [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8055/ 2>/dev/null)" != 000 ]; do
  i=$((i + 1))
  if [ $i -gt 50 ] || ! kill -0 $! 2>/dev/null; then
    echo "pebble-start: pebble-challtestsrv did not start" >&2
    exit 1
  fi
  sleep 0.1
done
exec pebble -config /etc/pebble/config.json -dnsserver 127.0.0.1:8053
