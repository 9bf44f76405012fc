"""Start-up: read settings, wait for the database with a deadline, migrate it (dev) or check its
revision (prod), serve.

This replaces the old container `startup.sh` and its unbounded `sleep` loops: every wait has a
deadline, and a failure is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import logging
import sys
import threading

import uvicorn

from . import __version__, auth, config, db, migrate
from .api import create_app


class DrainingServer(uvicorn.Server):
    """Goes on serving for `delay` seconds after the first SIGTERM or SIGINT, then shuts down.

    Behind a proxy that resolves the server's name itself (nginx with `resolver ... valid=5s`,
    Docker's round-robin DNS), a replica that swarm is replacing has left DNS but may still be in
    a proxy's cache: closing at once would turn those requests into refused connections and
    connect timeouts. A second signal shuts down at once.
    """

    def __init__(self, config: uvicorn.Config, delay: float) -> None:
        super().__init__(config)
        self.delay = delay
        self.draining = False

    def handle_exit(self, sig: int, frame) -> None:  # type: ignore[no-untyped-def]
        if self.delay <= 0 or self.draining:
            super().handle_exit(sig, frame)
            return
        self.draining = True
        logging.getLogger("memories").info(
            "signal %d: serving for %gs more, then shutting down", sig, self.delay
        )
        timer = threading.Timer(self.delay, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # One JSON line per request on stdout, the message alone (memories.telemetry).
    access = logging.getLogger("memories.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    log = logging.getLogger("memories")
    try:
        settings = config.load()
        log.info(
            "memories %s: waiting up to %gs for the database at %s",
            __version__,
            settings.db_wait_timeout,
            db.describe(settings.database_url),
        )
        db.wait_until_ready(settings.database_url, settings.db_wait_timeout)
        if settings.migrate_on_start:
            done = migrate.upgrade(settings.database_url, "head", settings.embedding_dim)
            log.info("%s", done.describe())
        revision = migrate.check(settings.database_url)
        log.info("the database is at revision %s", revision)
        db.check_schema(settings.database_url, settings.embedding_dim)
    except (config.ConfigError, db.DatabaseError, migrate.MigrationError) as err:
        print(f"memories: error: {err}", file=sys.stderr)
        return 1
    try:
        app = create_app(settings)
    except auth.KeyFileError as err:
        print(f"memories: error: {err}", file=sys.stderr)
        return 1
    server_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=1,
        access_log=False,
        # A search's request line with a full-precision embedding of 1536 floats is about 40
        # KB, over h11's default 16 KB (the proxy allows 64 KB too).
        h11_max_incomplete_event_size=64 * 1024,
    )
    DrainingServer(server_config, settings.shutdown_delay).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
