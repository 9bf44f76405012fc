#!/bin/sh
# Entry point of the proxy image: fills the settings below into nginx's configuration (in /tmp,
# so the root filesystem may be read-only), checks it, then becomes nginx. A setting that is
# not what nginx reads stops the start with one line naming it.
#   PROXY_RATE            requests a second per client address (default 100)
#   PROXY_BURST           requests over the rate served at once before 429 (default 200)
#   PROXY_MAX_BODY        largest request body, nginx's size syntax (default 1m)
#   PROXY_CLIENT_TIMEOUT  how long a client may take to send its headers or a piece of its
#                         body, nginx's time syntax (default 10s)
#   PROXY_TLS             off (plain HTTP on 8080, the default), files or acme: HTTPS on 8443
#                         (TLS 1.2 and 1.3, HSTS), and 8080 only redirects there, except
#                         ACME's challenges
#   PROXY_HTTPS_PORT      the port clients reach 8443 on, for the redirect (default 443)
#   HSTS_MAX_AGE          Strict-Transport-Security's max-age in seconds (default a year)
# With PROXY_TLS=files, the certificate chain and its key are the files /run/secrets/tls_cert
# and /run/secrets/tls_key (Docker secrets). With PROXY_TLS=acme, lego obtains and renews one
# over ACME's HTTP challenge, kept in /var/lib/acme (a volume):
#   ACME_DOMAIN           the names, comma-separated (the first names the certificate)
#   ACME_EMAIL            the account's contact (lego needs one)
#   ACME_SERVER           the CA's directory URL (default Let's Encrypt's)
#   ACME_CA               a file of CA certificates to trust for ACME_SERVER itself (optional;
#                         a test CA such as pebble)
#   ACME_RENEW_DAYS       renew when the certificate expires within this many days (default 30)
#   ACME_CHECK_EVERY      how often to check, in seconds (default 43200, 12 hours)
#   ACME_RETRY            seconds between attempts while there is no certificate (default 30)
# Either way, a loop beside nginx looks at the certificate files every 5 seconds and reloads
# nginx (gracefully: no request fails) when they change: a renewal, or a secret rewritten.
# Until an ACME certificate exists, HTTPS is not served and the API answers 503.
#
# `proxy-entrypoint renew` renews the ACME certificate now, whatever its age, and reloads nginx;
# `proxy-entrypoint certs` lists the certificates lego holds.
set -euf

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
tls=${PROXY_TLS:-off}
https_port=${PROXY_HTTPS_PORT:-443}
hsts_max_age=${HSTS_MAX_AGE:-31536000}
number PROXY_RATE "$rate"
number PROXY_BURST "$burst"
number PROXY_HTTPS_PORT "$https_port"
case $hsts_max_age in
    ''|*[!0-9]*) fail "HSTS_MAX_AGE=$hsts_max_age is not a number of seconds" ;;
esac
case $max_body in
    *[!0-9kKmM]*|[!0-9]*|'') fail "PROXY_MAX_BODY=$max_body is not a size such as 1m or 512k" ;;
esac
case $client_timeout in
    *[!0-9sm]*|[!0-9]*|'') fail "PROXY_CLIENT_TIMEOUT=$client_timeout is not a time such as 10s or 1m" ;;
esac

