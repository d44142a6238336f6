"""HubSpot sources: CRM objects found with the CRM search API.

A query names an object type, a filter map (equality on every key) and the
properties to return::

    {"object": "contacts", "filter": {"phone": "{customer_phone}"}, "properties": ["firstname"]}

becomes ``POST {base_url}/crm/v3/objects/contacts/search`` with the body
``{"filterGroups": [{"filters": [{"propertyName": "phone", "operator": "EQ",
"value": "+1234567890"}]}], "properties": ["firstname"], "limit": …}``. A
parameter only ever fills a filter's ``value`` in that JSON document (a null one
becomes the ``NOT_HAS_PROPERTY`` operator); property names and the object type
come from the config. Pages are followed through ``paging.next.after`` until
``max_rows`` rows (or the query's ``limit``) are read; each row is the result's
``properties`` plus its ``id``.

The search is a POST only because its filters travel in the body: it reads and
changes nothing, so it is sent as an idempotent request — a connect error, a 429
or a 503 is retried within the deadline (`connectors.http_base.SafeHTTP`), as the
same search sent twice gives the same answer and no side effect.

Errors as HubSpot documents them: 401 (``"category": "INVALID_AUTHENTICATION"``)
and 403 (missing scopes) are a `SourceAuthError`; 404 is not found; 429 (the
``RATE_LIMIT`` body) is retried after ``Retry-After`` or a short back-off while
the deadline leaves room, else `SourceUnavailable`; 400 is a `SourceError` with
HubSpot's category and message.

The token (a private app's access token) goes in ``Authorization: Bearer``;
``base_url`` defaults to ``https://api.hubapi.com``. ``worker test-connection``
reads ``GET /account-info/v3/details``, which any valid token may.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

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

__all__ = ["HubSpotConnector", "HubSpotQuery", "HubSpotSettings", "search_body"]

HUBSPOT_API = "https://api.hubapi.com"
#: HubSpot's CRM search returns at most 200 results a page
_PAGE_MAX = 200

Scalar = str | int | float | bool | None
_NAME = r"^[A-Za-z0-9_-]{1,100}$"


class HubSpotSettings(SaaSSettings):
    """``connection`` of a ``hubspot`` source."""

    base_url: str = HUBSPOT_API
    #: a private app's access token (needs the read scope of the objects searched)
    token: SecretStr


class HubSpotQuery(BaseModel):
    """A search: objects equal to ``filter`` on every property, at most ``limit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    object: str = Field(pattern=_NAME)
    filter: dict[str, Scalar] = Field(default_factory=dict)
    properties: list[str] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _property_names(self) -> HubSpotQuery:
        names = [*self.filter, *self.properties]
        bad = [name for name in names if not name or len(name) > 200 or not name.isprintable()]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a property name")
        return self


def _filter(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {"propertyName": name, "operator": "NOT_HAS_PROPERTY"}
    plain = jsonable(value)
    text = ("true" if plain else "false") if isinstance(plain, bool) else str(plain)
    return {"propertyName": name, "operator": "EQ", "value": text}


def search_body(
    wanted: Mapping[str, Any], properties: Sequence[str], limit: int, after: str | None
) -> dict[str, Any]:
    """The CRM search request body: one filter group, every filter ANDed."""
    body: dict[str, Any] = {
        "filterGroups": [{"filters": [_filter(k, v) for k, v in wanted.items()]}] if wanted else [],
        "properties": list(properties),
        "limit": limit,
    }
    if after is not None:
        body["after"] = after
    return body


class HubSpotConnector(SaaSConnector):
    """One HubSpot account, read with a private app token; see the module docstring."""

    type_name: ClassVar[str] = "hubspot"
    vendor: ClassVar[str] = "HubSpot"
    health_path: ClassVar[str] = "/account-info/v3/details"
    Settings: ClassVar[type[ConnectionSettings]] = HubSpotSettings
    query_shape: ClassVar[str] = (
        '{"object": "contacts", "filter": {"phone": "{customer_phone}"}, '
        '"properties": ["firstname"]}'
    )
    extra: ClassVar[str | None] = "rest"

    settings: HubSpotSettings

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a hubspot query is a mapping: {cls.query_shape}")
        spec = validate_query(HubSpotQuery, raw, cls)
        return PreparedQuery(spec=spec, names=placeholder_names(spec.filter))

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, HubSpotQuery):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        wanted = bind_placeholders(spec.filter, bound.params)
        cap = min(self.limits.max_rows, spec.limit or self.limits.max_rows)
        url = self._http.url("/crm/v3/objects/{object}/search", {"object": spec.object})
        hide = list(bound.params.values())
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, Any]] = []
        after: str | None = None
        seen: set[str] = set()
        while len(rows) < cap:
            left = self._time_left(deadline, timeout_s)
            body = search_body(wanted, spec.properties, min(_PAGE_MAX, cap - len(rows)), after)
            # A search changes nothing: safe to retry (see the module docstring).
            response = await self._http.request(
                "POST", url, timeout_s=left, idempotent=True, json_body=body, headers=self._auth()
            )
            page = self._document(response, hide)
            if page is None:
                return ReadResult(rows=[])
            rows.extend(records_with_id(page.get("results") or [], "properties"))
            after = _next_after(page)
            if after is None or after in seen:
                break
            seen.add(after)
        return ReadResult.of_rows(rows[:cap])

    @staticmethod
    def error_of(document: Any) -> tuple[str, str]:
        """HubSpot's ``category`` (or ``errorType``) and ``message``."""
        error = document if isinstance(document, Mapping) else {}
        kind = str(error.get("category") or error.get("errorType") or "")
        return kind, str(error.get("message") or "")


def _next_after(page: Mapping[str, Any]) -> str | None:
    paging = page.get("paging")
    following = paging.get("next") if isinstance(paging, Mapping) else None
    after = following.get("after") if isinstance(following, Mapping) else None
    return str(after) if isinstance(after, str | int) and str(after) else None
