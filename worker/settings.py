"""The worker's settings: every environment variable it reads, in one model.

`Settings.load` reads the environment once (the only place that does, with the
snapshot it keeps for the ``${env:NAME}`` values of a config, `Settings.environ`,
and for the children of ``worker run --processes``); the result is handed down.
A function that may be called without one (a test, an embedding) loads it then,
through the same `Settings.load`.

Loading never fails: a value that can be wrong is kept as the text it was given
and read by the method that needs it (`Settings.audit_flush`, `ready_sources_mode`,
…), which raises the error it always raised, when it always raised it: a bad
``WORKER_READY_SOURCES`` stops ``worker run``, not ``worker lookup``.

The variables of the CLI's options (``WORKER_HTTP``, ``WORKER_GRACE_S``, …) are
parsed by click, as contract §7 says; the options take their names from here
(`env_name`). Precedence between a variable and the config (``ENGINE_URL`` over
``engine.url``, …) is `worker.precedence`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError

__all__ = [
    "READY_SOURCES",
    "Settings",
    "env_name",
]

#: what ``WORKER_READY_SOURCES`` may say (`Settings.ready_sources_mode`)
READY_SOURCES = ("ignore", "any", "all")
_YES = frozenset({"1", "true", "yes", "on"})
_NO = frozenset({"", "0", "false", "no", "off"})


def _env(name: str, default: Any, doc: str) -> Any:
    """A field read from the environment variable ``name``."""
    return Field(default, validation_alias=name, description=doc)


class Settings(BaseSettings):
    """The environment as the worker reads it; frozen once loaded."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=True, extra="ignore")

    # the engine, the queue and the audit log
    engine_url: str = _env("ENGINE_URL", "", "the engine (over the config's engine.url)")
    engine_token: SecretStr = _env("ENGINE_TOKEN", SecretStr(""), "the engine's bearer token")
    engine_listen: str | None = _env("ENGINE_LISTEN", None, "`engine serve --listen`")
    engine_db: str = _env("ENGINE_DB", "engine.db", "`engine serve --db`, `engine init`")
    engine_lease_s: str | None = _env("ENGINE_LEASE_S", None, "`engine serve --lease`")
    queue_dsn: str = _env("QUEUE_DSN", "", "the queue database (over the config's queue)")
    queue_listen_dsn: str = _env("QUEUE_LISTEN_DSN", "", "where LISTEN connects")
    queue_pool_mode: str = _env("QUEUE_POOL_MODE", "", "session (default) or transaction")
    audit_dsn: str = _env("AUDIT_DSN", "", "the audit log (over the config's audit.dsn)")
    state_dir: str = _env("WORKER_STATE_DIR", "", "the audit file's folder")
    audit_flush_s: str = _env("WORKER_AUDIT_FLUSH_S", "0.5", "seconds between audit writes")
    audit_key: SecretStr = _env("WORKER_AUDIT_KEY", SecretStr(""), "audit: hashed's HMAC key")
    # the worker's own endpoints and processes
    token: SecretStr = _env("WORKER_TOKEN", SecretStr(""), "the webhooks' bearer token")
    http: str | None = _env("WORKER_HTTP", None, "`worker run --listen`")
    http_header_timeout_s: str = _env("WORKER_HTTP_HEADER_TIMEOUT_S", "", "request head limit")
    http_reuse_port: str = _env("WORKER_HTTP_REUSE_PORT", "", "set for --processes children")
    grace_s: str | None = _env("WORKER_GRACE_S", None, "`worker run --grace`")
    processes: str | None = _env("WORKER_PROCESSES", None, "`worker run --processes`")
    ready_sources: str = _env("WORKER_READY_SOURCES", "ignore", "sources down and /readyz")
    gc: str = _env("WORKER_GC", "", "`default`: CPython's garbage-collector settings")
    log_level: str | None = _env("WORKER_LOG_LEVEL", None, "`worker --log-level`")
    log_libraries: str = _env("WORKER_LOG_LIBRARIES", "", "the libraries' log level")
    debug: str | None = _env("WORKER_DEBUG", None, "`worker --debug`")
    # configs, their secrets, and what an engine-served config may reach
    config_dir: str | None = _env("WORKER_CONFIG_DIR", None, "where tenant configs live")
    config_watch: str = _env("WORKER_CONFIG_WATCH", "", "reload a config file that changes")
    config_poll_s: str = _env("WORKER_CONFIG_POLL_S", "5", "seconds between config checks")
    secret_keys: SecretStr = _env("WORKER_SECRET_KEYS", SecretStr(""), "keys of enc:v1: values")
    data_dir: Path | None = _env("WORKER_DATA_DIR", None, "files a tenant's config may read")
    allow_networks: str = _env("WORKER_ALLOW_NETWORKS", "", "networks a tenant's config may reach")
    templates_dir: Path | None = _env("WORKER_TEMPLATES_DIR", None, "the worker's templates/")
    pgsslmode: str = _env("PGSSLMODE", "", "libpq's: no plain TCP first to a local PostgreSQL")

    _environ: Mapping[str, str] = PrivateAttr(default_factory=lambda: MappingProxyType({}))

    @field_validator("data_dir", "templates_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """A folder variable set to blanks is unset (``WORKER_DATA_DIR=``)."""
        if isinstance(value, str):
            return value.strip() or None
        return value

    @classmethod
    def load(cls) -> Settings:
        """The settings from the environment as it is now (with its snapshot)."""
        snapshot = dict(os.environ)
        settings = cls()
        settings._environ = MappingProxyType(snapshot)
        return settings

    def environ(self) -> Mapping[str, str]:
        """The whole environment as `load` found it: ``${env:NAME}`` values, child processes."""
        return self._environ

    def audit_flush(self) -> float:
        """``WORKER_AUDIT_FLUSH_S`` in seconds."""
        return float(self.audit_flush_s)

    def config_poll(self) -> float:
        """``WORKER_CONFIG_POLL_S`` in seconds."""
        return float(self.config_poll_s)

    def pool_mode(self) -> str:
        """``QUEUE_POOL_MODE``: ``session`` unless set (``transaction``: behind PgBouncer)."""
        return self.queue_pool_mode or "session"

    def gc_default(self) -> bool:
        """``WORKER_GC=default``: leave CPython's garbage collector as it is."""
        return self.gc.strip().lower() == "default"

    def ready_sources_mode(self) -> str:
        """``WORKER_READY_SOURCES``: whether open circuits make ``/readyz`` answer 503.

        ``ignore`` (the default: a source that is down is answered with its fallback,
        and a replica taken out of the load balancer would answer nothing at all),
        ``any`` (one source's circuit open) or ``all`` (every source's circuit open).
        """
        value = self.ready_sources.strip().lower() or "ignore"
        if value not in READY_SOURCES:
            raise ConfigError(f"WORKER_READY_SOURCES must be ignore, any or all, not {value!r}")
        return value

    def watch_config(self) -> bool:
        """``WORKER_CONFIG_WATCH``: 1/true/yes/on to reload a config file when it changes."""
        value = self.config_watch.strip().lower()
        if value not in _YES | _NO:
            raise ConfigError(f"WORKER_CONFIG_WATCH must be 1 or 0, not {value!r}")
        return value in _YES


def env_name(field: str) -> str:
    """The environment variable of a `Settings` field (``"grace_s"``: ``WORKER_GRACE_S``)."""
    alias = Settings.model_fields[field].validation_alias
    if not isinstance(alias, str):
        raise TypeError(f"Settings.{field} names no environment variable")
    return alias
