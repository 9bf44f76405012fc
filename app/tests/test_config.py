"""Settings and their errors: every bad value names the variable at fault and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from memories import config
from memories.config import ConfigError

URL = "postgresql://memories:pw@db:5432/memories"


def test_defaults_with_only_a_database() -> None:
    settings = config.load({"DATABASE_URL": URL})
    assert settings.database_url == URL
    assert settings.embedding_dim == 384
    assert settings.port == 8283
    assert settings.request_timeout == 3.0
    assert settings.shutdown_delay == 0.0
    assert settings.migrate_on_start is False
    assert settings.redis_url is None
    assert settings.api_keys_file is None


def test_the_postgres_parts_make_one_quoted_url(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss/word\n", encoding="utf-8")
    env = {
        "POSTGRES_HOST": "db",
        "POSTGRES_USER": "me",
        "POSTGRES_PASSWORD_FILE": str(secret),
        "POSTGRES_DB": "my db",
    }
    assert config.database_url(env) == "postgresql://me:p%40ss%2Fword@db:5432/my%20db"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "no database configured"),
        ({"DATABASE_URL": URL, "POSTGRES_HOST": "db"}, "are both set"),
        ({"DATABASE_URL": "mysql://x"}, "must start with postgresql://"),
        ({"POSTGRES_HOST": "db"}, "POSTGRES_USER, POSTGRES_DB must be set"),
        (
            {"POSTGRES_HOST": "h", "POSTGRES_USER": "u", "POSTGRES_DB": "d", "POSTGRES_PORT": "0"},
            "POSTGRES_PORT=0 is out of range",
        ),
    ],
)
def test_a_database_setting_that_is_wrong_is_named(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config.database_url(env)


def test_a_password_file_is_read_and_checked(tmp_path: Path) -> None:
    base = {"POSTGRES_HOST": "h", "POSTGRES_USER": "u", "POSTGRES_DB": "d"}
    missing = {**base, "POSTGRES_PASSWORD_FILE": str(tmp_path / "absent")}
    with pytest.raises(ConfigError, match="cannot read it"):
        config.database_url(missing)
    two_lines = tmp_path / "two"
    two_lines.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="on one line"):
        config.database_url({**base, "POSTGRES_PASSWORD_FILE": str(two_lines)})
    not_utf8 = tmp_path / "latin1"
    not_utf8.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.database_url({**base, "POSTGRES_PASSWORD_FILE": str(not_utf8)})
    both = {**base, "POSTGRES_PASSWORD_FILE": str(two_lines), "POSTGRES_PASSWORD": "x"}
    with pytest.raises(ConfigError, match="both set"):
        config.database_url(both)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("EMBEDDING_DIM", "0", "EMBEDDING_DIM=0 is out of range: use 1 to 16000"),
        ("EMBEDDING_DIM", "abc", "EMBEDDING_DIM='abc' is not a whole number"),
        ("PORT", "70000", "PORT=70000 is out of range"),
        ("DB_REQUEST_TIMEOUT", "-1", "must be positive"),
        ("DB_WAIT_TIMEOUT", "soon", "is not a number of seconds"),
        ("SHUTDOWN_DELAY", "301", "out of range: use 0 to 300 seconds"),
        ("MIGRATE_ON_START", "maybe", "is not a yes or no"),
        ("MAX_BODY_BYTES", "10", "MAX_BODY_BYTES=10 is out of range"),
    ],
)
def test_a_bad_setting_names_itself_and_the_fix(name: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config.load({"DATABASE_URL": URL, name: value})


def test_flags_and_delays_read_as_written() -> None:
    settings = config.load(
        {"DATABASE_URL": URL, "MIGRATE_ON_START": "yes", "SHUTDOWN_DELAY": "0", "PORT": ""}
    )
    assert settings.migrate_on_start is True
    assert settings.shutdown_delay == 0.0
    assert settings.port == 8283, "an empty value is the default"


def test_otlp_endpoints_follow_the_sdk_each_signal_first_then_the_common_one() -> None:
    settings = config.load({"DATABASE_URL": URL})
    assert (settings.otlp_traces, settings.otlp_metrics) == (None, None)
    common = "http://otel-collector:4318"
    settings = config.load({"DATABASE_URL": URL, "OTEL_EXPORTER_OTLP_ENDPOINT": common})
    assert (settings.otlp_traces, settings.otlp_metrics) == (common, common)
    # Prometheus takes metrics only: pointing the metrics alone there leaves traces off.
    metrics = "http://prometheus:9090/api/v1/otlp/v1/metrics"
    settings = config.load({"DATABASE_URL": URL, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": metrics})
    assert (settings.otlp_traces, settings.otlp_metrics) == (None, metrics)


@pytest.mark.parametrize("raw", ["otel-collector:4318", "ftp://x", "http://", "http://a b"])
def test_an_otlp_endpoint_that_is_not_an_http_url_is_refused(raw: str) -> None:
    env = {"DATABASE_URL": URL, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": raw}
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=.* is not an http"):
        config.load(env)
