"""The schema's versions: applying Alembic's revisions (`memories/migrations/versions`) under
an advisory lock in one transaction, what a database is at, and the start-up check that refuses
a database this server does not know.

    python -m memories.migrate upgrade [--to REV] [--sql] [--json]
    python -m memories.migrate current [--json]
    python -m memories.migrate history [--json]

The connection settings are the server's (`DATABASE_URL` or the `POSTGRES_*` parts). `upgrade
--sql` needs no database: it prints the SQL that an upgrade from nothing to REV runs (Alembic's
offline mode). Alembic and SQLAlchemy are imported only to migrate, so a server that only
checks starts without them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from . import config, db

VERSIONS = Path(__file__).with_name("migrations") / "versions"

# The oldest revision this server's code works with: a database older than this must be
# migrated first. Raise it in the release that stops supporting the old schema (the contract
# step of an expand and contract change), never before the migration that makes it true.
REQUIRES = "0002"

# The revision that stands for the schema every database had before migrations.
BASELINE = "0001"

# Serialises migrations: two deploys never migrate at once ("memomigr").
MIGRATION_LOCK = 0x6D656D6F6D696772

# How long an upgrade waits for another one to finish (it then finds nothing left to do).
LOCK_WAIT = "120s"

# How long one statement of a revision may wait for a table lock before the migration fails.
DDL_LOCK_WAIT = "10s"


class MigrationError(Exception):
    """A migration failed, or the database is at a revision this server cannot use."""


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    message: str
    file: str


def revisions() -> list[Revision]:
    """Every revision, oldest first, read from the files without importing Alembic."""
    found: dict[str, Revision] = {}
    for path in sorted(VERSIONS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        values = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    values[target.id] = ast.literal_eval(node.value)
        if "revision" not in values:
            raise MigrationError(f"{path.name} has no `revision = ...` line")
        doc = ast.get_docstring(tree) or ""
        found[values["revision"]] = Revision(
            values["revision"],
            values.get("down_revision"),
            " ".join(doc.split("\n\n")[0].split()),
            path.name,
        )
    ordered: list[Revision] = []
    parent = None
    while True:
        children = [r for r in found.values() if r.down_revision == parent]
        if not children:
            break
        if len(children) > 1:
            names = ", ".join(sorted(c.revision for c in children))
            raise MigrationError(
                f"revisions {names} all follow {parent or 'nothing'}: the history must be one "
                "line; point one of them at the other"
            )
        ordered.append(children[0])
        parent = children[0].revision
    if len(ordered) != len(found):
        stray = sorted(set(found) - {r.revision for r in ordered})
        raise MigrationError(f"revisions {', '.join(stray)} are not reachable from the baseline")
    return ordered


def head() -> str:
    return revisions()[-1].revision


def current(conn: psycopg.Connection) -> str | None:
    """The revision the database is at, or None when it has none recorded."""
    row = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _predates_migrations(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('memories') IS NOT NULL").fetchone()
    return bool(row and row[0])


def check(url: str) -> str:
    """Returns the database's revision, or raises unless this server can use it: recorded,
    known to this server, and not older than `REQUIRES`."""
    known = [r.revision for r in revisions()]
    with psycopg.connect(url, connect_timeout=5) as conn:
        at = current(conn)
        if at is None:
            if _predates_migrations(conn):
                raise MigrationError(
                    "the database predates migrations (no alembic_version): `cargo xtask prod "
                    "up` and `prod deploy` stamp it with the baseline "
                    f"{BASELINE} before any server starts (`cargo xtask db migrate` on the dev "
                    "stack)"
                )
            raise MigrationError(
                "the database has no schema yet: `cargo xtask prod up` and `prod deploy` migrate "
                "it before any server starts (`cargo xtask db migrate` on the dev stack)"
            )
    if at not in known:
        raise MigrationError(
            f"the database is at revision {at}, which this server does not know (it knows "
            f"{known[0]} to {known[-1]}): deploy the release that migrated it, or a newer one"
        )
    if known.index(at) < known.index(REQUIRES):
        raise MigrationError(
            f"the database is at revision {at}, older than {REQUIRES} that this server needs: "
            "run the migrations first (`cargo xtask db migrate`, or `cargo xtask prod deploy`)"
        )
    return at


def _alembic_config(url: str, dim: int):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(VERSIONS.parent))
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgres", "postgresql"):
        raise MigrationError(f"DATABASE_URL must start with postgresql://, not {scheme}://")
    cfg.set_main_option("sqlalchemy.url", f"postgresql+psycopg://{rest}".replace("%", "%%"))
    cfg.attributes["embedding_dim"] = dim
    return cfg


@dataclass(frozen=True)
class Upgraded:
    before: str | None
    after: str
    # The database was made before migrations and got the baseline recorded first.
    stamped: bool

    def describe(self) -> str:
        stamped = (
            f"recognised a database made before migrations, stamped {BASELINE}; "
            if self.stamped
            else ""
        )
        if self.before == self.after:
            return f"{stamped}the database is at {self.after}"
        return f"{stamped}migrated the database from {self.before or 'nothing'} to {self.after}"


def upgrade(url: str, target: str, dim: int) -> Upgraded:
    """Brings the database to `target` in one transaction, holding the migration lock; a
    database made before migrations is stamped with the baseline first."""
    known = [r.revision for r in revisions()]
    target = known[-1] if target == "head" else target
    if target not in known:
        raise MigrationError(f"no revision {target}: `cargo xtask db history` lists them")
    # Nothing to do, the common case of every start in dev: answered without importing Alembic.
    with psycopg.connect(url, connect_timeout=5) as conn:
        if current(conn) == target:
            return Upgraded(target, target, stamped=False)
    import sqlalchemy
    from alembic import command

    cfg = _alembic_config(url, dim)
    engine = sqlalchemy.create_engine(
        cfg.get_main_option("sqlalchemy.url"), poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            if raw is None:
                raise RuntimeError("SQLAlchemy gave no psycopg connection to migrate with")
            conn.execute(sqlalchemy.text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            # A revision's DDL that waits for a lock holds up every query queued behind it: give
            # up (and roll back) after a while rather than stall the service.
            conn.execute(sqlalchemy.text(f"SET LOCAL lock_timeout = '{DDL_LOCK_WAIT}'"))
            before = current(raw)
            stamped = before is None and _predates_migrations(raw)
            if stamped:
                cfg.attributes["connection"] = conn
                command.stamp(cfg, BASELINE)
                before = BASELINE
            if before is not None and before not in known:
                raise MigrationError(
                    f"the database is at revision {before}, which this release does not know: "
                    "it was migrated by a newer release; deploy that one or a newer one"
                )
            if before is None or known.index(target) > known.index(before):
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, target)
            elif known.index(target) < known.index(before):
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, target)
            conn.commit()
    except sqlalchemy.exc.DBAPIError as err:
        message = str(err.orig).strip() if err.orig is not None else str(err)
        raise MigrationError(
            f"migration to {target} failed, nothing was changed: {message}"
        ) from None
    except MigrationError:
        raise
    except Exception as err:  # A revision's own bug: its transaction was never committed.
        raise MigrationError(
            f"migration to {target} failed, nothing was changed: {type(err).__name__}: {err}"
        ) from err
    finally:
        engine.dispose()
    return Upgraded(before, target, stamped)


def sql(target: str, dim: int) -> str:
    """The SQL an upgrade from nothing to `target` runs, without a database."""
    import io

    from alembic import command

    cfg = _alembic_config("postgresql://offline/offline", dim)
    buffer = io.StringIO()
    cfg.output_buffer = buffer
    command.upgrade(cfg, target, sql=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memories.migrate")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "upgrade", help="migrate the database to a revision (the newest by default)"
    )
    up.add_argument("--to", default="head", help="the revision to end at (default: head)")
    up.add_argument("--sql", action="store_true", help="print the SQL instead; no database needed")
    up.add_argument("--json", action="store_true")
    cur = sub.add_parser("current", help="the revision the database is at")
    cur.add_argument("--json", action="store_true")
    hist = sub.add_parser("history", help="every revision, oldest first")
    hist.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "history":
            listed = revisions()
            if args.json:
                print(json.dumps([r.__dict__ for r in listed]))
            for r in listed if not args.json else []:
                print(f"{r.revision}\t{r.down_revision or '-'}\t{r.message}")
            return 0
        dim = config.embedding_dim(dict(os.environ))
        if args.command == "upgrade" and args.sql:
            print(sql(args.to, dim), end="")
            return 0
        env = dict(os.environ)
        url = config.database_url(env)
        # A job started beside its database (a swarm release phase) waits for it, as the
        # server does.
        db.wait_until_ready(url, float(env.get("DB_WAIT_TIMEOUT") or 30))
        if args.command == "current":
            with psycopg.connect(url, connect_timeout=5) as conn:
                at = current(conn)
                predates = at is None and _predates_migrations(conn)
            if args.json:
                print(json.dumps({"revision": at, "head": head(), "predates_migrations": predates}))
            else:
                print(at or ("none (predates migrations)" if predates else "none"))
            return 0
        done = upgrade(url, args.to, dim)
        if args.json:
            print(json.dumps(done.__dict__))
        print(f"migrate: {done.describe()}", file=sys.stderr)
        return 0
    except (MigrationError, config.ConfigError, db.DatabaseError) as err:
        print(f"migrate: error: {err}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as err:
        print(f"migrate: error: cannot reach the database: {str(err).strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
