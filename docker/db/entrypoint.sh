#!/bin/sh
# Entry point of the db image: initialise an empty data directory once, then run PostgreSQL as
# PID 1 (so `docker stop` reaches it directly and it shuts down cleanly).
#
# Initialisation runs a temporary server on the unix socket only, applies init.sql, and stops
# it; the TCP healthcheck therefore never sees a half-initialised database as ready. It works in
# a scratch directory that is renamed to $PGDATA only once complete, so a failed or interrupted
# first start leaves nothing that a later start would mistake for a database.
set -eu

: "${POSTGRES_USER:=memories}"
: "${POSTGRES_DB:=memories}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    scratch="$PGDATA.init"
    rm -rf "$scratch"
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "db: error: POSTGRES_PASSWORD is not set: the database refuses to start without a password" >&2
        exit 1
    fi
    echo "db: initialising a new database in $PGDATA" >&2
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --pgdata="$scratch" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-instructions >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$scratch/pg_hba.conf"
    pg_ctl --pgdata="$scratch" --silent --wait \
        --options="-c listen_addresses='' -c unix_socket_directories=/run/postgresql" start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host=/run/postgresql \
            --username="$POSTGRES_USER" --dbname=postgres \
            --set=db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 --host=/run/postgresql \
        --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" --file=/usr/local/share/db/init.sql
    pg_ctl --pgdata="$scratch" --silent --wait --mode=fast stop
    mv "$scratch" "$PGDATA"
    echo "db: initialised" >&2
fi

exec postgres -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
