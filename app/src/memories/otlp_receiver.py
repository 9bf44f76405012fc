"""An OTLP/HTTP receiver of metrics that Prometheus scrapes: the OTLP path of prod's monitoring.

Debian 13 builds Prometheus without its own OTLP receiver, and the upstream collector's image
cannot be had on every machine, so the servers' pushed metrics land here: `POST /v1/metrics`
takes an `ExportMetricsServiceRequest` in protobuf (gzip allowed), the way the OpenTelemetry
SDK's OTLP/HTTP exporter sends it, and `GET /metrics` shows the latest point of every series in
Prometheus's text format. The names are made the way the server's own `/metrics` makes them
(the SDK's Prometheus exporter's mapping: `memories.requests` becomes `memories_requests_total`),
so one query reads either path. Each series carries its sender as labels, as Prometheus's OTLP
translation does: `job` is the resource's `service.name` (after `service.namespace/`) and
`instance` its `service.instance.id`; a scrape without `honor_labels` keeps them as
`exported_job` and `exported_instance`.

A sender's data is hostile until checked: a body over 4 MiB is refused (413), one that does not
decode is refused (400), and points the receiver cannot show truthfully (delta temporality,
exponential histograms, summaries, a type other than an earlier one of the same name, more
series than the bound) are refused in the answer's `partial_success`, with the reason. A sender
that has not pushed for `--stale-after` seconds (a replica that was replaced) is forgotten.
A client that stalls is cut off: each request must arrive within 10 s, and at most 64
connections are served at once (one more gets 503 at once, without a thread).

It runs from an image of its own, the server Dockerfile's `otlp` target: the server's locked
environment (the OTLP protobuf classes, prometheus-client), this module and the healthcheck's,
and nothing else of the app, so it must import nothing else of it. Its healthcheck is
`python -m memories.healthcheck 4318 /healthz`, which imports none of those dependencies.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.exporter.prometheus._mapping import (
    map_unit,
    sanitize_attribute,
    sanitize_full_name,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import Metric as Family
from prometheus_client.registry import Collector

log = logging.getLogger("memories.otlp_receiver")

# The largest request body taken: a server's export is a few KB.
MAX_BODY = 4 * 1024 * 1024
# Series kept per sender, and senders kept: a sender cannot grow the receiver without bound.
MAX_SERIES = 10_000
MAX_SENDERS = 1_000
# Connections served at once, and how long one may take to send its request: a client that
# connects and stalls, or many of them, cannot hold the receiver's threads.
MAX_CONNECTIONS = 64
REQUEST_DEADLINE = 10.0
PROTOBUF = "application/x-protobuf"
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Histogram:
    """A cumulative explicit-bucket histogram point: `buckets` are `(upper bound, count up to
    it)` ending with `+Inf`, as Prometheus wants them."""

    buckets: tuple[tuple[str, int], ...]
    total: float


@dataclass
class Series:
    """One metric family's points from one sender."""

    kind: str  # counter, gauge or histogram
    description: str
    unit: str
    points: dict[Labels, float | Histogram] = field(default_factory=dict)


@dataclass
class Sender:
    last_seen: float
    families: dict[str, Series] = field(default_factory=dict)

    def series_count(self) -> int:
        return sum(len(f.points) for f in self.families.values())


def text_of(value: AnyValue) -> str:
    """An attribute's value as a label value (arrays and maps as their text form)."""
    which = value.WhichOneof("value")
    if which is None:
        return ""
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which in ("string_value", "int_value", "double_value"):
        return str(getattr(value, which))
    if which == "bytes_value":
        return value.bytes_value.hex()
    return str(getattr(value, which)).replace("\n", " ").strip()


def attributes(pairs: Iterator[KeyValue] | list[KeyValue]) -> dict[str, str]:
    return {pair.key: text_of(pair.value) for pair in pairs}


def sender_of(resource: dict[str, str]) -> tuple[str, str]:
    """The `job` and `instance` of a resource, as Prometheus's OTLP translation names them."""
    name = resource.get("service.name", "unknown_service")
    namespace = resource.get("service.namespace")
    job = f"{namespace}/{name}" if namespace else name
    return job, resource.get("service.instance.id", "")


class Refusal(Exception):
    """Points of one metric that are not kept, and why."""

    def __init__(self, points: int, why: str) -> None:
        super().__init__(why)
        self.points = points


def _number(point: object) -> float:
    which = point.WhichOneof("value")  # type: ignore[attr-defined]
    return float(getattr(point, which)) if which else 0.0


def _labels(sender: tuple[str, str], point_attributes: list[KeyValue]) -> Labels:
    labels = {sanitize_attribute(k): v for k, v in attributes(point_attributes).items()}
    labels["job"], labels["instance"] = sender
    return tuple(sorted(labels.items()))


