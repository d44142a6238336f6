"""Building a tenant's lookups: each one's read, parameter rules, texts and fallback.

A lookup reads a named query of its source or an inline one; its ``args`` are
checked against the query's placeholders; its texts are compiled; a fallback
that asks a knowledge source (`FallbackConfig`) becomes a `Knowledge`.
"""

from __future__ import annotations

from collections.abc import Iterator

from connectors.base import PreparedQuery
from worker.config_model import FallbackConfig, LookupConfig, ParamRule
from worker.config_source import DocPath, Problems
from worker.prepare import args_from_columns, check_args, prepare_query, prepare_unbuilt
from worker.render import Renderer
from worker.reply_templates import (
    DEFAULT_FALLBACK,
    DEFAULT_TEMPLATE,
    KNOWLEDGE_TEMPLATE,
    compile_text,
)
from worker.tenant import Knowledge, Lookup, Source, Tenant

__all__ = ["build_knowledge", "build_lookup", "default_text"]


def build_lookup(
    tenant: Tenant, name: str, spec: LookupConfig, at: DocPath, errors: Problems
) -> Lookup | None:
    """The lookup ``name`` ready to run, or None with its problems noted."""
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
        check_args(prepared, args, (*at, "args"), errors, required=True)
    params = dict(spec.params)
    for needed in (*(args or ()), *prepared.names):
        params.setdefault(needed, ParamRule())
    texts = {
        key: compile_text(renderer, value, (*at, key), errors)
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
            else build_knowledge(tenant, spec.fallback, at, errors)
        ),
    )


def _lookup_read(
    source: Source, name: str, spec: LookupConfig, at: DocPath, errors: Problems
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
        prepared = prepare_unbuilt(source.type_name, spec.query, (*at, "query"), errors)
        return prepared, given if given is not None else args_from_columns(prepared) or ()
    built = prepare_query(source.connector_cls, spec.query, (*at, "query"), errors)
    if built is None:
        return None
    return built, given if given is not None else args_from_columns(built)


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


def default_text(value: str | FallbackConfig) -> str:
    """A tenant default's text; a knowledge fallback without ``text`` says the default."""
    return value if isinstance(value, str) else (value.text or DEFAULT_FALLBACK)


def build_knowledge(
    tenant: Tenant, spec: str | FallbackConfig | None, at: DocPath, errors: Problems
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
        prepared = prepare_unbuilt(source.type_name, query, (*at, "query"), errors)
        args = tuple(spec.args or ())
    else:
        prepared = prepare_query(source.connector_cls, query, (*at, "query"), errors)
        args = tuple(spec.args) if spec.args is not None else None
    if prepared is None:
        return None
    if source.connector_cls is not None:
        check_args(prepared, args, (*at, "args"), errors, required=True)
    template = compile_text(
        tenant.renderer, spec.template or KNOWLEDGE_TEMPLATE, (*at, "template"), errors
    )
    if template is None:
        return None
    return Knowledge(source.id, prepared, args or (), template, spec.timeout_s)
