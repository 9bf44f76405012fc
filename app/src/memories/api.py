"""The HTTP API: health, version, and storing and searching memories."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import struct
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, field_validator

from . import __version__, auth
from .config import Settings
from .db import Database, Unavailable
from .telemetry import Observe, Telemetry, resource, route_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis

log = logging.getLogger("memories")


class NewMemory(BaseModel):
    text: str = Field(min_length=1, max_length=10_000)
    embedding: list[float]

    @field_validator("text")
    @classmethod
    def storable_text(cls, text: str) -> str:
        # PostgreSQL's text cannot hold NUL, and a lone surrogate (valid in JSON's `\ud800`
        # escapes) has no UTF-8 form.
        if "\x00" in text:
            raise ValueError("text must not contain NUL characters (\\u0000)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode: it contains a lone surrogate") from None
        return text


class Cache:
    """Search results in Redis, keyed by a generation that every insert moves on.

    Redis is optional: when it is missing or fails, searches go to the database.
    """

    def __init__(self, url: str | None, ttl: int) -> None:
        self.ttl = ttl
        self.client: redis.Redis | None = None
        if url:
            import redis

            self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def _key(self, client: redis.Redis, vector: str, k: int) -> str:
        generation = client.get("memories:generation") or b"0"
        if isinstance(generation, bytes):
            generation = generation.decode()
        digest = hashlib.sha256(f"{vector}|{k}".encode()).hexdigest()
        return f"memories:search:{generation}:{digest}"

    def get(self, vector: str, k: int) -> tuple[str | None, list | None]:
        if self.client is None:
            return None, None
        try:
            key = self._key(self.client, vector, k)
            cached = self.client.get(key)
            return key, (json.loads(cached) if cached is not None else None)
        except Exception as err:
            log.warning("redis unavailable, searching the database: %s", err)
            return None, None

    def put(self, key: str | None, results: list) -> None:
        if self.client is None or key is None:
            return
        try:
            self.client.set(key, json.dumps(results), ex=self.ttl)
        except Exception as err:
            log.warning("redis unavailable, result not cached: %s", err)

    def invalidate(self) -> None:
        if self.client is None:
            return
        try:
            self.client.incr("memories:generation")
        except Exception as err:
            log.warning("redis unavailable, cache not invalidated: %s", err)


def _vector_literal(values: list[float], dim: int) -> str:
    """The pgvector literal of `values` as pgvector stores them, in 32-bit floats.

    Checked after the rounding, so what is refused is what would go wrong: values beyond
    float32's range, and vectors whose every value rounds to zero (they have no cosine distance
    and would be stored but never found).
    """
    if len(values) != dim:
        raise HTTPException(
            status_code=422,
            detail=(
                f"embedding has {len(values)} values, this service expects {dim} (EMBEDDING_DIM)"
            ),
        )
    if not all(math.isfinite(v) for v in values):
        raise HTTPException(status_code=422, detail="embedding values must be finite numbers")
    # Python packs a value beyond float32's range as infinity (older versions raise instead).
    try:
        stored = struct.unpack(f"{dim}f", struct.pack(f"{dim}f", *values))
    except OverflowError:
        stored = (math.inf,)
    if not all(math.isfinite(v) for v in stored):
        raise HTTPException(
            status_code=422,
            detail="embedding values must fit in 32-bit floats (magnitude at most 3.4e38)",
        )
    if not any(stored):
        raise HTTPException(
            status_code=422,
            detail="embedding must not be all zeros as 32-bit floats (no cosine distance)",
        )
    return "[" + ",".join(repr(v) for v in stored) + "]"


def _parse_embedding(raw: str) -> list[float]:
    try:
        return [float(part) for part in raw.split(",")]
    except ValueError:
        raise HTTPException(
            status_code=422,
            detail="embedding must be comma-separated numbers, e.g. embedding=0.1,0.2,0.3",
        ) from None


# How long an idempotency key is kept at least: a retry within it returns the first answer.
IDEMPOTENCY_KEEP = "1 day"


def _insert_once(
    conn: psycopg.Connection, key: str, digest: bytes, text: str, vector: str
) -> tuple[bool, int]:
    """Stores a memory under an idempotency key, in the caller's transaction: `(True, id)` for a
    new key, `(False, id)` of the first insert for a key seen before with the same body.

    The key is claimed first: a concurrent insert with the same key waits on it until this
    transaction ends, then finds it. A key seen with another body is the client's error.
    """
    claimed = conn.execute(
        "INSERT INTO idempotency_keys (key, request_digest) VALUES (%s, %s) "
        "ON CONFLICT (key) DO NOTHING RETURNING key",
        (key, digest),
    ).fetchone()
    if claimed is None:
        first = conn.execute(
            "SELECT request_digest, memory_id FROM idempotency_keys WHERE key = %s", (key,)
        ).fetchone()
        if first is None:
            raise Unavailable("an idempotency key vanished while it was read")
        if bytes(first[0]) != digest:
            raise HTTPException(
                status_code=422,
                detail="this Idempotency-Key was used with another body: use a new key",
            )
        return False, first[1]
    (memory_id,) = _one(
        conn.execute(
            "INSERT INTO memories (text, embedding) VALUES (%s, %s::vector) RETURNING id",
            (text, vector),
        ).fetchone()
    )
    conn.execute("UPDATE idempotency_keys SET memory_id = %s WHERE key = %s", (memory_id, key))
    # Now and then, the keys past their time go: an indexed range, cheap at any size.
    if random.random() < 0.01:
        conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - %s::interval",
            (IDEMPOTENCY_KEEP,),
        )
    return True, memory_id


def _one(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """The row a `RETURNING` statement gives; none would mean the database lost the write."""
    if row is None:
        raise Unavailable("the database returned no row for a write")
    return row


class BodyLimit:
    """Answers 413 to a request whose body is larger than `limit` bytes, before reading it when
    its Content-Length says so, and as soon as a streamed body passes the limit otherwise, so
    a huge upload costs neither memory nor a worker's time."""

    def __init__(self, app, limit: int) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        received = 0
        started = False
        refused = False

        # Past the limit: the 413 goes out at once, and the app is told the client has gone
        # (whatever it answers then is dropped), so it stops reading.
        async def limited_receive():  # type: ignore[no-untyped-def]
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if not started:
                        refused = True
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message) -> None:  # type: ignore[no-untyped-def]
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracked_send)

    async def _refuse(self, send) -> None:  # type: ignore[no-untyped-def]
        detail = f"the request body is larger than {self.limit} bytes"
        await auth.send_detail(send, 413, detail, [(b"connection", b"close")])


