"""Finding connector classes: entry points, built in or from outside packages.

The entry points of ``data_lookup_worker.connectors`` are the list of source
types: each names its connector class and, the standard way, the extra that
installs its driver (``postgresql = "connectors.postgresql:PostgreSQLConnector
[postgresql]"``). A SQL connector says its dialect (`Connector.sql_dialect`);
the config asks `prepare_unloaded` to check the SQL of a source whose connector
cannot load, so it names no SQL type itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, get_args

from connectors.base import Connector, PreparedQuery
from connectors.sql import Dialect, prepare_sql
from worker.errors import ConnectorMissing

__all__ = [
    "ENTRY_POINT_GROUP",
    "ConnectorInfo",
    "available",
    "driver_extra",
    "is_known",
    "load",
    "prepare_unloaded",
    "sql_dialect",
]

ENTRY_POINT_GROUP = "data_lookup_worker.connectors"


@dataclass(frozen=True)
class ConnectorInfo:
    type_name: str
    cls: type[Connector] | None
    origin: str
    problem: str | None = None


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _origin(ep: EntryPoint) -> str:
    """``module:Class``: the entry point's value without its extras."""
    return f"{ep.module}:{ep.attr}"


def _install_hint(ep: EntryPoint) -> str:
    if ep.extras:
        package = ep.dist.name if ep.dist is not None else "data-lookup-worker"
        return f"install its driver with: pip install '{package}[{ep.extras[0]}]'"
    return "install the package that provides it"


def driver_extra(type_name: str) -> str | None:
    """The optional extra that installs ``type_name``'s driver, as its entry point says."""
    ep = _entry_points().get(type_name)
    return ep.extras[0] if ep is not None and ep.extras else None


def is_known(type_name: str) -> bool:
    """Whether some entry point names ``type_name``, loadable or not."""
    return type_name in _entry_points()


def load(type_name: str) -> type[Connector]:
    """The connector class for a source type, or `ConnectorMissing` saying what to do."""
    ep = _entry_points().get(type_name)
    if ep is None:
        known = ", ".join(sorted(_entry_points()))
        raise ConnectorMissing(f"unknown source type {type_name!r}; known types: {known}")
    try:
        cls = ep.load()
    except ImportError as exc:
        raise ConnectorMissing(
            f"the connector for {type_name!r} cannot load its driver ({exc.name or exc}); "
            + _install_hint(ep)
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise ConnectorMissing(f"entry point {_origin(ep)!r} is not a Connector subclass")
    return cls


def sql_dialect(type_name: str) -> Dialect | None:
    """The SQL dialect of a source type, None for a source that is not SQL.

    Its connector's `Connector.sql_dialect`; for a type whose connector cannot
    load (its driver is missing), the dialect of the same name, if there is one:
    each SQL connector's dialect is named for its type.
    """
    try:
        return load(type_name).sql_dialect
    except ConnectorMissing:
        dialects: tuple[Dialect, ...] = get_args(Dialect)
        return next((d for d in dialects if d == type_name), None)


def prepare_unloaded(type_name: str, raw: Any) -> PreparedQuery:
    """A query of a source whose connector cannot load, checked as far as can be.

    SQL (a string, for a type with a dialect) is still checked to be one read:
    `prepare_sql` raises `NotARead` or `ConfigError`. Anything else is kept as
    it is, for the connector to read once it is installed.
    """
    if isinstance(raw, str):
        dialect = sql_dialect(type_name)
        if dialect is not None:
            return prepare_sql(raw, style="dollar", dialect=dialect)
    return PreparedQuery(spec=raw)


def available() -> list[ConnectorInfo]:
    """Every installed type, with its class or the reason it cannot load."""
    infos = []
    for name, ep in sorted(_entry_points().items()):
        try:
            infos.append(ConnectorInfo(name, load(name), _origin(ep)))
        except ConnectorMissing as exc:
            infos.append(ConnectorInfo(name, None, _origin(ep), exc.message))
    return infos
