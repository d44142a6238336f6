"""A small inventory and orders REST API, as the seed's ``inventory_api`` would be.

Served under ``/api``; every route takes any one of these credentials (401
``{"error": "unauthorized"}`` otherwise): ``Authorization: Bearer <api key>``,
HTTP Basic ``BASIC_USER``/``BASIC_PASSWORD``, ``X-API-Key: <api key>``, the query
parameter ``api_key=<api key>``, or a live token of the app's `OAuthServer` (an
expired or revoked one gets 401 with ``WWW-Authenticate: Bearer
error="invalid_token"``, as RFC 6750 §3.1 says):

- ``GET /api/products/{sku}/stock`` → ``{"sku", "name", "quantity", "restock_date"}``,
  404 ``{"error": "not found"}`` for an unknown SKU.
- ``GET /api/products/{sku}`` → the product.
- ``GET /api/orders?customer_phone=…&status=…`` → ``{"data": {"items": [...]}}``.
- ``POST /api/search`` with ``{"sku": …}`` or ``{"name": …}`` → ``{"data": {"items": [...]}}``.
- ``GET /api/notes/{sku}`` → ``text/plain``.
- ``GET /api/slow?seconds=…`` → waits, then answers (for the deadline tests).
- ``GET /api/health`` → ``{"ok": true}``.
- ``GET /api/catalog`` → ``application/xml``: ``<catalog xmlns="urn:example:catalog">``
  with a ``<product id="…">`` (``name``, ``quantity``) per product; ``?sku=`` keeps one.
- Paged lists of the 23 `ITEMS` (``{"id", "name"}``), ``per_page`` (default 5) a page,
  one endpoint for each style of n8n's pagination:
  ``GET /api/paged/next?page=N`` → ``{"items": […], "links": {"next": "/api/paged/next?page=N+1"
  or null}}``; ``GET /api/paged/link?page=N`` → a JSON list with ``Link: <absolute URL>;
  rel="next"`` until the last page; ``GET /api/paged/cursor?after=C`` → ``{"data": […],
  "meta": {"next_cursor": C' or null}}`` (opaque cursors); ``GET /api/paged/page?page=N``
  (from 1) and ``GET /api/paged/offset?offset=K`` → ``{"results": […]}``, empty past the end.

`token_app` is an OAuth 2.0 token endpoint (RFC 6749 §4.4, client credentials,
the client authenticated by HTTP Basic or in the form body) for `OAuthServer`:
``POST /oauth/token`` → ``{"access_token", "token_type": "Bearer", "expires_in",
"scope"}`` with ``Cache-Control: no-store``; a wrong client gets 401 ``{"error":
"invalid_client"}`` (§5.2), a grant other than ``client_credentials`` 400
``{"error": "unsupported_grant_type"}``. It counts what it issued.

Every request is kept by the app's `Recorder` (see `tests.servers.hostile`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from tests.servers.hostile import Recorder, recorded_app

__all__ = [
    "API_KEY",
    "BASIC_PASSWORD",
    "BASIC_USER",
    "CLIENT_ID",
    "CLIENT_SECRET",
    "ITEMS",
    "ORDERS",
    "PRODUCTS",
    "OAuthServer",
    "rest_app",
    "token_app",
]

API_KEY = "inv-Secret-9f2c81d7"
BASIC_USER = "shop-reader"
BASIC_PASSWORD = "basic-Pass-4e7a19c2"
CLIENT_ID = "lookup-worker"
CLIENT_SECRET = "client-Secret-b81f03aa"

PRODUCTS: dict[str, dict[str, Any]] = {
    "SKU-789": {"sku": "SKU-789", "name": "Blue Mug", "quantity": 42, "price": 12.5},
    "SKU-790": {"sku": "SKU-790", "name": "Red Mug", "quantity": 0, "restock_date": "2025-09-20"},
    "SKU 1/2": {"sku": "SKU 1/2", "name": "Half Mug", "quantity": 3},
}

ORDERS: list[dict[str, Any]] = [
    {"order_id": "12345", "customer_phone": "+1234567890", "status": "shipped"},
    {"order_id": "12346", "customer_phone": "+1234567890", "status": "processing"},
    {"order_id": "20000", "customer_phone": "+1999999999", "status": "delivered"},
]


ITEMS: list[dict[str, Any]] = [{"id": n, "name": f"Item {n}"} for n in range(1, 24)]


@dataclass
class OAuthServer:
    """The state of an OAuth 2.0 authorization server: clients, issued tokens, a counter."""

    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    #: ``expires_in`` of each token issued, and how long it really lives
    lifetime_s: float = 3600.0
    #: the token endpoint waits this long before answering (concurrent callers pile up)
    delay_s: float = 0.0
    #: token → monotonic time it dies
    tokens: dict[str, float] = field(default_factory=dict)
    #: tokens issued, and the form of each token request
    issued: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)

    def live(self, token: str) -> bool:
        dies = self.tokens.get(token)
        return dies is not None and time.monotonic() < dies

    def revoke_all(self) -> None:
        self.tokens.clear()

    def client_of(self, request: web.Request, form: dict[str, str]) -> tuple[str, str] | None:
        """The client's id and secret, from HTTP Basic (§2.3.1, form-encoded) or the body."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            raw = base64.b64decode(header[6:]).decode()
            name, _, secret = raw.partition(":")
            return unquote_plus(name), unquote_plus(secret)
        if "client_id" in form:
            return form["client_id"], form.get("client_secret", "")
        return None

    def issue(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + self.lifetime_s
        self.issued += 1
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime_s}


