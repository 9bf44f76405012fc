"""The container healthcheck: exit 0 when `/v1/health` answers 200, 1 otherwise.

`python -m memories.healthcheck [PORT [PATH]]` asks another port and path instead (the OTLP
receiver's is `4318 /healthz`); the port defaults to `PORT`, else 8283.

It runs every second while a container starts, so it uses a bare socket rather than urllib
(which imports http, email and ssl) and stays around 20 ms of CPU; importing the receiver
itself would cost about ten times that.

The whole check, connection and answer, gets `TIMEOUT` seconds: a server that answers a byte
at a time, or never closes, is unhealthy then, not a check that never ends.
"""

import os
import socket
import sys
import time

TIMEOUT = 2.0


def read_answer(conn: socket.socket, deadline: float, limit: int = 65536) -> bytes:
    """Reads the answer to its end (an HTTP/1.0 server closes after it), at most `limit` bytes,
    until `deadline` (a `time.monotonic()` value), after which it raises `TimeoutError`.

    Closing with the answer half read would make the kernel reset the connection, and the
    server would see a client that vanished in the middle of its answer."""
    answer = b""
    while len(answer) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {TIMEOUT:g} s")
        conn.settimeout(left)
        chunk = conn.recv(limit - len(answer))
        if not chunk:
            break
        answer += chunk
    return answer


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 2 or (args and not args[0].isdigit()) or (len(args) == 2 and args[1][:1] != "/"):
        print("usage: python -m memories.healthcheck [PORT [PATH]]", file=sys.stderr)
        return 2
    port = int(args[0]) if args else int(os.environ.get("PORT", "8283"))
    path = args[1] if len(args) == 2 else "/v1/health"
    deadline = time.monotonic() + TIMEOUT
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
            conn.sendall(
                f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            head = read_answer(conn, deadline)
    except OSError as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    parts = head.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"200":
        print(f"unhealthy: {head[:40]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
