"""Redis sources: allow-listed read commands on a small pool of connections.

A query names one read command and its key::

    {"command": "HGETALL", "key": "order:{order_id}"}
    {"command": "HGET", "key": "order:{order_id}", "field": "status"}
    {"command": "ZREVRANGE", "key": "orders:{customer_phone}", "args": [0, 4]}

``{name}`` placeholders in the key, the field and the arguments are filled as
text; each becomes exactly one argument on the wire, so a parameter can never
add a command, a key or an option. The command itself is never a parameter.
Only the read commands in `READ_COMMANDS` pass `RedisConnector.prepare`;
anything else (SET, DEL, EVAL, CONFIG…) is refused when the config loads. Redis
has no read-only session to back that up: give the source an ACL user limited
to reads (``ACL SETUSER lookup on >… ~order:* +@read``, plus ``+select`` for a
``db`` other than 0), and the server refuses the rest too.

What a read returns (replies are decoded as UTF-8 text):

- a string, a number, a boolean (HEXISTS, SISMEMBER) or a score: ``data`` is
  the value and the one row is ``{"value": …}``;
- a hash (HGETALL; HMGET as ``{field: value}``): the row, and ``data``;
- a list or set (MGET, LRANGE, SMEMBERS, HKEYS, ZRANGE…): ``data`` is the list
  and each item a row ``{"value": …}`` (``{"value": …, "score": …}`` with
  WITHSCORES); set members come sorted;
- JSON.GET (RedisJSON): the parsed document; an object is the row.

A nil, an empty hash, set or list, or an MGET/HMGET of nothing but nils is
*not found*.

Two reads take no ``key``:

- ``{"command": "SCAN", "match": "order:{customer_phone}:*", "count": 100,
  "max_keys": 20, "type": "hash", "values": true}`` walks the keyspace with
  ``SCAN cursor MATCH … COUNT …`` (never KEYS, which blocks the server) until
  the cursor comes back to 0 or ``max_keys`` (at most ``max_rows``) keys have
  matched; the whole walk is under the read's deadline, and a walk that has
  not finished by then is a `SourceTimeout` (a partial list could say "no such
  order" wrongly). A parameter in ``match`` is a literal: its ``*``, ``?``,
  ``[``, ``]`` and ``\\`` are escaped, so a customer cannot widen the pattern.
  The rows are ``{"key": …}``, sorted by key; with ``values`` each also has
  ``type`` and ``value``, fetched in two pipelined round trips (TYPE of every
  key, then by type: GET, HGETALL, ``LRANGE 0 max_rows-1``, ``SRANDMEMBER
  key max_rows`` sorted, ``ZRANGE 0 max_rows-1``; any other type's value is
  null), and together they may hold at most ``max_bytes`` (as JSON).
- ``{"command": "INFO", "section": "memory"}`` answers INFO's fields as one row
  ``{"used_memory": "1024", …}`` (values as the server writes them, text), or
  with ``"rows": "fields"`` a row ``{"section", "field", "value"}`` per field.
  The section is fixed in the config. An ACL user needs ``+info`` for it.

At most ``max_rows`` items are fetched, by asking the server for no more:
LRANGE and ZRANGE windows are narrowed (a window counted from the end costs one
LLEN/ZCARD first), ZRANGE BYSCORE/BYLEX and ZRANGEBYSCORE get a ``LIMIT``,
SMEMBERS is sent as ``SRANDMEMBER key max_rows`` and HKEYS/HVALS as
``HRANDFIELD key max_rows`` (the whole set or hash when it is no bigger, in the
same order; otherwise that many distinct members), MGET sends only the first
``max_rows`` keys. HGETALL is one row whatever its size.

The deadline is the socket's: every read sets the borrowed connection's socket
timeout to ``timeout_s`` (the connect timeout to at most that), and a read that
passes it, or is cancelled, closes its connection instead of returning it, so a
late reply can never answer the next read. A pooled connection found dead (the
server restarted) is replaced, and a read that failed on one is tried once more
on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import redis.asyncio
import redis.exceptions
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from connectors import egress
from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
    NotARead,
    PreparedQuery,
    ReadResult,
    SourceAuthError,
    SourceTimeout,
    SourceUnavailable,
    bind_placeholders,
    jsonable,
    placeholder_names,
    validate_query,
)
from connectors.network import NetworkAccess, SSHSettings, TLSSettings

__all__ = [
    "READ_COMMANDS",
    "InfoSpec",
    "PoolStats",
    "RedisConnector",
    "RedisInfoQuery",
    "RedisQuery",
    "RedisScanQuery",
    "RedisSettings",
    "RedisSpec",
    "ScanSpec",
    "glob_escape",
]

_HEALTH_TIMEOUT_S = 10.0


# -- settings ------------------------------------------------------------------


class RedisSettings(ConnectionSettings):
    """``connection`` of a ``redis`` source: a ``url``, or ``host`` and the rest."""

    # A bad url would otherwise be echoed, password and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: ``redis://[user:password@]host[:port][/db]``, or ``rediss://`` for TLS
    url: SecretStr | None = None
    host: str | None = Field(default=None, min_length=1)
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0)
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    #: connections kept open; one read uses one at a time
    pool_size: int = Field(default=10, ge=1, le=256)
    #: how long opening a connection may take (and never longer than the read's deadline)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: shown by CLIENT LIST; the ACL user needs ``+client|setname`` for it
    client_name: str | None = Field(default=None, pattern=r"^[!-~]{1,64}$")
    #: TLS to the server, and an SSH bastion in front of it (connectors.network)
    ssl: TLSSettings | None = None
    ssh: SSHSettings | None = None

    @model_validator(mode="after")
    def _url_or_host(self) -> RedisSettings:
        if self.url is None:
            if self.host is None:
                raise ValueError("give either url or host")
            return self
        spelled = {"host", "port", "db", "username", "password"} & self.model_fields_set
        if spelled:
            raise ValueError(
                f"url already says where and who; leave out {', '.join(sorted(spelled))}"
            )
        _parse_url(self.url.get_secret_value())  # fails here, at load time
        return self


@dataclass(frozen=True)
class _Target:
    """Where and as whom to connect, from ``url`` or the separate fields."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool


