"""The OTLP receiver on a real socket, fed by the SDK's own OTLP/HTTP exporter: what the server
pushes reads like what it shows on `/metrics` (same names, same values, its sender as `job` and
`instance`), replicas stay apart, a sender that stopped pushing is forgotten, and every hostile
body is refused with the right status or in `partial_success`."""

from __future__ import annotations

import gzip
import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families

from memories import healthcheck, otlp_receiver
from memories.telemetry import Telemetry

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]
PROTOBUF = {"Content-Type": "application/x-protobuf"}


@pytest.fixture
def receiver() -> Iterator[int]:
    server = otlp_receiver.serve(0, stale_after=300)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def call(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request(method, path, body, headers or {})
    answer = connection.getresponse()
    data = answer.read()
    connection.close()
    return answer.status, data


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def replica(port: int, instance: str) -> tuple[Telemetry, PeriodicExportingMetricReader]:
    """A server's instruments, pushed by hand (`force_flush`) as replica `instance` to the
    receiver on `port`."""
    exporter = OTLPMetricExporter(endpoint=f"http://127.0.0.1:{port}/v1/metrics")
    push = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    reporter = Resource.create({"service.name": "memories", "service.instance.id": instance})
    return Telemetry(push=push, reporter=reporter), push


def answered(data: bytes) -> ExportMetricsServiceResponse:
    return ExportMetricsServiceResponse.FromString(data)


def test_pushed_metrics_read_like_the_servers_own(receiver: int) -> None:
    telemetry, push = replica(receiver, "replica-1")
    telemetry.database_up = lambda: 1
    for code in ("200", "200", "422"):
        telemetry.requests.add(1, {"method": "GET", "route": "/v1/version", "status": code})
    telemetry.duration.record(0.02, {"method": "GET", "route": "/v1/version"})
    telemetry.duration.record(2.5, {"method": "GET", "route": "/v1/version"})
    assert push.force_flush()

    status, text = call(receiver, "GET", "/metrics")
    assert status == 200
    received = samples(text.decode())
    own = samples(telemetry.exposition().decode())
    compared = 0
    sender = {("job", "memories"), ("instance", "replica-1")}
    for (name, labels), value in own.items():
        if name.startswith(("memories_requests", "memories_request_duration", "memories_db_up")):
            assert received.get((name, labels | sender)) == value, (name, sorted(labels))
            compared += 1
    # Two counts; 13 buckets, a sum and a count; the database's gauge.
    assert compared == 18, compared
    count = frozenset({("method", "GET"), ("route", "/v1/version"), ("status", "422")} | sender)
    assert received[("memories_requests_total", count)] == 1
    telemetry.shutdown()


def test_replicas_stay_apart_and_sum_up(receiver: int) -> None:
    pushes = []
    for instance, times in (("a", 3), ("b", 4)):
        telemetry, push = replica(receiver, instance)
        for _ in range(times):
            telemetry.requests.add(1, {"method": "GET", "route": "/", "status": "200"})
        assert push.force_flush()
        pushes.append(telemetry)
    # A second push of the same replica replaces its points (they are cumulative).
    pushes[0].requests.add(1, {"method": "GET", "route": "/", "status": "200"})
    assert pushes[0].provider.force_flush()
    _, text = call(receiver, "GET", "/metrics")
    by_instance = {
        dict(labels)["instance"]: value
        for (name, labels), value in samples(text.decode()).items()
        if name == "memories_requests_total"
    }
    assert by_instance == {"a": 4, "b": 4}
    for telemetry in pushes:
        telemetry.shutdown()


def test_a_sender_that_stops_pushing_is_forgotten() -> None:
    store = otlp_receiver.Store(stale_after=10)
    request = gauge_request("old", 1.0)
    assert store.take(request, now=100.0) == (0, [])
    assert store.take(gauge_request("new", 2.0), now=105.0) == (0, [])
    assert set(store.senders) == {("memories", "old"), ("memories", "new")}
    store.take(gauge_request("new", 3.0), now=111.0)
    assert set(store.senders) == {("memories", "new")}


def gauge_request(
    instance: str, value: float, name: str = "memories.db.up"
) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    for key, text in (("service.name", "memories"), ("service.instance.id", instance)):
        attribute = resource.resource.attributes.add()
        attribute.key, attribute.value.string_value = key, text
    metric = resource.scope_metrics.add().metrics.add()
    metric.name, metric.unit = name, "1"
    metric.gauge.data_points.add().as_double = value
    return request


def test_hostile_bodies_are_refused(receiver: int) -> None:
    good = gauge_request("x", 1.0).SerializeToString()
    assert call(receiver, "POST", "/v1/metrics", good, PROTOBUF)[0] == 200
    status, _ = call(receiver, "POST", "/v1/metrics", b"\xff\xff\xff", PROTOBUF)
    assert status == 400, "not protobuf"
    status, _ = call(receiver, "POST", "/v1/metrics", good, {"Content-Type": "application/json"})
    assert status == 415, "JSON is not taken"
    big = {**PROTOBUF, "Content-Length": str(otlp_receiver.MAX_BODY + 1)}
    connection = http.client.HTTPConnection("127.0.0.1", receiver, timeout=5)
    connection.putrequest("POST", "/v1/metrics")
    for key, value in big.items():
        connection.putheader(key, value)
    connection.endheaders()
    assert connection.getresponse().status == 413, "a body over the limit is not read"
    connection.close()
    bomb = gzip.compress(b"\0" * (otlp_receiver.MAX_BODY + 1))
    status, data = call(
        receiver, "POST", "/v1/metrics", bomb, {**PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert (status, b"unzips to over" in data) == (400, True), data
    zipped = gzip.compress(good)
    headers = {**PROTOBUF, "Content-Encoding": "gzip"}
    assert call(receiver, "POST", "/v1/metrics", zipped, headers)[0] == 200, "gzip is taken"
    assert call(receiver, "POST", "/v1/traces", good, PROTOBUF)[0] == 404, "metrics only"
    assert call(receiver, "GET", "/healthz")[0] == 200


def test_points_it_cannot_show_truthfully_are_refused_in_partial_success(receiver: int) -> None:
    request = gauge_request("x", 1.0)
    metrics = request.resource_metrics[0].scope_metrics[0].metrics
    delta = metrics.add()
    delta.name = "memories.requests"
    delta.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    delta.sum.is_monotonic = True
    delta.sum.data_points.add().as_int = 5
    broken = metrics.add()
    broken.name = "memories.request.duration"
    broken.histogram.aggregation_temporality = (
        AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    point = broken.histogram.data_points.add()
    point.explicit_bounds.extend([1.0, 2.0])
    point.bucket_counts.extend([1, 1])
    point.count = 2
    status, data = call(receiver, "POST", "/v1/metrics", request.SerializeToString(), PROTOBUF)
    assert status == 200
    partial = answered(data).partial_success
    assert partial.rejected_data_points == 2
    assert "only cumulative sums" in partial.error_message
    assert "2 bucket counts for 2 bounds" in partial.error_message
    # Another sender's gauge of that name as a counter: one type per name.
    other = ExportMetricsServiceRequest()
    other.CopyFrom(gauge_request("y", 1.0))
    counter = other.resource_metrics[0].scope_metrics[0].metrics[0]
    counter.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    counter.sum.is_monotonic = True
    counter.sum.data_points.add().as_int = 1
    status, data = call(receiver, "POST", "/v1/metrics", other.SerializeToString(), PROTOBUF)
    assert "but it is a gauge" in answered(data).partial_success.error_message
    _, text = call(receiver, "GET", "/metrics")
    names = {name for name, _ in samples(text.decode())}
    assert names == {"memories_db_up"}, "only what was taken is shown"


def serving(server: otlp_receiver.Server) -> int:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def test_a_client_that_stalls_is_cut_off() -> None:
    server = otlp_receiver.serve(0, stale_after=300, deadline=0.5)
    port = serving(server)
    try:
        # Connected, nothing sent: closed after the deadline.
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        assert silent.recv(1024) == b""
        assert time.monotonic() - started < 4
        silent.close()
        # Headers sent, the body dribbled a byte at a time: 408 once the deadline has passed,
        # though no single read waited that long.
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(
            b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\n"
        )
        answer = b""
        for _ in range(40):
            try:
                slow.sendall(b"\0")
            except OSError:
                break
            time.sleep(0.1)
            slow.setblocking(False)
            try:
                answer += slow.recv(1024)
            except BlockingIOError:
                pass
            slow.setblocking(True)
            if answer:
                break
        assert answer.startswith(b"HTTP/1.0 408"), answer
        slow.close()
        # The receiver still serves.
        assert call(port, "GET", "/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_connections_over_the_bound_get_503_without_a_thread() -> None:
    server = otlp_receiver.serve(0, stale_after=300, deadline=30, max_connections=2)
    port = serving(server)
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        # The two idle connections hold both slots: a third is refused at once.
        time.sleep(0.2)
        status, _ = call(port, "GET", "/healthz")
        assert status == 503
        for connection in held:
            connection.close()
        # Their threads see the close and give their slots back.
        for _ in range(50):
            if call(port, "GET", "/healthz")[0] == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the slots were never given back")
    finally:
        server.shutdown()
        server.server_close()


def test_senders_and_series_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_receiver, "MAX_SENDERS", 2)
    monkeypatch.setattr(otlp_receiver, "MAX_SERIES", 2)
    store = otlp_receiver.Store(stale_after=300)
    assert store.take(gauge_request("a", 1.0), now=1.0) == (0, [])
    assert store.take(gauge_request("b", 1.0), now=1.0) == (0, [])
    # A third sender is refused whole, the two kept stay.
    assert store.take(gauge_request("c", 1.0), now=1.0) == (1, ["more than 2 senders"])
    assert set(store.senders) == {("memories", "a"), ("memories", "b")}
    # A kept sender may send the series it has again and grow to the bound, not past it.
    assert store.take(gauge_request("a", 2.0), now=2.0) == (0, [])
    assert store.take(gauge_request("a", 1.0, name="memories.other"), now=2.0) == (0, [])
    third = gauge_request("a", 1.0, name="memories.third")
    assert store.take(third, now=2.0) == (1, ["more than 2 series"])
    assert sorted(store.senders[("memories", "a")].families) == [
        "memories_db_up",
        "memories_other",
    ]
    # A forgotten sender's place is free again.
    assert store.take(gauge_request("c", 1.0), now=400.0) == (0, [])


def test_the_healthcheck_asks_the_receiver_without_importing_it(
    receiver: int, caplog: pytest.LogCaptureFixture
) -> None:
    # It reads each answer to its end, so the receiver never sees it leave halfway.
    caplog.set_level("DEBUG", logger=otlp_receiver.log.name)
    for _ in range(10):
        assert healthcheck.main([str(receiver), "/healthz"]) == 0
    assert not [r for r in caplog.records if "left before its answer" in r.getMessage()]
    # Another path answers 404: unhealthy, as is a port nobody listens on.
    assert healthcheck.main([str(receiver), "/v1/health"]) == 1
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        assert healthcheck.main([str(unused.getsockname()[1]), "/healthz"]) == 1
    assert healthcheck.main(["4318", "healthz"]) == 2
    assert healthcheck.main(["port"]) == 2
    # It stays light: the receiver's protobuf classes are not among what it imports.
    imported = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "memories.healthcheck",
            str(receiver),
            "/healthz",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "protobuf" not in imported and "opentelemetry" not in imported, imported


def test_a_client_that_leaves_before_its_answer_leaves_no_traceback(
    receiver: int, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A client that asks and closes at once, unread data pending: the kernel resets the
    # connection under the receiver's answer.
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", receiver), timeout=5) as rude:
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            rude.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    assert call(receiver, "GET", "/healthz")[0] == 200
    assert "Traceback" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
