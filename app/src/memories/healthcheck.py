"""The container healthcheck: exit 0 when `/v1/health` answers 200, 1 otherwise.

It runs several times a second while a container starts, so it uses a bare socket rather than
urllib (which imports http, email and ssl) and stays around 20 ms of CPU.
"""

import os
import socket
import sys


def main() -> int:
    port = int(os.environ.get("PORT", "8283"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.settimeout(2)
            conn.sendall(b"GET /v1/health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
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
