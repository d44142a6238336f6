"""The small interface every data source implements.

A connector is one class per source *type* (``postgresql``, ``csv``…), found
through the ``data_lookup_worker.connectors`` entry-point group, so an outside
package adds a type without touching this repository::

    [project.entry-points."data_lookup_worker.connectors"]
    acme_erp = "acme_worker.erp:ERPConnector"

One instance serves one configured source. Its life:

1. ``Settings.model_validate(connection)`` when the tenant config loads: the
   connection block is checked as a typed, frozen model. Mark secret fields
   with ``SecretStr``, in nested models too: the redaction layer, the
   plaintext-secret warning and ``worker connectors`` know a secret by that
   mark alone (a free-form map such as ``headers`` is judged by its keys).
2. ``prepare(raw)`` (a classmethod) for every configured query, at load time:
   parse it, refuse anything that is not a read (raise `NotARead`), and say
   which parameters it takes (`PreparedQuery.positional` for SQL ``$1…$n``,
   `PreparedQuery.names` for ``{name}`` placeholders).
3. ``open()`` once, lazily, before the first read: create pools, clients.
4. ``run(query, bound, timeout_s=…)`` for each lookup. Parameters arrive
   already validated and must be *bound* (driver placeholders, typed values in
   filter documents), never spliced into query text. Return a `ReadResult`;
   an empty one means ``not_found``. Translate every driver exception into the
   `SourceError` family in one place (``raise SourceTimeout(...) from exc``).
   Blocking drivers run through ``asyncio.to_thread``: nothing here may block
   the event loop. The caller also wraps ``run`` in ``asyncio.timeout``; the
   ``timeout_s`` argument is there so the source can stop the work itself.
5. ``health_check()`` for ``worker test-connection``: the cheapest real round
   trip, never a query taken from a request.
6. ``close()`` on shutdown; it must be safe to call twice, or without open().
"""

from __future__ import annotations

import abc
import base64
import datetime as dt
import decimal
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from connectors.egress import UNRESTRICTED, EgressRefused, Reach, targets_of
from worker.errors import (
    ConfigError,
    NotARead,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)

__all__ = [
    "Bound",
    "ConfigError",
    "ConnectionSettings",
    "Connector",
    "Dialect",
    "Limits",
    "NotARead",
    "PreparedQuery",
    "ReadResult",
    "SourceAuthError",
    "SourceError",
    "SourceTimeout",
    "SourceUnavailable",
    "bind_placeholders",
    "first_error",
    "jsonable",
    "placeholder_names",
    "validate_query",
]

#: the SQL dialects a SQL connector says it speaks (`Connector.sql_dialect`)
Dialect = Literal["postgresql", "mysql", "sqlserver", "sqlite"]

M = TypeVar("M", bound=BaseModel)


