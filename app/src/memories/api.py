"""The HTTP API: health, version, and storing and searching memories."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from typing import Annotated

import psycopg
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from . import __version__
from .config import Settings
from .db import Database, Unavailable

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
        self.client = None
        if url:
            import redis

            self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def _key(self, vector: str, k: int) -> str | None:
        generation = self.client.get("memories:generation") or b"0"
        digest = hashlib.sha256(f"{vector}|{k}".encode()).hexdigest()
        return f"memories:search:{generation.decode()}:{digest}"

    def get(self, vector: str, k: int) -> tuple[str | None, list | None]:
        if self.client is None:
            return None, None
        try:
            key = self._key(vector, k)
            cached = self.client.get(key)
            return key, (json.loads(cached) if cached is not None else None)
        except Exception as err:  # noqa: BLE001 - a cache failure must never fail a search.
            log.warning("redis unavailable, searching the database: %s", err)
            return None, None

    def put(self, key: str | None, results: list) -> None:
        if self.client is None or key is None:
            return
        try:
            self.client.set(key, json.dumps(results), ex=self.ttl)
        except Exception as err:  # noqa: BLE001
            log.warning("redis unavailable, result not cached: %s", err)

    def invalidate(self) -> None:
        if self.client is None:
            return
        try:
            self.client.incr("memories:generation")
        except Exception as err:  # noqa: BLE001
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
            detail=f"embedding has {len(values)} values, this service expects {dim} (EMBEDDING_DIM)",
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


def create_app(settings: Settings) -> FastAPI:
    database = Database(settings.database_url, timeout=settings.request_timeout)
    cache = Cache(settings.redis_url, settings.cache_ttl)
    dim = settings.embedding_dim

    async def lifespan(_app: FastAPI):
        # Open the first connection before serving, so the first health check is a quick one.
        database.open(timeout=settings.db_wait_timeout)
        yield
        database.close()

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
        try:
            database.run(lambda conn: conn.execute("SELECT 1").fetchone(), timeout=1.0)
        except (Unavailable, psycopg.Error) as err:
            log.warning("health: database unavailable: %s", err)
            return JSONResponse(
                status_code=503,
                content={"status": "unavailable", "version": __version__, "database": "unavailable"},
            )
        return JSONResponse({"status": "ok", "version": __version__, "database": "ok"})

    @app.get("/v1/version")
    def version() -> dict:
        return {"version": __version__}

    @app.post("/v1/memories", status_code=201)
    def add_memory(memory: NewMemory) -> dict:
        vector = _vector_literal(memory.embedding, dim)
        row = database.run(
            lambda conn: conn.execute(
                "INSERT INTO memories (text, embedding) VALUES (%s, %s::vector) RETURNING id",
                (memory.text, vector),
            ).fetchone()
        )
        cache.invalidate()
        return {"id": row[0]}

    @app.get("/v1/memories/search")
    def search(
        response: Response,
        embedding: Annotated[str, Query(description="comma-separated floats")],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> list[dict]:
        vector = _vector_literal(_parse_embedding(embedding), dim)
        key, cached = cache.get(vector, k)
        if cached is not None:
            response.headers["X-Cache"] = "hit"
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
        return results

    if settings.otlp_endpoint:
        _instrument(app)
    return app


def _instrument(app: FastAPI) -> None:
    """Exports traces over OTLP/HTTP to `OTEL_EXPORTER_OTLP_ENDPOINT`."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": "memories", "service.version": __version__})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
