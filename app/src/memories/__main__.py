"""Start-up: read settings, wait for the database with a deadline, apply the schema, serve.

This replaces the old container `startup.sh` and its unbounded `sleep` loops: every wait has a
deadline, and a failure is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from . import __version__, config, db
from .api import create_app


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load()
        logging.getLogger("memories").info(
            "memories %s: waiting up to %gs for the database at %s",
            __version__,
            settings.db_wait_timeout,
            db.describe(settings.database_url),
        )
        db.wait_until_ready(settings.database_url, settings.db_wait_timeout)
        db.apply_schema(settings.database_url, settings.embedding_dim)
    except (config.ConfigError, db.DatabaseError) as err:
        print(f"memories: error: {err}", file=sys.stderr)
        return 1
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
