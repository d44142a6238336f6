"""worker.settings: the one place the environment is read, and its precedence over the config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from worker.config import load_tenant
from worker.errors import ConfigError
from worker.precedence import audit_target, engine_settings, queue_target
from worker.settings import Settings, env_name
from worker.trust import resolve_values

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "tenants" / "demo.yaml"


def _settings(**fields: str) -> Settings:
    """Settings with these fields set as if by their environment variables."""
    return Settings(**{env_name(name): value for name, value in fields.items()})


def test_load__reads_the_environment_and_keeps_its_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGINE_URL", "http://engine:8000")
    monkeypatch.setenv("WORKER_TOKEN", "webhook-secret")
    monkeypatch.setenv("SOME_OPERATOR_VALUE", "kept")
    settings = Settings.load()
    monkeypatch.setenv("ENGINE_URL", "http://changed")
    assert settings.engine_url == "http://engine:8000"
    assert isinstance(settings.token, SecretStr)
    assert "webhook-secret" not in repr(settings)
    assert settings.environ()["SOME_OPERATOR_VALUE"] == "kept"
    assert settings.environ()["ENGINE_URL"] == "http://engine:8000"


def test_load__is_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        Settings.load().engine_url = "http://elsewhere"  # type: ignore[misc]


def test_load__names_are_case_sensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_URL", raising=False)
    monkeypatch.setenv("engine_url", "http://lower-case")
    assert Settings.load().engine_url == ""


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("WORKER_READY_SOURCES", id="ready-sources"),
        pytest.param("WORKER_CONFIG_WATCH", id="config-watch"),
        pytest.param("WORKER_AUDIT_FLUSH_S", id="audit-flush"),
        pytest.param("WORKER_CONFIG_POLL_S", id="config-poll"),
        pytest.param("WORKER_HTTP_HEADER_TIMEOUT_S", id="header-timeout"),
    ],
)
def test_load__a_bad_value_fails_only_where_it_is_used(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "sometimes")
    Settings.load()  # `worker lookup` never reads it: no error here


def test_env_name__is_each_fields_variable() -> None:
    assert env_name("grace_s") == "WORKER_GRACE_S"
    assert env_name("engine_token") == "ENGINE_TOKEN"
    assert env_name("pgsslmode") == "PGSSLMODE"
    names = [env_name(field) for field in Settings.model_fields]
    assert len(names) == len(set(names)), "two fields read one variable"
    with pytest.raises(KeyError):
        env_name("no_such_field")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", "ignore", id="unset"),
        pytest.param(" ANY ", "any", id="any-case-and-blanks"),
        pytest.param("all", "all", id="all"),
    ],
)
def test_ready_sources_mode__accepts_the_three_words(value: str, expected: str) -> None:
    assert _settings(ready_sources=value).ready_sources_mode() == expected


def test_ready_sources_mode__names_the_variable_and_the_bad_value() -> None:
    with pytest.raises(
        ConfigError, match="WORKER_READY_SOURCES must be ignore, any or all, not 'x'"
    ):
        _settings(ready_sources="x").ready_sources_mode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", False, id="unset"),
        pytest.param("Yes", True, id="yes"),
        pytest.param("off", False, id="off"),
    ],
)
def test_watch_config__reads_yes_and_no(value: str, expected: bool) -> None:
    assert _settings(config_watch=value).watch_config() is expected


def test_watch_config__refuses_other_words() -> None:
    with pytest.raises(ConfigError, match="WORKER_CONFIG_WATCH must be 1 or 0, not 'maybe'"):
        _settings(config_watch="maybe").watch_config()


def test_parsed_values__keep_their_defaults() -> None:
    settings = _settings(audit_flush_s="0.5", config_poll_s="5", queue_pool_mode="", gc="")
    assert settings.audit_flush() == 0.5
    assert settings.config_poll() == 5.0
    assert settings.pool_mode() == "session"
    assert settings.gc_default() is False
    assert _settings(gc=" Default ").gc_default() is True


def test_folders__blank_is_unset() -> None:
    assert _settings(data_dir="  ", templates_dir="").data_dir is None
    assert _settings(data_dir=" /srv/data ").data_dir == Path("/srv/data")


def test_engine_settings__the_environment_wins_over_the_config() -> None:
    tenant = load_tenant(DEMO)
    assert engine_settings(tenant, _settings(engine_url="", engine_token="")) == (None, None)
    url, token = engine_settings(tenant, _settings(engine_url="http://e", engine_token="t"))
    assert (url, token) == ("http://e", "t")


def test_queue_and_audit_targets__follow_the_settings(tmp_path: Path) -> None:
    tenant = load_tenant(DEMO)
    plain = _settings(queue_dsn="", audit_dsn="", state_dir=str(tmp_path))
    assert queue_target(tenant, plain) is None
    assert audit_target(tenant, plain) == str(tmp_path / "demo.audit.db")
    queued = _settings(queue_dsn="sqlite:///q.db", audit_dsn="")
    assert queue_target(tenant, queued) == "sqlite:///q.db"
    assert audit_target(tenant, queued) == "q.db"
    assert audit_target(tenant, _settings(audit_dsn="postgresql://a/b")) == "postgresql://a/b"


def test_resolve_values__takes_env_from_the_mapping_it_is_given() -> None:
    problems: list[str] = []
    document = {"data_sources": [{"connection": {"password": "${env:DB_PASSWORD}"}}]}
    resolved = resolve_values(
        document,
        origin="file",
        tenant_id="demo",
        decrypt=True,
        report=lambda path, message: problems.append(message),
        environ={"DB_PASSWORD": "from-the-snapshot"},
    )
    assert resolved["data_sources"][0]["connection"]["password"] == "from-the-snapshot"
    assert not problems


def test_environment__is_read_only_by_worker_settings() -> None:
    """The issue's rule: one module reads the environment; the rest are handed it."""
    reads = re.compile(r"\bos\.environ\b|\bgetenv\(|\benviron\.get\(")
    readers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("worker", "connectors")
        for path in (ROOT / folder).rglob("*.py")
        if reads.search(path.read_text(encoding="utf-8"))
    )
    assert readers == ["worker/settings.py"]
