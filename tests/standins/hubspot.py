"""A stand-in for HubSpot's CRM objects API: search, read by id, and account info (health check).

What it answers, and the public references it follows:

- ``POST /crm/v3/objects/{objectType}/search`` — "CRM search"
  (developers.hubspot.com/docs/api-reference/legacy/crm/search-the-crm): a JSON
  body with ``filterGroups`` (ORed; each group's ``filters`` ANDed; a filter is
  ``{"propertyName", "operator", "value"}``), ``properties``, ``limit`` (at most
  200) and ``after``; the answer ``{"total", "results": [{"id", "properties",
  "createdAt", "updatedAt", "archived"}], "paging": {"next": {"after", "link"}}}``,
  ``paging`` only while more results remain. Without ``properties`` a contact
  comes with its default ones (createdate, email, firstname, hs_object_id,
  lastmodifieddate, lastname); ``hs_object_id``, ``createdate`` and
  ``lastmodifieddate`` always come. A requested property the object has no
  value for comes back as null. Every documented operator is served: ``EQ``,
  ``NEQ``; ``LT``, ``LTE``, ``GT``, ``GTE`` and ``BETWEEN`` (``value`` to
  ``highValue``, both included) compare as numbers when both sides are numbers
  (HubSpot's numbers and millisecond dates), else as text; ``IN`` / ``NOT_IN``
  take ``values``; ``HAS_PROPERTY`` / ``NOT_HAS_PROPERTY`` no value;
  ``CONTAINS_TOKEN`` / ``NOT_CONTAINS_TOKEN`` match a whitespace-separated word
  of the value, ignoring case, where ``*`` in the filter's value stands for any
  run of characters (the docs' ``*@hubspot.com``). Where the stand-in is simpler
  than HubSpot: ``EQ`` and ``IN`` compare exactly (HubSpot ignores case on some
  property types), and tokens are split on whitespace only. A filter without
  the operands its operator needs, or an unknown operator, is a 400
  ``VALIDATION_ERROR``.
- ``GET /crm/v3/objects/{objectType}/{objectId}`` — "Read" (e.g.
  developers.hubspot.com/docs/api-reference/crm-contacts-v3, ``GET
  /crm/v3/objects/contacts/{contactId}``): query ``properties`` (comma-separated,
  or repeated) and ``idProperty`` (a unique property — ``email`` for contacts,
  or one listed in `unique` — whose value stands in the path instead of the
  id); the object as in a search result. An unknown id is a 404 with
  ``"category": "OBJECT_NOT_FOUND"`` and the message "Object not found.
  objectId are usually numeric."; an ``idProperty`` that is not a unique
  property is a 400 ``VALIDATION_ERROR`` (the stand-in's wording).
- ``GET /account-info/v3/details`` — the account's ``portalId``, time zone,
  currency and data-hosting location.
- Authentication: ``Authorization: Bearer <private app token>``; otherwise 401
  with ``{"status": "error", "message": "Authentication credentials not found…",
  "correlationId", "category": "INVALID_AUTHENTICATION"}`` (developers.hubspot.com
  "API error responses").
- Rate limits (developers.hubspot.com "API usage guidelines"): 429 with
  ``{"status": "error", "message": "You have reached your secondly limit.",
  "errorType": "RATE_LIMIT", "correlationId", "policyName": "SECONDLY",
  "requestId"}``; ``Retry-After`` when a test asks for it.
- A ``limit`` over 200, or more than 5 filter groups, 10 filters in one or 25 in
  all (the limits of the August 2024 changelog "Expanded Filtering Capabilities …
  in HubSpot's Search API"), is a 400 ``VALIDATION_ERROR``; an unknown object type
  a 404 ``OBJECT_NOT_FOUND`` ("Unable to infer object type from: …").

Every search body is kept in `searches`, so tests can check that a parameter only
ever filled a filter's ``value``. The object type ``slow`` answers after `slow_s`
seconds.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.standins import StandIn

__all__ = ["CrmObject", "HubSpotStandIn"]

_ALWAYS = ("hs_object_id", "createdate", "lastmodifieddate")
#: properties HubSpot lets ``idProperty`` name (besides ``hs_object_id``)
_UNIQUE = {"contacts": frozenset({"email"})}
_DEFAULTS = {
    "contacts": ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname")
}


@dataclass
class CrmObject:
    id: str
    properties: dict[str, str | None]
    created: str = "2025-09-01T10:00:00.000Z"
    updated: str = "2025-09-02T10:00:00.000Z"


def _error(status: int, category: str, message: str) -> web.Response:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return web.json_response(body, status=status)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _order(have: str, wanted: Any) -> int:
    """-1, 0 or 1: as numbers when both sides are numbers, else as text."""
    a, b = _number(have), _number(str(wanted))
    if a is not None and b is not None:
        return (a > b) - (a < b)
    text = str(wanted)
    return (have > text) - (have < text)


def _has_token(have: str, pattern: str) -> bool:
    wanted = re.compile(".*".join(map(re.escape, pattern.split("*"))), re.IGNORECASE)
    return any(wanted.fullmatch(word) for word in have.split())


def _holds(value: str | None, rule: dict[str, Any]) -> bool:
    """Whether one filter keeps an object whose property is ``value``."""
    operator, wanted = rule.get("operator"), rule.get("value")
    if operator in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
        present = value is not None and value != ""
        return present is (operator == "HAS_PROPERTY")
    if operator == "NEQ":
        return value != str(wanted)
    if operator == "NOT_IN":
        return value not in [str(v) for v in rule["values"]]
    if operator == "NOT_CONTAINS_TOKEN":
        return value is None or not _has_token(value, str(wanted))
    if value is None:
        return False
    if operator == "BETWEEN":
        return _order(value, wanted) >= 0 and _order(value, rule["highValue"]) <= 0
    if operator == "IN":
        return value in [str(v) for v in rule["values"]]
    if operator == "CONTAINS_TOKEN":
        return _has_token(value, str(wanted))
    return _COMPARE[str(operator)](_order(value, wanted))


_COMPARE: dict[str, Callable[[int], bool]] = {
    "EQ": lambda o: o == 0,
    "LT": lambda o: o < 0,
    "LTE": lambda o: o <= 0,
    "GT": lambda o: o > 0,
    "GTE": lambda o: o >= 0,
}
_OPERANDS = {
    **dict.fromkeys(("EQ", "NEQ", "LT", "LTE", "GT", "GTE"), ("value",)),
    **dict.fromkeys(("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"), ("value",)),
    "BETWEEN": ("value", "highValue"),
    **dict.fromkeys(("IN", "NOT_IN"), ("values",)),
    **dict.fromkeys(("HAS_PROPERTY", "NOT_HAS_PROPERTY"), ()),
}


def _invalid_filter(groups: list[dict[str, Any]]) -> str | None:
    """What HubSpot's 400 would say about the first malformed filter, if any."""
    for group in groups:
        for rule in group.get("filters", []):
            operator = rule.get("operator")
            if operator not in _OPERANDS:
                return f"Unknown operator: {operator}"
            missing = [key for key in _OPERANDS[operator] if rule.get(key) is None]
            if missing or not isinstance(rule.get("propertyName"), str):
                return (
                    f"Filter with operator {operator} needs {', '.join(missing) or 'propertyName'}"
                )
    return None


