"""The tenant config (contract §5): models, loading, and errors with file and line.

Loading happens in two passes. `TenantConfig` validates the document's shape
with pydantic. `load_tenant` then checks what needs the connectors and the
templates — connection blocks against each connector's own settings model,
every query through the connector's ``prepare`` (refusing writes), lookups'
``args`` against the queries' placeholders, templates compiled — and collects
every problem into one `ConfigErrors`, each naming its file, path and line.
The result, `Tenant`, is what the rest of the worker uses; nobody passes the
raw dict around after this module.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin
from uuid import UUID

import yaml
from jinja2 import Template
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors import registry
from connectors.base import ConnectionSettings, Connector, Limits, PreparedQuery
from connectors.egress import UNRESTRICTED, Reach
from worker import secrets, trust
from worker.errors import ConfigError, ConfigErrors, ConnectorMissing
from worker.redact import secrets_in
from worker.render import Renderer
from worker.trust import Origin

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "AuditConfig",
    "CircuitConfig",
    "Defaults",
    "EngineConfig",
    "FallbackConfig",
    "Knowledge",
    "Lookup",
    "LookupConfig",
    "NamedQuery",
    "ParamRule",
    "QueueConfig",
    "RouteConfig",
    "Source",
    "SourceConfig",
    "StoreConfig",
    "Tenant",
    "TenantConfig",
    "find_config",
    "load_tenant",
    "parse_document",
]

DEFAULT_TIMEOUT_S = 10.0
#: how long a knowledge-base fallback may read, after the primary source has failed
DEFAULT_KNOWLEDGE_TIMEOUT_S = 5.0
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"

DEFAULT_NOT_FOUND = (
    "Sorry, I couldn't find anything for that. Please check the details and try again."
)
DEFAULT_FALLBACK = (
    "Sorry, I can't look that up right now. Please try again in a few minutes, "
    "or a member of our team will get back to you."
)
DEFAULT_INVALID = (
    "Sorry, I couldn't read that: {{ errors | join_and }}. Please check it and try again."
)

# Without a template, a reply reads the row to the customer: "Status: shipped" one field a
# line (names humanised, up to 10 fields, nested objects left out, lists joined); several
# rows, one line each (up to 5).
DEFAULT_TEMPLATE = """\
{%- macro fields(r, sep) -%}
{%- for key, value in r.items() if value is not none and value is not mapping
    and not (value is sequence and value is not string and value | select("mapping") | list) -%}
{%- if loop.index <= 10 -%}
{%- set name = key | string | replace("_", " ") | trim -%}
{{ sep if loop.index > 1 }}{{ name[:1] | upper }}{{ name[1:] }}: {{ value | join(", ")
    if value is sequence and value is not string else value }}
{%- endif -%}
{%- endfor -%}
{%- endmacro -%}
{%- if rows | length > 1 -%}
{%- for r in rows[:5] -%}{{ fields(r, ", ") }}{{ "\n" if not loop.last }}{%- endfor -%}
{%- if rows | length > 5 %}{{ "\n" }}…and {{ rows | length - 5 }} more{% endif -%}
{%- elif row is mapping -%}{{ fields(row, "\n") }}
{%- endif -%}"""


# A knowledge base's row read to the customer: its answer (or text), else the readable default.
KNOWLEDGE_TEMPLATE = (
    "{%- if row.answer -%}{{ row.answer }}{%- elif row.text -%}{{ row.text }}{%- else -%}"
    + DEFAULT_TEMPLATE
    + "{%- endif -%}"
)


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
        from worker.router import normalise

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


# -- the loaded form ---------------------------------------------------------


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


# -- reading files -----------------------------------------------------------


def parse_document(text: str, *, name: str) -> tuple[Any, dict[tuple[str | int, ...], int]]:
    """Parse YAML or JSON; also return the 1-based line of every path in it.

    A key given twice in one mapping is an error (`ConfigErrors`, each naming its
    file, line and path): PyYAML and ``json`` would both keep the last one silently.
    """
    pairs = _JSONPairs()
    loader: _StrictLoader | None = None
    try:
        if name.endswith(".json"):
            data = json.loads(text, object_pairs_hook=pairs)
        else:
            loader = _StrictLoader(text)
            try:
                node = loader.get_single_node()
                data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg}", where=f"{name}:{exc.lineno}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML: {exc}", where=f"{name}{line}") from exc
    if loader is None:
        try:
            node = yaml.compose(text)
        except yaml.YAMLError:
            node = None  # JSON that YAML 1.1 cannot read: errors go without lines
    index = _Index()
    if node is not None:
        _index_lines(node, (), index)
    errors = _Errors(name, index.lines)
    if loader is not None:
        for mapping, key_node, first in loader.repeated:
            at = index.mappings.get(id(mapping), ())
            first_line = first.start_mark.line + 1
            errors.add(at, _repeat(key_node.value, first_line), line=key_node.start_mark.line + 1)
    else:
        _report_json_repeats(pairs.repeated, data, index, errors)
    if errors.items:
        raise ConfigErrors(errors.items)
    return data, index.lines


_MERGE_TAG = "tag:yaml.org,2002:merge"
_Path = tuple[str | int, ...]


def _repeat(key: object, first_line: int | None) -> str:
    first = f" (first at line {first_line})" if first_line else ""
    return f"duplicate key {key!r}{first}: give each key once"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key a mapping gives twice (a key may still
    override one that a ``<<`` merge brings in: that is what merges are for)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        #: (the mapping, the repeated key's node, the node of its first occurrence)
        self.repeated: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for position, (key_node, _) in enumerate(node.value):
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, position)
            except TypeError:
                continue  # an unhashable key: the base class says so
            if first != position:
                self.repeated.append((node, key_node, node.value[first][0]))
        return super().construct_mapping(node, deep=deep)


class _JSONPairs:
    """An ``object_pairs_hook`` that builds dicts as ``json`` does, noting repeated keys."""

    def __init__(self) -> None:
        #: (the object, a key it was given more than once)
        self.repeated: list[tuple[dict[str, Any], str]] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                self.repeated.append((result, key))
            result[key] = value
        return result


def _report_json_repeats(
    repeated: list[tuple[dict[str, Any], str]], data: Any, index: _Index, errors: _Errors
) -> None:
    paths: dict[int, _Path] = {}
    _container_paths(data, (), paths)
    for obj, key in dict.fromkeys((id(obj), key) for obj, key in repeated):
        at = paths.get(obj, ())
        seen = index.keys.get((*at, key), [])
        line = seen[1] if len(seen) > 1 else None
        errors.add(at, _repeat(key, seen[0] if seen else None), line=line)


def _container_paths(value: Any, path: _Path, out: dict[int, _Path]) -> None:
    if isinstance(value, dict):
        out.setdefault(id(value), path)
        for key, item in value.items():
            _container_paths(item, (*path, key), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _container_paths(item, (*path, i), out)


@dataclass
class _Index:
    """What a walk over the composed document learns: each path's line, each key's
    lines (all of them, when a key repeats), and each mapping node's path."""

    lines: dict[_Path, int] = field(default_factory=dict)
    keys: dict[_Path, list[int]] = field(default_factory=dict)
    mappings: dict[int, _Path] = field(default_factory=dict)