class Search(BaseModel):
    """A search as a JSON body: a full-precision embedding of any size fits."""

    embedding: list[float]
    k: int = Field(default=5, ge=1, le=100)


def create_app(settings: Settings) -> FastAPI:
    # Raises auth.KeyFileError for a key file that cannot be read or has no key.
    keys = auth.Keys(settings.api_keys_file) if settings.api_keys_file else None
    database = Database(settings.database_url, timeout=settings.request_timeout)
    cache = Cache(settings.redis_url, settings.cache_ttl)
    dim = settings.embedding_dim
    telemetry = Telemetry(otlp=settings.otlp_metrics is not None, revision=settings.revision)
    telemetry.pool_stats = database.pool.get_stats

    def database_up() -> int:
        # Asked at each scrape, with a deadline short enough for the scrape's own.
        try:
            database.run(lambda conn: conn.execute("SELECT 1").fetchone(), timeout=0.5)
        except (Unavailable, psycopg.Error):
            return 0
        return 1

    telemetry.database_up = database_up

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Open the first connection before serving, so the first health check is a quick one.
        database.open(timeout=settings.db_wait_timeout)
        yield
        database.close()
        telemetry.shutdown()

    app = FastAPI(title="memories", version=__version__, lifespan=lifespan)

    # What was wrong and where, without echoing the input back: it may be large, hold a secret,
    # or be what was refused for not being encodable (a lone surrogate).
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [
            {key: value for key, value in error.items() if key in ("type", "loc", "msg")}
            for error in err.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

    # Clients learn that the database is unavailable, never its error text: that goes to the log.
    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, err: Unavailable) -> JSONResponse:
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, err)
        telemetry.unavailable.add(1, {"route": route_of(request.scope)})
        return JSONResponse(
            status_code=503,
            content={"detail": "the database is unavailable, try again shortly"},
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, err: psycopg.Error) -> JSONResponse:
        log.error("%s %s: database error: %s", request.method, request.url.path, err)
        return JSONResponse(status_code=500, content={"detail": "internal database error"})

    @app.get("/v1/health")
    def health() -> JSONResponse:
        # Open to all: with keys required it says whether it serves, and nothing else.
        private = keys is not None and keys.required
        try:
            database.run(lambda conn: conn.execute("SELECT 1").fetchone(), timeout=1.0)
        except (Unavailable, psycopg.Error) as err:
            log.warning("health: database unavailable: %s", err)
            content = {"status": "unavailable"}
            if not private:
                content.update(version=__version__, database="unavailable")
            return JSONResponse(status_code=503, content=content)
        if private:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "ok", "version": __version__, "database": "ok"})

    # For Prometheus on the stack's network: open like health (the proxy never forwards it).
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/version")
    def version() -> dict:
        return {"version": __version__}

    @app.post("/v1/memories", status_code=201)
    def add_memory(
        memory: NewMemory,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                min_length=1,
                max_length=255,
                pattern=r"^[\x21-\x7e]+$",
                description="a retried insert with the same key returns the first answer",
            ),
        ] = None,
    ) -> dict:
        vector = _vector_literal(memory.embedding, dim)
        if idempotency_key is None:
            row = database.run(
                lambda conn: _one(
                    conn.execute(
                        "INSERT INTO memories (text, embedding) VALUES (%s, %s::vector) "
                        "RETURNING id",
                        (memory.text, vector),
                    ).fetchone()
                )
            )
            cache.invalidate()
            telemetry.inserts.add(1)
            return {"id": row[0]}
        digest = hashlib.sha256(json.dumps([memory.text, vector]).encode()).digest()
        stored, memory_id = database.run(
            lambda conn: _insert_once(conn, idempotency_key, digest, memory.text, vector)
        )
        if stored:
            cache.invalidate()
            telemetry.inserts.add(1)
        else:
            response.headers["Idempotent-Replayed"] = "true"
        return {"id": memory_id}

    def search_for(response: Response, values: list[float], k: int) -> list[dict]:
        vector = _vector_literal(values, dim)
        key, cached = cache.get(vector, k)
        if cached is not None:
            response.headers["X-Cache"] = "hit"
            telemetry.searches.add(1, {"cache": "hit"})
            return cached
        rows = database.run(
            lambda conn: conn.execute(
                "SELECT id, text, embedding <=> %s::vector AS distance "
                "FROM memories ORDER BY embedding <=> %s::vector LIMIT %s",
                (vector, vector, k),
            ).fetchall()
        )
        results = [{"id": r[0], "text": r[1], "distance": float(r[2])} for r in rows]
        cache.put(key, results)
        response.headers["X-Cache"] = "miss" if cache.client is not None else "off"
        telemetry.searches.add(1, {"cache": response.headers["X-Cache"]})
        return results

    @app.get("/v1/memories/search")
    def search(
        response: Response,
        embedding: Annotated[str, Query(description="comma-separated floats")],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> list[dict]:
        return search_for(response, _parse_embedding(embedding), k)

    @app.post("/v1/memories/search")
    def search_posted(response: Response, search: Search) -> list[dict]:
        return search_for(response, search.embedding, search.k)

    app.add_middleware(BodyLimit, limit=settings.max_body)
    if keys is not None:
        # Added last, so it runs first: a request without a key is refused before its body
        # is read.
        app.add_middleware(auth.RequireKey, keys=keys)
    # Added last of all, so it sees every request, those the key check or the limit refuse too.
    app.add_middleware(Observe, telemetry=telemetry)

    if settings.otlp_traces:
        _instrument(app)
    return app


def _instrument(app: FastAPI) -> None:
    """Exports traces over OTLP/HTTP (to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
    `OTEL_EXPORTER_OTLP_ENDPOINT`, as the SDK's exporter reads them)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=resource())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
