"""A stand-in for Airtable's Web API: List records (``filterByFormula``, ``sort``) and Get record.

What it answers, and the public references it follows:

- ``GET /v0/{baseId}/{tableIdOrName}`` — "List records"
  (airtable.com/developers/web/api/list-records): query parameters
  ``filterByFormula``, ``maxRecords``, ``pageSize`` (at most 100, the default),
  ``offset``, ``view``, ``fields[]`` and ``sort[n][field]`` / ``sort[n][direction]``
  (``asc``, the default, or ``desc``); the answer ``{"records": [{"id",
  "createdTime", "fields"}], "offset"}``, ``offset`` present while more records
  remain; "Returned records do not include any fields with empty values".
  Authentication: ``Authorization: Bearer <personal access token>``.
- ``GET /v0/{baseId}/{tableIdOrName}/{recordId}`` — "Get record"
  (airtable.com/developers/web/api/get-record): one ``{"id", "createdTime",
  "fields"}``, empty fields left out. As Airtable documents, a record id not in
  the named table is still found when it is in another table of the same base.
- ``GET /v0/meta/whoami`` — "Get user ID & scopes": ``{"id", "scopes"}``.
- Errors (airtable.com/developers/web/api/errors): a JSON body ``{"error":
  {"type", "message"}}`` — 401 AUTHENTICATION_REQUIRED, 403
  INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND for a base the token may not read, 404
  NOT_FOUND for an unknown table or record, 422 INVALID_FILTER_BY_FORMULA for a
  formula that does not parse or names unknown fields, 422 UNKNOWN_FIELD_NAME for
  a sort on an unknown field, and 429 "Rate limit exceeded. Please try again
  later" (rate limits, airtable.com/developers/web/api/rate-limits: 5 requests
  per second per base, then "wait 30 seconds"); the stand-in sends
  ``Retry-After`` with its 429 when a test asks it to.

Formulas ("Formula field reference", support.airtable.com): the stand-in parses
and evaluates a real subset — ``{Field}`` references; string literals in single
or double quotes with backslash escapes (``\\'``, ``\\"``, ``\\\\``, ``\\n``…);
numbers; ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``; ``&`` (concatenation);
parentheses; and the functions ``AND``, ``OR``, ``NOT``, ``TRUE()``, ``FALSE()``,
``BLANK()``, ``LOWER``, ``UPPER``, ``FIND``, ``SEARCH``, ``LEN``. A record is
kept unless the formula gives 0, false, "", NaN or [] (List records:
"filterByFormula"). Anything outside the subset is 422 INVALID_FILTER_BY_FORMULA,
as Airtable answers a formula it cannot read. Every formula received is kept in
`formulas`, so tests can check the escaping.

A table named ``Slow`` answers after `slow_s` seconds.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.standins import StandIn

__all__ = ["AirtableStandIn", "Formula", "FormulaError", "Record", "parse_formula", "truthy"]


@dataclass
class Record:
    id: str
    fields: dict[str, Any]
    created_time: str = "2025-09-01T10:00:00.000Z"


@dataclass
class _Cursor:
    key: tuple[Any, ...]
    position: int


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


_INVALID_PARAMETERS = "Invalid request: parameter validation failed"
_STRING_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_INVALID = "Invalid formula. Please check your formula text."
_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<field>\{[^{}]*\})|(?P<name>[A-Za-z_]+)"
    r"|(?P<op><=|>=|!=|[=<>&(),-]))"
)
_COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")


class FormulaError(ValueError):
    pass


@dataclass(frozen=True)
class Formula:
    """A parsed formula: ``evaluate`` takes a record's fields; ``fields`` names those it reads."""

    evaluate: Callable[[Mapping[str, Any]], Any]
    fields: frozenset[str]


