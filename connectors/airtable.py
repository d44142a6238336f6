"""Airtable sources: records of one table, found with ``filterByFormula`` or by record id.

A query names a table and a filter map (equality on every key)::

    {"table": "Orders", "filter": {"Order ID": "{order_id}"}}

becomes Airtable's List records call,
``GET {base_url}/{base_id}/Orders?filterByFormula=AND({Order ID}='12345')&maxRecords=…&pageSize=…``.
A parameter enters the formula as an Airtable *literal*, never as formula text: a
string becomes a single-quoted string with backslashes, quotes and line breaks
escaped (other control characters dropped), an integer or a finite float a number,
a boolean ``TRUE()``/``FALSE()``, null ``BLANK()``. Field names come from the config
only and may not contain braces. The table name is one URL path segment.

Other reads, each one optional key:

- ``formula``: a whole ``filterByFormula`` written in the config, where
  ``{Field}`` is a field (Airtable's syntax) and a parameter is written
  ``{{name}}`` (or ``{{$json.name}}``), *bare*: the worker puts the escaped
  literal there, so ``AND({Phone}={{customer_phone}}, {Status}!='closed')``. The
  formula is scanned when the config loads: a ``{{…}}`` inside a quoted string, an
  unclosed string or field reference is a config error. With ``filter`` too, both
  must hold (``AND(<filter>, <formula>)``).
- ``sort``: ``[{"field": "Created", "direction": "desc"}]`` (``asc`` by default),
  sent as ``sort[0][field]`` / ``sort[0][direction]``; the first sorts first.
- ``record``: ``"{record_id}"`` reads one record, ``GET …/Orders/{recordId}``
  (Get record) — one URL-encoded path segment. A value that is not an Airtable
  record id (``rec`` and 14 letters or digits) is not found without a request.
  It takes none of the list keys (``filter``, ``formula``, ``sort``, ``view``,
  ``fields``, ``limit``). Airtable finds a record of another table of the same
  base too (documented behaviour).

Pages are followed through ``offset`` until ``max_rows`` rows (or the query's
``limit``) are read; each row is the record's ``fields`` plus its ``id``. Optional
query keys: ``fields`` (the fields to return) and ``view``.

Errors as Airtable documents them: 401 AUTHENTICATION_REQUIRED and 403 are a
`SourceAuthError`; 404 is not found (as the contract says; ``worker
test-connection`` only checks the token, through ``GET /meta/whoami``); 422
(INVALID_FILTER_BY_FORMULA, UNKNOWN_FIELD_NAME…) a `SourceError` naming Airtable's
error type; 429 is retried after ``Retry-After``, or after the 30 s Airtable asks
for when there is none, if the deadline leaves room — else `SourceUnavailable`.

The token (a personal access token) is sent as ``Authorization: Bearer``; every
request goes through `connectors.http_base.SafeHTTP` (see `connectors.saas`).
``base_url`` defaults to ``https://api.airtable.com/v0``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    PreparedQuery,
    ReadResult,
    bind_placeholders,
    jsonable,
    placeholder_names,
    validate_query,
)
from connectors.saas import SaaSConnector, SaaSSettings, records_with_id

__all__ = [
    "AirtableConnector",
    "AirtableQuery",
    "AirtableSettings",
    "AirtableSort",
    "FormulaTemplate",
    "formula",
    "literal",
]

AIRTABLE_API = "https://api.airtable.com/v0"
#: Airtable: after a 429, "wait 30 seconds before subsequent requests will succeed"
RATE_LIMIT_PAUSE_S = 30.0
_PAGE_MAX = 100
_RECORD_ID = re.compile(r"^rec[A-Za-z0-9]{14}$")

Scalar = str | int | float | bool | None


class AirtableSettings(SaaSSettings):
    """``connection`` of an ``airtable`` source."""

    base_url: str = AIRTABLE_API
    #: a personal access token (scope ``data.records:read``)
    token: SecretStr
    #: the base, ``app…``
    base_id: str = Field(pattern=r"^[A-Za-z0-9]{1,64}$")


_FIELD_NAME = re.compile(r"^[^{}\x00-\x1f]+$")
_PARAM = re.compile(r"\{\{\s*(?:\$json\.)?([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class FormulaTemplate:
    """A config's ``formula``: its text split around ``{{name}}`` parameters.

    ``parts`` alternates formula text and a parameter name (None after the last
    text). Built by scanning the formula as Airtable reads it — quoted strings
    with backslash escapes, ``{Field}`` references — so a parameter is known to
    stand where a value may, never inside a string or a field name.
    """

    def __init__(self, text: str) -> None:
        self.parts = _scan(text)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name for _, name in self.parts if name is not None))

    def render(self, params: Mapping[str, Any]) -> str:
        """The formula with each parameter as an escaped literal."""
        return "".join(
            text + (literal(params.get(name)) if name is not None else "")
            for text, name in self.parts
        )


def _scan(text: str) -> tuple[tuple[str, str | None], ...]:
    parts: list[tuple[str, str | None]] = []
    chunk: list[str] = []
    at = 0
    while at < len(text):
        char = text[at]
        if char in "'\"":
            end = _string_end(text, at)
            if "{{" in text[at:end]:
                raise ValueError(
                    "a {{parameter}} inside a quoted string: write it bare, "
                    "the worker quotes its value"
                )
        elif text.startswith("{{", at):
            match = _PARAM.match(text, at)
            if match is None:
                raise ValueError(f"cannot read the parameter at {text[at : at + 30]!r}")
            parts.append(("".join(chunk), match.group(1)))
            chunk, at = [], match.end()
            continue
        elif char == "{":
            end = text.find("}", at) + 1
            if end == 0 or not _FIELD_NAME.match(text[at + 1 : end - 1]):
                raise ValueError(f"cannot read the field reference at {text[at : at + 30]!r}")
        else:
            end = at + 1
        chunk.append(text[at:end])
        at = end
    parts.append(("".join(chunk), None))
    return tuple(parts)


def _string_end(text: str, at: int) -> int:
    """The index after the string literal opening at ``at``."""
    quote_char, at = text[at], at + 1
    while at < len(text):
        if text[at] == "\\":
            at += 2
        elif text[at] == quote_char:
            return at + 1
        else:
            at += 1
    raise ValueError("a quoted string in the formula is not closed")


class AirtableSort(BaseModel):
    """One ``sort[n]`` entry: a field and ``asc`` or ``desc``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: str = Field(min_length=1, max_length=255)
    direction: Literal["asc", "desc"] = "asc"


