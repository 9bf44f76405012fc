#!/bin/sh
# Entry point of the db image: make sure a database exists, then run PostgreSQL as PID 1 (so
# `docker stop` reaches it directly and it shuts down cleanly). The password comes from
# POSTGRES_PASSWORD or from the file POSTGRES_PASSWORD_FILE names; it is only read when the
# database is created. Writes go to the volume and /tmp only, so the root
# filesystem may be read-only.
#
# The image carries a cluster prepared at build time (`db-entrypoint --prepare`) for the default
# names, with init.sql applied and no password, outside the volume. A first start with those
# names copies it into the volume and sets the password in single-user mode (no listener at
# all): a fraction of a second, and the container is created without Docker copying data into
# the volume first. Other names get a full initialisation: a temporary server on the unix socket
# only applies init.sql and stops, so the TCP healthcheck never sees a half-initialised database
# as ready. Either way the work happens in a scratch directory renamed into place only when
# complete, so an interrupted first start leaves nothing a later start would take for a database.
set -eu

# The socket and lock directory: /run/postgresql (libpq's default) is a link to it, so with a
# read-only root filesystem only /tmp needs to be writable.
mkdir -p -m 0755 /tmp/postgresql

: "${POSTGRES_USER:=memories}"
: "${POSTGRES_DB:=memories}"
prepared=/var/lib/postgresql/prepared
scratch="$PGDATA.init"

# initialise DIR USER DB [PASSWORD]: a complete cluster in DIR. WAL segments of 1 MB instead of
# 16 MB keep the prepared cluster small.
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

# single DIR DB: runs stdin's SQL in single-user mode, one statement a line.
single() {
    postgres --single -D "$1" -c exit_on_error=true -c log_min_messages=warning "$2" >/dev/null
}

if [ "${1:-}" = --prepare ]; then
    initialise "$prepared.init" memories memories
    # Without the `postgres` maintenance database the prepared cluster is a quarter smaller.
    echo "DROP DATABASE postgres;" | single "$prepared.init" memories
    mv "$prepared.init" "$prepared"
    exit 0
fi

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
    rm -rf "$scratch"
    if [ "$POSTGRES_USER" = memories ] && [ "$POSTGRES_DB" = memories ] && [ -s "$prepared/PG_VERSION" ]; then
        cp -a "$prepared" "$scratch"
        # Single quotes doubled: the password as an SQL literal.
        quoted=$(printf '%s' "$POSTGRES_PASSWORD" | sed "s/'/''/g")
        printf "ALTER ROLE memories PASSWORD '%s';\n" "$quoted" | single "$scratch" memories
        echo "db: prepared database copied, password set" >&2
    else
        echo "db: initialising a new database in $PGDATA" >&2
        initialise "$scratch" "$POSTGRES_USER" "$POSTGRES_DB" "$POSTGRES_PASSWORD"
        echo "db: initialised" >&2
    fi
    rm -rf "$PGDATA"
    mv "$scratch" "$PGDATA"
fi

exec postgres -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
