"""Entry point of the `standalone` image: the server with its own PostgreSQL.

With `DATABASE_URL` set, this is the plain server. Without it, PostgreSQL runs inside the
container (data under `MEMORIES_DATA`, a volume; reachable only through a unix socket) and this
process supervises both: on SIGTERM or SIGINT it stops the server first, then shuts PostgreSQL
down cleanly (fast shutdown, a checkpoint, no crash recovery at the next start). When either child
dies, the other is stopped the same way and the container exits non-zero.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from . import db

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/17/bin"))
DATA = Path(os.environ.get("MEMORIES_DATA", "/var/lib/memories"))
SOCKET_DIR = Path(os.environ.get("MEMORIES_SOCKET_DIR", "/run/memories"))
DB_NAME = "memories"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def say(message: str) -> None:
    print(f"standalone: {message}", file=sys.stderr, flush=True)


def init_cluster(pgdata: Path) -> None:
    """Creates the cluster in a scratch directory renamed into place only when complete, so an
    interrupted first start leaves nothing a later start would take for a database."""
    if (pgdata / "PG_VERSION").exists():
        return
    say(f"initialising a new database in {pgdata}")
    scratch = pgdata.with_name(pgdata.name + ".init")
    shutil.rmtree(scratch, ignore_errors=True)
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "--pgdata",
            str(scratch),
            "--username",
            "memories",
            "--auth-local",
            "trust",
            "--auth-host",
            "reject",
            "--encoding",
            "UTF8",
            "--no-instructions",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    scratch.rename(pgdata)


def ensure_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def stop(proc: subprocess.Popen | None, sig: int, grace: float) -> int | None:
    """Sends `sig`, waits up to `grace` seconds, then kills; returns the exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            say(f"pid {proc.pid} ignored signal {sig} for {grace:g}s, killing it")
            proc.kill()
            proc.wait()
    return proc.returncode


def main() -> int:
    if os.environ.get("DATABASE_URL"):
        os.execv(sys.executable, [sys.executable, "-m", "memories"])

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)

    pgdata = DATA / "pgdata"
    try:
        init_cluster(pgdata)
    except (OSError, subprocess.CalledProcessError) as err:
        say(f"error: cannot initialise the database in {pgdata}: {err}")
        return 1
    SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    postgres = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(pgdata),
            "-c",
            "listen_addresses=",
            "-c",
            f"unix_socket_directories={SOCKET_DIR}",
        ],
        # Our own process group, so a Ctrl-C on `docker run -it` reaches only us.
        process_group=0,
    )
    server = None
    code = 0
    try:
        admin_url = f"postgresql://memories@/postgres?host={SOCKET_DIR}"
        db.wait_until_ready(admin_url, float(os.environ.get("DB_WAIT_TIMEOUT", "30")))
        ensure_database(admin_url)
        # Its own database, with no release phase before it: the server migrates it on start.
        env = dict(
            os.environ,
            DATABASE_URL=f"postgresql://memories@/{DB_NAME}?host={SOCKET_DIR}",
            MIGRATE_ON_START="1",
        )
        if not stopping:
            server = subprocess.Popen([sys.executable, "-m", "memories"], env=env, process_group=0)
        while not stopping:
            if server is not None and server.poll() is not None:
                say(f"server exited with status {server.returncode}")
                code = server.returncode or 1
                break
            if postgres.poll() is not None:
                say(f"postgres exited with status {postgres.returncode}")
                code = 1
                break
            time.sleep(0.05)
    except (db.DatabaseError, psycopg.Error) as err:
        say(f"error: {err}")
        code = 1
    finally:
        stop(server, signal.SIGTERM, 5)
        # SIGINT is PostgreSQL's fast shutdown: roll back sessions, checkpoint, exit cleanly.
        status = stop(postgres, signal.SIGINT, 30)
        if status not in (0, None):
            say(f"postgres shut down with status {status}")
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
