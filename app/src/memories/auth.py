"""API keys: with `API_KEYS_FILE` set, every request but `GET /v1/health` needs
`Authorization: Bearer KEY` with a key whose SHA-256 the file lists (`cargo xtask prod keys`
writes it: `NAME sha256:HEX [CREATED]` per line). The file `off` serves without keys.

Only hashes are kept, and a key is compared with every hash in constant time. The file is
read again when it changes (checked at most once a second), so keys rotate with no restart; a
file that is empty or does not parse (caught half-written) keeps the keys read before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time

log = logging.getLogger("memories")

# `/metrics` is for Prometheus on the stack's network; the proxy never forwards it.
OPEN_PATHS = frozenset({"/v1/health", "/metrics"})


class KeyFileError(Exception):
    """The key file cannot be read or is not a key list."""


def parse(text: str, what: str) -> list[bytes] | None:
    """The SHA-256 digests the key file lists, or None for `off` (no keys needed)."""
    if text.strip() == "off":
        return None
    digests = []
    names = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) not in (2, 3) or not fields[1].startswith("sha256:"):
            raise KeyFileError(f"{what}, line {number}: expected `NAME sha256:HEX [CREATED]`")
        hexdigest = fields[1].removeprefix("sha256:")
        if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
            raise KeyFileError(f"{what}, line {number}: the hash is not 64 lowercase hex digits")
        if fields[0] in names:
            raise KeyFileError(f"{what}, line {number}: {fields[0]} is listed twice")
        names.add(fields[0])
        digests.append(bytes.fromhex(hexdigest))
    return digests


class Keys:
    """The key file, read again when its size or modification time changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.checked = 0.0
        self.stamp: tuple[int, int, int] | None = None
        self.digests, self.stamp = self._read()
        if self.digests is not None and not self.digests:
            raise KeyFileError(
                f"API_KEYS_FILE={path} holds no key: add one with `cargo xtask prod keys create`"
            )

    def _read(self) -> tuple[list[bytes] | None, tuple[int, int, int]]:
        try:
            info = os.stat(self.path)
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as err:
            raise KeyFileError(f"API_KEYS_FILE={self.path} cannot be read: {err}") from None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if not text.strip():
            raise KeyFileError(f"API_KEYS_FILE={self.path} is empty")
        return parse(text, f"API_KEYS_FILE={self.path}"), stamp

    def current(self) -> list[bytes] | None:
        """The digests now (None: no keys needed), reloading a changed file once a second."""
        now = time.monotonic()
        if now - self.checked < 1.0:
            return self.digests
        with self.lock:
            if now - self.checked < 1.0:
                return self.digests
            self.checked = now
            try:
                info = os.stat(self.path)
                if (info.st_mtime_ns, info.st_size, info.st_ino) == self.stamp:
                    return self.digests
                digests, stamp = self._read()
            except KeyFileError as err:
                log.error("keeping the API keys read before: %s", err)
                return self.digests
            count = "no keys needed" if digests is None else f"{len(digests)} keys"
            log.info("API keys reloaded from %s: %s", self.path, count)
            self.digests, self.stamp = digests, stamp
            return digests

    def allows(self, key: str) -> bool:
        digests = self.current()
        if digests is None:
            return True
        offered = hashlib.sha256(key.encode()).digest()
        # Every hash is compared, whatever matched: the time says nothing about which.
        found = False
        for digest in digests:
            found |= hmac.compare_digest(offered, digest)
        return found

    @property
    def required(self) -> bool:
        return self.current() is not None


class RequireKey:
    """ASGI middleware: 401 with `WWW-Authenticate` for a request without a valid key."""

    def __init__(self, app, keys: Keys) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or not self.keys.required:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() == "bearer" and key.strip() and self.keys.allows(key.strip()):
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="memories"'
        if header:
            challenge += ', error="invalid_token"'
        await send_detail(
            send,
            401,
            "a valid API key is required: send `Authorization: Bearer KEY`",
            [(b"www-authenticate", challenge.encode())],
        )


async def send_detail(send, status: int, detail: str, headers: list) -> None:  # type: ignore[no-untyped-def]
    """Answers from ASGI middleware in the API's error shape: `{"detail": ...}` as JSON."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