class _Parser:
    """Recursive descent over the formula subset in the module docstring."""

    def __init__(self, text: str) -> None:
        self.text, self.at, self.fields = text, 0, set[str]()

    def parse(self) -> Formula:
        node = self.comparison()
        if self.text[self.at :].strip():
            raise FormulaError(_INVALID)
        return Formula(node, frozenset(self.fields))

    def peek(self) -> tuple[str, str] | None:
        """The next token as (kind, text), not consumed; a string literal is ("string", ...)."""
        rest = self.text[self.at :].lstrip()
        if not rest:
            return None
        if rest[0] in "'\"":
            return "string", rest[0]
        match = _TOKEN.match(self.text, self.at)
        if match is None:
            raise FormulaError(_INVALID)
        kind = match.lastgroup or ""
        return kind, match.group(kind)

    def take(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] == text:
            self.at = _TOKEN.match(self.text, self.at).end()  # type: ignore[union-attr]
            return True
        return False

    def comparison(self) -> Callable[[Mapping[str, Any]], Any]:
        left = self.concat()
        token = self.peek()
        if token is None or token[0] != "op" or token[1] not in _COMPARISONS:
            return left
        self.take(token[1])
        right = self.concat()
        compare = _COMPARE[token[1]]
        return lambda row: compare(left(row), right(row))

    def concat(self) -> Callable[[Mapping[str, Any]], Any]:
        parts = [self.primary()]
        while self.take("&"):
            parts.append(self.primary())
        if len(parts) == 1:
            return parts[0]
        return lambda row: "".join(_text(part(row)) for part in parts)

    def primary(self) -> Callable[[Mapping[str, Any]], Any]:
        token = self.peek()
        if token is None:
            raise FormulaError(_INVALID)
        kind, text = token
        if kind == "string":
            value = self.string()
            return lambda row: value
        if kind == "op" and text == "(":
            self.take("(")
            inner = self.comparison()
            if not self.take(")"):
                raise FormulaError(_INVALID)
            return inner
        if kind == "op" and text == "-":
            self.take("-")
            operand = self.primary()
            return lambda row: -_number(operand(row))
        self.at = _TOKEN.match(self.text, self.at).end()  # type: ignore[union-attr]
        if kind == "number":
            number = float(text) if "." in text else int(text)
            return lambda row: number
        if kind == "field":
            name = text[1:-1]
            self.fields.add(name)
            return lambda row: row.get(name)
        if kind == "name":
            return self.call(text.upper())
        raise FormulaError(_INVALID)

    def call(self, name: str) -> Callable[[Mapping[str, Any]], Any]:
        function = _FUNCTIONS.get(name)
        if function is None or not self.take("("):
            raise FormulaError(f"Unknown function names: {name}")
        args: list[Callable[[Mapping[str, Any]], Any]] = []
        if not self.take(")"):
            args.append(self.comparison())
            while self.take(","):
                args.append(self.comparison())
            if not self.take(")"):
                raise FormulaError(_INVALID)
        arity, apply = function
        if not arity[0] <= len(args) <= arity[1]:
            raise FormulaError(_INVALID)
        return lambda row: apply([arg(row) for arg in args])

    def string(self) -> str:
        start = self.text.index(self.text[self.at :].lstrip()[0], self.at)
        quote, out, at = self.text[start], [], start + 1
        while at < len(self.text):
            char = self.text[at]
            if char == "\\" and at + 1 < len(self.text):
                out.append(_STRING_ESCAPES.get(self.text[at + 1], self.text[at + 1]))
                at += 2
            elif char == quote:
                self.at = at + 1
                return "".join(out)
            else:
                out.append(char)
                at += 1
        raise FormulaError(_INVALID)


def parse_formula(text: str) -> Formula:
    """The formula as a function of a record's fields; `FormulaError` when it does not parse."""
    return _Parser(text).parse()


def _blank(value: Any) -> bool:
    return value is None or value == "" or value == [] or value is False


def truthy(value: Any) -> bool:
    """Airtable keeps a record unless the formula gives 0, false, "", NaN, [] or an error."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (_blank(value) or value == 0)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value)) if value not in (None, "") else 0.0
    except ValueError:
        return math.nan


def _equal(cell: Any, wanted: Any) -> bool:
    """Airtable's ``=``: a blank cell equals BLANK() and "", numbers as numbers, else as text."""
    if any(value is None or value == "" or value == [] for value in (cell, wanted)):
        return _blank(cell) and _blank(wanted)
    if isinstance(wanted, bool) or isinstance(cell, bool):
        return bool(cell) == bool(wanted)
    if isinstance(wanted, int | float) and isinstance(cell, int | float):
        return float(cell) == float(wanted)
    return _text(cell) == _text(wanted)


