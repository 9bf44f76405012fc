"""The container healthcheck: exit 0 when `/v1/health` answers 200, 1 otherwise.

`python -m memories.healthcheck [PORT [PATH]]` asks another port and path instead (the OTLP
receiver's is `4318 /healthz`); the port defaults to `PORT`, else 8283.

It runs every second while a container starts, so it uses a bare socket rather than urllib
(which imports http, email and ssl) and stays around 20 ms of CPU; importing the receiver
itself would cost about ten times that.
"""

import os
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 2 or (args and not args[0].isdigit()) or (len(args) == 2 and args[1][:1] != "/"):
        print("usage: python -m memories.healthcheck [PORT [PATH]]", file=sys.stderr)
        return 2
    port = int(args[0]) if args else int(os.environ.get("PORT", "8283"))
    path = args[1] if len(args) == 2 else "/v1/health"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.settimeout(2)
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head = conn.recv(64)
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
