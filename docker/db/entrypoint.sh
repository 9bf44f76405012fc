#!/bin/sh
# Entry point of the db image, run by tini: make sure a database exists, start the backup
# schedule if one is set, then become PostgreSQL (tini passes `docker stop`'s signal to it, so
# it shuts down cleanly). The password comes from
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

# Scheduled full backups. With BACKUP_EVERY set to a duration (`24h`, `90m`, `30s`; `off` for
# none) and pgBackRest configured (PGBACKREST_STANZA, PGBACKREST_REPO1_PATH), a loop beside
# PostgreSQL makes a full backup whenever the newest full backup in the repository is older
# than that: a restart or a manual `prod backup --type full` moves the next one, and a
# schedule never runs twice at once (pgBackRest's lock). Each attempt's outcome is written to
# $PGBACKREST_REPO1_PATH/schedule, which `cargo xtask prod backups` and `prod status` read; a
# failure is also logged.
every=0
if [ "${BACKUP_EVERY:-off}" != off ]; then
    count=${BACKUP_EVERY%?}
    case $count in
        ''|*[!0-9]*) count=bad ;;
    esac
    case $count:${BACKUP_EVERY#"$count"} in
        bad:*) every=bad ;;
        *:s) every=$count ;;
        *:m) every=$((count * 60)) ;;
        *:h) every=$((count * 3600)) ;;
        *:d) every=$((count * 86400)) ;;
        *) every=bad ;;
    esac
    if [ "$every" = bad ] || [ "$every" -eq 0 ]; then
        echo "db: error: BACKUP_EVERY=$BACKUP_EVERY is not a duration: give one such as 24h, 90m or 30s, or off" >&2
        exit 1
    fi
fi
if [ "$every" -gt 0 ] && { [ -z "${PGBACKREST_STANZA:-}" ] || [ -z "${PGBACKREST_REPO1_PATH:-}" ]; }; then
    echo "db: error: BACKUP_EVERY is set but pgBackRest is not (PGBACKREST_STANZA, PGBACKREST_REPO1_PATH): set both, or BACKUP_EVERY=off" >&2
    exit 1
fi

# The start time of the newest full backup (its label, YYYYMMDD-HHMMSSF, in UTC), 0 if none.
newest_full() {
    label=$(ls "$PGBACKREST_REPO1_PATH/backup/$PGBACKREST_STANZA" 2>/dev/null \
        | grep -E '^[0-9]{8}-[0-9]{6}F$' | tail -n 1)
    if [ -z "$label" ]; then echo 0; return; fi
    date -u -d "$(echo "$label" | sed -E 's/^(....)(..)(..)-(..)(..)(..)F$/\1-\2-\3 \4:\5:\6/')" +%s
}

# write_status: the schedule's state, replaced whole (a reader never sees half a file).
write_status() {
    printf 'every=%s\nlast_attempt=%s\nlast_ok=%s\nlast_error=%s\n' \
        "$every" "$last_attempt" "$last_ok" "$(printf '%s' "$last_error" | tr '\n' ' ')" \
        > "$status.new" && mv "$status.new" "$status"
}

schedule() {
    status=$PGBACKREST_REPO1_PATH/schedule
    last_attempt=$(sed -n 's/^last_attempt=//p' "$status" 2>/dev/null || true)
    last_ok=$(sed -n 's/^last_ok=//p' "$status" 2>/dev/null || true)
    last_error=$(sed -n 's/^last_error=//p' "$status" 2>/dev/null || true)
    write_status || echo "db: cannot write $status: the schedule's state is unknown to prod backups" >&2
    check=60
    if [ "$every" -lt 60 ]; then check=$every; fi
    while sleep "$check"; do
        if [ $(($(date +%s) - $(newest_full))) -lt "$every" ]; then continue; fi
        # Not up yet (a first start, a recovery): the next check tries again.
        if ! pg_isready --quiet --host=/tmp/postgresql --username="$POSTGRES_USER" \
            --dbname=postgres; then
            continue
        fi
        last_attempt=$(date +%s)
        if said=$(pgbackrest stanza-create 2>&1 && pgbackrest backup --type=full 2>&1); then
            last_ok=$last_attempt last_error=
        else
            last_error=$(printf '%s\n' "$said" | grep -E 'ERROR' | tail -n 1)
            last_error=${last_error:-$said}
            echo "db: the scheduled full backup failed: $last_error" >&2
        fi
        write_status || true
    done
}

if [ "$every" -gt 0 ]; then
    # Started from a subshell that exits at once: the loop's parent becomes tini, not
    # PostgreSQL.
    ( schedule </dev/null & )
    echo "db: a full backup every ${BACKUP_EVERY} (newest full backup older than that)" >&2
fi

exec postgres -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
