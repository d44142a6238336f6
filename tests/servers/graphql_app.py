"""A real GraphQL server: graphql-core executing a schema of orders, in an aiohttp app.

``POST /graphql`` with ``{"query", "variables", "operationName"}`` JSON and
``Authorization: Bearer <token>`` (401 otherwise); the answer is graphql-core's
own execution result, ``{"data": …}`` plus ``"errors"`` when there are any, as
the GraphQL-over-HTTP spec has it for ``application/json``. Requests are kept
by the app's `Recorder` (see `tests.servers.hostile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web
from graphql import GraphQLError, GraphQLSchema, build_schema, graphql

from tests.servers.hostile import Recorder, recorded_app

__all__ = ["ORDERS", "SCHEMA", "TOKEN", "graphql_app", "schema"]

TOKEN = "gql-Token-5be1d0c4"

SCHEMA = """
type Query {
  order(id: ID!): Order
  orders(customerPhone: String!, status: String): [Order!]!
  slowOrder(id: ID!, seconds: Float!): Order
  failingOrder(id: ID!): Order
  echo(text: String!): String!
}

type Mutation {
  cancelOrder(id: ID!): Order
}

type Order {
  id: ID!
  status: String!
  tracking: String
  estimatedDelivery: String
  total: Float
  items: [Item!]!
}

type Item {
  sku: String!
  quantity: Int!
}
"""

ORDERS: dict[str, dict[str, Any]] = {
    "12345": {
        "id": "12345",
        "customer_phone": "+1234567890",
        "status": "shipped",
        "tracking": "UPS123456",
        "estimatedDelivery": "2025-09-12",
        "total": 19.5,
        "items": [{"sku": "SKU-789", "quantity": 2}],
    },
    "12346": {
        "id": "12346",
        "customer_phone": "+1234567890",
        "status": "processing",
        "tracking": None,
        "estimatedDelivery": None,
        "total": 5.0,
        "items": [],
    },
}


def schema(stop: asyncio.Event) -> GraphQLSchema:
    """The schema above with its resolvers; ``slowOrder`` waits until ``stop`` at most."""
    built = build_schema(SCHEMA)
    fields = built.query_type.fields if built.query_type else {}

    def order(_: Any, __: Any, id: str) -> dict[str, Any] | None:
        return ORDERS.get(id)

    def orders(_: Any, __: Any, customerPhone: str, status: str | None = None) -> list[Any]:
        return [
            o
            for o in ORDERS.values()
            if o["customer_phone"] == customerPhone and status in (None, o["status"])
        ]

    async def slow_order(_: Any, __: Any, id: str, seconds: float) -> dict[str, Any] | None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return ORDERS.get(id)

    def failing_order(_: Any, __: Any, id: str) -> None:
        raise GraphQLError(f"Order {id} could not be loaded: the warehouse database is down")

    def echo(_: Any, __: Any, text: str) -> str:
        return text

    fields["order"].resolve = order
    fields["orders"].resolve = orders
    fields["slowOrder"].resolve = slow_order
    fields["failingOrder"].resolve = failing_order
    fields["echo"].resolve = echo
    return built


def graphql_app(recorder: Recorder, token: str = TOKEN) -> web.Application:
    """``POST /graphql`` executing `SCHEMA`, recording into ``recorder``."""
    executable = schema(recorder.stop)

    async def endpoint(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"errors": [{"message": "Unauthorized"}]}, status=401)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"errors": [{"message": "Body is not JSON"}]}, status=400)
        result = await graphql(
            executable,
            body.get("query") or "",
            variable_values=body.get("variables"),
            operation_name=body.get("operationName"),
        )
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [error.formatted for error in result.errors]
        return web.json_response(answer)

    app = recorded_app(recorder)
    app.router.add_post("/graphql", endpoint)
    return app