def series_of(metric: Metric, sender: tuple[str, str]) -> tuple[str, Series]:
    """The family name and points of one metric, made as the server's `/metrics` makes them;
    a metric the receiver cannot show truthfully is refused."""
    name = sanitize_full_name(metric.name)
    if not name:
        raise Refusal(0, "a metric without a name")
    unit = map_unit(metric.unit or "")
    which = metric.WhichOneof("data")
    if which == "gauge":
        points = metric.gauge.data_points
        series = Series("gauge", metric.description, unit)
        for p in points:
            series.points[_labels(sender, list(p.attributes))] = _number(p)
    elif which == "sum":
        points = metric.sum.data_points
        if metric.sum.aggregation_temporality != CUMULATIVE:
            raise Refusal(len(points), f"{metric.name}: only cumulative sums are taken")
        kind = "counter" if metric.sum.is_monotonic else "gauge"
        series = Series(kind, metric.description, unit)
        for p in points:
            series.points[_labels(sender, list(p.attributes))] = _number(p)
    elif which == "histogram":
        data = metric.histogram
        if data.aggregation_temporality != CUMULATIVE:
            raise Refusal(
                len(data.data_points), f"{metric.name}: only cumulative histograms are taken"
            )
        series = Series("histogram", metric.description, unit)
        for p in data.data_points:
            bounds = list(p.explicit_bounds)
            if len(p.bucket_counts) != len(bounds) + 1:
                raise Refusal(
                    len(data.data_points),
                    f"{metric.name}: {len(p.bucket_counts)} bucket counts for {len(bounds)} bounds",
                )
            running, buckets = 0, []
            for bound, count in zip([*map(str, bounds), "+Inf"], p.bucket_counts, strict=True):
                running += count
                buckets.append((bound, running))
            if running != p.count:
                raise Refusal(
                    len(data.data_points),
                    f"{metric.name}: buckets hold {running} of {p.count} observations",
                )
            series.points[_labels(sender, list(p.attributes))] = Histogram(tuple(buckets), p.sum)
    else:
        count = len(getattr(metric, which).data_points) if which else 0
        raise Refusal(count, f"{metric.name}: {which or 'no data'} is not taken")
    return name, series


class Store(Collector):
    """The latest points of every sender, shown to Prometheus as one collector."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.lock = threading.Lock()
        self.senders: dict[tuple[str, str], Sender] = {}

    def take(self, request: ExportMetricsServiceRequest, now: float) -> tuple[int, list[str]]:
        """Keeps what `request` says; returns the points refused and why."""
        refused, reasons = 0, []
        with self.lock:
            self._forget_stale(now)
            for resource_metrics in request.resource_metrics:
                key = sender_of(attributes(list(resource_metrics.resource.attributes)))
                sender = self.senders.get(key)
                if sender is None:
                    if len(self.senders) >= MAX_SENDERS:
                        points = sum(
                            _points(m) for s in resource_metrics.scope_metrics for m in s.metrics
                        )
                        refused += points
                        reasons.append(f"more than {MAX_SENDERS} senders")
                        continue
                    sender = self.senders[key] = Sender(now)
                sender.last_seen = now
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        try:
                            name, series = series_of(metric, key)
                            self._check_type(key, name, series)
                            kept = sender.families.get(name)
                            growth = len(series.points) - (len(kept.points) if kept else 0)
                            if sender.series_count() + growth > MAX_SERIES:
                                raise Refusal(len(series.points), f"more than {MAX_SERIES} series")
                            sender.families[name] = series
                        except Refusal as refusal:
                            refused += refusal.points
                            reasons.append(str(refusal))
        return refused, reasons

    def _check_type(self, key: tuple[str, str], name: str, series: Series) -> None:
        """Refuses a family that another sender sends as another type or unit: Prometheus
        shows one type per name. A sender may change its own."""
        for other_key, other in self.senders.items():
            known = other.families.get(name)
            if other_key == key or known is None:
                continue
            if (known.kind, known.unit) != (series.kind, series.unit):
                raise Refusal(
                    len(series.points),
                    f"{name}: a {series.kind} in {series.unit or 'no unit'}, "
                    f"but it is a {known.kind} in {known.unit or 'no unit'}",
                )

    def _forget_stale(self, now: float) -> None:
        for key in [k for k, s in self.senders.items() if now - s.last_seen > self.stale_after]:
            log.info("forgetting %s/%s: nothing pushed for %gs", *key, self.stale_after)
            del self.senders[key]

    def collect(self) -> Iterator[Family]:
        with self.lock:
            self._forget_stale(time.monotonic())
            merged: dict[str, list[Series]] = {}
            for sender in self.senders.values():
                for name, series in sender.families.items():
                    merged.setdefault(name, []).append(series)
            families = []
            for name, parts in sorted(merged.items()):
                families.append(_family(name, parts))
        yield from families


def _points(metric: Metric) -> int:
    which = metric.WhichOneof("data")
    return len(getattr(metric, which).data_points) if which else 0


def _family(name: str, parts: list[Series]) -> Family:
    """One Prometheus family from every sender's points of it (their labels keep them apart)."""
    first = parts[0]
    keys = sorted({k for s in parts for labels in s.points for k, _ in labels})
    points = [(labels, value) for s in parts for labels, value in s.points.items()]

    def values(labels: Labels) -> list[str]:
        return [dict(labels).get(k, "") for k in keys]

    if first.kind == "histogram":
        histogram = HistogramMetricFamily(name, first.description, labels=keys, unit=first.unit)
        for labels, value in points:
            if isinstance(value, Histogram):
                histogram.add_metric(values(labels), list(value.buckets), value.total)
        return histogram
    factory = CounterMetricFamily if first.kind == "counter" else GaugeMetricFamily
    family = factory(name, first.description, labels=keys, unit=first.unit)
    for labels, value in points:
        if not isinstance(value, Histogram):
            family.add_metric(values(labels), value)
    return family