class AirtableQuery(BaseModel):
    """A read on a table: one ``record``, or the records that ``filter`` and ``formula`` keep."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str = Field(min_length=1, max_length=255)
    record: str | None = Field(default=None, min_length=1, max_length=200)
    filter: dict[str, Scalar] = Field(default_factory=dict)
    formula: str | None = Field(default=None, min_length=1, max_length=10_000)
    sort: list[AirtableSort] = Field(default_factory=list, max_length=20)
    fields: list[str] | None = None
    view: str | None = Field(default=None, min_length=1)
    limit: int | None = Field(default=None, ge=1)

    @field_validator("filter")
    @classmethod
    def _field_names(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        for name in value:
            if not _FIELD_NAME.match(name):
                raise ValueError(f"the field name {name!r} cannot be used in a formula")
        return value

    @field_validator("formula")
    @classmethod
    def _formula_reads(cls, value: str | None) -> str | None:
        if value is not None:
            FormulaTemplate(value)
        return value

    @model_validator(mode="after")
    def _record_alone(self) -> AirtableQuery:
        if self.record is not None:
            listed = ("filter", "formula", "sort", "view", "fields", "limit")
            given = [key for key in listed if key in self.model_fields_set]
            if given:
                raise ValueError(f"record reads one record: it takes no {', '.join(given)}")
        return self

    @cached_property
    def template(self) -> FormulaTemplate | None:
        return FormulaTemplate(self.formula) if self.formula is not None else None


_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def literal(value: Any) -> str:
    """A value as an Airtable formula literal: ``O'Brien`` → ``'O\\'Brien'``."""
    value = jsonable(value)
    if value is None:
        return "BLANK()"
    if isinstance(value, bool):
        return "TRUE()" if value else "FALSE()"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and "e" not in repr(value):
        return repr(value)
    text = _CONTROL.sub("", str(value))
    return "'" + text.translate(_ESCAPES) + "'"


def formula(wanted: Mapping[str, Any], extra: str | None = None) -> str | None:
    """``{"Order ID": "12345"}`` → ``AND({Order ID}='12345')``; None for no filter.

    ``extra`` (a rendered `FormulaTemplate`) must hold too; alone, it is sent as it is.
    """
    clauses = [f"{{{name}}}={literal(v)}" for name, v in wanted.items()]
    if extra is not None and not clauses:
        return extra
    if extra is not None:
        clauses.append(extra)
    return "AND(" + ",".join(clauses) + ")" if clauses else None


class AirtableConnector(SaaSConnector):
    """One Airtable base, read with a personal access token; see the module docstring."""

    type_name: ClassVar[str] = "airtable"
    vendor: ClassVar[str] = "Airtable"
    health_path: ClassVar[str] = "/meta/whoami"
    Settings: ClassVar[type[ConnectionSettings]] = AirtableSettings
    query_shape: ClassVar[str] = (
        '{"table": "Orders", "filter": {"Order ID": "{order_id}"}}, with "formula", '
        '"sort", "fields", "view", "limit"; or {"table": "Orders", "record": "{record_id}"}'
    )

    settings: AirtableSettings

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"an airtable query is a mapping: {cls.query_shape}")
        spec = validate_query(AirtableQuery, raw, cls)
        template = spec.template
        names = placeholder_names([spec.filter, spec.record or ""])
        names += tuple(n for n in (template.names if template else ()) if n not in names)
        return PreparedQuery(spec=spec, names=names)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, AirtableQuery):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        if spec.record is not None:
            return await self._get(spec, spec.record, bound, timeout_s)
        template = spec.template
        wanted = bind_placeholders(spec.filter, bound.params)
        text = formula(wanted, template.render(bound.params) if template else None)
        cap = min(self.limits.max_rows, spec.limit or self.limits.max_rows)
        # The query string is built here: ``fields[]`` repeats, which a params mapping cannot.
        params: list[tuple[str, Any]] = [
            ("filterByFormula", text),
            ("maxRecords", cap),
            ("pageSize", min(_PAGE_MAX, cap)),
            ("view", spec.view),
            *(("fields[]", name) for name in spec.fields or ()),
        ]
        for n, order in enumerate(spec.sort):
            params += [
                (f"sort[{n}][field]", order.field),
                (f"sort[{n}][direction]", order.direction),
            ]
        params = [(key, value) for key, value in params if value is not None]
        return await self._list(spec.table, params, cap, bound, timeout_s)

    async def _list(
        self,
        table: str,
        params: list[tuple[str, Any]],
        cap: int,
        bound: Bound,
        timeout_s: float,
    ) -> ReadResult:
        """List records, following ``offset`` until ``cap`` rows."""
        url = self._http.url("/{base}/{table}", {"base": self.settings.base_id, "table": table})
        hide = list(bound.params.values())
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, Any]] = []
        offsets: set[str] = set()
        while len(rows) < cap:
            page = await self._fetch(
                f"{url}?{urlencode(params, quote_via=quote)}", hide, deadline, timeout_s
            )
            if page is None:
                return ReadResult(rows=[])
            rows.extend(records_with_id(page.get("records") or [], "fields"))
            offset = page.get("offset")
            if not isinstance(offset, str) or offset in offsets:
                break
            offsets.add(offset)
            params = [*(pair for pair in params if pair[0] != "offset"), ("offset", offset)]
        return ReadResult.of_rows(rows[:cap])

    async def _get(
        self, spec: AirtableQuery, record: str, bound: Bound, timeout_s: float
    ) -> ReadResult:
        """Get record: one ``GET …/{table}/{recordId}``; not an id → not found, unasked."""
        value = jsonable(bind_placeholders(record, bound.params))
        if not isinstance(value, str) or not _RECORD_ID.match(value):
            return ReadResult(rows=[])
        url = self._http.url(
            "/{base}/{table}/{record}",
            {"base": self.settings.base_id, "table": spec.table, "record": value},
        )
        deadline = time.monotonic() + timeout_s
        document = await self._fetch(url, list(bound.params.values()), deadline, timeout_s)
        if document is None:
            return ReadResult(rows=[])
        return ReadResult.of_rows(records_with_id([document], "fields"))

    async def _fetch(
        self, url: str, hide: list[Any], deadline: float, timeout_s: float
    ) -> Mapping[str, Any] | None:
        response = await self._http.request(
            "GET",
            url,
            timeout_s=self._time_left(deadline, timeout_s),
            idempotent=True,
            headers=self._auth(),
            rate_limit_pause_s=RATE_LIMIT_PAUSE_S,
        )
        document: Mapping[str, Any] | None = self._document(response, hide)
        return document

    @staticmethod
    def error_of(document: Any) -> tuple[str, str]:
        """Airtable's error type and message: ``{"error": {"type", "message"}}``, or a type."""
        error = document.get("error") if isinstance(document, Mapping) else None
        if isinstance(error, Mapping):
            return str(error.get("type") or ""), str(error.get("message") or "")
        if isinstance(error, str):
            return error, ""
        return "", ""
