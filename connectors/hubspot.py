"""HubSpot sources: CRM objects found with the CRM search API, or read by id.

A query names an object type, a filter map (equality on every key) and the
properties to return::

    {"object": "contacts", "filter": {"phone": "{customer_phone}"}, "properties": ["firstname"]}

becomes ``POST {base_url}/crm/v3/objects/contacts/search`` with the body
``{"filterGroups": [{"filters": [{"propertyName": "phone", "operator": "EQ",
"value": "+1234567890"}]}], "properties": ["firstname"], "limit": …}``. A
parameter only ever fills a filter's ``value``, ``highValue`` or ``values`` in that
JSON document (a null one in ``filter`` becomes the ``NOT_HAS_PROPERTY``
operator); property names, operators and the object type come from the config.
Pages are followed through ``paging.next.after`` until ``max_rows`` rows (or the
query's ``limit``) are read; each row is the result's ``properties`` plus its ``id``.

The other search operators are written as HubSpot writes a filter, in
``filters`` (ANDed with each other and with ``filter``)::

    {"propertyName": "amount", "operator": "BETWEEN", "value": "{low}", "highValue": "{high}"}
    {"propertyName": "dealstage", "operator": "IN", "values": ["closedwon", "{stage}"]}
    {"propertyName": "email", "operator": "HAS_PROPERTY"}

``EQ``, ``NEQ``, ``LT``, ``LTE``, ``GT``, ``GTE`` and ``CONTAINS_TOKEN`` /
``NOT_CONTAINS_TOKEN`` take ``value``; ``BETWEEN`` ``value`` and ``highValue``;
``IN`` / ``NOT_IN`` ``values`` (a parameter holding a list adds each item);
``HAS_PROPERTY`` / ``NOT_HAS_PROPERTY`` none — any other key is a config error
naming the filter. ``filterGroups`` (``[{"filters": […]}, …]``, ORed, each
group's filters ANDed) replaces ``filter`` and ``filters``. HubSpot's own limits
(5 groups, 10 filters a group, 25 in all since August 2024) are left to HubSpot,
whose 400 names them. ``*`` is HubSpot's wildcard in a token: a customer's value
holding one, in a ``CONTAINS_TOKEN`` filter, is refused (`InputRefused`:
``invalid_input``), so ``*`` cannot turn a lookup into a list of every contact;
the config may write one (``"value": "*@{domain}"``).

``"id": "{contact_id}"`` reads one object instead, ``GET
/crm/v3/objects/{objectType}/{objectId}?properties=…`` (one URL-encoded path
segment); with ``"idProperty": "email"`` (or another unique property) the value is
looked up in that property. A 404 (no such object, or a non-numeric id without
``idProperty``) is not found; an empty value is not found unasked.

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
from typing import Any, ClassVar, Literal

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
from worker.errors import InputRefused

__all__ = [
    "HubSpotConnector",
    "HubSpotFilter",
    "HubSpotGroup",
    "HubSpotQuery",
    "HubSpotSettings",
    "search_body",
]

HUBSPOT_API = "https://api.hubapi.com"
#: HubSpot's CRM search returns at most 200 results a page
_PAGE_MAX = 200

Scalar = str | int | float | bool | None
_NAME = r"^[A-Za-z0-9_-]{1,100}$"

Operator = Literal[
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "NOT_IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
    "CONTAINS_TOKEN",
    "NOT_CONTAINS_TOKEN",
]
#: which of value / highValue / values each operator takes
_OPERANDS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("EQ", "NEQ", "LT", "LTE", "GT", "GTE"), frozenset({"value"})),
    **dict.fromkeys(("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"), frozenset({"value"})),
    "BETWEEN": frozenset({"value", "high_value"}),
    **dict.fromkeys(("IN", "NOT_IN"), frozenset({"values"})),
    **dict.fromkeys(("HAS_PROPERTY", "NOT_HAS_PROPERTY"), frozenset()),
}
_WILDCARD_OPERATORS = frozenset({"CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"})


def _property_name(name: str) -> str:
    if not name or len(name) > 200 or not name.isprintable():
        raise ValueError(f"{name!r} is not a property name")
    return name


class HubSpotSettings(SaaSSettings):
    """``connection`` of a ``hubspot`` source."""

    base_url: str = HUBSPOT_API
    #: a private app's access token (needs the read scope of the objects searched)
    token: SecretStr


class HubSpotFilter(BaseModel):
    """One search filter, in HubSpot's words: ``propertyName``, ``operator`` and its operands."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    property_name: str = Field(alias="propertyName")
    operator: Operator
    value: Scalar = None
    high_value: Scalar = Field(default=None, alias="highValue")
    values: list[Scalar] | None = Field(default=None, min_length=1, max_length=500)

    @model_validator(mode="after")
    def _operands(self) -> HubSpotFilter:
        _property_name(self.property_name)
        wanted = _OPERANDS[self.operator]
        given = {key for key in ("value", "high_value", "values") if key in self.model_fields_set}
        alias = {"value": "value", "high_value": "highValue", "values": "values"}
        if given != wanted:
            needs = ", ".join(alias[key] for key in sorted(wanted)) or "no value"
            raise ValueError(f"{self.operator} takes {needs}")
        return self

    def body(self, params: Mapping[str, Any], source_id: str) -> dict[str, Any]:
        """The filter as the search body carries it, parameters bound as text."""
        if self.operator in _WILDCARD_OPERATORS:
            for name in placeholder_names(self.value):
                if "*" in str(params.get(name) or ""):
                    raise InputRefused(
                        source_id, f"a value for {self.property_name} may not hold '*'"
                    )
        rule: dict[str, Any] = {"propertyName": self.property_name, "operator": self.operator}
        if "value" in _OPERANDS[self.operator]:
            rule["value"] = _text(bind_placeholders(self.value, params))
        if "high_value" in _OPERANDS[self.operator]:
            rule["highValue"] = _text(bind_placeholders(self.high_value, params))
        if self.values is not None:
            rule["values"] = [
                _text(item)
                for entry in self.values
                for item in _items(bind_placeholders(entry, params))
            ]
        return rule