def _index_lines(node: yaml.Node, path: _Path, index: _Index) -> None:
    index.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        index.mappings.setdefault(id(node), path)
        for key, value in node.value:
            line = key.start_mark.line + 1
            index.keys.setdefault((*path, key.value), []).append(line)
            _index_lines(value, (*path, key.value), index)
            index.lines[(*path, key.value)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), index)


def find_config(tenant_id: str, config_dir: Path | None = None) -> Path:
    """``config/tenants/<tenant>.yaml`` (or .yml, .json), or a clear error."""
    root = config_dir or Path(os.environ.get("WORKER_CONFIG_DIR", "config/tenants"))
    for suffix in (".yaml", ".yml", ".json"):
        candidate = root / f"{tenant_id}{suffix}"
        if candidate.is_file():
            return candidate
    where = f"{root.absolute()}"
    if config_dir is None:  # say why there: the relative default depends on the current folder
        named = "WORKER_CONFIG_DIR" if os.environ.get("WORKER_CONFIG_DIR") else "the default"
        where += f" ({named} {root})"
    raise ConfigError(
        f"no config for tenant {tenant_id!r}: looked for {tenant_id}.yaml/.yml/.json in "
        f"{where}; pass --config PATH, set WORKER_CONFIG_DIR, "
        "or set ENGINE_URL to fetch it from the engine"
    )


