"""A tenant config after loading: what the worker runs on.

`Tenant` holds its sources (`Source`: a connector class, its settings and
prepared queries) and its lookups (`Lookup`: a prepared query, parameter rules
and compiled texts), built by `worker.config.load_tenant`; nobody passes the
raw document around after that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Template

from connectors.base import ConnectionSettings, Connector, Limits, PreparedQuery
from connectors.egress import UNRESTRICTED, Reach
from worker.config_model import CircuitConfig, ParamRule, TenantConfig
from worker.errors import ConnectorMissing
from worker.render import Renderer

__all__ = ["Knowledge", "Lookup", "NamedQuery", "Source", "Tenant"]


@dataclass(frozen=True)
class NamedQuery:
    """A source's configured read, prepared, with the order its ``$n`` bind in."""

    name: str
    prepared: PreparedQuery
    args: tuple[str, ...] | None


@dataclass
class Source:
    """A configured source: its connector class and settings, or why it has none."""

    id: str
    type_name: str
    connector_cls: type[Connector] | None
    settings: ConnectionSettings | None
    queries: dict[str, NamedQuery]
    limits: Limits
    problem: str | None = None
    circuit: CircuitConfig = field(default_factory=CircuitConfig)

    def make_connector(self, base_dir: Path, reach: Reach = UNRESTRICTED) -> Connector:
        if self.connector_cls is None or self.settings is None:
            raise ConnectorMissing(self.problem or f"source {self.id!r} has no connector")
        return self.connector_cls(
            self.id, self.settings, base_dir=base_dir, limits=self.limits, reach=reach
        )


@dataclass(frozen=True)
class Knowledge:
    """A knowledge-base fallback ready to run (`FallbackConfig`, loaded)."""

    source_id: str
    query: PreparedQuery
    args: tuple[str, ...]
    template: Template
    timeout_s: float


@dataclass(frozen=True)
class Lookup:
    """A lookup ready to run: prepared query, parameter rules, compiled texts."""

    name: str
    source_id: str
    query: PreparedQuery
    params: Mapping[str, ParamRule]
    args: tuple[str, ...]
    template: Template
    not_found: Template
    fallback: Template
    invalid_input: Template
    timeout_s: float
    #: asked when the source fails, before the static fallback text
    knowledge: Knowledge | None = None


@dataclass
class Tenant:
    """A tenant config after loading: what the worker runs on."""

    config: TenantConfig
    path: Path | None
    base_dir: Path
    sources: dict[str, Source]
    lookups: dict[str, Lookup]
    renderer: Renderer
    defaults: dict[str, Template]
    warnings: list[str] = field(default_factory=list)
    #: every credential this config resolved, for the redaction layer
    secrets: set[str] = field(default_factory=set, repr=False)
    #: the engine's ETag for a config fetched from it (None for a file)
    etag: str | None = None
    #: where its sources may reach (contract §5.0): unrestricted for an operator's file
    reach: Reach = UNRESTRICTED
    #: the tenant's knowledge-base fallback (``defaults.fallback``), for lookups without one
    knowledge: Knowledge | None = None

    @property
    def tenant_id(self) -> str:
        return self.config.tenant_id

    @property
    def problems(self) -> list[str]:
        """Sources that cannot serve (no connector, bad settings): for ``config check``."""
        return [f"data_sources.{s.id}: {s.problem}" for s in self.sources.values() if s.problem]

    def find_query(self, query_type: str) -> tuple[str, ...]:
        """The sources that have a query (or endpoint) named ``query_type``, in config order."""
        return tuple(s.id for s in self.sources.values() if query_type in s.queries)

    def source_lookup(self, query_type: str, source_id: str) -> Lookup | None:
        """The contract's implicit lookup: a query of that name on the named source.

        Its ``$n`` bind from the query's ``args``, else from the columns they are
        compared with; a query with neither has empty args (answered invalid_input).
        """
        source = self.sources.get(source_id)
        named = source.queries.get(query_type) if source else None
        if source is None or named is None:
            return None
        if named.prepared.positional and named.args is None:
            args: tuple[str, ...] = ()
        else:
            args = named.args or ()
        names = set(args) | set(named.prepared.names)
        return Lookup(
            name=query_type,
            source_id=source_id,
            query=named.prepared,
            params={n: ParamRule() for n in names},
            args=args,
            template=self.defaults["template"],
            not_found=self.defaults["not_found"],
            fallback=self.defaults["fallback"],
            invalid_input=self.defaults["invalid_input"],
            timeout_s=self.config.defaults.timeout_s,
            knowledge=self.knowledge,
        )
