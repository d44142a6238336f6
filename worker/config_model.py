"""The tenant config's document shape (contract §5): pydantic models, frozen, no extra keys.

`TenantConfig` is the whole document; `worker.config.load_tenant` validates it
with these models, then checks what needs the connectors and the templates.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.reply_templates import DEFAULT_FALLBACK, DEFAULT_INVALID, DEFAULT_NOT_FOUND
from worker.words import normalise

__all__ = [
    "DEFAULT_KNOWLEDGE_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "AuditConfig",
    "CircuitConfig",
    "Defaults",
    "EngineConfig",
    "FallbackConfig",
    "LookupConfig",
    "ParamRule",
    "QueueConfig",
    "RouteConfig",
    "SourceConfig",
    "StoreConfig",
    "TenantConfig",
]


DEFAULT_TIMEOUT_S = 10.0


#: how long a knowledge-base fallback may read, after the primary source has failed
DEFAULT_KNOWLEDGE_TIMEOUT_S = 5.0


_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamRule(_Model):
    """How one job parameter is checked before any source is touched."""

    type: Literal["string", "integer", "number", "boolean", "phone", "email", "date"] = "string"
    required: bool = True
    pattern: str | None = None
    max_length: int = Field(default=200, ge=1, le=10_000)
    description: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        # Patterns run on RE2 (linear time): no customer text can make one backtrack.
        if value is not None:
            import re2  # only a config with patterns loads it

            options = re2.Options()
            options.log_errors = False  # the reason goes into the config error instead
            try:
                re2.compile(value, options)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else exc
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                raise ValueError(
                    f"pattern cannot run on RE2, the linear-time engine patterns use: {reason}"
                ) from None
        return value


class RouteConfig(_Model):
    """How a customer's free text reaches a lookup (contract §5 ``route``)."""

    keywords: list[str] = Field(default_factory=list, max_length=200)
    extract: dict[str, str] = Field(default_factory=dict)

    @field_validator("keywords")
    @classmethod
    def _keywords_have_words(cls, value: list[str]) -> list[str]:
        for keyword in value:
            if not normalise(keyword):
                raise ValueError(f"keyword {keyword!r} has no letters or digits to match")
        return value

    @field_validator("extract")
    @classmethod
    def _extract_compiles(cls, value: dict[str, str]) -> dict[str, str]:
        # Extractors run on RE2 too, on the customer's text: linear time whatever it says.
        import re2

        for name, pattern in value.items():
            options = re2.Options()
            options.log_errors = False
            try:
                compiled = re2.compile(pattern, options)
            except re2.error as exc:
                reason = exc.args[0] if exc.args else exc
                if isinstance(reason, bytes):
                    reason = reason.decode("utf-8", "replace")
                raise ValueError(f"extract.{name}: pattern cannot run on RE2: {reason}") from None
            if compiled.groups < 1:
                raise ValueError(
                    f"extract.{name}: the pattern needs a capturing group: "
                    "its first group gives the value, e.g. '#?([0-9]{3,12})'"
                )
        return value


class FallbackConfig(_Model):
    """A fallback that asks a knowledge source before giving up with static text.

    When the lookup's own source fails, ``query`` of ``source`` runs with the same
    validated parameters; its rows render with ``template`` (default: the row's
    ``answer`` or ``text`` field, else the readable default). If that read fails or
    finds nothing, the customer gets ``text`` (default: the tenant's fallback text).
    """

    source: str = Field(pattern=_NAME)
    #: a query of that source by name, or an inline query; None: the source's only query
    query: str | dict[str, Any] | None = None
    args: list[str] | None = None
    template: str | None = None
    text: str | None = None
    timeout_s: float = Field(default=DEFAULT_KNOWLEDGE_TIMEOUT_S, gt=0, le=60)


class LookupConfig(_Model):
    """One named lookup (``query_type``): where it reads and how it answers."""

    source: str | None = None
    query: str | dict[str, Any] | None = None
    params: dict[str, ParamRule] = Field(default_factory=dict)
    args: list[str] | None = None
    template: str | None = None
    not_found: str | None = None
    fallback: str | FallbackConfig | None = None
    invalid_input: str | None = None
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=120)
    description: str | None = None
    route: RouteConfig | None = None


class CircuitConfig(_Model):
    """After ``failures`` failed reads in a row, skip the source for ``reset_s`` seconds."""

    failures: int = Field(default=5, ge=1, le=1000)
    reset_s: float = Field(default=10.0, gt=0, le=3600)


class SourceConfig(_Model):
    """One data source as the seed writes it: ``id``, ``type``, ``connection``, reads."""

    id: str = Field(pattern=_NAME)
    name: str | None = None
    description: str | None = None
    type: str
    connection: dict[str, Any] = Field(default_factory=dict)
    queries: dict[str, Any] = Field(default_factory=dict)
    endpoints: dict[str, Any] = Field(default_factory=dict)
    max_rows: int = Field(default=100, ge=1, le=100_000)
    max_bytes: int = Field(default=5_000_000, ge=1_000, le=500_000_000)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    #: most reads in flight at once on the source (the rest wait, within their deadline);
    #: None: its ``connection.pool_size`` where it has one, else 25 (worker.sources)
    max_concurrency: int | None = Field(default=None, ge=1, le=1000)


class EngineConfig(_Model):
    url: str | None = None
    token: str | None = None


class StoreConfig(_Model):
    dsn: str | None = None
    path: str | None = None


class QueueConfig(_Model):
    postgres: StoreConfig | None = None
    sqlite: StoreConfig | None = None


class AuditConfig(_Model):
    """Where the audit log goes and how customers are recorded in it."""

    dsn: str | None = None
    identifier: Literal["masked", "hashed"] = "masked"


class Defaults(_Model):
    """Tenant-wide texts used where a lookup has none of its own."""

    not_found: str = DEFAULT_NOT_FOUND
    fallback: str | FallbackConfig = DEFAULT_FALLBACK
    invalid_input: str = DEFAULT_INVALID
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=120)


class TenantConfig(_Model):
    """The whole document of one tenant (contract §5)."""

    tenant_id: str = Field(pattern=_NAME)
    tenant_uuid: UUID | None = None  # for an audit table whose tenant_id is a UUID (§8)
    engine: EngineConfig | None = None
    queue: QueueConfig | None = None
    audit: AuditConfig | None = None
    data_sources: list[SourceConfig] = Field(default_factory=list)
    lookups: dict[str, LookupConfig] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    templates_dir: str | None = None
