"""A real SOAP 1.1 service made with spyne, run as its own process; and a proxy for misbehaving.

``python -m tests.servers.soap_app [--port N] [--token T]`` serves the
``OrderService`` below on 127.0.0.1 (a free port by default) with a threaded
WSGI server and prints ``LISTENING <port>`` once it accepts connections. The
WSDL is at ``/?wsdl`` (spyne writes it, ``soap:address`` included), and every
request, the WSDL too, needs ``Authorization: Bearer <token>`` (401 otherwise).

spyne runs in a separate process because it imports a vendored ``six`` that
raises an ImportWarning on Python 3.11, which pytest's ``filterwarnings =
error`` would turn into a failure; importing this module does not import spyne.

`soap_proxy_app` is an aiohttp app that forwards to the real service, with a
`Recorder` in front so a test can make it misbehave (the SOAP tests' "hostile
server").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import decimal
import socketserver
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aiohttp
from aiohttp import web

from tests.servers.hostile import Recorder, recorded_app

__all__ = ["NAMESPACE", "ORDERS", "TOKEN", "main", "soap_proxy_app", "wsgi_app"]

TOKEN = "soap-Token-3a7e55b2"
NAMESPACE = "urn:example:orders"

ORDERS: dict[str, dict[str, Any]] = {
    "12345": {
        "orderId": "12345",
        "customerPhone": "+1234567890",
        "status": "shipped",
        "tracking": "UPS123456",
        "estimatedDelivery": "2025-09-12",
        "total": "19.50",
        "items": [{"sku": "SKU-789", "quantity": 2}],
    },
    "12346": {
        "orderId": "12346",
        "customerPhone": "+1234567890",
        "status": "processing",
        "tracking": None,
        "estimatedDelivery": None,
        "total": "5.00",
        "items": [],
    },
}


def wsgi_app(token: str = TOKEN) -> Callable[..., Iterable[bytes]]:
    """The spyne service as a WSGI app, behind a bearer-token check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from spyne import (
            Application,
            Array,
            ComplexModel,
            Date,
            Decimal,
            Double,
            Fault,
            Integer,
            ServiceBase,
            Unicode,
            rpc,
        )
        from spyne.protocol.soap import Soap11
        from spyne.server.wsgi import WsgiApplication

    class Item(ComplexModel):
        __namespace__ = NAMESPACE
        sku = Unicode
        quantity = Integer

    class OrderStatus(ComplexModel):
        __namespace__ = NAMESPACE
        orderId = Unicode
        status = Unicode
        tracking = Unicode
        estimatedDelivery = Date
        total = Decimal
        items = Array(Item)

    def order(order_id: str | None) -> Any:
        found = ORDERS.get(order_id or "")
        if found is None:
            return None
        return OrderStatus(
            orderId=found["orderId"],
            status=found["status"],
            tracking=found["tracking"],
            estimatedDelivery=(
                dt.date.fromisoformat(found["estimatedDelivery"])
                if found["estimatedDelivery"]
                else None
            ),
            total=decimal.Decimal(found["total"]),
            items=[Item(**item) for item in found["items"]],
        )

    class OrderService(ServiceBase):
        @rpc(Unicode, _returns=OrderStatus)
        def GetOrderStatus(ctx: Any, orderId: str) -> Any:
            return order(orderId)

        @rpc(Unicode, Unicode, _returns=Array(OrderStatus))
        def ListOrders(ctx: Any, customerPhone: str, status: str | None) -> Any:
            return [
                order(o["orderId"])
                for o in ORDERS.values()
                if o["customerPhone"] == customerPhone and status in (None, o["status"])
            ]

        @rpc(Double, _returns=Array(OrderStatus))
        def OrdersOver(ctx: Any, minTotal: float) -> Any:
            return [order(k) for k, o in ORDERS.items() if float(o["total"]) > minTotal]

        @rpc(Unicode, Double, _returns=OrderStatus)
        def GetOrderStatusSlowly(ctx: Any, orderId: str, seconds: float) -> Any:
            time.sleep(min(seconds or 0, 30))
            return order(orderId)

        @rpc(Unicode, _returns=Unicode)
        def GetInvoice(ctx: Any, orderId: str) -> Any:
            raise Fault(
                faultcode="Server.Archive",
                faultstring=f"Invoice for order {orderId} is archived and cannot be read",
            )

        @rpc(Unicode, _returns=Unicode)
        def Echo(ctx: Any, text: str) -> Any:
            return text

    application = Application(
        [OrderService],
        tns=NAMESPACE,
        name="OrderService",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    inner = WsgiApplication(application)

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") != f"Bearer {token}":
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"unauthorized"]
        result: Iterable[bytes] = inner(environ, start_response)
        return result

    return guarded


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=TOKEN)
    args = parser.parse_args(argv)
    server = make_server(
        "127.0.0.1",
        args.port,
        wsgi_app(args.token),
        server_class=_ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    print(f"LISTENING {server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()


# -- the misbehaving front ------------------------------------------------------------------


def soap_proxy_app(recorder: Recorder, target: str) -> web.Application:
    """Forwards every request to the SOAP service at ``target`` unless ``recorder`` misbehaves."""

    async def forward(request: web.Request) -> web.Response:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "soapaction")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, target + request.path_qs, data=await request.read(), headers=headers
            ) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                headers={"Content-Type": answer.headers.get("Content-Type", "text/xml")},
            )

    app = recorded_app(recorder)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


if __name__ == "__main__":
    main(sys.argv[1:])