def _matches(obj: CrmObject, group: dict[str, Any]) -> bool:
    return all(
        _holds(obj.properties.get(rule.get("propertyName", "")), rule)
        for rule in group.get("filters", [])
    )


@dataclass
class HubSpotStandIn(StandIn):
    """One portal's CRM objects, keyed by object type; see the module docstring."""

    token: str = "pat-na1-00000000-stand-in-token"
    objects: dict[str, list[CrmObject]] = field(default_factory=dict)
    slow_s: float = 3.0
    searches: list[dict[str, Any]] = field(default_factory=list)
    #: object type → custom properties declared unique (idProperty may name them)
    unique: dict[str, frozenset[str]] = field(default_factory=dict)
    base_url: str = ""

    def __post_init__(self) -> None:
        super().__init__()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/crm/v3/objects/{object_type}/search", self.search)
        app.router.add_get("/crm/v3/objects/{object_type}/{object_id}", self.read)
        app.router.add_get("/account-info/v3/details", self.account)

    def rate_limited(self, retry_after: str | None) -> web.Response:
        response = web.json_response(
            {
                "status": "error",
                "message": "You have reached your secondly limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": str(uuid.uuid4()),
                "policyName": "SECONDLY",
                "requestId": str(uuid.uuid4()),
            },
            status=429,
        )
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {self.token}":
            return None
        return _error(
            401,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication "
            "and you can find more details at "
            "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        )

    async def account(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return web.json_response(
            {
                "portalId": 62515,
                "accountType": "STANDARD",
                "timeZone": "US/Eastern",
                "companyCurrency": "USD",
                "additionalCurrencies": [],
                "utcOffset": "-05:00",
                "utcOffsetMilliseconds": -18000000,
                "uiDomain": "app.hubspot.com",
                "dataHostingLocation": "na1",
            }
        )

    async def search(self, request: web.Request) -> web.Response:
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        refused = self._refused(request)
        if refused is not None:
            return refused
        kind = request.match_info["object_type"]
        if kind not in self.objects:
            return _error(404, "OBJECT_NOT_FOUND", f"Unable to infer object type from: {kind}")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "VALIDATION_ERROR", "Invalid input JSON on line 1")
        self.searches.append(body)
        limit = body.get("limit", 10)
        if not isinstance(limit, int) or not 1 <= limit <= 200:
            return _error(400, "VALIDATION_ERROR", "limit must be between 1 and 200")
        groups = body.get("filterGroups") or []
        sizes = [len(g.get("filters", [])) for g in groups]
        if len(groups) > 5 or any(n > 10 for n in sizes) or sum(sizes) > 25:
            return _error(
                400,
                "VALIDATION_ERROR",
                "Too many filters: at most 5 filter groups of at most 10 filters each, 25 in all",
            )
        invalid = _invalid_filter(groups)
        if invalid is not None:
            return _error(400, "VALIDATION_ERROR", invalid)
        if kind == "slow":
            await self.slow_down(self.slow_s)
        found = [o for o in self.objects[kind] if not groups or any(_matches(o, g) for g in groups)]
        start = int(body.get("after") or 0)
        page = found[start : start + limit]
        wanted = tuple(body.get("properties") or _DEFAULTS.get(kind, ()))
        answer: dict[str, Any] = {
            "total": len(found),
            "results": [self._object(o, wanted) for o in page],
        }
        if start + limit < len(found):
            after = str(start + limit)
            answer["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return web.json_response(answer)

    async def read(self, request: web.Request) -> web.Response:
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        refused = self._refused(request)
        if refused is not None:
            return refused
        kind, wanted_id = request.match_info["object_type"], request.match_info["object_id"]
        if kind not in self.objects:
            return _error(404, "OBJECT_NOT_FOUND", f"Unable to infer object type from: {kind}")
        id_property = request.query.get("idProperty", "hs_object_id")
        unique = {"hs_object_id"} | _UNIQUE.get(kind, frozenset()) | self.unique.get(kind, set())
        if id_property not in unique:
            return _error(
                400, "VALIDATION_ERROR", f"{id_property} is not a unique identifier property"
            )
        if kind == "slow":
            await self.slow_down(self.slow_s)
        for obj in self.objects[kind]:
            have = obj.id if id_property == "hs_object_id" else obj.properties.get(id_property)
            if have is not None and have == wanted_id:
                asked = [p for v in request.query.getall("properties", []) for p in v.split(",")]
                wanted = tuple(p for p in asked if p) or _DEFAULTS.get(kind, ())
                return web.json_response(self._object(obj, wanted))
        body = {
            "status": "error",
            "message": "Object not found.  objectId are usually numeric.",
            "correlationId": str(uuid.uuid4()),
            "context": {"id": [wanted_id]},
            "category": "OBJECT_NOT_FOUND",
        }
        return web.json_response(body, status=404)

    @classmethod
    def _object(cls, obj: CrmObject, wanted: tuple[str, ...]) -> dict[str, Any]:
        return {
            "id": obj.id,
            "properties": cls._properties(obj, wanted),
            "createdAt": obj.created,
            "updatedAt": obj.updated,
            "archived": False,
        }

    @staticmethod
    def _properties(obj: CrmObject, wanted: tuple[str, ...]) -> dict[str, str | None]:
        found = {name: obj.properties.get(name) for name in (*wanted, *_ALWAYS)}
        stamps = {
            "hs_object_id": obj.id,
            "createdate": obj.created,
            "lastmodifieddate": obj.updated,
        }
        return found | stamps
