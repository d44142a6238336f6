"""Airtable sources: records of one table, found with ``filterByFormula``.

A query names a table and a filter map (equality on every key)::

    {"table": "Orders", "filter": {"Order ID": "{order_id}"}}

becomes Airtable's List records call,
``GET {base_url}/{base_id}/Orders?filterByFormula=AND({Order ID}='12345')&maxRecords=…&pageSize=…``.
A parameter enters the formula as an Airtable *literal*, never as formula text: a
string becomes a single-quoted string with backslashes, quotes and line breaks
escaped (other control characters dropped), an integer or a finite float a number,
a boolean ``TRUE()``/``FALSE()``, null ``BLANK()``. Field names come from the config
only and may not contain braces. The table name is one URL path segment.

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
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

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

__all__ = ["AirtableConnector", "AirtableQuery", "AirtableSettings", "formula", "literal"]

AIRTABLE_API = "https://api.airtable.com/v0"
#: Airtable: after a 429, "wait 30 seconds before subsequent requests will succeed"
RATE_LIMIT_PAUSE_S = 30.0
_PAGE_MAX = 100

Scalar = str | int | float | bool | None


class AirtableSettings(SaaSSettings):
    """``connection`` of an ``airtable`` source."""

    base_url: str = AIRTABLE_API
    #: a personal access token (scope ``data.records:read``)
    token: SecretStr
    #: the base, ``app…``
    base_id: str = Field(pattern=r"^[A-Za-z0-9]{1,64}$")


_FIELD_NAME = re.compile(r"^[^{}\x00-\x1f]+$")


class AirtableQuery(BaseModel):
    """A read on a table: records equal to ``filter`` on every field, at most ``limit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str = Field(min_length=1, max_length=255)
    filter: dict[str, Scalar] = Field(default_factory=dict)
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


def formula(wanted: Mapping[str, Any]) -> str | None:
    """``{"Order ID": "12345"}`` → ``AND({Order ID}='12345')``; None for no filter."""
    if not wanted:
        return None
    return "AND(" + ",".join(f"{{{name}}}={literal(v)}" for name, v in wanted.items()) + ")"


class AirtableConnector(SaaSConnector):
    """One Airtable base, read with a personal access token; see the module docstring."""

    type_name: ClassVar[str] = "airtable"
    vendor: ClassVar[str] = "Airtable"
    health_path: ClassVar[str] = "/meta/whoami"
    Settings: ClassVar[type[ConnectionSettings]] = AirtableSettings
    query_shape: ClassVar[str] = '{"table": "Orders", "filter": {"Order ID": "{order_id}"}}'
    extra: ClassVar[str | None] = "rest"

    settings: AirtableSettings

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"an airtable query is a mapping: {cls.query_shape}")
        spec = validate_query(AirtableQuery, raw, cls)
        return PreparedQuery(spec=spec, names=placeholder_names(spec.filter))

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, AirtableQuery):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        wanted = bind_placeholders(spec.filter, bound.params)
        cap = min(self.limits.max_rows, spec.limit or self.limits.max_rows)
        url = self._http.url(
            "/{base}/{table}", {"base": self.settings.base_id, "table": spec.table}
        )
        # The query string is built here: ``fields[]`` repeats, which a params mapping cannot.
        params: list[tuple[str, Any]] = [
            ("filterByFormula", formula(wanted)),
            ("maxRecords", cap),
            ("pageSize", min(_PAGE_MAX, cap)),
            ("view", spec.view),
            *(("fields[]", name) for name in spec.fields or ()),
        ]
        params = [(key, value) for key, value in params if value is not None]
        hide = list(bound.params.values())
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, Any]] = []
        offsets: set[str] = set()
        while len(rows) < cap:
            left = self._time_left(deadline, timeout_s)
            response = await self._http.request(
                "GET",
                f"{url}?{urlencode(params, quote_via=quote)}",
                timeout_s=left,
                idempotent=True,
                headers=self._auth(),
                rate_limit_pause_s=RATE_LIMIT_PAUSE_S,
            )
            page = self._document(response, hide)
            if page is None:
                return ReadResult(rows=[])
            rows.extend(records_with_id(page.get("records") or [], "fields"))
            offset = page.get("offset")
            if not isinstance(offset, str) or offset in offsets:
                break
            offsets.add(offset)
            params = [*(pair for pair in params if pair[0] != "offset"), ("offset", offset)]
        return ReadResult.of_rows(rows[:cap])

    @staticmethod
    def error_of(document: Any) -> tuple[str, str]:
        """Airtable's error type and message: ``{"error": {"type", "message"}}``, or a type."""
        error = document.get("error") if isinstance(document, Mapping) else None
        if isinstance(error, Mapping):
            return str(error.get("type") or ""), str(error.get("message") or "")
        if isinstance(error, str):
            return error, ""
        return "", ""
