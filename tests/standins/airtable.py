"""A stand-in for Airtable's Web API: List records, with ``filterByFormula``.

What it answers, and the public references it follows:

- ``GET /v0/{baseId}/{tableIdOrName}`` — "List records"
  (airtable.com/developers/web/api/list-records): query parameters
  ``filterByFormula``, ``maxRecords``, ``pageSize`` (at most 100, the default),
  ``offset``, ``view``, ``fields[]``; the answer ``{"records": [{"id",
  "createdTime", "fields"}], "offset"}``, ``offset`` present while more records
  remain; "Returned records do not include any fields with empty values".
  Authentication: ``Authorization: Bearer <personal access token>``.
- ``GET /v0/meta/whoami`` — "Get user ID & scopes": ``{"id", "scopes"}``.
- Errors (airtable.com/developers/web/api/errors): a JSON body ``{"error":
  {"type", "message"}}`` — 401 AUTHENTICATION_REQUIRED, 403
  INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND for a base the token may not read, 404
  NOT_FOUND for an unknown table, 422 INVALID_FILTER_BY_FORMULA for a formula
  that does not parse or names unknown fields, and 429 "Rate limit exceeded.
  Please try again later" (rate limits, airtable.com/developers/web/api/rate-limits:
  5 requests per second per base, then "wait 30 seconds"); the stand-in sends
  ``Retry-After`` with its 429 when a test asks it to.

Formulas: the stand-in parses the subset the connector writes — ``AND(…)`` of
``{Field}=literal`` comparisons, literals being quoted strings with backslash
escapes, numbers, ``TRUE()``, ``FALSE()`` and ``BLANK()`` — and records every
formula it received (`formulas`), so tests can check the escaping. Anything else
is 422 INVALID_FILTER_BY_FORMULA, as Airtable answers a formula it cannot read.

A table named ``Slow`` answers after `slow_s` seconds.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.standins import StandIn

__all__ = ["AirtableStandIn", "FormulaError", "Record", "parse_formula"]


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


class FormulaError(ValueError):
    pass


_INVALID_PARAMETERS = "Invalid request: parameter validation failed"
_NAME = re.compile(r"\{([^{}]+)\}")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
_STRING_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def parse_formula(text: str) -> list[tuple[str, Any]]:
    """``AND({A}='x',{B}=2)`` → ``[("A", "x"), ("B", 2)]``; `FormulaError` otherwise."""
    body = text.strip()
    if body.startswith("AND(") and body.endswith(")"):
        body = body[4:-1]
    pairs: list[tuple[str, Any]] = []
    at = 0
    while True:
        name = _NAME.match(body, at)
        if name is None or body[name.end() : name.end() + 1] != "=":
            raise FormulaError("Invalid formula. Please check your formula text.")
        value, at = _literal(body, name.end() + 1)
        pairs.append((name.group(1), value))
        if at == len(body):
            return pairs
        if body[at] != ",":
            raise FormulaError("Invalid formula. Please check your formula text.")
        at += 1


def _literal(text: str, at: int) -> tuple[Any, int]:
    for word, value in (("TRUE()", True), ("FALSE()", False), ("BLANK()", None)):
        if text.startswith(word, at):
            return value, at + len(word)
    number = _NUMBER.match(text, at)
    if number:
        raw = number.group(0)
        return (float(raw) if "." in raw else int(raw)), number.end()
    if at >= len(text) or text[at] not in "'\"":
        raise FormulaError("Invalid formula. Please check your formula text.")
    quote, out, at = text[at], [], at + 1
    while at < len(text):
        char = text[at]
        if char == "\\" and at + 1 < len(text):
            out.append(_STRING_ESCAPES.get(text[at + 1], text[at + 1]))
            at += 2
        elif char == quote:
            return "".join(out), at + 1
        else:
            out.append(char)
            at += 1
    raise FormulaError("Invalid formula. Please check your formula text.")


def _equal(cell: Any, wanted: Any) -> bool:
    """Airtable's ``=``: blank equals BLANK(), numbers as numbers, else as text."""
    if wanted is None:
        return cell in (None, "", [], False)
    if isinstance(wanted, bool) or isinstance(cell, bool):
        return bool(cell) == bool(wanted)
    if isinstance(wanted, int | float) and isinstance(cell, int | float):
        return float(cell) == float(wanted)
    return ("" if cell is None else str(cell)) == str(wanted)


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

    async def list_records(self, request: web.Request) -> web.Response:
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
            return _error(
                422, "INVALID_REQUEST_UNKNOWN", "Invalid request: parameter validation failed"
            )
        if not 1 <= page_size <= 100 or (max_records is not None and max_records < 0):
            return _error(
                422, "INVALID_REQUEST_UNKNOWN", "Invalid request: parameter validation failed"
            )
        matching = self._filtered(table, query.get("filterByFormula"))
        if isinstance(matching, web.Response):
            return matching
        if max_records is not None:
            matching = matching[:max_records]
        key = (name, query.get("filterByFormula"), max_records)
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
            pairs = parse_formula(text)
        except FormulaError as exc:
            return _error(
                422,
                "INVALID_FILTER_BY_FORMULA",
                f"The formula for filtering records is invalid: {exc}",
            )
        known = {name for record in table for name in record.fields}
        unknown = [name for name, _ in pairs if name not in known]
        if unknown:
            return _error(
                422,
                "INVALID_FILTER_BY_FORMULA",
                "The formula for filtering records is invalid: Unknown field names: "
                + ", ".join(name.lower() for name in unknown),
            )
        return [
            record
            for record in table
            if all(_equal(record.fields.get(name), value) for name, value in pairs)
        ]

    @staticmethod
    def _render(record: Record, wanted_fields: list[str]) -> dict[str, Any]:
        fields = {
            name: value
            for name, value in record.fields.items()
            if value not in ("", [], False, None) and (not wanted_fields or name in wanted_fields)
        }
        return {"id": record.id, "createdTime": record.created_time, "fields": fields}
