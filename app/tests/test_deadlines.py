"""The database layer's deadlines, with a pool that needs no database: work that ends in time
is committed under a statement timeout of the time left; work that ends late is rolled back
and reported; work that never ends is given up on at the deadline and its grace."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from memories import db
from memories.db import Database, Unavailable


class FakeConnection:
    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.committed = False

    def execute(self, statement: str, params: Any = None) -> FakeConnection:
        self.statements.append((statement, params))
        return self

    def commit(self) -> None:
        self.committed = True


class FakePool:
    """Hands out one connection at a time, as a pool of one would."""

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self, timeout: float) -> Iterator[FakeConnection]:
        if not self.lock.acquire(timeout=timeout):
            raise db.PoolTimeout("no connection")
        try:
            conn = FakeConnection()
            self.connections.append(conn)
            yield conn
        finally:
            self.lock.release()

    def close(self, timeout: float) -> None:
        pass


@pytest.fixture
def database() -> Iterator[Database]:
    database = Database("postgresql://unused@127.0.0.1:9/x", max_size=2, timeout=0.5)
    database.pool = FakePool()  # type: ignore[assignment]
    yield database
    database.workers.shutdown(wait=False, cancel_futures=True)


def test_work_in_time_is_committed_under_the_time_left(database: Database) -> None:
    assert database.run(lambda conn: 42) == 42
    conn = database.pool.connections[0]  # type: ignore[attr-defined]
    assert conn.committed
    statement, (timeout,) = conn.statements[0]
    assert "statement_timeout" in statement
    assert 1 <= int(timeout.removesuffix("ms")) <= 500


def test_work_that_ends_after_the_deadline_is_not_committed(database: Database) -> None:
    with pytest.raises(Unavailable, match=r"deadline of 0\.2s passed"):
        database.run(lambda conn: time.sleep(0.3), timeout=0.2)
    assert not database.pool.connections[0].committed  # type: ignore[attr-defined]


def test_work_that_never_answers_is_given_up_on_at_the_deadline_and_grace(
    database: Database,
) -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"no answer within 0\.2s"):
        database.run(lambda conn: release.wait(5), timeout=0.2)
    elapsed = time.monotonic() - started
    release.set()
    assert 0.2 + db.GRACE - 0.05 <= elapsed < 0.2 + db.GRACE + 0.5


def test_work_queued_past_its_deadline_never_starts(database: Database) -> None:
    release = threading.Event()
    ran: list[str] = []
    holder = threading.Thread(
        target=lambda: database.run(lambda conn: release.wait(2), timeout=2), daemon=True
    )
    holder.start()
    time.sleep(0.05)
    with pytest.raises(Unavailable):
        database.run(lambda conn: ran.append("late"), timeout=0.1)
    release.set()
    holder.join()
    assert ran == [], "work that waited past its deadline for a connection never ran"


def test_the_pool_retries_a_lost_database_steadily_not_with_a_growing_backoff() -> None:
    # psycopg_pool's default waits 1, 2, 4, 8, 16 s between attempts: a database back after a
    # few seconds would wait for the pool's next try, with every request answered 503 meanwhile.
    import psycopg_pool.base
    import psycopg_pool.pool

    Database("postgresql://memories@127.0.0.1:1/memories")
    assert psycopg_pool.pool.AttemptWithBackoff is psycopg_pool.base.AttemptWithBackoff, (
        "the pool no longer retries with the policy memories.db sets"
    )
    attempt = psycopg_pool.base.AttemptWithBackoff(timeout=300)
    delays = []
    for _ in range(12):
        attempt.update_delay(time.monotonic())
        delays.append(attempt.delay)
    assert all(0 < d <= db.RECONNECT_EVERY * 1.2 for d in delays), delays
