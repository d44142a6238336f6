"""The tenant config (contract §5): finding and loading one, errors with file and line.

Loading happens in two passes. `TenantConfig` (`worker.config_model`) validates
the document's shape with pydantic. `load_tenant` then checks what needs the
connectors and the templates — connection blocks against each connector's own
settings model and every query through the connector's ``prepare``, refusing
writes (`worker.prepare`); lookups' ``args`` against the queries' placeholders
and their texts compiled (`worker.lookups`) — and collects every problem into one
`ConfigErrors`, each naming its file, path and line (`worker.config_source`).
The result, `Tenant` (`worker.tenant`), is what the rest of the worker uses;
nobody passes the raw dict around after this module.

The names of those modules that the rest of the worker uses are importable
from here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker import secrets, trust
from worker.config_model import (
    DEFAULT_TIMEOUT_S,
    AuditConfig,
    CircuitConfig,
    Defaults,
    EngineConfig,
    FallbackConfig,
    LookupConfig,
    ParamRule,
    QueueConfig,
    RouteConfig,
    SourceConfig,
    StoreConfig,
    TenantConfig,
)
from worker.config_source import DocPath, Problems, parse_document
from worker.errors import ConfigError, ConfigErrors
from worker.lookups import build_knowledge, build_lookup, default_text
from worker.prepare import build_source, unnamed_queries
from worker.redact import secrets_in
from worker.render import Renderer
from worker.reply_templates import DEFAULT_TEMPLATE, compile_text
from worker.settings import Settings
from worker.shape_errors import shape_errors
from worker.tenant import Knowledge, Lookup, NamedQuery, Source, Tenant
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


def find_config(
    tenant_id: str, config_dir: Path | None = None, settings: Settings | None = None
) -> Path:
    """``config/tenants/<tenant>.yaml`` (or .yml, .json), or a clear error: in ``config_dir``,
    else ``WORKER_CONFIG_DIR`` (`Settings.config_dir`), else ``config/tenants``."""
    configured = (settings or Settings.load()).config_dir
    root = config_dir or Path(configured if configured is not None else "config/tenants")
    for suffix in (".yaml", ".yml", ".json"):
        candidate = root / f"{tenant_id}{suffix}"
        if candidate.is_file():
            return candidate
    where = f"{root.absolute()}"
    if config_dir is None:  # say why there: the relative default depends on the current folder
        named = "WORKER_CONFIG_DIR" if configured else "the default"
        where += f" ({named} {root})"
    raise ConfigError(
        f"no config for tenant {tenant_id!r}: looked for {tenant_id}.yaml/.yml/.json in "
        f"{where}; pass --config PATH, set WORKER_CONFIG_DIR, "
        "or set ENGINE_URL to fetch it from the engine"
    )


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
        shape_errors(exc, TenantConfig, (), errors)
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
) -> tuple[dict[str, Any], Problems, Path]:
    """The document as a dict, an error collector that knows its lines, and its folder."""
    lines: dict[DocPath, int] = {}
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
    return dict(data), Problems(label, lines), base_dir


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
    config: TenantConfig, path: Path | None, base_dir: Path, renderer: Renderer, errors: Problems
) -> Tenant:
    sources: dict[str, Source] = {}
    for index, source in enumerate(config.data_sources):
        at: DocPath = ("data_sources", index)
        if source.id in sources:
            errors.add((*at, "id"), f"duplicate data source id {source.id!r}")
            continue
        sources[source.id] = build_source(source, at, errors)
    defaults = {
        key: compile_text(
            renderer,
            default_text(getattr(config.defaults, key)),
            ("defaults", key),
            errors,
        )
        for key in ("not_found", "fallback", "invalid_input")
    }
    defaults["template"] = compile_text(renderer, DEFAULT_TEMPLATE, ("defaults",), errors)
    tenant = Tenant(config, path, base_dir, sources, {}, renderer, defaults)  # type: ignore[arg-type]
    tenant.knowledge = build_knowledge(tenant, config.defaults.fallback, ("defaults",), errors)
    tenant.warnings.extend(unnamed_queries(sources))
    for name, lookup in config.lookups.items():
        built = build_lookup(tenant, name, lookup, ("lookups", name), errors)
        if built is not None:
            tenant.lookups[name] = built
    return tenant