class HubSpotGroup(BaseModel):
    """One of ``filterGroups``: its filters all hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    filters: list[HubSpotFilter] = Field(min_length=1)


class HubSpotQuery(BaseModel):
    """A search (``filter``, ``filters`` or ``filterGroups``), or one object by ``id``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    object: str = Field(pattern=_NAME)
    filter: dict[str, Scalar] = Field(default_factory=dict)
    filters: list[HubSpotFilter] = Field(default_factory=list)
    filter_groups: list[HubSpotGroup] | None = Field(
        default=None, alias="filterGroups", min_length=1
    )
    properties: list[str] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1)
    id: Scalar = None
    id_property: str | None = Field(default=None, alias="idProperty", pattern=_NAME)

    @model_validator(mode="after")
    def _shape(self) -> HubSpotQuery:
        for name in [*self.filter, *self.properties]:
            _property_name(name)
        searches: list[str] = [
            k for k in ("filter", "filters", "limit") if k in self.model_fields_set
        ]
        if self.filter_groups is not None and {"filter", "filters"} & set(searches):
            raise ValueError("filterGroups replaces filter and filters: write them in a group")
        if self.filter_groups is not None:
            searches.append("filterGroups")
        if "id" in self.model_fields_set and searches:
            raise ValueError(f"id reads one object: it takes no {', '.join(searches)}")
        if self.id_property is not None and "id" not in self.model_fields_set:
            raise ValueError("idProperty goes with id")
        return self

    def groups(self, params: Mapping[str, Any], source_id: str) -> list[dict[str, Any]]:
        """The ``filterGroups`` of the search body, bound."""
        if self.filter_groups is not None:
            return [
                {"filters": [rule.body(params, source_id) for rule in group.filters]}
                for group in self.filter_groups
            ]
        wanted = bind_placeholders(self.filter, params)
        rules = [_filter(k, v) for k, v in wanted.items()]
        rules += [rule.body(params, source_id) for rule in self.filters]
        return [{"filters": rules}] if rules else []


def _text(value: Any) -> str:
    plain = jsonable(value)
    if isinstance(plain, bool):
        return "true" if plain else "false"
    return "" if plain is None else str(plain)


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _filter(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {"propertyName": name, "operator": "NOT_HAS_PROPERTY"}
    return {"propertyName": name, "operator": "EQ", "value": _text(value)}


def search_body(
    groups: list[dict[str, Any]], properties: Sequence[str], limit: int, after: str | None
) -> dict[str, Any]:
    """The CRM search request body: the groups ORed, each one's filters ANDed."""
    body: dict[str, Any] = {"filterGroups": groups, "properties": list(properties), "limit": limit}
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
        '"properties": ["firstname"]}, with "filters" or "filterGroups" for other operators; '
        'or {"object": "contacts", "id": "{contact_id}", "idProperty": "email"}'
    )

    settings: HubSpotSettings

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a hubspot query is a mapping: {cls.query_shape}")
        spec = validate_query(HubSpotQuery, raw, cls)
        rules = [*spec.filters, *(r for g in spec.filter_groups or () for r in g.filters)]
        operands = [[rule.value, rule.high_value, rule.values] for rule in rules]
        return PreparedQuery(spec=spec, names=placeholder_names([spec.filter, spec.id, operands]))

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, HubSpotQuery):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        if "id" in spec.model_fields_set:
            return await self._get(spec, bound, timeout_s)
        groups = spec.groups(bound.params, self.source_id)
        cap = min(self.limits.max_rows, spec.limit or self.limits.max_rows)
        url = self._http.url("/crm/v3/objects/{object}/search", {"object": spec.object})
        hide = list(bound.params.values())
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, Any]] = []
        after: str | None = None
        seen: set[str] = set()
        while len(rows) < cap:
            left = self._time_left(deadline, timeout_s)
            body = search_body(groups, spec.properties, min(_PAGE_MAX, cap - len(rows)), after)
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

    async def _get(self, spec: HubSpotQuery, bound: Bound, timeout_s: float) -> ReadResult:
        """``GET /crm/v3/objects/{objectType}/{objectId}``; an empty id is not found, unasked."""
        value = _text(bind_placeholders(spec.id, bound.params))
        if not value.strip():
            return ReadResult(rows=[])
        url = self._http.url("/crm/v3/objects/{object}/{id}", {"object": spec.object, "id": value})
        params: dict[str, str] = {}
        if spec.properties:
            params["properties"] = ",".join(spec.properties)
        if spec.id_property is not None:
            params["idProperty"] = spec.id_property
        response = await self._http.request(
            "GET",
            url,
            timeout_s=timeout_s,
            idempotent=True,
            params=params,
            headers=self._auth(),
        )
        document = self._document(response, list(bound.params.values()))
        if document is None:
            return ReadResult(rows=[])
        return ReadResult.of_rows(records_with_id([document], "properties"))

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