def _order(left: Any, right: Any) -> int:
    """-1, 0 or 1: numbers as numbers, anything else as text."""
    if isinstance(left, int | float) and isinstance(right, int | float):
        x, y = float(left), float(right)
        return (x > y) - (x < y)
    a, b = _text(left), _text(right)
    return (a > b) - (a < b)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": lambda a, b: _order(a, b) < 0,
    "<=": lambda a, b: _order(a, b) <= 0,
    ">": lambda a, b: _order(a, b) > 0,
    ">=": lambda a, b: _order(a, b) >= 0,
}


def _find(args: list[Any]) -> int:
    needle, haystack = _text(args[0]), _text(args[1])
    start = int(_number(args[2])) - 1 if len(args) > 2 else 0
    return haystack.find(needle, max(start, 0)) + 1


_MANY = 255
_FUNCTIONS: dict[str, tuple[tuple[int, int], Callable[[list[Any]], Any]]] = {
    "AND": ((1, _MANY), lambda a: all(truthy(v) for v in a)),
    "OR": ((1, _MANY), lambda a: any(truthy(v) for v in a)),
    "NOT": ((1, 1), lambda a: not truthy(a[0])),
    "TRUE": ((0, 0), lambda a: True),
    "FALSE": ((0, 0), lambda a: False),
    "BLANK": ((0, 0), lambda a: None),
    "LOWER": ((1, 1), lambda a: _text(a[0]).lower()),
    "UPPER": ((1, 1), lambda a: _text(a[0]).upper()),
    "FIND": ((2, 3), _find),
    "SEARCH": ((2, 3), lambda a: _find([_text(a[0]).lower(), _text(a[1]).lower(), *a[2:]])),
    "LEN": ((1, 1), lambda a: len(_text(a[0]))),
}


