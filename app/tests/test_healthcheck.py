"""The healthcheck against servers that lie: one that answers 200 a byte at a time and never
finishes, one that sends its status line and then nothing, one that never answers. Each is
unhealthy within the check's time, where reading to the end would wait for as long as the
server cares to keep it (each of these fakes gives up after 30 s)."""

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from memories import healthcheck

# How long a fake keeps a connection before it gives up: far beyond the check's time.
FAKE_LIFE = 30.0


def trickle(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    end = time.monotonic() + FAKE_LIFE
    while time.monotonic() < end:
        conn.sendall(b"o")
        time.sleep(0.1)


def silent(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n{}")
    time.sleep(FAKE_LIFE)


def mute(conn: socket.socket) -> None:
    time.sleep(FAKE_LIFE)


def honest(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}")


def serve(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(4096)
            try:
                answer(conn)
            except OSError:
                pass  # The check left, as it should.

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


@pytest.fixture(params=[trickle, silent, mute], ids=["trickle", "silent", "mute"])
def liar(request: pytest.FixtureRequest) -> Iterator[int]:
    yield from serve(request.param)


def test_a_server_that_never_finishes_its_answer_is_unhealthy_in_time(
    liar: int, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert healthcheck.main([str(liar)]) == 1
    took = time.monotonic() - started
    # The check's own time, with room for a loaded machine; the fake lasts 30 s.
    assert took < healthcheck.TIMEOUT + 3, took
    assert "unhealthy" in capsys.readouterr().err


def test_an_honest_server_is_healthy() -> None:
    for port in serve(honest):
        assert healthcheck.main([str(port)]) == 0
