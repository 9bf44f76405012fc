#!/bin/sh
# The proxy's healthcheck: a request through nginx to the server's /v1/health, over HTTPS on
# 8443 when the proxy serves HTTPS (entrypoint.sh writes /tmp/proxy/https), else over plain HTTP
# on 8080. The certificate is not checked here (this is the container itself asking;
# `cargo xtask wait-for https://... --ca FILE` checks it as clients do), but an HTTPS proxy
# without its certificate yet has no 8443 listener, so it is not healthy.
if [ -e /tmp/proxy/https ]; then
    exec curl --fail --silent --insecure --output /dev/null https://127.0.0.1:8443/v1/health
fi
exec curl --fail --silent --output /dev/null http://127.0.0.1:8080/v1/health
