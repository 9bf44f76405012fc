#!/bin/sh
# Entry point of the db image: make sure a database exists, then run PostgreSQL as PID 1 (so
# `docker stop` reaches it directly and it shuts down cleanly).
#
# The image carries a cluster initialised at build time (`db-entrypoint --prepare`) for the
# default names, with init.sql applied and no password: a first start with those names only
# sets the password, in single-user mode (no listener at all), which takes a fraction of a
# second. Other names, or a data directory that is empty (a bind mount), get a full
# initialisation: a temporary server on the unix socket only applies init.sql and stops, so the
# TCP healthcheck never sees a half-initialised database as ready. Either way the work happens
# in a scratch directory renamed into place only when complete, so an interrupted first start
# leaves nothing that a later start would take for a database.
set -eu

: "${POSTGRES_USER:=memories}"
: "${POSTGRES_DB:=memories}"
marker="$PGDATA/.needs-password"

# initialise DIR USER DB [PASSWORD]: a complete cluster in DIR. WAL segments of 1 MB instead of
# 16 MB keep the prepared cluster small, and so the copy into a new volume quick.
initialise() {
    dir=$1 user=$2 db=$3 password=${4:-}
    rm -rf "$dir"
    if [ -n "$password" ]; then
        pwfile=$(mktemp)
        printf '%s\n' "$password" > "$pwfile"
        initdb --pgdata="$dir" --username="$user" --pwfile="$pwfile" \
            --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --wal-segsize=1 --no-instructions >/dev/null
        rm -f "$pwfile"
    else
        initdb --pgdata="$dir" --username="$user" \
            --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --wal-segsize=1 --no-instructions >/dev/null
    fi
    echo "host all all all scram-sha-256" >> "$dir/pg_hba.conf"
    pg_ctl --pgdata="$dir" --silent --wait \
        --options="-c listen_addresses='' -c unix_socket_directories=/run/postgresql" start
    if [ "$db" != postgres ]; then
        psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host=/run/postgresql \
            --username="$user" --dbname=postgres --set=db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host=/run/postgresql \
        --username="$user" --dbname="$db" --file=/usr/local/share/db/init.sql
    pg_ctl --pgdata="$dir" --silent --wait --mode=fast stop
}

if [ "${1:-}" = --prepare ]; then
    initialise "$PGDATA.init" memories memories
    # Without the `postgres` maintenance database the prepared cluster is a quarter smaller,
    # and a new volume is populated that much sooner. Connect to `memories` instead.
    echo "DROP DATABASE postgres;" \
        | postgres --single -D "$PGDATA.init" -c exit_on_error=true -c log_min_messages=warning memories >/dev/null
    touch "$PGDATA.init/.needs-password"
    mv "$PGDATA.init" "$PGDATA"
    exit 0
fi

if [ -f "$marker" ] || [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "db: error: POSTGRES_PASSWORD is not set: the database refuses to start without a password" >&2
        exit 1
    fi
    case $POSTGRES_PASSWORD in
        *'
'*) echo "db: error: POSTGRES_PASSWORD must be one line" >&2; exit 1 ;;
    esac
fi

if [ -f "$marker" ] && [ "$POSTGRES_USER" = memories ] && [ "$POSTGRES_DB" = memories ]; then
    # Single quotes doubled: the password as an SQL literal.
    quoted=$(printf '%s' "$POSTGRES_PASSWORD" | sed "s/'/''/g")
    printf "ALTER ROLE memories PASSWORD '%s';\n" "$quoted" \
        | postgres --single -D "$PGDATA" -c exit_on_error=true -c log_min_messages=warning memories >/dev/null
    rm -f "$marker"
    echo "db: password set on the prepared database" >&2
elif [ -f "$marker" ] || [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "db: initialising a new database in $PGDATA" >&2
    initialise "$PGDATA.init" "$POSTGRES_USER" "$POSTGRES_DB" "$POSTGRES_PASSWORD"
    rm -rf "$PGDATA"
    mv "$PGDATA.init" "$PGDATA"
    echo "db: initialised" >&2
fi

exec postgres -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