class _Errors:
    """Collects problems with their file, path and line."""

    def __init__(self, name: str, lines: Mapping[tuple[str | int, ...], int]) -> None:
        self.name = name
        self.lines = lines
        self.items: list[ConfigError] = []
        #: places whose value could not be resolved: the empty value left there is not
        #: a second problem (an unset ${env:PORT} is not also "not an integer")
        self._explained: set[str] = set()

    def explained(self) -> None:
        """Every place with a problem so far needs no other message."""
        self._explained.update(e.where for e in self.items)

    def where(self, path: tuple[str | int, ...], *, line: int | None = None) -> str:
        """``file:line: dotted.path``; the line is the path's own unless given."""
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path)
        dotted = dotted.replace(".[", "[")
        if line is None:
            line = self.line(path)
        head = f"{self.name}:{line}" if line else self.name
        return f"{head}: {dotted}" if dotted else head

    def line(self, path: tuple[str | int, ...]) -> int | None:
        """The line of ``path``, else of the nearest enclosing path the document has."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return self.lines.get(probe)

    def add(self, path: tuple[str | int, ...], message: str, *, line: int | None = None) -> None:
        where = self.where(path, line=line)
        if where not in self._explained:
            self.items.append(ConfigError(message, where=where))


def load_tenant(
    path: Path | None = None,
    *,
    document: Mapping[str, Any] | None = None,
    tenant_id: str | None = None,
    name: str | None = None,
    templates_dir: Path | None = None,
    decrypt: bool = True,
    origin: Origin = "file",
) -> Tenant:
    """Load and check one tenant config from a file, or from an already parsed document.

    ``origin`` says whose it is (`worker.trust`): ``"file"``, the operator's,
    or ``"engine"``, a tenant's, which may reach less. With ``decrypt=False``
    (the engine checking a config it cannot read the secrets of) ``enc:v1:``
    values and ``${env:…}`` references are checked as they are, not resolved.
    """
    data, errors, base_dir = _read(path, document, name)
    if "tenant_id" not in data:
        data["tenant_id"] = tenant_id or (path.stem if path else "")
    if path is not None:
        origin = "file"
    label = errors.name
    reach = trust.reach_for(origin)
    if not reach.trusted:
        trust.check_untrusted(data, reach, errors.add)
    resolved = trust.resolve_values(
        data, origin=origin, tenant_id=str(data["tenant_id"]), decrypt=decrypt, report=errors.add
    )
    errors.explained()
    try:
        config = TenantConfig.model_validate(resolved)
    except ValidationError as exc:
        _shape_errors(exc, TenantConfig, (), errors)
        raise ConfigErrors(errors.items) from None
    if origin == "engine":
        templates_dir = trust.worker_templates_dir()
    renderer = Renderer(_templates_dir(config, base_dir, templates_dir))
    tenant = _build(config, path, base_dir, renderer, errors)
    if errors.items:
        raise ConfigErrors(errors.items)
    tenant.reach = reach
    tenant.warnings.extend(secrets.plaintext_warnings(data, label))
    tenant.secrets.update(secrets_in(resolved))
    return tenant


def _read(
    path: Path | None, document: Mapping[str, Any] | None, name: str | None
) -> tuple[dict[str, Any], _Errors, Path]:
    """The document as a dict, an error collector that knows its lines, and its folder."""
    lines: dict[tuple[str | int, ...], int] = {}
    if path is not None:
        label = name or str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the config: {exc.strerror}", where=label) from exc
        data, lines = parse_document(text, name=label)
        base_dir = path.resolve().parent
    else:
        label = name or "engine config"
        data = dict(document or {})
        base_dir = Path.cwd()
    if not isinstance(data, Mapping):
        raise ConfigError("the config must be a mapping at the top level", where=label)
    return dict(data), _Errors(label, lines), base_dir


def _templates_dir(config: TenantConfig, base_dir: Path, override: Path | None) -> Path | None:
    """``templates_dir`` (from the config's folder), else the nearest ``templates/`` at or
    above that folder: never the current directory's, so a config means the same
    wherever the worker starts."""
    if override is not None:
        return override
    if config.templates_dir:
        return (base_dir / config.templates_dir).resolve()
    for folder in (base_dir, *base_dir.parents):
        if (folder / "templates").is_dir():
            return folder / "templates"
    return None


def _build(
    config: TenantConfig, path: Path | None, base_dir: Path, renderer: Renderer, errors: _Errors
) -> Tenant:
    sources: dict[str, Source] = {}
    for index, source in enumerate(config.data_sources):
        at: tuple[str | int, ...] = ("data_sources", index)
        if source.id in sources:
            errors.add((*at, "id"), f"duplicate data source id {source.id!r}")
            continue
        sources[source.id] = _build_source(source, at, errors)
    defaults = {
        key: _compile(
            renderer,
            _default_text(getattr(config.defaults, key)),
            ("defaults", key),
            errors,
        )
        for key in ("not_found", "fallback", "invalid_input")
    }
    defaults["template"] = _compile(renderer, DEFAULT_TEMPLATE, ("defaults",), errors)
    tenant = Tenant(config, path, base_dir, sources, {}, renderer, defaults)  # type: ignore[arg-type]
    tenant.knowledge = _build_knowledge(tenant, config.defaults.fallback, ("defaults",), errors)
    tenant.warnings.extend(_unnamed_queries(sources))
    for name, lookup in config.lookups.items():
        built = _build_lookup(tenant, name, lookup, ("lookups", name), errors)
        if built is not None:
            tenant.lookups[name] = built
    return tenant


def _build_source(source: SourceConfig, at: tuple[str | int, ...], errors: _Errors) -> Source:
    limits = Limits(max_rows=source.max_rows, max_bytes=source.max_bytes)
    try:
        cls = registry.load(source.type)
    except ConnectorMissing as exc:
        if not registry.is_known(source.type):
            errors.add((*at, "type"), exc.message)
        return _unbuilt_source(source, at, errors, limits, exc.message)
    settings: ConnectionSettings | None = None
    try:
        settings = cls.Settings.model_validate(source.connection)
    except ValidationError as exc:
        _shape_errors(exc, cls.Settings, (*at, "connection"), errors)
    queries: dict[str, NamedQuery] = {}
    for qname, raw in _reads(source):
        key = _read_key(source, qname)
        prepared = _prepare(cls, _query_body(raw), (*at, key, qname), errors)
        if prepared is not None:
            args = _args_of(raw)
            _check_args(prepared, args, (*at, key, qname), errors, required=False)
            queries[qname] = NamedQuery(qname, prepared, args or _args_from_columns(prepared))
    return Source(source.id, source.type, cls, settings, queries, limits, circuit=source.circuit)


def _unbuilt_source(
    source: SourceConfig, at: tuple[str | int, ...], errors: _Errors, limits: Limits, problem: str
) -> Source:
    """A source with no connector installed: it loads, unusable, its SQL still checked."""
    queries = {}
    for qname, raw in _reads(source):
        where = (*at, _read_key(source, qname), qname)
        prepared = _unbuilt_prepare(source.type, raw, where, errors)
        queries[qname] = NamedQuery(qname, prepared, _args_of(raw) or _args_from_columns(prepared))
    return Source(source.id, source.type, None, None, queries, limits, problem)


def _unbuilt_prepare(
    type_name: str, raw: Any, at: tuple[str | int, ...], errors: _Errors
) -> PreparedQuery:
    """A source whose connector is missing: SQL is still checked to be one read."""
    body = _query_body(raw)
    try:
        return registry.prepare_unloaded(type_name, body)
    except ConfigError as exc:
        errors.add(at, exc.message)
    return PreparedQuery(spec=body)


def _read_key(source: SourceConfig, name: str) -> str:
    return "endpoints" if name in source.endpoints else "queries"


def _reads(source: SourceConfig) -> Iterator[tuple[str, Any]]:
    yield from source.queries.items()
    yield from source.endpoints.items()


def _query_body(raw: Any) -> Any:
    """A query may be written long-hand: ``{"query": …, "args": [...]}``."""
    if isinstance(raw, Mapping) and "query" in raw and set(raw) <= {"query", "args"}:
        return raw["query"]
    return raw


def _args_of(raw: Any) -> tuple[str, ...] | None:
    if isinstance(raw, Mapping) and isinstance(raw.get("args"), list) and "query" in raw:
        return tuple(str(a) for a in raw["args"])
    return None


def _args_from_columns(prepared: PreparedQuery) -> tuple[str, ...] | None:
    """``$1…$n`` named after the columns they are compared with, when every one is."""
    columns = prepared.columns
    if not prepared.positional or len(columns) != prepared.positional:
        return None
    if any(column is None for column in columns):
        return None
    return tuple(str(column) for column in columns)


def _unnamed_queries(sources: Mapping[str, Source]) -> Iterator[str]:
    """A warning for each query whose ``$n`` neither ``args`` nor column names bind."""
    for source in sources.values():
        for named in source.queries.values():
            if named.prepared.positional and named.args is None:
                yield (
                    f"data_sources.{source.id}: query {named.name!r} takes "
                    f"{named.prepared.positional} value(s) ($1…) compared with no single column: "
                    "jobs for it are invalid_input unless a lookup or the query lists them in args"
                )


def _prepare(
    cls: type[Connector], raw: Any, at: tuple[str | int, ...], errors: _Errors
) -> PreparedQuery | None:
    try:
        return cls.prepare(raw)
    except ConfigError as exc:
        errors.add(at, exc.message)
    except (ValueError, TypeError) as exc:
        errors.add(at, str(exc))
    return None


def _check_args(
    prepared: PreparedQuery,
    args: tuple[str, ...] | None,
    at: tuple[str | int, ...],
    errors: _Errors,
    *,
    required: bool,
) -> None:
    if args is None:
        if required and prepared.positional:
            errors.add(
                at,
                f"the query takes {prepared.positional} value(s) ($1…) not each compared with "
                "one column (WHERE order_id = $1 binds order_id): list them in args",
            )
        return
    if len(args) != prepared.positional:
        errors.add(
            at,
            f"args names {len(args)} parameter(s) but the query has {prepared.positional} "
            "placeholder(s) ($1…$n)",
        )


def _compile(
    renderer: Renderer, text: str, at: tuple[str | int, ...], errors: _Errors
) -> Template | None:
    try:
        return renderer.compile(text, where=errors.where(at))
    except ConfigError as exc:
        errors.items.append(exc)
        return None


def _build_lookup(
    tenant: Tenant, name: str, spec: LookupConfig, at: tuple[str | int, ...], errors: _Errors
) -> Lookup | None:
    source_id = spec.source or _only_source(tenant)
    source = tenant.sources.get(source_id or "")
    if source is None:
        errors.add((*at, "source"), f"names no configured data source ({source_id!r})")
        return None
    read = _lookup_read(source, name, spec, at, errors)
    if read is None:
        return None
    prepared, args = read
    if source.connector_cls is not None:
        _check_args(prepared, args, (*at, "args"), errors, required=True)
    params = dict(spec.params)
    for needed in (*(args or ()), *prepared.names):
        params.setdefault(needed, ParamRule())
    texts = {
        key: _compile(renderer, value, (*at, key), errors)
        for key, value, renderer in _texts(tenant, spec)
    }
    return Lookup(
        name=name,
        source_id=source.id,
        query=prepared,
        params=params,
        args=args or (),
        template=texts["template"] or tenant.defaults["template"],
        not_found=texts["not_found"] or tenant.defaults["not_found"],
        fallback=texts["fallback"] or tenant.defaults["fallback"],
        invalid_input=texts["invalid_input"] or tenant.defaults["invalid_input"],
        timeout_s=spec.timeout_s,
        knowledge=(
            tenant.knowledge
            if spec.fallback is None
            else _build_knowledge(tenant, spec.fallback, at, errors)
        ),
    )


def _lookup_read(
    source: Source, name: str, spec: LookupConfig, at: tuple[str | int, ...], errors: _Errors
) -> tuple[PreparedQuery, tuple[str, ...] | None] | None:
    """The lookup's prepared query (a named one of its source, or inline) and its args."""
    query_name = (
        spec.query if isinstance(spec.query, str) and spec.query in source.queries else None
    )
    if spec.query is None and name in source.queries:
        query_name = name
    given = tuple(spec.args) if spec.args is not None else None
    if query_name is not None:
        named = source.queries[query_name]
        return named.prepared, given if given is not None else named.args
    if spec.query is None:
        errors.add((*at, "query"), f"source {source.id!r} has no query named {name!r}")
        return None
    if source.connector_cls is None:
        prepared = _unbuilt_prepare(source.type_name, spec.query, (*at, "query"), errors)
        return prepared, given if given is not None else _args_from_columns(prepared) or ()
    built = _prepare(source.connector_cls, spec.query, (*at, "query"), errors)
    if built is None:
        return None
    return built, given if given is not None else _args_from_columns(built)


def _texts(tenant: Tenant, spec: LookupConfig) -> Iterator[tuple[str, str, Renderer]]:
    defaults = tenant.config.defaults
    yield "template", spec.template or DEFAULT_TEMPLATE, tenant.renderer
    yield "not_found", spec.not_found or defaults.not_found, tenant.renderer
    fallback = _static_text(spec.fallback) or _static_text(defaults.fallback)
    yield "fallback", fallback or DEFAULT_FALLBACK, tenant.renderer
    yield "invalid_input", spec.invalid_input or defaults.invalid_input, tenant.renderer


def _only_source(tenant: Tenant) -> str | None:
    return next(iter(tenant.sources)) if len(tenant.sources) == 1 else None


def _static_text(value: str | FallbackConfig | None) -> str | None:
    """The static text of a fallback: the string itself, or a knowledge fallback's ``text``."""
    return value.text if isinstance(value, FallbackConfig) else value


def _default_text(value: str | FallbackConfig) -> str:
    """A tenant default's text; a knowledge fallback without ``text`` says the default."""
    return value if isinstance(value, str) else (value.text or DEFAULT_FALLBACK)


def _build_knowledge(
    tenant: Tenant, spec: str | FallbackConfig | None, at: tuple[str | int, ...], errors: _Errors
) -> Knowledge | None:
    """A `FallbackConfig` checked against the tenant's sources; None for static text."""
    if not isinstance(spec, FallbackConfig):
        return None
    at = (*at, "fallback")
    source = tenant.sources.get(spec.source)
    if source is None:
        errors.add((*at, "source"), f"names no configured data source ({spec.source!r})")
        return None
    query = spec.query
    if query is None and len(source.queries) == 1:
        query = next(iter(source.queries))
    if query is None:
        errors.add((*at, "query"), f"say which query of {source.id!r} answers (query: …)")
        return None
    if isinstance(query, str) and query in source.queries:
        named = source.queries[query]
        prepared: PreparedQuery | None = named.prepared
        args = tuple(spec.args) if spec.args is not None else named.args
    elif source.connector_cls is None:
        prepared = _unbuilt_prepare(source.type_name, query, (*at, "query"), errors)
        args = tuple(spec.args or ())
    else:
        prepared = _prepare(source.connector_cls, query, (*at, "query"), errors)
        args = tuple(spec.args) if spec.args is not None else None
    if prepared is None:
        return None
    if source.connector_cls is not None:
        _check_args(prepared, args, (*at, "args"), errors, required=True)
    template = _compile(
        tenant.renderer, spec.template or KNOWLEDGE_TEMPLATE, (*at, "template"), errors
    )
    if template is None:
        return None
    return Knowledge(source.id, prepared, args or (), template, spec.timeout_s)


# -- pydantic's errors, said for a config ------------------------------------


def _shape_errors(exc: ValidationError, root: type[BaseModel], at: _Path, errors: _Errors) -> None:
    """Pydantic's errors as config errors at ``at``, each path as the document spells it
    (pydantic's names for union branches left out); an unknown key says which was meant."""
    found = exc.errors()
    for err in found:
        loc = tuple(err["loc"])
        if _beside_the_point(err, loc, found):
            continue
        if err["type"] != "extra_forbidden" or not loc:
            errors.add((*at, *_keys_at(root, loc)[0]), err["msg"])
            continue
        key = loc[-1]
        parent, known = _keys_at(root, loc[:-1])
        line = errors.line((*at, *parent, key))
        errors.add((*at, *parent), _unknown_key(str(key), known), line=line)


def _beside_the_point(err: Any, loc: _Path, found: list[Any]) -> bool:
    """A mapping given where ``text | Model`` is allowed fails as text too; only the
    model's own errors say what is wrong with it."""
    if err["type"] != "string_type" or loc[-1:] != ("str",):
        return False
    if not isinstance(err.get("input"), Mapping):
        return False
    parent = loc[:-1]
    return any(tuple(o["loc"])[: len(parent)] == parent and tuple(o["loc"]) != loc for o in found)


def _unknown_key(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r} — did you mean {close[0]!r}?"
    if known:
        return f"unknown key {key!r}; the keys here are: {', '.join(sorted(known))}"
    return f"unknown key {key!r}"


def _keys_at(root: type[BaseModel], loc: _Path) -> tuple[_Path, set[str]]:
    """The path to ``loc`` as the document spells it (union branch tags left out) and
    the keys the model there accepts (empty where it cannot be told)."""
    annotation: Any = root
    path: list[str | int] = []
    for part in loc:
        step = _step(annotation, part)
        if step is None:
            return (*path, *loc[len(path) :]), set()
        annotation, is_tag = step
        if not is_tag:
            path.append(part)
    return tuple(path), set().union(*(_model_keys(m) for m in _members(annotation)))


def _step(annotation: Any, part: str | int) -> tuple[Any, bool] | None:
    """The annotation one step down ``part``, and whether ``part`` was a union branch's tag."""
    members = _members(annotation)
    for member in members:
        if _is_model(member) and isinstance(part, str):
            for name, info in member.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation, False
        origin = get_origin(member)
        if origin in (list, tuple) and isinstance(part, int):
            return get_args(member)[0], False
        if origin in (dict, Mapping) and isinstance(part, str):
            return get_args(member)[1], False
    for member in members:
        if part == getattr(member, "__name__", None) or _tags(member, part):
            return member, True
    return None


def _tags(member: Any, part: str | int) -> bool:
    """Whether ``part`` is a discriminator value of ``member`` (``auth: {type: basic}``)."""
    if not _is_model(member):
        return False
    return any(
        get_origin(info.annotation) is Literal and part in get_args(info.annotation)
        for info in member.model_fields.values()
    )


def _members(annotation: Any) -> list[Any]:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _is_model(value: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _model_keys(member: Any) -> set[str]:
    if not _is_model(member):
        return set()
    by_name = bool(member.model_config.get("populate_by_name"))
    keys = set()
    for name, info in member.model_fields.items():
        keys.add(info.alias or name)
        if by_name or info.alias is None:
            keys.add(name)
    return keys