def token_app(recorder: Recorder, oauth: OAuthServer) -> web.Application:
    """``POST /oauth/token`` for ``oauth`` (module docstring), recording into ``recorder``."""

    async def token(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        oauth.requests.append(form)
        if oauth.delay_s:
            await asyncio.sleep(oauth.delay_s)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if oauth.client_of(request, form) != (oauth.client_id, oauth.client_secret):
            challenge = {"WWW-Authenticate": 'Basic realm="token"'}
            return web.json_response({"error": "invalid_client"}, status=401, headers=challenge)
        answer = {**oauth.issue(), **({"scope": form["scope"]} if "scope" in form else {})}
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        return web.json_response(answer, headers=no_store)

    app = recorded_app(recorder)
    app.router.add_post("/oauth/token", token)
    return app


def _not_found() -> web.Response:
    return web.json_response({"error": "not found"}, status=404)


def _authorized(request: web.Request, api_key: str, oauth: OAuthServer | None) -> bool:
    header = request.headers.get("Authorization", "")
    basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    if header in (f"Bearer {api_key}", f"Basic {basic}"):
        return True
    if api_key in (request.headers.get("X-API-Key"), request.query.get("api_key")):
        return True
    return oauth is not None and header.startswith("Bearer ") and oauth.live(header[7:])


async def _catalog(request: web.Request) -> web.Response:
    wanted = request.query.get("sku")
    products = "".join(
        f"<product id={quoteattr(p['sku'])}><name>{escape(p['name'])}</name>"
        f"<quantity>{p['quantity']}</quantity></product>"
        for p in PRODUCTS.values()
        if wanted in (None, p["sku"])
    )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<catalog xmlns="urn:example:catalog">{products}</catalog>'
    )
    return web.Response(text=text, content_type="application/xml")


def _page(request: web.Request, start: int) -> list[dict[str, Any]]:
    per_page = int(request.query.get("per_page", "5"))
    return ITEMS[start : start + per_page]


