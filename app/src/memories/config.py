"""Settings read once from the environment, with errors that name the variable at fault."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote

_POSTGRES_PARTS = (
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_PASSWORD_FILE",
    "POSTGRES_DB",
)


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    embedding_dim: int
    redis_url: str | None
    # Where traces and metrics are pushed over OTLP/HTTP, each when set: the signal's own
    # `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    otlp_traces: str | None
    otlp_metrics: str | None
    host: str
    port: int
    db_wait_timeout: float
    request_timeout: float
    cache_ttl: int
    # Seconds to go on serving after SIGTERM before shutting down (0: at once).
    shutdown_delay: float
    # Migrate the database to the newest revision before serving (dev, test and the standalone
    # image); otherwise (prod) only check that its revision is one this server knows.
    migrate_on_start: bool
    # The largest request body the server reads (413 beyond it), also behind the proxy's own.
    max_body: int
    # The API key file (memories.auth); None: no keys needed (dev).
    api_keys_file: str | None
    # The source revision this build came from, for the `memories_build_info` metric
    # (`MEMORIES_REVISION`; "unknown" when not given).
    revision: str = "unknown"


def _int(env: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range: use {low} to {high}")
    return value


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def _otlp(env: dict[str, str], signal: str) -> str | None:
    """The OTLP/HTTP endpoint of `signal`, as the OpenTelemetry SDK reads it: its own setting
    first, else the common one; an endpoint that is not an http(s) URL is refused here rather
    than failing every export later."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        raw = env.get(name, "")
        if raw == "":
            continue
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", raw):
            raise ConfigError(
                f"{name}={raw!r} is not an http(s) URL: use e.g. http://otel-collector:4318"
            )
        return raw
    return None


def _delay(env: dict[str, str], name: str) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 <= value <= 300:
        raise ConfigError(f"{name}={raw!r} is out of range: use 0 to 300 seconds")
    return value


def database_url(env: dict[str, str]) -> str:
    """Returns the one database URL, from `DATABASE_URL` or from the `POSTGRES_*` parts.

    Both at once is an error: with two sources the service could silently use a database other
    than the one its operator meant.
    """
    parts = [name for name in _POSTGRES_PARTS if env.get(name)]
    url = env.get("DATABASE_URL")
    if url:
        if parts:
            raise ConfigError(
                f"DATABASE_URL and {', '.join(parts)} are both set: set only DATABASE_URL, "
                "or only the POSTGRES_* parts"
            )
        if not url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("DATABASE_URL must start with postgresql:// or postgres://")
        return url
    if not parts:
        raise ConfigError(
            "no database configured: set DATABASE_URL=postgresql://USER:PASSWORD@HOST:PORT/DB"
        )
    missing = [
        name for name in ("POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_DB") if not env.get(name)
    ]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set when DATABASE_URL is not")
    user = quote(env["POSTGRES_USER"], safe="")
    password = _password(env)
    auth = f"{user}:{quote(password, safe='')}" if password else user
    port = _int(env, "POSTGRES_PORT", 5432, 1, 65535)
    return f"postgresql://{auth}@{env['POSTGRES_HOST']}:{port}/{quote(env['POSTGRES_DB'], safe='')}"


def _password(env: dict[str, str]) -> str | None:
    """`POSTGRES_PASSWORD`, or the contents of the file `POSTGRES_PASSWORD_FILE` names (a Docker
    secret), without its final line break."""
    path = env.get("POSTGRES_PASSWORD_FILE")
    if not path:
        return env.get("POSTGRES_PASSWORD") or None
    if env.get("POSTGRES_PASSWORD"):
        raise ConfigError(
            "POSTGRES_PASSWORD and POSTGRES_PASSWORD_FILE are both set: set only one of them"
        )
    try:
        with open(path, encoding="utf-8") as file:
            password = file.read()
    except OSError as err:
        raise ConfigError(
            f"POSTGRES_PASSWORD_FILE={path}: cannot read it: {err.strerror or err}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"POSTGRES_PASSWORD_FILE={path}: cannot read it: it is not UTF-8"
        ) from None
    password = password.removesuffix("\n")
    if not password or "\n" in password:
        raise ConfigError(f"POSTGRES_PASSWORD_FILE={path} must hold the password on one line")
    return password


def embedding_dim(env: dict[str, str]) -> int:
    return _int(env, "EMBEDDING_DIM", 384, 1, 16000)


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "")
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name}={raw!r} is not a yes or no: use 1 or 0")


def load(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    return Settings(
        database_url=database_url(env),
        embedding_dim=embedding_dim(env),
        redis_url=env.get("REDIS_URL") or None,
        otlp_traces=_otlp(env, "TRACES"),
        otlp_metrics=_otlp(env, "METRICS"),
        host=env.get("HOST", "0.0.0.0"),
        port=_int(env, "PORT", 8283, 1, 65535),
        db_wait_timeout=_float(env, "DB_WAIT_TIMEOUT", 30.0),
        request_timeout=_float(env, "DB_REQUEST_TIMEOUT", 3.0),
        cache_ttl=_int(env, "CACHE_TTL", 300, 1, 86400),
        shutdown_delay=_delay(env, "SHUTDOWN_DELAY"),
        migrate_on_start=_flag(env, "MIGRATE_ON_START"),
        max_body=_int(env, "MAX_BODY_BYTES", 1 << 20, 1024, 1 << 30),
        api_keys_file=env.get("API_KEYS_FILE") or None,
        revision=env.get("MEMORIES_REVISION") or "unknown",
    )
