"""A stand-in for HubSpot's CRM search API (and the account-info call used as a health check).

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
  ``lastmodifieddate`` always come. Operators served: ``EQ``, ``NEQ``,
  ``HAS_PROPERTY``, ``NOT_HAS_PROPERTY``. A requested property the object has no
  value for comes back as null.
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
- A ``limit`` over 200, or more than 5 filter groups or 10 filters in one (the
  limits of the August 2024 changelog "Expanded Filtering Capabilities … in
  HubSpot's Search API"), is a 400 ``VALIDATION_ERROR``; an unknown object type a 404
  ``OBJECT_NOT_FOUND`` ("Unable to infer object type from: …").

Every search body is kept in `searches`, so tests can check that a parameter only
ever filled a filter's ``value``. The object type ``slow`` answers after `slow_s`
seconds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.standins import StandIn

__all__ = ["CrmObject", "HubSpotStandIn"]

_ALWAYS = ("hs_object_id", "createdate", "lastmodifieddate")
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


def _matches(obj: CrmObject, group: dict[str, Any]) -> bool:
    for rule in group.get("filters", []):
        name, operator = rule.get("propertyName"), rule.get("operator")
        value = obj.properties.get(name)
        if operator == "EQ" and not (value is not None and value == str(rule.get("value"))):
            return False
        if operator == "NEQ" and value == str(rule.get("value")):
            return False
        if operator == "HAS_PROPERTY" and value in (None, ""):
            return False
        if operator == "NOT_HAS_PROPERTY" and value not in (None, ""):
            return False
    return True


@dataclass
class HubSpotStandIn(StandIn):
    """One portal's CRM objects, keyed by object type; see the module docstring."""

    token: str = "pat-na1-00000000-stand-in-token"
    objects: dict[str, list[CrmObject]] = field(default_factory=dict)
    slow_s: float = 3.0
    searches: list[dict[str, Any]] = field(default_factory=list)
    base_url: str = ""

    def __post_init__(self) -> None:
        super().__init__()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/crm/v3/objects/{object_type}/search", self.search)
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
        if len(groups) > 5 or any(len(g.get("filters", [])) > 10 for g in groups):
            return _error(
                400,
                "VALIDATION_ERROR",
                "Too many filters: at most 5 filter groups of at most 10 filters each",
            )
        if kind == "slow":
            await self.slow_down(self.slow_s)
        found = [o for o in self.objects[kind] if not groups or any(_matches(o, g) for g in groups)]
        start = int(body.get("after") or 0)
        page = found[start : start + limit]
        wanted = tuple(body.get("properties") or _DEFAULTS.get(kind, ()))
        answer: dict[str, Any] = {
            "total": len(found),
            "results": [
                {
                    "id": o.id,
                    "properties": self._properties(o, wanted),
                    "createdAt": o.created,
                    "updatedAt": o.updated,
                    "archived": False,
                }
                for o in page
            ],
        }
        if start + limit < len(found):
            after = str(start + limit)
            answer["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return web.json_response(answer)

    @staticmethod
    def _properties(obj: CrmObject, wanted: tuple[str, ...]) -> dict[str, str | None]:
        found = {name: obj.properties.get(name) for name in (*wanted, *_ALWAYS)}
        stamps = {
            "hs_object_id": obj.id,
            "createdate": obj.created,
            "lastmodifieddate": obj.updated,
        }
        return found | stamps
