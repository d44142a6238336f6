"""A small inventory and orders REST API, as the seed's ``inventory_api`` would be.

Served under ``/api`` with ``Authorization: Bearer <api key>`` on every route
(401 ``{"error": "unauthorized"}`` otherwise):

- ``GET /api/products/{sku}/stock`` → ``{"sku", "name", "quantity", "restock_date"}``,
  404 ``{"error": "not found"}`` for an unknown SKU.
- ``GET /api/products/{sku}`` → the product.
- ``GET /api/orders?customer_phone=…&status=…`` → ``{"data": {"items": [...]}}``.
- ``POST /api/search`` with ``{"sku": …}`` or ``{"name": …}`` → ``{"data": {"items": [...]}}``.
- ``GET /api/notes/{sku}`` → ``text/plain``.
- ``GET /api/slow?seconds=…`` → waits, then answers (for the deadline tests).
- ``GET /api/health`` → ``{"ok": true}``.

Every request is kept by the app's `Recorder` (see `tests.servers.hostile`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from tests.servers.hostile import Recorder, recorded_app

__all__ = ["API_KEY", "ORDERS", "PRODUCTS", "rest_app"]

API_KEY = "inv-Secret-9f2c81d7"

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


def _not_found() -> web.Response:
    return web.json_response({"error": "not found"}, status=404)


def rest_app(recorder: Recorder, api_key: str = API_KEY, prefix: str = "/api") -> web.Application:
    """The API above, recording into ``recorder``."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
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
    return app