class Handler(BaseHTTPRequestHandler):
    """`POST /v1/metrics`, `GET /metrics` and `GET /healthz`; another path is 404, another
    method 501 (the standard library's answer)."""

    store: Store
    registry: CollectorRegistry
    server_version = "memories-otlp-receiver"
    # Each read from the socket waits at most this long (the standard library applies it in
    # `setup`); the body's whole read has `deadline` on top.
    timeout = REQUEST_DEADLINE
    deadline = REQUEST_DEADLINE

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._answer(200, generate_latest(self.registry), "text/plain; version=0.0.4")
        elif self.path == "/healthz":
            self._answer(200, b"ok\n", "text/plain")
        else:
            self._answer(404, b"not found: POST /v1/metrics, GET /metrics or /healthz\n")

    def do_POST(self) -> None:
        if self.path != "/v1/metrics":
            self._answer(404, b"this receiver takes metrics only: POST /v1/metrics\n")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._answer(411, b"a Content-Length is required\n")
            return
        if int(length) > MAX_BODY:
            self._answer(413, f"the body is over {MAX_BODY} bytes\n".encode())
            self.close_connection = True
            return
        body = self._read_body(int(length))
        if body is None:
            self._answer(408, b"the body did not arrive in time\n")
            self.close_connection = True
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type != PROTOBUF:
            self._answer(415, f"not {PROTOBUF}: {content_type or 'no type'}\n".encode())
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = _gunzip(body)
            elif encoding != "identity":
                self._answer(415, f"not gzip or identity: {encoding}\n".encode())
                return
            request = ExportMetricsServiceRequest.FromString(body)
        except (DecodeError, OSError, EOFError) as err:
            self._answer(400, f"not an OTLP metrics request: {err}\n".encode())
            return
        refused, reasons = self.store.take(request, time.monotonic())
        answer = ExportMetricsServiceResponse()
        if refused or reasons:
            answer.partial_success.rejected_data_points = refused
            answer.partial_success.error_message = "; ".join(sorted(set(reasons)))[:1000]
            log.warning("refused %d points: %s", refused, answer.partial_success.error_message)
        self._answer(200, answer.SerializeToString(), PROTOBUF)

    def _read_body(self, length: int) -> bytes | None:
        """The body's `length` bytes, or `None` when they do not all arrive within `deadline`
        (a client that sends a byte at a time never resets it)."""
        ends = time.monotonic() + self.deadline
        chunks: list[bytes] = []
        left = length
        while left > 0:
            if time.monotonic() > ends:
                return None
            try:
                chunk = self.rfile.read1(min(left, 65536))
            except TimeoutError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        if self.path != "/healthz":
            log.debug(format, *args)


def _gunzip(body: bytes) -> bytes:
    """Unzips at most `MAX_BODY` bytes: a small body that unzips to gigabytes is refused."""
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as stream:
        data = stream.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise OSError(f"it unzips to over {MAX_BODY} bytes")
    return data


class Server(ThreadingHTTPServer):
    """Serves each connection on a thread of its own, at most `MAX_CONNECTIONS` at once: one
    more is answered 503 at once and closed, without a thread."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        self.slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if not self.slots.acquire(blocking=False):
            log.warning("over %d connections: refused %s", self.max_connections, client_address)
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):  # type: ignore[no-untyped-def]
        """A client that left before its answer was written is its own business: one debug
        line, not socketserver's traceback on stderr. Anything else is logged with its
        traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("%s left before its answer: %s", client_address, error)
        else:
            log.exception("while serving %s", client_address)


def serve(
    port: int,
    stale_after: float,
    deadline: float = REQUEST_DEADLINE,
    max_connections: int = MAX_CONNECTIONS,
) -> Server:
    """A receiver on `port` (0: any free one), not yet serving; see `Handler` and `Server`."""
    store = Store(stale_after)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(store)
    bound = {"store": store, "registry": registry, "timeout": deadline, "deadline": deadline}
    handler = type("BoundHandler", (Handler,), bound)
    server_class = type("BoundServer", (Server,), {"max_connections": max_connections})
    return server_class(("0.0.0.0", port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memories.otlp_receiver",
        description="Take OTLP/HTTP metrics and show them for Prometheus to scrape.",
    )
    parser.add_argument("--port", type=int, default=4318, help="the port (default 4318)")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=300.0,
        help="forget a sender that has not pushed for this many seconds (default 300)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = serve(args.port, args.stale_after)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("taking OTLP metrics on :%d/v1/metrics; Prometheus scrapes /metrics", args.port)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