def _paged_routes(prefix: str) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get(f"{prefix}/paged/next")
    async def next_url(request: web.Request) -> web.Response:
        number = int(request.query.get("page", "1"))
        items = _page(request, (number - 1) * 5)
        more = number * 5 < len(ITEMS)
        link = f"{prefix}/paged/next?page={number + 1}" if more else None
        return web.json_response({"items": items, "links": {"next": link}})

    @routes.get(f"{prefix}/paged/link")
    async def link_header(request: web.Request) -> web.Response:
        number = int(request.query.get("page", "1"))
        headers = {}
        if number * 5 < len(ITEMS):
            following = request.url.update_query({"page": str(number + 1)})
            headers["Link"] = f'<{following}>; rel="next", <{request.url}>; rel="self"'
        return web.json_response(_page(request, (number - 1) * 5), headers=headers)

    @routes.get(f"{prefix}/paged/cursor")
    async def cursor(request: web.Request) -> web.Response:
        after = request.query.get("after")
        start = int(base64.urlsafe_b64decode(after).decode()) if after else 0
        items = _page(request, start)
        end = start + len(items)
        token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(ITEMS) else None
        return web.json_response({"data": items, "meta": {"next_cursor": token}})

    @routes.get(f"{prefix}/paged/page")
    async def page_number(request: web.Request) -> web.Response:
        number = int(request.query.get("page", "1"))
        return web.json_response({"results": _page(request, (number - 1) * 5)})

    @routes.get(f"{prefix}/paged/offset")
    async def offset(request: web.Request) -> web.Response:
        return web.json_response({"results": _page(request, int(request.query["offset"]))})

    return routes


def rest_app(
    recorder: Recorder,
    api_key: str = API_KEY,
    prefix: str = "/api",
    oauth: OAuthServer | None = None,
) -> web.Application:
    """The API above, recording into ``recorder``; ``oauth``'s tokens are let in too."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if not _authorized(request, api_key, oauth):
            header = request.headers.get("Authorization", "")
            challenge = {}
            if oauth is not None and header.startswith("Bearer "):
                challenge["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return web.json_response({"error": "unauthorized"}, status=401, headers=challenge)
        response: web.StreamResponse = await handler(request)
        return response

    async def stock(request: web.Request) -> web.Response:
        product = PRODUCTS.get(request.match_info["sku"])
        if product is None:
            return _not_found()
        keys = ("sku", "name", "quantity", "restock_date")
        return web.json_response({k: product[k] for k in keys if k in product})

    async def product(request: web.Request) -> web.Response:
        found = PRODUCTS.get(request.match_info["sku"])
        return web.json_response(found) if found else _not_found()

    async def orders(request: web.Request) -> web.Response:
        items = [
            o for o in ORDERS if all(o.get(k) == v for k, v in request.query.items() if k in o)
        ]
        return web.json_response({"data": {"items": items, "count": len(items)}})

    async def search(request: web.Request) -> web.Response:
        wanted = await request.json()
        items = [p for p in PRODUCTS.values() if all(p.get(k) == v for k, v in wanted.items())]
        return web.json_response({"data": {"items": items}})

    async def notes(request: web.Request) -> web.Response:
        if request.match_info["sku"] not in PRODUCTS:
            return web.Response(status=404, text="no such product")
        return web.Response(text=f"Handle with care: {request.match_info['sku']} is fragile.")

    async def slow(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorder.stop.wait(), float(request.query["seconds"]))
        return web.json_response({"slow": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = recorded_app(recorder)
    app.middlewares.append(auth)
    app.router.add_get(f"{prefix}/products/{{sku}}/stock", stock)
    app.router.add_get(f"{prefix}/products/{{sku}}", product)
    app.router.add_get(f"{prefix}/orders", orders)
    app.router.add_post(f"{prefix}/search", search)
    app.router.add_get(f"{prefix}/notes/{{sku}}", notes)
    app.router.add_get(f"{prefix}/slow", slow)
    app.router.add_get(f"{prefix}/health", health)
    app.router.add_get(f"{prefix}/catalog", _catalog)
    app.router.add_routes(_paged_routes(prefix))
    return app