@dataclass
class AirtableStandIn(StandIn):
    """One base of tables for one token; see the module docstring."""

    base_id: str = "appTESTbase000001"
    token: str = "patTEST.stand-in-token-0123456789"
    tables: dict[str, list[Record]] = field(default_factory=dict)
    slow_s: float = 3.0
    formulas: list[str] = field(default_factory=list)
    base_url: str = ""

    def __post_init__(self) -> None:
        super().__init__()
        self._cursors: dict[str, _Cursor] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v0/meta/whoami", self.whoami)
        app.router.add_get("/v0/{base_id}/{table}", self.list_records)
        app.router.add_get("/v0/{base_id}/{table}/{record_id}", self.get_record)

    def rate_limited(self, retry_after: str | None) -> web.Response:
        response = _error(429, "RATE_LIMIT_REACHED", "Rate limit exceeded. Please try again later")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def whoami(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "AUTHENTICATION_REQUIRED", "Authentication required")
        return web.json_response({"id": "usrTESTuser00001", "scopes": ["data.records:read"]})

    def _refused(self, request: web.Request) -> web.Response | None:
        """The 429, 401 or 403 this request gets, if any."""
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        if not self._authorized(request):
            return _error(401, "AUTHENTICATION_REQUIRED", "Authentication required")
        if request.match_info["base_id"] != self.base_id:
            return _error(
                403,
                "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
                "Invalid permissions, or the requested model was not found. Check that both "
                "your user and your token have the required permissions, and that the model "
                "names and/or ids are correct.",
            )
        return None

    async def get_record(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        name, wanted = request.match_info["table"], request.match_info["record_id"]
        if name not in self.tables:
            return _error(404, "NOT_FOUND", "Could not find what you are looking for")
        if name == "Slow":
            await self.slow_down(self.slow_s)
        # Airtable: a record of another table of the base is found too.
        for table in (self.tables[name], *self.tables.values()):
            for record in table:
                if record.id == wanted:
                    return web.json_response(self._render(record, []))
        return _error(404, "NOT_FOUND", "Could not find what you are looking for")

    async def list_records(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        name = request.match_info["table"]
        table = self.tables.get(name)
        if table is None:
            return _error(404, "NOT_FOUND", "Could not find what you are looking for")
        if name == "Slow":
            await self.slow_down(self.slow_s)
        query = request.query
        try:
            page_size = int(query.get("pageSize", "100"))
            max_records = int(query["maxRecords"]) if "maxRecords" in query else None
        except ValueError:
            return _error(422, "INVALID_REQUEST_UNKNOWN", _INVALID_PARAMETERS)
        if not 1 <= page_size <= 100 or (max_records is not None and max_records < 0):
            return _error(422, "INVALID_REQUEST_UNKNOWN", _INVALID_PARAMETERS)
        matching = self._filtered(table, query.get("filterByFormula"))
        if isinstance(matching, web.Response):
            return matching
        sorted_or_error = self._sorted(table, matching, query)
        if isinstance(sorted_or_error, web.Response):
            return sorted_or_error
        matching = sorted_or_error
        if max_records is not None:
            matching = matching[:max_records]
        sorts = tuple(sorted((k, v) for k, v in query.items() if k.startswith("sort[")))
        key = (name, query.get("filterByFormula"), max_records, sorts)
        start = 0
        if "offset" in query:
            cursor = self._cursors.get(query["offset"])
            if cursor is None or cursor.key != key:
                return _error(422, "LIST_RECORDS_ITERATOR_NOT_AVAILABLE", "Iterator not available")
            start = cursor.position
        page = matching[start : start + page_size]
        wanted_fields = query.getall("fields[]", [])
        body: dict[str, Any] = {"records": [self._render(r, wanted_fields) for r in page]}
        if start + page_size < len(matching):
            token = f"itr{secrets.token_hex(7)}/{page[-1].id}"
            self._cursors[token] = _Cursor(key, start + page_size)
            body["offset"] = token
        return web.json_response(body)

    def _filtered(self, table: list[Record], text: str | None) -> list[Record] | web.Response:
        if text is None:
            return list(table)
        self.formulas.append(text)
        try:
            parsed = parse_formula(text)
        except FormulaError as exc:
            return _error(
                422,
                "INVALID_FILTER_BY_FORMULA",
                f"The formula for filtering records is invalid: {exc}",
            )
        known = {name for record in table for name in record.fields}
        unknown = sorted(name for name in parsed.fields if name not in known)
        if unknown:
            return _error(
                422,
                "INVALID_FILTER_BY_FORMULA",
                "The formula for filtering records is invalid: Unknown field names: "
                + ", ".join(name.lower() for name in unknown),
            )
        return [record for record in table if truthy(parsed.evaluate(record.fields))]

    @staticmethod
    def _sorted(
        table: list[Record], records: list[Record], query: Mapping[str, str]
    ) -> list[Record] | web.Response:
        """``sort[n][field]``/``sort[n][direction]``, the first sort the primary one."""
        sorts: list[tuple[str, str]] = []
        for n in range(len(query)):
            name = query.get(f"sort[{n}][field]")
            if name is None:
                break
            sorts.append((name, query.get(f"sort[{n}][direction]", "asc")))
        known = {name for record in table for name in record.fields}
        for name, direction in sorts:
            if name not in known:
                return _error(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
            if direction not in ("asc", "desc"):
                return _error(422, "INVALID_REQUEST_UNKNOWN", _INVALID_PARAMETERS)
        ordered = list(records)
        for name, direction in reversed(sorts):  # stable sorts, least significant first
            blanks = [r for r in ordered if _blank(r.fields.get(name))]
            filled = [r for r in ordered if not _blank(r.fields.get(name))]
            filled.sort(key=_by_field(name), reverse=direction == "desc")
            # Empty cells come first ascending and last descending, as in Airtable's grid.
            ordered = [*blanks, *filled] if direction == "asc" else [*filled, *blanks]
        return ordered

    @staticmethod
    def _render(record: Record, wanted_fields: list[str]) -> dict[str, Any]:
        fields = {
            name: value
            for name, value in record.fields.items()
            if not _blank(value) and (not wanted_fields or name in wanted_fields)
        }
        return {"id": record.id, "createdTime": record.created_time, "fields": fields}


def _by_field(name: str) -> Callable[[Record], tuple[int, float, str]]:
    """A sort key on one field: numbers before text, each in its own order."""

    def key(record: Record) -> tuple[int, float, str]:
        value = record.fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, _text(value).lower())

    return key