class ConnectionSettings(BaseModel):
    """Base of every connector's ``connection`` model: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class Limits:
    """Caps on what one read may return."""

    max_rows: int = 100
    max_bytes: int = 5_000_000


@dataclass(frozen=True)
class PreparedQuery:
    """A configured query, parsed and checked once at load time.

    ``spec`` is the connector's own parsed form (SQL text in the driver's
    placeholder style, a filter document…). ``positional`` counts SQL ``$n``
    placeholders; ``names`` lists ``{name}`` placeholders in order of first use.
    ``columns`` names, for each ``$n`` in turn, the column it is compared with
    (``WHERE order_id = $1`` → ``"order_id"``), or None where no single column is.
    """

    spec: Any
    positional: int = 0
    names: tuple[str, ...] = ()
    columns: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Bound:
    """Validated parameters: ``args`` bind ``$1…$n``, ``params`` bind ``{name}``."""

    args: tuple[Any, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadResult:
    """What a read returned: ``rows`` as mappings, ``data`` the whole result."""

    rows: list[dict[str, Any]]
    data: Any = None

    @property
    def found(self) -> bool:
        return bool(self.rows) or self.data not in (None, [], {}, "")

    @classmethod
    def of_rows(cls, rows: Sequence[Mapping[str, Any]]) -> ReadResult:
        plain = [{str(k): jsonable(v) for k, v in r.items()} for r in rows]
        return cls(rows=plain, data=plain)


class Connector(abc.ABC):
    """One configured data source of one type. See the module docstring."""

    #: the ``type`` name in the tenant config
    type_name: ClassVar[str]
    #: the connection model; subclasses narrow it
    Settings: ClassVar[type[ConnectionSettings]]
    #: one line for ``worker connectors``: what a query looks like
    query_shape: ClassVar[str]
    #: a SQL source's dialect, for the read-only check of its queries (`connectors.sql`)
    sql_dialect: ClassVar[Dialect | None] = None

    def __init__(
        self,
        source_id: str,
        settings: ConnectionSettings,
        *,
        base_dir: Path,
        limits: Limits | None = None,
        reach: Reach = UNRESTRICTED,
    ) -> None:
        if not isinstance(settings, self.Settings):
            raise TypeError(f"{type(self).__name__} takes {self.Settings.__name__} settings")
        self.source_id = source_id
        self.settings = settings
        self.base_dir = base_dir
        self.limits = limits or Limits()
        #: where this source may reach (files, networks): contract §5.0
        self.reach = reach
        self.setup()

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Make per-instance state (locks, empty caches); no I/O — that is `open`'s."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} source={self.source_id!r}>"

    @classmethod
    @abc.abstractmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        """Parse one configured query; raise `NotARead` or `ConfigError`."""

    async def open(self) -> None:  # noqa: B027 - optional hook, most sources need it
        """Create pools and clients. Called once, lazily, before the first read."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything `open` made. Safe to call twice."""

    @abc.abstractmethod
    async def health_check(self) -> None:
        """The cheapest real round trip to the source; raise `SourceError`."""

    async def write_access(self) -> list[str]:
        """What this source's account could change, for `worker test-connection` to warn about.

        Each item names one power in a few words (``"superuser"``, ``"INSERT on
        shop.*"``); an empty list means none was found, or the source cannot tell.
        Called after a successful `health_check`; raise `SourceError` if asking fails.
        """
        return []

    @abc.abstractmethod
    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        """Run one prepared read with bound parameters; raise `SourceError`."""

    def resolve_path(self, raw: str) -> Path:
        """A file path from the config, relative to the config file's folder.

        For a config the engine serves (an untrusted `reach`): relative to
        ``WORKER_DATA_DIR``, symlinks followed, and refused (`SourceUnavailable`)
        unless it lands below that folder.
        """
        try:
            return self.reach.file(raw, self.base_dir)
        except EgressRefused as exc:
            raise SourceUnavailable(self.source_id, str(exc)) from None

    def targets(self) -> list[tuple[str, int]]:
        """The (host, port) pairs this source connects to, checked before it opens when
        its config is untrusted; by default read from the settings (`targets_of`)."""
        return targets_of(self.settings)

    def fail(self, message: str) -> SourceError:
        return SourceError(self.source_id, message)

    def cap_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return rows[: self.limits.max_rows]


def validate_query(model: type[M], raw: Mapping[str, Any], connector: type[Connector]) -> M:
    """``raw`` as ``model``; every problem in one `ConfigError` naming the expected shape."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"bad {connector.type_name} query ({problems}); expected {connector.query_shape}"
        ) from None


def first_error(exc: ValidationError) -> str:
    """The first problem in ``exc`` as ``where: message``."""
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def jsonable(value: Any) -> Any:
    """Turn driver types into what a template and the engine's JSON can take."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


# `{name}`, and the seed's n8n spellings `{{name}}` and `{{$json.name}}`.
_PLACEHOLDER = re.compile(
    r"\{\{\s*(?:\$json\.)?([A-Za-z_][A-Za-z0-9_]*)\s*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}"
)


def _names_in_text(text: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _PLACEHOLDER.finditer(text)]


def placeholder_names(obj: Any) -> tuple[str, ...]:
    """Every ``{name}`` placeholder in a string or structure, in order, once each."""
    seen: dict[str, None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, str):
            for name in _names_in_text(node):
                seen.setdefault(name, None)
        elif isinstance(node, Mapping):
            for value in node.values():
                walk(value)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value)

    walk(obj)
    return tuple(seen)


def bind_placeholders(obj: Any, params: Mapping[str, Any], *, url_path: bool = False) -> Any:
    """Fill ``{name}`` placeholders with parameter values, as data.

    A string that is exactly one placeholder becomes the parameter's typed
    value (so ``{"$ne": null}`` sent as a parameter stays a string, never an
    operator). Inside a longer string the value is inserted as text; with
    ``url_path`` it is percent-encoded as one path segment (``/``, ``?``, ``#``,
    ``..`` cannot escape it). Keys are never substituted.
    """
    if isinstance(obj, str):
        match = _PLACEHOLDER.fullmatch(obj.strip())
        if match:
            return params.get(match.group(1) or match.group(2))

        def text(m: re.Match[str]) -> str:
            value = params.get(m.group(1) or m.group(2))
            rendered = "" if value is None else str(value)
            if not url_path:
                return rendered
            encoded = quote(rendered, safe="")
            # "." and ".." are path steps even when percent-encoding leaves them be.
            return encoded.replace(".", "%2E") if encoded.strip(".") == "" else encoded

        return _PLACEHOLDER.sub(text, obj)
    if isinstance(obj, Mapping):
        return {k: bind_placeholders(v, params, url_path=url_path) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [bind_placeholders(v, params, url_path=url_path) for v in obj]
    return obj
