#!/bin/sh
# Compatibility shim for the old pack_docker.sh: it now runs `cargo xtask release`, which reads
# the version from app/pyproject.toml, builds every image for linux/amd64 and linux/arm64, pushes
# only when all of them built (immutable tags first, `latest` last) and verifies what landed.
#
#   pack_docker.sh [REGISTRY/NAMESPACE] [RELEASE FLAGS...]   e.g. pack_docker.sh ghcr.io/acme --dry-run
#
# The first argument, unless it starts with `-`, is the registry (the old script's argument);
# everything else goes to `cargo xtask release` unchanged (see `cargo xtask release --help`).
set -eu
cd "$(dirname "$0")/.."
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    registry=$1
    shift
    exec cargo xtask release --registry "$registry" "$@"
fi
exec cargo xtask release "$@"
