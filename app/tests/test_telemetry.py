"""The server's own measurements and access lines, on a small FastAPI app driven over ASGI (no
server, no database): requests counted by route template and status, one JSON access line per
request whose id the answer carries, a client's `traceparent` continued and a forged one
ignored, the pool's gauges and the build's info."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI

from memories import __version__
from memories.telemetry import Observe, Telemetry, TraceContext

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def app_with(telemetry: Telemetry) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item}")
    def item(item: int) -> dict:
        return {"item": item}

    app.add_middleware(Observe, telemetry=telemetry)
    return app


def get(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    """One GET over ASGI; the answer's status, headers and body."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8283),
    }
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return answer


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of the series `name{labels}` in Prometheus's text format."""
    for line in exposition.splitlines():
        found = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not found or found[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(found[3])
    raise AssertionError(f"no {name}{labels} in:\n{exposition}")


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry(revision="abc1234")


def test_requests_are_counted_by_route_template_and_status(telemetry: Telemetry) -> None:
    app = app_with(telemetry)
    assert get(app, "/items/1")["status"] == 200
    assert get(app, "/items/2")["status"] == 200
    assert get(app, "/items/x")["status"] == 422
    assert get(app, "/nowhere/at/all")["status"] == 404
    text = telemetry.exposition().decode()
    route = "/items/{item}"
    total = "memories_requests_total"
    assert sample(text, total, route=route, status="200", method="GET") == 2
    assert sample(text, total, route=route, status="422") == 1
    # A path that matched no route is one series, whatever the path: no unbounded labels.
    assert sample(text, total, route="unmatched", status="404") == 1
    assert "/nowhere" not in text
    assert sample(text, "memories_request_duration_seconds_count", route=route) == 3
    assert sample(text, "memories_request_duration_seconds_bucket", route=route, le="+Inf") == 3


def test_each_request_logs_one_json_line_whose_id_the_answer_carries(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with(telemetry)
    with caplog.at_level(logging.INFO, logger="memories.access"):
        fresh = get(app, "/items/7")
        continued = get(app, "/items/8", [(b"traceparent", PARENT.encode())])
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "memories.access"]
    assert len(lines) == 2, lines
    first, second = lines
    assert first["request_id"] == fresh["headers"]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["request_id"]), first
    assert (first["method"], first["route"], first["status"]) == ("GET", "/items/{item}", 200)
    assert first["continued"] is False and first["duration_ms"] >= 0
    # The proxy's trace goes on: same trace id, a span of the server's own.
    assert second["request_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert continued["headers"]["x-request-id"] == second["request_id"]
    assert second["continued"] is True
    assert second["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert not second["traceparent"].endswith("00f067aa0ba902b7-01"), "a new span id"


@pytest.mark.parametrize(
    "header",
    [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}',  # smuggled JSON
        "",
    ],
)
def test_a_malformed_traceparent_is_ignored_and_a_new_trace_started(header: str) -> None:
    context = TraceContext.of(header)
    assert not context.continued
    assert context.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", context.traceparent())
    assert context.trace_id.strip("0") and context.span_id.strip("0")


def test_pool_gauges_and_build_info(telemetry: Telemetry) -> None:
    text = telemetry.exposition().decode()
    assert "memories_db_pool_connections" not in text, "no pool, no pool gauges"
    telemetry.pool_stats = lambda: {"pool_size": 3, "pool_available": 1, "requests_waiting": 2}
    text = telemetry.exposition().decode()
    assert sample(text, "memories_db_pool_connections", state="in_use") == 2
    assert sample(text, "memories_db_pool_connections", state="idle") == 1
    assert sample(text, "memories_db_pool_waiting") == 2
    assert sample(text, "memories_build_info", version=__version__, revision="abc1234") == 1


def test_database_up_is_asked_at_each_scrape(telemetry: Telemetry) -> None:
    assert "memories_db_up" not in telemetry.exposition().decode(), "no database, no gauge"
    answers = iter([1, 0])
    telemetry.database_up = lambda: next(answers)
    assert sample(telemetry.exposition().decode(), "memories_db_up") == 1
    assert sample(telemetry.exposition().decode(), "memories_db_up") == 0