def _parse_url(url: str) -> _Target:
    # Messages here never quote the URL: it may hold the password.
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("url must start with redis:// or rediss://")
    if parts.query or parts.fragment:
        raise ValueError("url takes no ?query or #fragment; set db, pool_size… as fields")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("url has a port that is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("url names no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("url path must be a database number, like redis://host:6379/0")
    return _Target(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


# -- queries -------------------------------------------------------------------


class _Reply(enum.Enum):
    VALUE = "value"  # a string, or nil
    NUMBER = "number"
    BOOL = "bool"
    SCORE = "score"  # a float as text, or nil
    HASH = "hash"  # field, value, field, value…
    FIELDS = "fields"  # HMGET: values in the order of the fields asked for
    LIST = "list"
    JSON = "json"


@dataclass(frozen=True)
class _Command:
    reply: _Reply
    usage: str
    #: how many ``args`` it takes: (least, most); most None for any number
    arity: tuple[int, int | None] = (0, 0)
    #: takes ``field`` (and must)
    field: bool = False


#: The read commands a query may use, and what each takes.
_COMMANDS: dict[str, _Command] = {
    "GET": _Command(_Reply.VALUE, "GET key"),
    "MGET": _Command(_Reply.LIST, "MGET key [args: more keys]", (0, None)),
    "HGET": _Command(_Reply.VALUE, "HGET key field", field=True),
    "HGETALL": _Command(_Reply.HASH, "HGETALL key"),
    "HMGET": _Command(_Reply.FIELDS, "HMGET key [args: fields]", (1, None)),
    "HEXISTS": _Command(_Reply.BOOL, "HEXISTS key field", field=True),
    "HLEN": _Command(_Reply.NUMBER, "HLEN key"),
    "HKEYS": _Command(_Reply.LIST, "HKEYS key"),
    "HVALS": _Command(_Reply.LIST, "HVALS key"),
    "SMEMBERS": _Command(_Reply.LIST, "SMEMBERS key"),
    "SISMEMBER": _Command(_Reply.BOOL, "SISMEMBER key [args: member]", (1, 1)),
    "SCARD": _Command(_Reply.NUMBER, "SCARD key"),
    "ZRANGE": _Command(
        _Reply.LIST,
        "ZRANGE key [args: start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]]",
        (2, 8),
    ),
    "ZREVRANGE": _Command(_Reply.LIST, "ZREVRANGE key [args: start stop [WITHSCORES]]", (2, 3)),
    "ZRANGEBYSCORE": _Command(
        _Reply.LIST,
        "ZRANGEBYSCORE key [args: min max [WITHSCORES] [LIMIT offset count]]",
        (2, 6),
    ),
    "ZSCORE": _Command(_Reply.SCORE, "ZSCORE key [args: member]", (1, 1)),
    "ZCARD": _Command(_Reply.NUMBER, "ZCARD key"),
    "LRANGE": _Command(_Reply.LIST, "LRANGE key [args: start stop]", (2, 2)),
    "LLEN": _Command(_Reply.NUMBER, "LLEN key"),
    "LINDEX": _Command(_Reply.VALUE, "LINDEX key [args: index]", (1, 1)),
    "EXISTS": _Command(_Reply.NUMBER, "EXISTS key [args: more keys]", (0, None)),
    "TTL": _Command(_Reply.NUMBER, "TTL key"),
    "TYPE": _Command(_Reply.VALUE, "TYPE key"),
    "STRLEN": _Command(_Reply.NUMBER, "STRLEN key"),
    "JSON.GET": _Command(_Reply.JSON, "JSON.GET key [args: paths]", (0, None)),
}

#: The commands a query may name: reads only (SCAN and INFO take no key).
READ_COMMANDS: frozenset[str] = frozenset({*_COMMANDS, "SCAN", "INFO"})

#: Commands whose window is by index, and how to learn the length they count from.
_LENGTH_OF = {"LRANGE": "LLEN", "ZRANGE": "ZCARD", "ZREVRANGE": "ZCARD"}


class RedisQuery(BaseModel):
    """A redis query as the config writes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: str = Field(min_length=1)
    key: str = Field(min_length=1)
    field: str | None = Field(default=None, min_length=1)
    args: tuple[str | int | float, ...] = ()

    @field_validator("args", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value):
            raise ValueError("args are text or numbers, not true/false")
        return value


class RedisScanQuery(BaseModel):
    """A SCAN read: the keys matching a pattern (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: str
    match: str = Field(min_length=1, max_length=1000)
    #: SCAN's COUNT: how much of the keyspace one call looks at (a hint to the server)
    count: int = Field(default=100, ge=1, le=10_000)
    #: stop once this many keys matched; never more than max_rows
    max_keys: int | None = Field(default=None, ge=1)
    type: Literal["string", "hash", "list", "set", "zset", "stream"] | None = None
    #: also fetch each key's value (pipelined)
    values: bool = False


class RedisInfoQuery(BaseModel):
    """An INFO read: the server's fields, of one section or the default ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: str
    section: str | None = Field(default=None, pattern=r"^[A-Za-z_]{1,40}$")
    #: ``row``: one row of every field; ``fields``: a row per field
    rows: Literal["row", "fields"] = "row"


@dataclass(frozen=True)
class ScanSpec:
    """A prepared SCAN: the pattern still holding ``{name}``."""

    match: str
    count: int
    max_keys: int | None
    type: str | None
    values: bool

    command: ClassVar[str] = "SCAN"


@dataclass(frozen=True)
class InfoSpec:
    """A prepared INFO."""

    section: str | None
    rows: str

    command: ClassVar[str] = "INFO"


@dataclass(frozen=True)
class RedisSpec:
    """A prepared redis read: the command, and its parts still holding ``{name}``."""

    command: str
    key: str
    field: str | None = None
    #: the arguments that are values (keys, fields, members, start/stop…)
    values: tuple[str, ...] = ()
    #: ZRANGE's ``BYSCORE``/``BYLEX`` (ZRANGEBYSCORE is ``BYSCORE``)
    by: str | None = None
    rev: bool = False
    #: ``LIMIT offset count``
    limit: tuple[str, str] | None = None
    withscores: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        parts = [self.key, self.field or "", *self.values, *(self.limit or ())]
        return placeholder_names(parts)


def _prepare_spec(raw: RedisQuery) -> RedisSpec:
    """Check the command is an allowed read and its arguments fit it."""
    if placeholder_names(raw.command):
        raise ConfigError("the command cannot be a parameter: name one read command")
    command = raw.command.strip().upper()
    known = _COMMANDS.get(command)
    if known is None:
        raise NotARead(
            f"{raw.command!r} is not one of the read commands a redis query may use: "
            + ", ".join(sorted(READ_COMMANDS))
        )
    args = tuple(str(a) for a in raw.args)
    least, most = known.arity
    if len(args) < least or (most is not None and len(args) > most):
        raise ConfigError(f"wrong args for {command}; it is {known.usage}")
    if known.field and raw.field is None:
        raise ConfigError(f'{command} needs "field": {known.usage}')
    if raw.field is not None and not known.field:
        raise ConfigError(f'{command} takes no "field": {known.usage}')
    spec = RedisSpec(command, raw.key, raw.field, args)
    if command in ("ZRANGE", "ZREVRANGE", "ZRANGEBYSCORE"):
        spec = _sorted_set_range(spec, known)
    if command in ("LRANGE", "LINDEX"):
        for value in args:
            _check_integer(value, command, known)
    return spec


def _sorted_set_range(spec: RedisSpec, known: _Command) -> RedisSpec:
    """Split ZRANGE-like args into the window and the (literal) options."""
    start, stop, *rest = spec.values
    words = [w.upper() for w in rest]
    by: str | None = "BYSCORE" if spec.command == "ZRANGEBYSCORE" else None
    rev = withscores = False
    limit: tuple[str, str] | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if placeholder_names(rest[i]):
            raise ConfigError(f"{spec.command} options cannot be parameters: {known.usage}")
        if word == "WITHSCORES" and not withscores:
            withscores = True
        elif word in ("BYSCORE", "BYLEX") and spec.command == "ZRANGE" and by is None:
            by = word
        elif word == "REV" and spec.command == "ZRANGE" and not rev:
            rev = True
        elif word == "LIMIT" and spec.command != "ZREVRANGE" and limit is None:
            if i + 2 >= len(rest):
                raise ConfigError(f"LIMIT needs an offset and a count: {known.usage}")
            limit = (rest[i + 1], rest[i + 2])
            for value in limit:
                _check_integer(value, spec.command, known)
            i += 2
        else:
            raise ConfigError(f"unexpected {rest[i]!r} in {spec.command}: {known.usage}")
        i += 1
    if limit is not None and by is None:
        raise ConfigError("ZRANGE takes LIMIT only with BYSCORE or BYLEX")
    if withscores and by == "BYLEX":
        raise ConfigError("ZRANGE BYLEX cannot take WITHSCORES")
    if by is None:
        for value in (start, stop):
            _check_integer(value, spec.command, known)
    return RedisSpec(spec.command, spec.key, None, (start, stop), by, rev, limit, withscores)


def _check_integer(value: str, command: str, known: _Command) -> None:
    if not placeholder_names(value) and _integer(value) is None:
        raise ConfigError(f"{command} takes a whole number where {value!r} is: {known.usage}")


def _integer(text: str) -> int | None:
    """A whole number written as Redis reads one (no ``1_000``, no ``+1``)."""
    text = text.strip()
    return int(text) if _WHOLE.fullmatch(text) else None


_WHOLE = re.compile(r"-?[0-9]{1,19}")


# -- binding, capping and reading replies --------------------------------------


def _text(value: Any) -> str:
    """A bound value as the text Redis receives."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    plain = jsonable(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def _bind(template: str, params: Mapping[str, Any]) -> str:
    return _text(bind_placeholders(template, params))


class _BadArgument(Exception):
    """A bound argument does not fit its command (a number that is not one)."""


def _whole(text: str, what: str) -> int:
    number = _integer(text)
    if number is None:
        raise _BadArgument(f"the {what} is not a whole number")
    return number


def _window(start: int, stop: int, cap: int, length: int | None) -> tuple[int, int] | None:
    """An index window of at most ``cap`` items; None when it needs the length first.

    Without the length only windows from a start counted from the front, to a
    stop counted from the front or to the very end (-1), can be narrowed.
    """
    if length is None:
        if start < 0 or stop < -1:
            return None
        return start, (start + cap - 1 if stop == -1 else min(stop, start + cap - 1))
    start = max(length + start, 0) if start < 0 else start
    stop = length + stop if stop < 0 else stop
    if stop < start:
        return _EMPTY_WINDOW  # sent as-is, a negative stop would count from the end again
    return start, min(stop, start + cap - 1)


#: a window Redis answers with nothing
_EMPTY_WINDOW = (1, 0)


@dataclass(frozen=True)
class _Call:
    """One read with its parameters bound."""

    spec: RedisSpec
    key: str
    field: str | None
    values: tuple[str, ...]
    limit: tuple[str, str] | None

    @classmethod
    def bind(cls, spec: RedisSpec, params: Mapping[str, Any]) -> _Call:
        return cls(
            spec,
            _bind(spec.key, params),
            None if spec.field is None else _bind(spec.field, params),
            tuple(_bind(v, params) for v in spec.values),
            None
            if spec.limit is None
            else (_bind(spec.limit[0], params), _bind(spec.limit[1], params)),
        )

    def needs_length(self, cap: int) -> str | None:
        """The command that gives the length an index window is counted from, if needed."""
        if self.spec.command not in _LENGTH_OF or self.spec.by is not None:
            return None
        start, stop = (_whole(v, "range") for v in self.values)
        return _LENGTH_OF[self.spec.command] if _window(start, stop, cap, None) is None else None

    def line(self, cap: int, length: int | None = None) -> list[str]:
        """The command as sent: fetching at most ``cap`` items (module docstring)."""
        command, key = self.spec.command, self.key
        if command == "SMEMBERS":
            return ["SRANDMEMBER", key, str(cap)]
        if command == "HKEYS":
            return ["HRANDFIELD", key, str(cap)]
        if command == "HVALS":
            return ["HRANDFIELD", key, str(cap), "WITHVALUES"]
        if command == "MGET":
            return [command, *[key, *self.values][:cap]]
        if command in ("HGET", "HEXISTS"):
            return [command, key, self.field or ""]
        if command in _LENGTH_OF or command == "ZRANGEBYSCORE":
            return [command, key, *self._range(cap, length)]
        return [command, key, *self.values]

    def _range(self, cap: int, length: int | None) -> list[str]:
        spec = self.spec
        words = list(self.values)
        if spec.by is None:
            start, stop = (_whole(v, "range") for v in self.values)
            window = _window(start, stop, cap, length)
            if window is None:  # `needs_length` is asked first; this is a bug guard
                raise _BadArgument("the range needs the length of the list first")
            words = [str(window[0]), str(window[1])]
        elif spec.command == "ZRANGE":
            words.append(spec.by)
        if spec.rev:
            words.append("REV")
        if spec.by is not None:
            offset, count = 0, cap
            if self.limit is not None:
                offset = _whole(self.limit[0], "LIMIT offset")
                count = _whole(self.limit[1], "LIMIT count")
                count = cap if count < 0 else min(count, cap)
            words += ["LIMIT", str(offset), str(count)]
        if spec.withscores:
            words.append("WITHSCORES")
        return words


def _score(text: Any) -> float | str:
    number = float(text)
    return number if math.isfinite(number) else str(text)  # "inf" is not JSON


def _found(value: Any) -> ReadResult:
    """One value: ``data`` is it, and the one row is ``{"value": …}``."""
    value = jsonable(value)
    return ReadResult(rows=[{"value": value}], data=value)


def _row(mapping: Mapping[str, Any]) -> ReadResult:
    """A hash or an object: the one row, and ``data``; an empty one is not found."""
    if not mapping:
        return ReadResult(rows=[])
    row = {str(k): jsonable(v) for k, v in mapping.items()}
    return ReadResult(rows=[row], data=row)


def _items(values: Sequence[Any], cap: int) -> ReadResult:
    values = [jsonable(v) for v in values[:cap]]
    if not values:
        return ReadResult(rows=[])
    return ReadResult(rows=[{"value": v} for v in values], data=values)


def _result(call: _Call, reply: Any, cap: int) -> ReadResult:
    """A reply as rows and data (module docstring)."""
    spec = call.spec
    kind = _COMMANDS[spec.command].reply
    if reply is None:
        return ReadResult(rows=[])
    if kind is _Reply.VALUE or kind is _Reply.NUMBER:
        return _found(reply)
    if kind is _Reply.BOOL:
        return _found(bool(reply))
    if kind is _Reply.SCORE:
        return _found(_score(reply))
    if kind is _Reply.HASH:
        return _row(dict(zip(reply[::2], reply[1::2], strict=True)))
    if kind is _Reply.FIELDS:
        if all(v is None for v in reply):
            return ReadResult(rows=[])
        return _row(dict(zip(call.values, reply, strict=True)))
    if kind is _Reply.JSON:
        return _json_result(reply, cap)
    if spec.withscores:
        rows = [
            {"value": m, "score": _score(s)} for m, s in zip(reply[::2], reply[1::2], strict=True)
        ]
        return ReadResult.of_rows(rows[:cap]) if rows else ReadResult(rows=[])
    if spec.command == "HVALS":
        reply = reply[1::2]
    elif spec.command == "SMEMBERS":
        reply = sorted(reply)
    elif spec.command == "MGET" and all(v is None for v in reply):
        return ReadResult(rows=[])
    return _items(reply, cap)


def _json_result(reply: Any, cap: int) -> ReadResult:
    document = json.loads(reply)
    if document is None:
        return ReadResult(rows=[])
    if isinstance(document, dict):
        return _row(document)
    if isinstance(document, list):
        items = document[:cap]
        if not items:
            return ReadResult(rows=[])
        rows = [i if isinstance(i, dict) else {"value": i} for i in items]
        return ReadResult(rows=[jsonable(r) for r in rows], data=jsonable(items))
    return _found(document)


# -- the pool ------------------------------------------------------------------


_Connection = redis.asyncio.Connection
_TLSConnection = redis.asyncio.SSLConnection


def _tls_options(tls: TLSSettings | None, base_dir: Path) -> dict[str, Any]:
    """redis-py's TLS keywords from the ``ssl`` block (verified unless told not)."""
    if tls is None:  # a rediss:// URL without an ssl block: verify against the system store
        return {"ssl_cert_reqs": "required", "ssl_check_hostname": True}

    def path(raw: str | None) -> str | None:
        if raw is None:
            return None
        return str(egress.current().file(raw, base_dir))  # below WORKER_DATA_DIR if untrusted

    return {
        "ssl_cert_reqs": "none" if tls.mode == "require" else "required",
        "ssl_check_hostname": tls.mode == "verify-full",
        "ssl_ca_certs": path(tls.ca_file),
        "ssl_certfile": path(tls.cert_file),
        "ssl_keyfile": path(tls.key_file),
        "ssl_password": tls.key_password.get_secret_value() if tls.key_password else None,
    }


@dataclass(frozen=True)
class PoolStats:
    """Connections a source holds: ``idle`` ones kept open, ``in_use`` by a read."""

    idle: int
    in_use: int


async def _stale(conn: _Connection) -> bool:
    """Whether an idle pooled connection must be replaced before it serves a read.

    redis-py up to 8.1 answers True for a connection the server closed (EOF is
    "readable"); from 8.2 on it raises `ConnectionError` instead. Either way,
    and for data nobody asked for, the connection is not fit for another read.
    """
    try:
        return bool(await conn.can_read())
    except (redis.exceptions.ConnectionError, OSError):
        return True


class _Pool:
    """At most ``size`` connections; a read borrows one and gives it back, or closes it.

    Giving a connection back, or closing it, never suspends (``disconnect``
    with ``nowait`` only closes the socket), so a read cancelled at any point
    never leaves its connection open, or counted as borrowed.
    """

    def __init__(self, source_id: str, size: int, make: Callable[[], _Connection]) -> None:
        self.source_id = source_id
        self._make = make
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self.closed = False

    def stats(self) -> PoolStats:
        return PoolStats(idle=len(self._idle), in_use=len(self._busy))

    @contextlib.asynccontextmanager
    async def borrow(self, timeout_s: float, connect_timeout_s: float) -> AsyncIterator[_Borrowed]:
        async with self._slots:
            if self.closed:
                raise SourceUnavailable(self.source_id, "the source was closed")
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._make()
            self._busy.add(conn)
            try:
                conn.socket_timeout = timeout_s
                conn.socket_connect_timeout = min(connect_timeout_s, timeout_s)
                if reused and await _stale(conn):
                    # The server closed it (a restart) or left a reply unread: replace it.
                    await conn.disconnect(nowait=True)
                    reused = False
                await conn.connect()  # type: ignore[no-untyped-call]  # unannotated upstream
                yield _Borrowed(conn, reused)
            except redis.exceptions.ResponseError:
                raise  # the server answered: the connection is still in step
            except BaseException:
                # Timeout, cancellation, a broken socket: a reply may still be on its
                # way, so the connection must never serve another read.
                await conn.disconnect(nowait=True)
                raise
            finally:
                self._busy.discard(conn)
                if conn.is_connected and not self.closed:
                    self._idle.append(conn)
                elif conn.is_connected:
                    await conn.disconnect(nowait=True)

    async def drop_idle(self) -> None:
        """Close the idle connections (after one was found dead, the rest likely are)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)

    async def close(self) -> None:
        self.closed = True
        busy = list(self._busy)
        await self.drop_idle()
        for conn in busy:  # their reads end with a closed-connection error
            await conn.disconnect(nowait=True)


@dataclass(frozen=True)
class _Borrowed:
    conn: _Connection
    #: it served an earlier read, so it may have died since
    reused: bool


# -- the connector -------------------------------------------------------------


class RedisConnector(Connector):
    """A Redis server (or anything speaking its protocol), read with allow-listed commands."""

    type_name: ClassVar[str] = "redis"
    Settings: ClassVar[type[ConnectionSettings]] = RedisSettings
    query_shape: ClassVar[str] = (
        '{"command": "HGETALL", "key": "order:{order_id}"} (read commands only; '
        '"field" for HGET/HEXISTS, "args" for the rest)'
    )
    extra: ClassVar[str | None] = "redis"

    settings: RedisSettings

    def setup(self) -> None:
        self._pool: _Pool | None = None
        self._network = NetworkAccess(
            self.source_id, ssl=self.settings.ssl, ssh=self.settings.ssh, base_dir=self.base_dir
        )
        self._route: tuple[str, int] | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a redis query is a mapping: {cls.query_shape}")
        command = raw.get("command")
        word = command.strip().upper() if isinstance(command, str) else None
        if word == "SCAN" and not placeholder_names(command):
            scan = validate_query(RedisScanQuery, raw, cls)
            spec = ScanSpec(scan.match, scan.count, scan.max_keys, scan.type, scan.values)
            return PreparedQuery(spec=spec, names=placeholder_names(scan.match))
        if word == "INFO":
            info = validate_query(RedisInfoQuery, raw, cls)
            return PreparedQuery(spec=InfoSpec(info.section, info.rows))
        query = validate_query(RedisQuery, raw, cls)
        prepared = _prepare_spec(query)
        return PreparedQuery(spec=prepared, names=prepared.names)

    async def open(self) -> None:
        # Only the pool object (and the SSH tunnel, if any): connections open on the
        # first reads, within their deadline.
        target = self._target()
        self._route = await self._network.route(target.host, target.port)
        self._ensure_pool()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        await self._network.close()
        self._route = None

    def pool_stats(self) -> PoolStats:
        """How many connections the source holds now (all zero before `open`)."""
        return self._pool.stats() if self._pool is not None else PoolStats(0, 0)

    async def health_check(self) -> None:
        with self._translating(_HEALTH_TIMEOUT_S):
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                try:
                    await self._call(["PING"], _HEALTH_TIMEOUT_S)
                except redis.exceptions.NoPermissionError:
                    pass  # a read-only ACL user may not PING; the server answered it all the same

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if isinstance(spec, ScanSpec):
            return await self._scan(spec, bound.params, timeout_s)
        if isinstance(spec, InfoSpec):
            return await self._info(spec, timeout_s)
        if not isinstance(spec, RedisSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        if spec.command not in _COMMANDS:  # a hand-made spec: still only reads
            raise NotARead(f"{spec.command!r} is not a read command")
        cap = self.limits.max_rows
        call = _Call.bind(spec, bound.params)
        with self._translating(timeout_s, spec.command):
            async with asyncio.timeout(timeout_s):  # waiting for a connection counts too
                length_of = call.needs_length(cap)
                length = None
                if length_of is not None:
                    length = int(await self._call([length_of, call.key], timeout_s))
                reply = await self._call(call.line(cap, length), timeout_s)
                return _result(call, reply, cap)

    async def _scan(
        self, spec: ScanSpec, params: Mapping[str, Any], timeout_s: float
    ) -> ReadResult:
        cap = self.limits.max_rows
        want = min(spec.max_keys or cap, cap)
        pattern = _bind(spec.match, {k: glob_escape(_text(v)) for k, v in params.items()})
        walk = _Walk()
        with self._translating(timeout_s, "SCAN"):
            try:
                async with asyncio.timeout(timeout_s):
                    keys = await self._walk(pattern, spec, want, walk, timeout_s)
                    if not keys:
                        return ReadResult(rows=[])
                    if not spec.values:
                        return ReadResult.of_rows([{"key": key} for key in keys])
                    rows = await self._values(keys, cap, timeout_s)
            except TimeoutError as exc:
                raise SourceTimeout(
                    self.source_id,
                    f"SCAN had not finished within {timeout_s:g} s ({walk.calls} calls, "
                    f"{walk.matched} keys matched): narrow the pattern or lower max_keys",
                ) from exc
        if len(json.dumps(rows)) > self.limits.max_bytes:
            raise self.fail(
                f"the values of the {len(rows)} keys SCAN matched are larger than "
                f"{self.limits.max_bytes} bytes: lower max_keys or leave out values"
            )
        return ReadResult(rows=rows, data=rows)

    async def _walk(
        self, pattern: str, spec: ScanSpec, want: int, walk: _Walk, timeout_s: float
    ) -> list[str]:
        """SCAN until the cursor is back at 0 or ``want`` keys matched; sorted, at most ``want``."""
        found: set[str] = set()  # SCAN may return a key twice
        cursor = "0"
        while True:
            line = ["SCAN", cursor, "MATCH", pattern, "COUNT", str(spec.count)]
            if spec.type is not None:
                line += ["TYPE", spec.type]
            cursor, batch = await self._call(line, timeout_s)
            walk.calls += 1
            found.update(batch)
            walk.matched = len(found)
            if str(cursor) == "0" or len(found) >= want:
                return sorted(found)[:want]
            cursor = str(cursor)

    async def _values(self, keys: list[str], cap: int, timeout_s: float) -> list[dict[str, Any]]:
        """Each key's type and value, in two pipelined round trips."""
        types = await self._call_many([["TYPE", key] for key in keys], timeout_s)
        lines = {
            key: _VALUE_OF[kind](key, cap) for key, kind in zip(keys, types, strict=True)
            if kind in _VALUE_OF
        }  # fmt: skip
        replies = dict(
            zip(lines, await self._call_many(list(lines.values()), timeout_s), strict=True)
        )
        rows = []
        for key, kind in zip(keys, types, strict=True):
            value: Any = None
            if key in replies and replies[key] is not None:
                value = _scanned_value(str(kind), replies[key], cap)
            rows.append({"key": key, "type": str(kind), "value": value})
        return rows

    async def _info(self, spec: InfoSpec, timeout_s: float) -> ReadResult:
        line = ["INFO"] if spec.section is None else ["INFO", spec.section]
        with self._translating(timeout_s, "INFO"):
            async with asyncio.timeout(timeout_s):
                text = await self._call(line, timeout_s)
        fields = _info_fields(str(text))
        if not fields:
            return ReadResult(rows=[])
        if spec.rows == "fields":
            rows = [{"section": s, "field": f, "value": v} for s, f, v in fields]
            return ReadResult.of_rows(self.cap_rows(rows))
        row = {field: value for _, field, value in fields}
        return ReadResult(rows=[row], data=row)

    def _target(self) -> _Target:
        """Where to connect and as whom: the one place a tunnel or TLS settings plug in."""
        settings = self.settings
        if settings.url is not None:
            return _parse_url(settings.url.get_secret_value())
        if settings.host is None:  # the settings model makes this impossible
            raise SourceUnavailable(self.source_id, "the source has no host")
        return _Target(
            host=settings.host,
            port=settings.port,
            db=settings.db,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            tls=False,
        )

    def _ensure_pool(self) -> _Pool:
        if self._pool is None:
            target = self._target()
            if self.settings.ssh is not None and self._route is None:
                raise SourceUnavailable(self.source_id, "the SSH tunnel is not open (call open())")
            host, port = self._route or (target.host, target.port)
            tls = target.tls or self.settings.ssl is not None
            connection_class = _TLSConnection if tls else _Connection
            options: dict[str, Any] = {
                "host": host,
                "port": port,
                "db": target.db,
                "username": target.username,
                "password": target.password,
                "client_name": self.settings.client_name,
                "decode_responses": True,
                # RESP2 whatever redis-py's default: every server speaks it, and the
                # replies are read here by their shape (hashes as field, value…).
                "protocol": 2,
                "socket_connect_timeout": self.settings.connect_timeout_s,
                "retry": Retry(NoBackoff(), 0),  # `_call` decides what is worth a retry
            }
            if tls:
                options.update(_tls_options(self.settings.ssl, self.base_dir))
            self._pool = _Pool(
                self.source_id, self.settings.pool_size, lambda: connection_class(**options)
            )
        return self._pool

    async def _call(self, line: Sequence[str], timeout_s: float) -> Any:
        """Send one command and read its reply; once more if a pooled connection was dead."""
        pool = self._ensure_pool()
        try:
            return await self._send(pool, line, timeout_s, retry_dead=True)
        except _DeadConnection:
            # A read is safe to repeat; the connections opened with that one are suspect too.
            await pool.drop_idle()
            return await self._send(pool, line, timeout_s, retry_dead=False)

    async def _call_many(self, lines: Sequence[Sequence[str]], timeout_s: float) -> list[Any]:
        """Send commands in one write (a pipeline) and read every reply; as `_call`."""
        if not lines:
            return []
        pool = self._ensure_pool()
        try:
            return await self._send_many(pool, lines, timeout_s, retry_dead=True)
        except _DeadConnection:
            await pool.drop_idle()
            return await self._send_many(pool, lines, timeout_s, retry_dead=False)

    async def _send(
        self, pool: _Pool, line: Sequence[str], timeout_s: float, *, retry_dead: bool
    ) -> Any:
        return (await self._send_many(pool, [line], timeout_s, retry_dead=retry_dead))[0]

    async def _send_many(
        self, pool: _Pool, lines: Sequence[Sequence[str]], timeout_s: float, *, retry_dead: bool
    ) -> list[Any]:
        async with pool.borrow(timeout_s, self.settings.connect_timeout_s) as borrowed:
            try:
                conn = borrowed.conn
                if len(lines) == 1:
                    await conn.send_command(*lines[0])
                else:
                    await conn.send_packed_command(conn.pack_commands(lines))
                replies: list[Any] = []
                refused: redis.exceptions.ResponseError | None = None
                for _ in lines:
                    try:  # every reply is read, so the connection stays in step
                        replies.append(await conn.read_response())
                    except redis.exceptions.ResponseError as exc:
                        refused = refused or exc
                        replies.append(None)
                if refused is not None:
                    raise refused
                return replies
            except redis.exceptions.ConnectionError as exc:
                if pool.closed:
                    raise SourceUnavailable(self.source_id, "the source was closed") from exc
                if retry_dead and borrowed.reused and _dead_connection(exc):
                    raise _DeadConnection from exc
                raise

    @contextlib.contextmanager
    def _translating(self, timeout_s: float, command: str = "PING") -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place. No secret, no value."""
        target = self._target()
        where = f"{target.host}:{target.port}"
        try:
            yield
        except (TimeoutError, redis.exceptions.TimeoutError) as exc:
            raise SourceTimeout(
                self.source_id,
                f"Redis did not answer {command} within {timeout_s:g} s; the connection was closed",
            ) from exc
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise SourceAuthError(
                self.source_id,
                f"authentication failed at Redis {where}: check the username and password",
            ) from exc
        except redis.exceptions.BusyLoadingError as exc:
            raise SourceUnavailable(
                self.source_id, f"Redis at {where} is still loading its data"
            ) from exc
        except redis.exceptions.ConnectionError as exc:
            raise SourceUnavailable(self.source_id, f"cannot reach Redis at {where}") from exc
        except redis.exceptions.NoPermissionError as exc:
            raise self.fail(
                f"the Redis user may not run {command} or read its key (NOPERM)"
            ) from exc
        except redis.exceptions.ResponseError as exc:
            raise self.fail(_response_error(exc, command)) from exc
        except _BadArgument as exc:
            raise self.fail(f"{command}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise self.fail(f"{command} answered a value that is not UTF-8 text") from exc
        except json.JSONDecodeError as exc:
            raise self.fail(f"{command} answered something that is not JSON") from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self.fail(f"{command} failed: {type(exc).__name__}") from exc


class _DeadConnection(Exception):
    """A connection that served earlier reads turned out closed: worth one more try."""


def _dead_connection(exc: redis.exceptions.ConnectionError) -> bool:
    """A socket-level failure, not the server refusing us."""
    refusals = (
        redis.exceptions.AuthenticationError,
        redis.exceptions.AuthorizationError,
        redis.exceptions.BusyLoadingError,
        redis.exceptions.MaxConnectionsError,
    )
    return not isinstance(exc, refusals)


def _response_error(exc: redis.exceptions.ResponseError, command: str) -> str:
    """The server's error text, without anything it echoed of the arguments."""
    text = str(exc).split(", with args beginning with", 1)[0].strip()
    if "unknown command" in text.lower():
        if command == "JSON.GET":
            return "this Redis has no RedisJSON module (JSON.GET is an unknown command)"
        return f"this Redis does not know the command {command}"
    if text.upper().startswith("WRONGTYPE"):
        return f"{command} does not fit the type of value the key holds (WRONGTYPE)"
    return f"Redis refused {command}: {text[:200]}"


# -- SCAN and INFO -------------------------------------------------------------------


_GLOB = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis glob pattern (MATCH): ``*?[]\\`` escaped."""
    return _GLOB.sub(r"\\\1", text)


@dataclass
class _Walk:
    """How far a SCAN got, for the message when it runs out of time."""

    calls: int = 0
    matched: int = 0


#: the command that reads a scanned key's value, by its TYPE, fetching at most ``cap`` items
_VALUE_OF: dict[str, Callable[[str, int], list[str]]] = {
    "string": lambda key, cap: ["GET", key],
    "hash": lambda key, cap: ["HGETALL", key],
    "list": lambda key, cap: ["LRANGE", key, "0", str(cap - 1)],
    "set": lambda key, cap: ["SRANDMEMBER", key, str(cap)],
    "zset": lambda key, cap: ["ZRANGE", key, "0", str(cap - 1)],
}


def _scanned_value(kind: str, reply: Any, cap: int) -> Any:
    if kind == "hash":
        return {str(k): jsonable(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}
    if kind == "set":
        return sorted(jsonable(v) for v in reply)
    if isinstance(reply, list):
        return [jsonable(v) for v in reply[:cap]]
    return jsonable(reply)


def _info_fields(text: str) -> list[tuple[str, str, str]]:
    """INFO's text as (section, field, value); ``# Section`` lines name the section."""
    fields = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            section = line.lstrip("#").strip().lower()
        elif ":" in line:
            field, _, value = line.partition(":")
            fields.append((section, field, value))
    return fields
