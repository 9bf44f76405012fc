#!/bin/sh
# pebble, the ACME test server, for the HTTPS tests.
#   pebble-test ca          prints a new CA's certificate, then its key (PEM), on stdout: what
#                           an ACME client must trust to talk to pebble
#   pebble-test NAME FILE   runs pebble with a certificate for NAME (the name clients reach it
#                           by) signed by the CA in FILE (certificate and key, as `ca` prints)
# pebble's ACME directory is https://NAME:14000/dir and its management API is on port 15000
# (`/roots/0` is the root that signs the certificates it issues). It checks challenges on
# ports 8080 (HTTP) and 8443 (TLS-ALPN), where the proxy listens. Every request is answered at
# once (no random delays, no rejected nonces), so tests are quick and the same each run.
set -eu

dir=/tmp/pebble
mkdir -p "$dir"
if [ "${1:-}" = ca ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=pebble test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    cat "$dir/ca.pem" "$dir/ca.key"
    exit 0
fi
name=${1:?usage: pebble-test ca, or pebble-test NAME CA-FILE}
ca=${2:?usage: pebble-test NAME CA-FILE}
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/key.pem" -out "$dir/cert.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\n' "$name" > "$dir/san.ext"
openssl x509 -req -in "$dir/cert.csr" -CA "$ca" -CAkey "$ca" -days 30 \
    -extfile "$dir/san.ext" -out "$dir/cert.pem" 2>/dev/null
cat > "$dir/config.json" <<JSON
{
  "pebble": {
    "listenAddress": "0.0.0.0:14000",
    "managementListenAddress": "0.0.0.0:15000",
    "certificate": "$dir/cert.pem",
    "privateKey": "$dir/key.pem",
    "httpPort": 8080,
    "tlsPort": 8443,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
  }
}
JSON
export PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0
exec pebble -config "$dir/config.json"