acme_dir=/var/lib/acme
webroot=$acme_dir/webroot
case $tls in
    off) ;;
    files)
        cert=/run/secrets/tls_cert
        key=/run/secrets/tls_key
        [ -r "$cert" ] || fail "PROXY_TLS=files but $cert cannot be read: give the certificate chain as the secret tls_cert"
        [ -r "$key" ] || fail "PROXY_TLS=files but $key cannot be read: give its key as the secret tls_key"
        ;;
    acme)
        domains=${ACME_DOMAIN:-}
        [ -n "$domains" ] || fail "PROXY_TLS=acme needs ACME_DOMAIN, the names to get a certificate for"
        [ -n "${ACME_EMAIL:-}" ] || fail "PROXY_TLS=acme needs ACME_EMAIL, the ACME account's contact address"
        first=${domains%%,*}
        for domain in $(printf '%s' "$domains" | tr ',' ' '); do
            case $domain in
                *[!a-zA-Z0-9.-]*|.*|*.|*..*) fail "ACME_DOMAIN=$domains: $domain is not a DNS name" ;;
            esac
        done
        cert=$acme_dir/certificates/$first.crt
        key=$acme_dir/certificates/$first.key
        renew_days=${ACME_RENEW_DAYS:-30}
        check_every=${ACME_CHECK_EVERY:-43200}
        retry=${ACME_RETRY:-30}
        number ACME_RENEW_DAYS "$renew_days"
        number ACME_CHECK_EVERY "$check_every"
        number ACME_RETRY "$retry"
        [ -w "$acme_dir" ] || fail "PROXY_TLS=acme but $acme_dir is not writable: mount a volume there"
        mkdir -p "$webroot"
        ;;
    *) fail "PROXY_TLS=$tls is not off, files or acme" ;;
esac

# lego's arguments before its command (run or renew), in "$@".
lego_args() {
    set -- --accept-tos --path "$acme_dir" --server "${ACME_SERVER:-https://acme-v02.api.letsencrypt.org/directory}" \
        --key-type ec256 --http --http.webroot "$webroot" --email "$ACME_EMAIL"
    old_ifs=$IFS
    IFS=,
    for domain in $domains; do
        set -- "$@" --domains "$domain"
    done
    IFS=$old_ifs
    printf '%s\n' "$@"
}

