"""Waiting for PostgreSQL with a deadline, the check that the table fits this server's embedding
dimension, and the pool that every request's queries go through, each with a deadline of its
own. The schema itself is `memories.migrate`'s."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

T = TypeVar("T")


class DatabaseError(Exception):
    """The database never became ready or its schema does not fit this service."""


class Unavailable(Exception):
    """The database did not answer within a request's deadline, or refused the connection.

    The message is for the log only: it may carry the server's own error text.
    """


# Connection settings for every pooled connection. A database that stops answering (a paused
# container, a lost network) must not hold a request forever: connecting gives up after 2 s
# (libpq's minimum), and TCP keepalives and an unacknowledged-data limit end a connection to a
# peer that has gone away.
CONNECTION_SETTINGS = {
    "connect_timeout": 2,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 5000,
}


# How often the pool tries again to connect while the database is away. psycopg_pool's own
# retries back off (1 s, 2 s, 4 s, 8 s, ... for up to 5 minutes), so after a database restart
# of a few seconds the pool could wait 8 s or more before its next attempt, and meanwhile every
# request got 503 from a database that was back. One connection attempt every half second to a
# database that is away costs nothing.
RECONNECT_EVERY = 0.5


def _retry_steadily() -> None:
    """Makes the pool retry a failed connection every `RECONNECT_EVERY` seconds, never slower.

    psycopg_pool has no setting for it: this sets its retry policy's class attributes (the
    process has one pool). `test_deadlines.py` counts the attempts, so an upgrade that moves
    them fails there, not in production.
    """
    from psycopg_pool.base import AttemptWithBackoff

    AttemptWithBackoff.INITIAL_DELAY = RECONNECT_EVERY
    AttemptWithBackoff.DELAY_JITTER = 0.2
    AttemptWithBackoff.DELAY_BACKOFF = 1.0


# How long the caller waits past a request's deadline for the work's own outcome. The work
# enforces the deadline itself (the server cancels a statement at it, and a transaction
# finished after it is rolled back), so the answer the client gets is what happened; only a
# database that stops answering altogether is given up on from outside.
GRACE = 0.5


class Database:
    """The connection pool, and a deadline on every piece of work done with it.

    Connections are checked when taken from the pool, so the first request after a database
    restart gets a fresh connection instead of a stale one. Work runs on the pool's own threads
    in one transaction, and the deadline binds the work itself, so that a request answered
    with an error never takes effect later:
    - work still queued at its deadline never starts;
    - each statement runs under a `statement_timeout` of the time left, so PostgreSQL cancels
      one that waits for a lock or runs too long;
    - a transaction whose work ends after the deadline is rolled back, not committed.
    The caller waits the deadline and `GRACE`; a database that does not answer at all (paused,
    unreachable) gives `Unavailable` then, and the stuck thread's work is rolled back when it
    returns. One window stays: a COMMIT sent before the deadline whose answer is lost; a client
    that retries with an `Idempotency-Key` still stores one row.
    """

    def __init__(self, url: str, max_size: int = 8, timeout: float = 3.0) -> None:
        _retry_steadily()
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs=CONNECTION_SETTINGS,
        )
        self.workers = ThreadPoolExecutor(max_workers=max_size, thread_name_prefix="db")
        self.timeout = timeout

    def open(self, timeout: float) -> None:
        self.pool.open(wait=True, timeout=timeout)

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.pool.close(timeout=1)

    def run(self, work: Callable[[psycopg.Connection], T], timeout: float | None = None) -> T:
        """Runs `work` in one transaction on a pooled connection within `timeout` seconds (the
        default deadline if None), committed only if it ended in time; raises `Unavailable`
        when the database cannot be reached or does not answer in time."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"the deadline of {timeout:g}s passed")
            return remaining

        def job() -> T:
            with self.pool.connection(timeout=left()) as conn:
                # Local to this transaction: the pooled connection keeps no setting.
                ms = max(1, int(left() * 1000))
                conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{ms}ms",))
                result = work(conn)
                left()
                conn.commit()
                return result

        future = self.workers.submit(job)
        try:
            return future.result(timeout=timeout + GRACE)
        except FutureTimeout:
            future.cancel()
            raise Unavailable(f"no answer within {timeout:g}s") from None
        except PoolTimeout as err:
            raise Unavailable(f"no connection within {timeout:g}s: {err}") from err
        except psycopg.errors.QueryCanceled as err:
            raise Unavailable(f"cancelled at the deadline of {timeout:g}s: {err}") from err
        except psycopg.OperationalError as err:
            raise Unavailable(str(err).strip() or type(err).__name__) from err


def describe(url: str) -> str:
    """Names a database for messages without its password."""
    parts = urlsplit(url)
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or ''}"


def wait_until_ready(url: str, timeout: float) -> None:
    """Returns once the server accepts a session and answers a query, or raises after `timeout`.

    A server in recovery or start-up ("the database system is starting up") is not ready.
    Retries back off from 20 ms to 100 ms with jitter: a database that starts beside the server
    is noticed within a tenth of a second.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DatabaseError(f"database at {describe(url)} not ready after {timeout:g}s: {last}")
        try:
            with psycopg.connect(url, connect_timeout=max(1, int(min(remaining, 5)))) as conn:
                conn.execute("SELECT 1").fetchone()
                return
        except psycopg.OperationalError as err:
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        time.sleep(min(delay * random.uniform(0.8, 1.2), max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)


def check_schema(url: str, dim: int) -> None:
    """Refuses a table whose embeddings have another dimension than `dim`."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'memories'::regclass AND attname = 'embedding'"
        ).fetchone()
    if row is not None and row[0] != dim:
        raise DatabaseError(
            f"table memories stores {row[0]}-dimensional embeddings but EMBEDDING_DIM={dim}: "
            "set EMBEDDING_DIM to match, or use a fresh database"
        )
