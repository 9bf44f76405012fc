#!/bin/sh
# Compatibility shim for the old wait_for_service.sh: the same call forms, backed by
# `cargo xtask wait-for` (one deadline, real readiness checks), then the command, if any, is
# exec'd with its arguments intact.
#
#   wait_for_service.sh URL [-t SECS] [-- CMD ARGS...]         e.g. http://localhost:8283/v1/health
#   wait_for_service.sh HOST:PORT [-t SECS] [-- CMD ARGS...]   a TCP port
#
# Unlike the old loop, an HTTP URL counts as up only on a 2xx answer (a 404 or a 500 is not
# ready), and the wait ends after SECS seconds (default 60) with exit status 124.
set -eu

usage() {
    echo "usage: wait_for_service.sh URL|HOST:PORT [-t SECS] [-- CMD ARGS...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
target=$1
shift
timeout=60
while [ $# -gt 0 ]; do
    case $1 in
        -t | --timeout)
            [ $# -ge 2 ] || usage
            timeout=$2
            shift 2
            ;;
        --)
            shift
            break
            ;;
        *) usage ;;
    esac
done
case $timeout in
    '' | *[!0-9]*) echo "wait_for_service.sh: -t takes whole seconds, not '$timeout'" >&2; exit 2 ;;
esac
case $target in
    *://*) probe=$target ;;
    *:*) probe=tcp://$target ;;
    *) echo "wait_for_service.sh: '$target' is neither a URL nor HOST:PORT" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
cargo run --quiet --manifest-path "$repo/Cargo.toml" --package xtask -- \
    wait-for --timeout "${timeout}s" "$probe"

[ $# -eq 0 ] || exec "$@"