# lego COMMAND ARG...: lego with the settings above (each argument on its own line, so no word
# is split or globbed), trusting ACME_CA for the server when given.
lego_run() {
    if [ -n "${ACME_CA:-}" ]; then
        export LEGO_CA_CERTIFICATES="$ACME_CA"
    fi
    lego_args > /tmp/proxy/lego.args
    # shellcheck disable=SC2046
    (set -f; IFS='
'; exec lego $(cat /tmp/proxy/lego.args) "$@")
}

# Writes the servers and the API's locations for nginx: plain HTTP, or HTTPS with the HTTP
# server answering ACME's challenges and redirecting the rest (503 until a certificate exists).
render() {
    mkdir -p /tmp/proxy
    if [ "$tls" = off ]; then
        hsts=
    else
        hsts="add_header Strict-Transport-Security \"max-age=$hsts_max_age\" always;"
    fi
    sed -e "s/@BURST@/$burst/g" -e "s/@MAX_BODY@/$max_body/g" -e "s/@HSTS@/$hsts/g" \
        /etc/nginx/api.conf.template > /tmp/proxy/api.conf.new
    mv /tmp/proxy/api.conf.new /tmp/proxy/api.conf
    if [ "$tls" = off ]; then
        printf 'server {\n    listen 8080;\n    include /tmp/proxy/api.conf;\n}\n' > /tmp/proxy/servers.conf.new
        mv /tmp/proxy/servers.conf.new /tmp/proxy/servers.conf
        return
    fi
    : > /tmp/proxy/https
    if [ "$https_port" = 443 ]; then port_suffix=; else port_suffix=":$https_port"; fi
    {
        printf 'server {\n    listen 8080;\n'
        printf '    location /.well-known/acme-challenge/ {\n        root %s;\n        default_type text/plain;\n    }\n' "$webroot"
        if [ -s "$cert" ]; then
            printf '    location / {\n        return 308 https://$host%s$request_uri;\n    }\n}\n' "$port_suffix"
            printf 'server {\n    listen 8443 ssl;\n'
            printf '    ssl_certificate %s;\n    ssl_certificate_key %s;\n' "$cert" "$key"
            printf '    include /tmp/proxy/api.conf;\n}\n'
        else
            printf '    location / {\n        default_type application/json;\n        add_header Retry-After 10 always;\n'
            printf '        return 503 %s;\n    }\n}\n' "'{\"detail\":\"the proxy has no certificate yet: it is being obtained over ACME\"}\\n'"
        fi
    } > /tmp/proxy/servers.conf.new
    mv /tmp/proxy/servers.conf.new /tmp/proxy/servers.conf
}

# What the certificate files hold now (empty when there are none).
fingerprint() {
    if [ "$tls" = off ] || [ ! -s "$cert" ]; then
        return
    fi
    cat "$cert" "$key" 2>/dev/null | cksum
}

# Renders the configuration and, if nginx accepts it, reloads nginx; else keeps serving the
# previous one and says why.
reload() {
    render
    if said=$(nginx -t -q -e stderr -c /tmp/nginx.conf 2>&1); then
        nginx -e stderr -c /tmp/nginx.conf -s reload
    else
        echo "proxy: error: nginx refuses the new certificate, still serving the previous one: $(printf '%s' "$said" | head -n 1)" >&2
    fi
}

# Obtains the first certificate, or renews one expiring within DAYS; 1 on failure (logged).
acme() {
    days=$1
    if ! mkdir /tmp/proxy/acme.lock 2>/dev/null; then
        echo "proxy: another ACME attempt is running" >&2
        return 1
    fi
    if [ -s "$cert" ]; then
        set -- renew --days "$days" --no-random-sleep
    else
        set -- run
    fi
    if ! said=$(lego_run "$@" 2>&1); then
        rmdir /tmp/proxy/acme.lock
        echo "proxy: error: the ACME $1 for $domains failed: $(printf '%s' "$said" | grep -v '^\s*$' | tail -n 1)" >&2
        return 1
    fi
    rmdir /tmp/proxy/acme.lock
    echo "proxy: ACME $1 for $domains: $(printf '%s' "$said" | grep -v '^\s*$' | tail -n 1)" >&2
}

# The loop beside nginx: ACME when due, and a reload whenever the certificate files change.
watch() {
    seen=$(fingerprint)
    next=0
    while :; do
        now=$(date +%s)
        if [ "$tls" = acme ] && [ "$now" -ge "$next" ]; then
            if acme "$renew_days"; then
                next=$((now + check_every))
            elif [ -s "$cert" ]; then
                next=$((now + retry * 10))
            else
                next=$((now + retry))
            fi
        fi
        current=$(fingerprint)
        if [ "$current" != "$seen" ]; then
            seen=$current
            echo "proxy: the certificate changed: reloading" >&2
            reload
        fi
        sleep 5
    done
}

case ${1:-} in
    renew)
        [ "$tls" = acme ] || fail "this proxy does not use ACME (PROXY_TLS=$tls): nothing to renew"
        acme 1000000 || exit 1
        reload
        exit 0
        ;;
    certs)
        [ "$tls" = acme ] || fail "this proxy does not use ACME (PROXY_TLS=$tls): its certificate is the secret tls_cert"
        lego_run list
        exit 0
        ;;
    '') ;;
    *) fail "unknown command $1: proxy-entrypoint takes renew, certs or nothing" ;;
esac

render
sed -e "s/@RATE@/$rate/g" -e "s/@MAX_BODY@/$max_body/g" -e "s/@CLIENT_TIMEOUT@/$client_timeout/g" \
    /etc/nginx/nginx.conf.template > /tmp/nginx.conf
if ! said=$(nginx -t -q -e stderr -c /tmp/nginx.conf 2>&1); then
    fail "nginx refuses its configuration: $(printf '%s' "$said" | head -n 1)"
fi
if [ "$tls" != off ]; then
    # From a subshell that exits at once, so tini (PID 1) inherits the loop, not nginx.
    (watch &)
fi
exec nginx -e stderr -c /tmp/nginx.conf -g 'daemon off;'
