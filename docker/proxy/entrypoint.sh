#!/bin/sh
# Entry point of the proxy image: fills the settings below into nginx's configuration (in /tmp,
# so the root filesystem may be read-only), checks it, then becomes nginx. A setting that is
# not what nginx reads stops the start with one line naming it.
#   PROXY_RATE            requests a second per client address (default 100)
#   PROXY_BURST           requests over the rate served at once before 429 (default 200)
#   PROXY_MAX_BODY        largest request body, nginx's size syntax (default 1m)
#   PROXY_CLIENT_TIMEOUT  how long a client may take to send its headers or a piece of its
#                         body, nginx's time syntax (default 10s)
set -eu

fail() {
    echo "proxy: error: $1" >&2
    exit 1
}

# number NAME VALUE: VALUE must be a whole number above 0.
number() {
    case $2 in
        ''|*[!0-9]*|0) fail "$1=$2 is not a whole number above 0" ;;
    esac
}

rate=${PROXY_RATE:-100}
burst=${PROXY_BURST:-200}
max_body=${PROXY_MAX_BODY:-1m}
client_timeout=${PROXY_CLIENT_TIMEOUT:-10s}
number PROXY_RATE "$rate"
number PROXY_BURST "$burst"
case $max_body in
    *[!0-9kKmM]*|[!0-9]*|'') fail "PROXY_MAX_BODY=$max_body is not a size such as 1m or 512k" ;;
esac
case $client_timeout in
    *[!0-9sm]*|[!0-9]*|'') fail "PROXY_CLIENT_TIMEOUT=$client_timeout is not a time such as 10s or 1m" ;;
esac

sed -e "s/@RATE@/$rate/g" -e "s/@BURST@/$burst/g" -e "s/@MAX_BODY@/$max_body/g" \
    -e "s/@CLIENT_TIMEOUT@/$client_timeout/g" \
    /etc/nginx/nginx.conf.template > /tmp/nginx.conf
if ! said=$(nginx -t -q -e stderr -c /tmp/nginx.conf 2>&1); then
    fail "nginx refuses its configuration: $(printf '%s' "$said" | head -n 1)"
fi
exec nginx -e stderr -c /tmp/nginx.conf -g 'daemon off;'
