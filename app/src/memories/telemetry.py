"""What the server measures of itself, and one JSON line per request that joins up with the
proxy's.

Metrics are OpenTelemetry instruments with two readers: Prometheus scrapes `GET /metrics` (the
SDK's Prometheus reader, into a registry of this server's own), and when
`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (else `OTEL_EXPORTER_OTLP_ENDPOINT`) is set the same
instruments are also pushed over OTLP/HTTP (every `OTEL_METRIC_EXPORT_INTERVAL` ms, the SDK's
setting). Each replica pushes as its own `service.instance.id` (its host name), so a
collector summing over replicas adds them up rather than keeping the last.
The SDK rather than prometheus-client alone: the OTLP path needs the SDK anyway (it already
exports the traces), and one set of instruments read twice cannot drift apart the way two sets
could.

Every request carries a W3C trace context: a valid `traceparent` from the client (the proxy's)
is continued, else a new trace is started. Its trace id is the request id: the server logs it in
one JSON line per request (the `memories.access` logger: method, route, status, duration) and
answers with it in `X-Request-Id`. No other log line carries it.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from . import __version__

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("memories.access")

# Request durations, in seconds: the deadlines (1 s for health, 3 s for the rest) fall on
# bucket bounds, so "cut at the deadline" and "just in time" are told apart.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

# `version-traceid-parentid-flags`, lowercase hex (W3C Trace Context, version 00).
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

# The route of a request that matched none: the path itself would let any client create
# metric series without bound.
UNMATCHED = "unmatched"


@dataclass(frozen=True)
class TraceContext:
    """This request's place in a trace: the trace it belongs to and the span the server opens."""

    trace_id: str
    span_id: str
    flags: str
    # The client sent a valid `traceparent` that this continues.
    continued: bool

    @staticmethod
    def of(header: str | None) -> TraceContext:
        """Continues the trace of a valid `traceparent`, or starts one; an invalid header (a
        wrong shape, or an all-zero id, which the standard forbids) is ignored, not trusted."""
        found = _TRACEPARENT.match(header.strip()) if header else None
        span_id = _nonzero_hex(8)
        if found and found[1] != "0" * 32 and found[2] != "0" * 16:
            return TraceContext(found[1], span_id, found[3], continued=True)
        return TraceContext(_nonzero_hex(16), span_id, "01", continued=False)

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def resource() -> Resource:
    """Who is reporting, for traces and pushed metrics: the service, its version, and this
    replica (its host name: the container's id under compose and swarm), which keeps the
    replicas' pushed series apart."""
    return Resource.create(
        {
            "service.name": "memories",
            "service.version": __version__,
            "service.instance.id": socket.gethostname(),
        }
    )


def _nonzero_hex(size: int) -> str:
    while True:
        value = secrets.token_hex(size)
        if value.strip("0"):
            return value


class Telemetry:
    """The server's instruments and the readers that take them out.

    `pool_stats` is read at each collection: a function returning psycopg_pool's
    `get_stats()` (its `pool_size`, `pool_available` and `requests_waiting`). So is
    `database_up`: 1 when the database answers a query within its short deadline, else 0.
    """

    def __init__(
        self,
        otlp: bool = False,
        revision: str = "unknown",
        push: MetricReader | None = None,
        reporter: Resource | None = None,
    ) -> None:
        """`otlp` pushes over OTLP/HTTP as the SDK's settings say; `push` is a reader of the
        caller's own to push with instead, and `reporter` who reports (else `resource()`)."""
        self.registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [
            PrometheusMetricReader(
                disable_target_info=True, scope_info_enabled=False, registry=self.registry
            )
        ]
        if push is not None:
            readers.append(push)
        elif otlp:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=reporter or resource(),
            views=[
                View(
                    instrument_name="memories.request.duration",
                    aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
                )
            ],
        )
        meter = self.provider.get_meter("memories", __version__)
        self.requests = meter.create_counter(
            "memories.requests", unit="1", description="requests answered, by route and status"
        )
        self.duration = meter.create_histogram(
            "memories.request.duration", unit="s", description="time to answer a request"
        )
        self.unavailable = meter.create_counter(
            "memories.requests.unavailable",
            unit="1",
            description="requests answered 503: the database missed their deadline or was away",
        )
        self.inserts = meter.create_counter("memories.inserts", unit="1", description="rows stored")
        self.searches = meter.create_counter(
            "memories.searches", unit="1", description="searches, by where the answer came from"
        )
        self.pool_stats: Callable[[], dict[str, int]] | None = None
        self.database_up: Callable[[], int] | None = None
        meter.create_observable_gauge(
            "memories.db.up",
            callbacks=[self._database_up],
            unit="1",
            description="1 when the database answered a query at this scrape, else 0",
        )
        meter.create_observable_gauge(
            "memories.db.pool.connections",
            callbacks=[self._pool_connections],
            unit="1",
            description="the database pool's connections, in use or idle",
        )
        meter.create_observable_gauge(
            "memories.db.pool.waiting",
            callbacks=[self._pool_waiting],
            unit="1",
            description="requests waiting for a database connection",
        )
        build = {"version": __version__, "revision": revision}
        meter.create_observable_gauge(
            "memories.build.info",
            callbacks=[lambda _options: [Observation(1, build)]],
            unit="1",
            description="the running build: its version and revision as labels, value 1",
        )

    def _pool_connections(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.pool_stats is None:
            return []
        stats = self.pool_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return [Observation(size - idle, {"state": "in_use"}), Observation(idle, {"state": "idle"})]

    def _database_up(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [] if self.database_up is None else [Observation(self.database_up())]

    def _pool_waiting(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.pool_stats is None:
            return []
        return [Observation(self.pool_stats().get("requests_waiting", 0))]

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format, as `GET /metrics` answers."""
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self.provider.shutdown(timeout_millis=2000)


def route_of(scope: Scope) -> str:
    """The route template a request matched (`/v1/memories/search`), never its raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class Observe:
    """ASGI middleware, outermost: times and counts every request (refusals by the key check
    and the body limit too), gives it a trace context, and logs its one access line."""

    def __init__(self, app: App, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        header = None
        for name, value in scope.get("headers", []):
            if name == b"traceparent":
                header = value.decode("latin-1")
                break
        context = TraceContext.of(header)
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", context.trace_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - started
            method, route = scope.get("method", "GET"), route_of(scope)
            self.telemetry.requests.add(
                1, {"method": method, "route": route, "status": str(status)}
            )
            self.telemetry.duration.record(elapsed, {"method": method, "route": route})
            access_log.info(
                "%s",
                json.dumps(
                    {
                        "request_id": context.trace_id,
                        "traceparent": context.traceparent(),
                        "continued": context.continued,
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                    separators=(",", ":"),
                ),
            )
