"""The redis query language, pure: commands, arguments, windows, replies (no I/O).

A query names one read command and its key::

    {"command": "HGETALL", "key": "order:{order_id}"}
    {"command": "HGET", "key": "order:{order_id}", "field": "status"}
    {"command": "ZREVRANGE", "key": "orders:{customer_phone}", "args": [0, 4]}

``{name}`` placeholders in the key, the field and the arguments are filled as
text; each becomes exactly one argument on the wire, so a parameter can never
add a command, a key or an option. The command itself is never a parameter.
Only the read commands in `READ_COMMANDS` pass `prepare_spec`;
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
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import (
    ConfigError,
    NotARead,
    ReadResult,
    bind_placeholders,
    jsonable,
    placeholder_names,
)

__all__ = [
    "COMMANDS",
    "READ_COMMANDS",
    "BadArgument",
    "BoundRead",
    "InfoSpec",
    "RedisInfoQuery",
    "RedisQuery",
    "RedisScanQuery",
    "RedisSpec",
    "ScanSpec",
    "bind_text",
    "glob_escape",
    "info_fields",
    "info_line",
    "info_result",
    "json_result",
    "prepare_spec",
    "refusal_message",
    "scan_line",
    "scan_pattern",
    "scanned_rows",
    "shape_reply",
    "value_lines",
    "window",
    "wire_text",
]

# -- the command table -------------------------------------------------------------


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
COMMANDS: dict[str, _Command] = {
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
READ_COMMANDS: frozenset[str] = frozenset({*COMMANDS, "SCAN", "INFO"})

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


def prepare_spec(raw: RedisQuery) -> RedisSpec:
    """Check the command is an allowed read and its arguments fit it."""
    if placeholder_names(raw.command):
        raise ConfigError("the command cannot be a parameter: name one read command")
    command = raw.command.strip().upper()
    known = COMMANDS.get(command)
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


def wire_text(value: Any) -> str:
    """A bound value as the text Redis receives."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    plain = jsonable(value)
    return plain if isinstance(plain, str) else json.dumps(plain)


def bind_text(template: str, params: Mapping[str, Any]) -> str:
    return wire_text(bind_placeholders(template, params))


class BadArgument(Exception):
    """A bound argument does not fit its command (a number that is not one)."""


def _whole(text: str, what: str) -> int:
    number = _integer(text)
    if number is None:
        raise BadArgument(f"the {what} is not a whole number")
    return number


def window(start: int, stop: int, cap: int, length: int | None) -> tuple[int, int] | None:
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
class BoundRead:
    """One read with its parameters bound."""

    spec: RedisSpec
    key: str
    field: str | None
    values: tuple[str, ...]
    limit: tuple[str, str] | None

    @classmethod
    def bind(cls, spec: RedisSpec, params: Mapping[str, Any]) -> BoundRead:
        return cls(
            spec,
            bind_text(spec.key, params),
            None if spec.field is None else bind_text(spec.field, params),
            tuple(bind_text(v, params) for v in spec.values),
            None
            if spec.limit is None
            else (bind_text(spec.limit[0], params), bind_text(spec.limit[1], params)),
        )

    def needs_length(self, cap: int) -> str | None:
        """The command that gives the length an index window is counted from, if needed."""
        if self.spec.command not in _LENGTH_OF or self.spec.by is not None:
            return None
        start, stop = (_whole(v, "range") for v in self.values)
        return _LENGTH_OF[self.spec.command] if window(start, stop, cap, None) is None else None

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
            narrowed = window(start, stop, cap, length)
            if narrowed is None:  # `needs_length` is asked first; this is a bug guard
                raise BadArgument("the range needs the length of the list first")
            words = [str(narrowed[0]), str(narrowed[1])]
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


def shape_reply(call: BoundRead, reply: Any, cap: int) -> ReadResult:
    """A reply as rows and data (module docstring)."""
    spec = call.spec
    kind = COMMANDS[spec.command].reply
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
        return json_result(reply, cap)
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


