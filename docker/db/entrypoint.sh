#!/bin/sh
# Entry point of the db image: make sure a database exists, then run PostgreSQL as PID 1 (so
# `docker stop` reaches it directly and it shuts down cleanly). The password comes from
# POSTGRES_PASSWORD or from the file POSTGRES_PASSWORD_FILE names; it is only read when the
# database is created. Writes go to the volume and /tmp only, so the root
# filesystem may be read-only.
#
# A first start (an empty volume) initialises the cluster without any listener: `initdb`, then
# PostgreSQL in single-user mode creates the database. The schema is not the image's: the
# server's migrations (`python -m memories.migrate`) create and change it. Nothing is
# prepared at build time, so the image is reproducible (a prepared cluster carries the time,
# a pid and a random nonce of its build) and a multi-platform build runs nothing under
# emulation; the first start takes about 0.6 s more. The work happens in a scratch directory
# renamed into place only when complete and synced to disk, so an interrupted first start
# leaves nothing a later start would take for a database.
set -eu

# The socket and lock directory: /run/postgresql (libpq's default) is a link to it, so with a
# read-only root filesystem only /tmp needs to be writable.
mkdir -p -m 0755 /tmp/postgresql

: "${POSTGRES_USER:=memories}"
: "${POSTGRES_DB:=memories}"
scratch="$PGDATA.init"

# single DIR DB: runs stdin's SQL in single-user mode, statements separated by a blank line.
single() {
    postgres --single -j -D "$1" -c exit_on_error=true -c log_min_messages=warning \
        -c log_checkpoints=off "$2" >/dev/null
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # A Docker secret: the password from a file, without its final line break.
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        if [ -n "${POSTGRES_PASSWORD:-}" ]; then
            echo "db: error: POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are both set: set only one" >&2
            exit 1
        fi
        if [ ! -r "$POSTGRES_PASSWORD_FILE" ]; then
            echo "db: error: POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE cannot be read" >&2
            exit 1
        fi
        POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
    fi
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "db: error: POSTGRES_PASSWORD is not set: the database refuses to start without a password" >&2
        exit 1
    fi
    case $POSTGRES_PASSWORD in
        *'
'*) echo "db: error: POSTGRES_PASSWORD must be one line" >&2; exit 1 ;;
    esac
    echo "db: initialising a new database in $PGDATA" >&2
    rm -rf "$scratch"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    # WAL segments of 1 MB instead of 16 MB keep a new cluster small; --no-sync because the
    # whole directory is synced once below, before it counts as a database.
    initdb --pgdata="$scratch" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --wal-segsize=1 \
        --no-instructions --no-sync >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$scratch/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # Double quotes doubled: the name as an SQL identifier.
        quoted=$(printf '%s' "$POSTGRES_DB" | sed 's/"/""/g')
        printf 'CREATE DATABASE "%s";\n\n' "$quoted" | single "$scratch" postgres
    fi
    initdb --pgdata="$scratch" --sync-only >/dev/null
    rm -rf "$PGDATA"
    mv "$scratch" "$PGDATA"
    echo "db: initialised" >&2
fi

exec postgres -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
