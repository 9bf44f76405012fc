"""Waiting for PostgreSQL with a deadline, and the schema, applied idempotently."""

from __future__ import annotations

import random
import time
from urllib.parse import urlsplit

import psycopg

SCHEMA_LOCK = 0x6D656D6F  # "memo": serialises schema changes between replicas starting at once.


class DatabaseError(Exception):
    """The database never became ready or its schema does not fit this service."""


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
            raise DatabaseError(
                f"database at {describe(url)} not ready after {timeout:g}s: {last}"
            )
        try:
            with psycopg.connect(url, connect_timeout=max(1, int(min(remaining, 5)))) as conn:
                conn.execute("SELECT 1").fetchone()
                return
        except psycopg.OperationalError as err:
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        time.sleep(min(delay * random.uniform(0.8, 1.2), max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)


def apply_schema(url: str, dim: int) -> None:
    """Creates the extension, table and index if missing; refuses a table of another dimension."""
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            f"""
            CREATE TABLE IF NOT EXISTS memories (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                text text NOT NULL,
                embedding vector({dim}) NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        row = conn.execute(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'memories'::regclass AND attname = 'embedding'"
        ).fetchone()
        if row is not None and row[0] != dim:
            raise DatabaseError(
                f"table memories stores {row[0]}-dimensional embeddings but EMBEDDING_DIM={dim}: "
                "set EMBEDDING_DIM to match, or use a fresh database"
            )
        conn.execute(
            "CREATE INDEX IF NOT EXISTS memories_embedding_idx "
            "ON memories USING hnsw (embedding vector_cosine_ops)"
        )
        conn.commit()
