"""Connector preparation: each configured source's connector, settings and queries.

The connector class comes from `connectors.registry`; the ``connection`` block is
checked against its settings model, and every query goes through its
``prepare`` (which refuses writes). A source whose connector cannot load still
loads, unusable, its SQL checked all the same (`registry.prepare_unloaded`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from connectors import registry
from connectors.base import ConnectionSettings, Connector, Limits, PreparedQuery
from worker.config_model import SourceConfig
from worker.config_source import DocPath, Problems
from worker.errors import ConfigError, ConnectorMissing
from worker.shape_errors import shape_errors
from worker.tenant import NamedQuery, Source

__all__ = [
    "args_from_columns",
    "build_source",
    "check_args",
    "prepare_query",
    "prepare_unbuilt",
    "unnamed_queries",
]


def build_source(source: SourceConfig, at: DocPath, errors: Problems) -> Source:
    """``source`` with its connector class, checked settings and prepared queries."""
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
        shape_errors(exc, cls.Settings, (*at, "connection"), errors)
    queries: dict[str, NamedQuery] = {}
    for qname, raw in _reads(source):
        key = _read_key(source, qname)
        prepared = prepare_query(cls, _query_body(raw), (*at, key, qname), errors)
        if prepared is not None:
            args = _args_of(raw)
            check_args(prepared, args, (*at, key, qname), errors, required=False)
            queries[qname] = NamedQuery(qname, prepared, args or args_from_columns(prepared))
    return Source(source.id, source.type, cls, settings, queries, limits, circuit=source.circuit)


def _unbuilt_source(
    source: SourceConfig, at: DocPath, errors: Problems, limits: Limits, problem: str
) -> Source:
    """A source with no connector installed: it loads, unusable, its SQL still checked."""
    queries = {}
    for qname, raw in _reads(source):
        where = (*at, _read_key(source, qname), qname)
        prepared = prepare_unbuilt(source.type, raw, where, errors)
        queries[qname] = NamedQuery(qname, prepared, _args_of(raw) or args_from_columns(prepared))
    return Source(source.id, source.type, None, None, queries, limits, problem)


def prepare_unbuilt(type_name: str, raw: Any, at: DocPath, errors: Problems) -> PreparedQuery:
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


def args_from_columns(prepared: PreparedQuery) -> tuple[str, ...] | None:
    """``$1…$n`` named after the columns they are compared with, when every one is."""
    columns = prepared.columns
    if not prepared.positional or len(columns) != prepared.positional:
        return None
    if any(column is None for column in columns):
        return None
    return tuple(str(column) for column in columns)


def unnamed_queries(sources: Mapping[str, Source]) -> Iterator[str]:
    """A warning for each query whose ``$n`` neither ``args`` nor column names bind."""
    for source in sources.values():
        for named in source.queries.values():
            if named.prepared.positional and named.args is None:
                yield (
                    f"data_sources.{source.id}: query {named.name!r} takes "
                    f"{named.prepared.positional} value(s) ($1…) compared with no single column: "
                    "jobs for it are invalid_input unless a lookup or the query lists them in args"
                )


def prepare_query(
    cls: type[Connector], raw: Any, at: DocPath, errors: Problems
) -> PreparedQuery | None:
    """``raw`` through the connector's ``prepare``; None, with the problem noted, if refused."""
    try:
        return cls.prepare(raw)
    except ConfigError as exc:
        errors.add(at, exc.message)
    except (ValueError, TypeError) as exc:
        errors.add(at, str(exc))
    return None


def check_args(
    prepared: PreparedQuery,
    args: tuple[str, ...] | None,
    at: DocPath,
    errors: Problems,
    *,
    required: bool,
) -> None:
    """``args`` name one parameter a placeholder; ``required``: a query whose ``$n`` the
    columns do not name must list them."""
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