def json_result(reply: Any, cap: int) -> ReadResult:
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


# -- SCAN and INFO -------------------------------------------------------------------


_GLOB = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis glob pattern (MATCH): ``*?[]\\`` escaped."""
    return _GLOB.sub(r"\\\1", text)


def scan_pattern(spec: ScanSpec, params: Mapping[str, Any]) -> str:
    """SCAN's MATCH pattern with each parameter in it as a literal (escaped)."""
    return bind_text(spec.match, {k: glob_escape(wire_text(v)) for k, v in params.items()})


def scan_line(cursor: str, pattern: str, spec: ScanSpec) -> list[str]:
    """One SCAN call from ``cursor``."""
    line = ["SCAN", cursor, "MATCH", pattern, "COUNT", str(spec.count)]
    if spec.type is not None:
        line += ["TYPE", spec.type]
    return line


#: the command that reads a scanned key's value, by its TYPE, fetching at most ``cap`` items
_VALUE_OF: dict[str, Callable[[str, int], list[str]]] = {
    "string": lambda key, cap: ["GET", key],
    "hash": lambda key, cap: ["HGETALL", key],
    "list": lambda key, cap: ["LRANGE", key, "0", str(cap - 1)],
    "set": lambda key, cap: ["SRANDMEMBER", key, str(cap)],
    "zset": lambda key, cap: ["ZRANGE", key, "0", str(cap - 1)],
}


def value_lines(keys: Sequence[str], types: Sequence[Any], cap: int) -> dict[str, list[str]]:
    """The command reading each scanned key's value, by its TYPE (others have none)."""
    return {
        key: _VALUE_OF[kind](key, cap) for key, kind in zip(keys, types, strict=True)
        if kind in _VALUE_OF
    }  # fmt: skip


def scanned_rows(
    keys: Sequence[str], types: Sequence[Any], replies: Mapping[str, Any], cap: int
) -> list[dict[str, Any]]:
    """A row ``{key, type, value}`` per scanned key; ``replies`` by key, from `value_lines`."""
    rows = []
    for key, kind in zip(keys, types, strict=True):
        value: Any = None
        if key in replies and replies[key] is not None:
            value = _scanned_value(str(kind), replies[key], cap)
        rows.append({"key": key, "type": str(kind), "value": value})
    return rows


def _scanned_value(kind: str, reply: Any, cap: int) -> Any:
    if kind == "hash":
        return {str(k): jsonable(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}
    if kind == "set":
        return sorted(jsonable(v) for v in reply)
    if isinstance(reply, list):
        return [jsonable(v) for v in reply[:cap]]
    return jsonable(reply)


def info_line(spec: InfoSpec) -> list[str]:
    return ["INFO"] if spec.section is None else ["INFO", spec.section]


def info_fields(text: str) -> list[tuple[str, str, str]]:
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


def info_result(spec: InfoSpec, text: str, cap: int) -> ReadResult:
    """INFO's text as one row of every field, or (``rows: fields``) at most ``cap`` rows."""
    fields = info_fields(text)
    if not fields:
        return ReadResult(rows=[])
    if spec.rows == "fields":
        rows = [{"section": s, "field": f, "value": v} for s, f, v in fields]
        return ReadResult.of_rows(rows[:cap])
    row = {field: value for _, field, value in fields}
    return ReadResult(rows=[row], data=row)


# -- errors ----------------------------------------------------------------------------


def refusal_message(text: str, command: str) -> str:
    """The server's error text for ``command``, without anything it echoed of the arguments."""
    text = text.split(", with args beginning with", 1)[0].strip()
    if "unknown command" in text.lower():
        if command == "JSON.GET":
            return "this Redis has no RedisJSON module (JSON.GET is an unknown command)"
        return f"this Redis does not know the command {command}"
    if text.upper().startswith("WRONGTYPE"):
        return f"{command} does not fit the type of value the key holds (WRONGTYPE)"
    return f"Redis refused {command}: {text[:200]}"
