"""Finding connector classes: entry points, built in or from outside packages."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from connectors.base import Connector
from worker.errors import ConnectorMissing

__all__ = ["ENTRY_POINT_GROUP", "KNOWN_TYPES", "ConnectorInfo", "available", "load"]

ENTRY_POINT_GROUP = "data_lookup_worker.connectors"

#: Every source type the contract names, with the extra that installs its driver.
KNOWN_TYPES: dict[str, str | None] = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "sqlserver": "sqlserver",
    "sqlite": None,
    "mongodb": "mongodb",
    "redis": "redis",
    "elasticsearch": "elasticsearch",
    "rest_api": "rest",
    "graphql": "graphql",
    "soap": "soap",
    "google_sheets": "google_sheets",
    "airtable": "rest",
    "salesforce": "salesforce",
    "hubspot": "rest",
    "csv": None,
    "excel": "excel",
    "json": None,
    "webhook": "rest",
}


@dataclass(frozen=True)
class ConnectorInfo:
    type_name: str
    cls: type[Connector] | None
    origin: str
    problem: str | None = None


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _install_hint(type_name: str) -> str:
    extra = KNOWN_TYPES.get(type_name)
    if extra:
        return f"install its driver with: pip install 'data-lookup-worker[{extra}]'"
    return "install the package that provides it"


def load(type_name: str) -> type[Connector]:
    """The connector class for a source type, or `ConnectorMissing` saying what to do."""
    ep = _entry_points().get(type_name)
    if ep is None:
        if type_name in KNOWN_TYPES:
            raise ConnectorMissing(
                f"no connector for type {type_name!r} is installed in this worker yet"
            )
        known = ", ".join(sorted(set(KNOWN_TYPES) | set(_entry_points())))
        raise ConnectorMissing(f"unknown source type {type_name!r}; known types: {known}")
    try:
        cls = ep.load()
    except ImportError as exc:
        raise ConnectorMissing(
            f"the connector for {type_name!r} cannot load its driver ({exc.name or exc}); "
            + _install_hint(type_name)
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise ConnectorMissing(f"entry point {ep.value!r} is not a Connector subclass")
    return cls


def available() -> list[ConnectorInfo]:
    """Every known or installed type, with its class or the reason it cannot load."""
    infos = []
    for name in sorted(set(KNOWN_TYPES) | set(_entry_points())):
        ep = _entry_points().get(name)
        origin = ep.value if ep else "not installed"
        try:
            infos.append(ConnectorInfo(name, load(name), origin))
        except ConnectorMissing as exc:
            infos.append(ConnectorInfo(name, None, origin, exc.message))
    return infos
