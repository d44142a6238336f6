"""The graphql connector against a real GraphQL server (graphql-core in aiohttp) on loopback.

The server executes every request against a real schema (`tests.servers.graphql_app`):
variables are coerced by GraphQL's own rules, errors are graphql-core's. Besides
the connector contract: documents are checked when the config loads, parameters
travel only as typed variables, an ``errors`` list is a source failure whose
text carries no parameter value, and the HTTP safety cases (redirects, size
cap, stalled body, retries, 401, secrets) hold for GraphQL too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from pydantic import ValidationError

from connectors.base import (
    Bound,
    ConfigError,
    NotARead,
    SourceAuthError,
    SourceError,
    SourceTimeout,
)
from connectors.graphql import GraphQLConnector, GraphQLSettings, GraphQLSpec
from connectors.registry import load
from connectors.testing import RawQuery
from tests.servers.graphql_app import TOKEN, graphql_app
from tests.servers.hostile import (
    Recorder,
    endless,
    redirect,
    serve,
    stall,
    status,
)
from tests.support.connectors import ConnectorFactory, ContractCase, read, serve_elsewhere
from worker.config import load_tenant
from worker.service import open_worker

ORDER = {
    "document": "query ($id: ID!) { order(id: $id) { status tracking estimatedDelivery } }",
    "variables": {"id": "{order_id}"},
    "result": "order",
}
ORDERS = {
    "document": """
        query Orders($phone: String!, $status: String) {
          orders(customerPhone: $phone, status: $status) { id status total items { sku } }
        }""",
    "variables": {"phone": "{customer_phone}", "status": "{status}"},
    "result": "orders",
}
SLOW = {
    "document": "query ($id: ID!, $s: Float!) { slowOrder(id: $id, seconds: $s) { status } }",
    "variables": {"id": "{order_id}", "s": "{seconds}"},
    "result": "slowOrder",
}
FAILING = {
    "document": "query ($id: ID!) { failingOrder(id: $id) { status } }",
    "variables": {"id": "{order_id}"},
    "result": "failingOrder",
}
ECHO = {
    "document": "query ($text: String!) { echo(text: $text) }",
    "variables": {"text": "{text}"},
    "result": "echo",
}

REPO = Path(__file__).resolve().parents[2]

MakeConnector = Callable[..., GraphQLConnector]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def endpoint(recorder: Recorder) -> AsyncIterator[str]:
    async with serve(graphql_app(recorder)) as url:
        yield f"{url}/graphql"


@pytest.fixture
def other_recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def other_host(other_recorder: Recorder) -> AsyncIterator[str]:
    async def stolen(request: web.Request) -> web.Response:
        return web.json_response({"data": {"order": {"status": "stolen"}}})

    async with serve_elsewhere(other_recorder, stolen) as url:
        yield url


@pytest.fixture
async def make_connector(endpoint: str, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    defaults = {"url": endpoint, "api_key": TOKEN, "headers": {"Authorization": "Bearer {api_key}"}}
    factory = ConnectorFactory(GraphQLConnector, "orders_gql", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


class TestGraphQLContract(ContractCase):
    FOUND_QUERY = ORDER
    FOUND_PARAMS = Bound(params={"order_id": "12345"})
    MISSING_PARAMS = Bound(params={"order_id": "99999"})
    SLOW_QUERY = SLOW
    SLOW_PARAMS = Bound(params={"order_id": "12345", "seconds": 30})
    WRITE_QUERY: ClassVar[RawQuery] = {
        "document": "mutation ($id: ID!) { cancelOrder(id: $id) { status } }",
        "variables": {"id": "{order_id}"},
    }

    @pytest.fixture
    def connector(self, make_connector: MakeConnector) -> GraphQLConnector:
        return make_connector()


# -- reads ------------------------------------------------------------------------------


async def test_run__contract_shape_reads_result_inside_data(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    result = await read(make_connector(), ORDER, order_id="12345")

    assert result.rows == [
        {"status": "shipped", "tracking": "UPS123456", "estimatedDelivery": "2025-09-12"}
    ]
    sent = json.loads(recorder.seen[-1].body)
    assert sent == {"query": ORDER["document"], "variables": {"id": "12345"}}
    assert recorder.seen[-1].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_run__list_result_is_one_row_per_item(make_connector: MakeConnector) -> None:
    result = await read(make_connector(), ORDERS, customer_phone="+1234567890")

    assert [row["id"] for row in result.rows] == ["12345", "12346"]
    assert result.rows[0]["items"] == [{"sku": "SKU-789"}]


async def test_run__operation_name_is_sent(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    document = 'query A { echo(text: "a") } query B { echo(text: "b") }'

    result = await read(
        make_connector(), {"document": document, "operation_name": "B", "result": "echo"}
    )

    assert result.data == "b"
    assert json.loads(recorder.seen[-1].body)["operationName"] == "B"


@pytest.mark.parametrize(
    ("params", "found"),
    [
        pytest.param({"customer_phone": "+1234567890", "status": "shipped"}, ["12345"], id="both"),
        pytest.param(
            {"customer_phone": "+1234567890", "status": None},
            ["12345", "12346"],
            id="null-variable",
        ),
        pytest.param({"customer_phone": "+0000"}, [], id="empty-list-not-found"),
    ],
)
async def test_run__variables_are_typed_values(
    make_connector: MakeConnector, params: dict[str, Any], found: list[str]
) -> None:
    result = await read(make_connector(), ORDERS, **params)

    assert [row["id"] for row in result.rows] == found
    assert result.found == bool(found)


async def test_run__number_parameter_stays_a_number(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    result = await read(make_connector(), SLOW, order_id=12345, seconds=0)

    assert result.rows == [{"status": "shipped"}]
    assert json.loads(recorder.seen[-1].body)["variables"] == {"id": 12345, "s": 0}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('") { id } } mutation { cancelOrder(id: "12345") { id } } #', id="breakout"),
        pytest.param("$id", id="variable-name"),
        pytest.param("{order_id}", id="placeholder-text"),
        pytest.param("\u0000\n\r\"'\\", id="control-and-quotes"),
    ],
)
async def test_run__parameter_is_only_ever_a_variable_value(
    make_connector: MakeConnector, recorder: Recorder, text: str
) -> None:
    result = await read(make_connector(), ECHO, text=text)

    assert result.data == text
    sent = json.loads(recorder.seen[-1].body)
    assert sent["query"] == ECHO["document"]
    assert sent["variables"] == {"text": text}


# -- errors -------------------------------------------------------------------------------


async def test_run__errors_list_is_a_source_error_without_parameter_values(
    make_connector: MakeConnector,
) -> None:
    with pytest.raises(SourceError, match="could not be loaded: the warehouse") as caught:
        await read(make_connector(), FAILING, order_id="12345")

    assert "12345" not in str(caught.value)
    assert "Order … could not be loaded" in str(caught.value)


async def test_run__variable_coercion_error_does_not_echo_the_value(
    make_connector: MakeConnector,
) -> None:
    with pytest.raises(SourceError, match="Float cannot represent") as caught:
        await read(make_connector(), SLOW, order_id="12345", seconds="Secret-Looking-Text")

    assert "Secret-Looking-Text" not in str(caught.value)


async def test_run__schema_error_is_a_source_error(make_connector: MakeConnector) -> None:
    query = {"document": "query { order(id: 1) { nope } }", "result": "order"}

    with pytest.raises(SourceError, match="Cannot query field 'nope' on type 'Order'"):
        await read(make_connector(), query)


async def test_run__long_error_message_is_trimmed_to_one_line(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    async def chatty(request: web.Request) -> web.StreamResponse:
        message = "first line\n" + "x" * 5000
        return web.json_response({"data": None, "errors": [{"message": message}, {"m": 2}]})

    recorder.misbehave = chatty

    with pytest.raises(SourceError) as caught:
        await read(make_connector(), ORDER, order_id="12345")

    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 300


async def test_run__partial_data_with_errors_is_still_a_source_error(
    make_connector: MakeConnector,
) -> None:
    document = "query ($id: ID!) { order(id: $id) { status } failingOrder(id: $id) { status } }"

    with pytest.raises(SourceError, match="warehouse database is down"):
        await read(
            make_connector(),
            {"document": document, "variables": {"id": "{order_id}"}},
            order_id="12345",
        )


async def test_run__404_endpoint_is_not_found(make_connector: MakeConnector, endpoint: str) -> None:
    connector = make_connector(url=endpoint.replace("/graphql", "/nowhere"))

    assert not (await read(connector, ORDER, order_id="12345")).found


async def test_run__an_answer_that_is_not_graphql_is_a_source_error(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>login</html>", content_type="text/html")

    recorder.misbehave = html

    with pytest.raises(SourceError, match=r"not a GraphQL response \(text/html\)"):
        await read(make_connector(), ORDER, order_id="12345")


async def test_run__500_is_a_source_error(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(500)

    with pytest.raises(SourceError, match="answered 500"):
        await read(make_connector(), ORDER, order_id="12345")


# -- HTTP safety -------------------------------------------------------------------------


async def test_run__401_is_an_auth_error_without_the_token(
    make_connector: MakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Token-0ddba11"

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await read(make_connector(api_key=wrong), ORDER, order_id="12345")

    assert wrong not in str(caught.value)
    assert wrong not in caplog.text
    assert TOKEN not in caplog.text


async def test_run__redirect_to_another_host_is_not_followed(
    make_connector: MakeConnector,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
) -> None:
    recorder.misbehave = redirect(f"{other_host}/graphql", code=307)

    with pytest.raises(SourceError, match="redirected to another host"):
        await read(make_connector(), ORDER, order_id="12345")

    assert other_recorder.seen == []


async def test_run__endless_body_is_cut_off(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = endless(recorder)
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 50000 bytes"):
        await read(make_connector(max_response_bytes=50_000), ORDER, timeout_s=10, order_id="1")

    assert time.monotonic() - started < 6  # cut at the cap, not at the 10 s deadline
    assert recorder.streamed < 50_000_000


async def test_run__deadline_covers_a_stalled_body(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = stall(recorder)
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(make_connector(), ORDER, timeout_s=0.5, order_id="12345")

    assert time.monotonic() - started < 0.5 + 4  # the stall lasts 20 s


async def test_run__query_is_retried_on_503_with_retry_after(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(503, times=2, retry_after="0")

    assert (await read(make_connector(), ORDER, order_id="12345")).found
    assert len(recorder.seen) == 3


async def test_run__retry_after_past_the_deadline_is_not_waited_for(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(503, retry_after="60")
    started = time.monotonic()

    with pytest.raises(SourceError, match="answered 503"):
        await read(make_connector(), ORDER, timeout_s=10, order_id="12345")

    assert time.monotonic() - started < 5  # neither the 60 s asked for nor the 10 s deadline
    assert len(recorder.seen) == 1


# -- prepare --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        pytest.param("mutation { cancelOrder(id: 1) { id } }", id="mutation"),
        pytest.param("subscription { orderChanged { id } }", id="subscription"),
        pytest.param(
            "query A { order(id: 1) { id } } mutation B { cancelOrder(id: 1) { id } }",
            id="mutation-beside-a-query",
        ),
        pytest.param(
            'mutation M { cancelOrder(id: 1) { id } } query Q { echo(text: "x") }',
            id="mutation-first",
        ),
    ],
)
def test_prepare__refuses_mutations_and_subscriptions(document: str) -> None:
    with pytest.raises(NotARead):
        GraphQLConnector.prepare({"document": document, "operation_name": "Q"})


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(
            {"document": "query { order(id: 1) { status }"}, "does not parse", id="syntax-error"
        ),
        pytest.param(
            {"document": "type Order { id: ID }"},
            "only operations and fragments",
            id="schema-definition",
        ),
        pytest.param({"document": "fragment F on Order { id }"}, "has no query", id="no-query"),
        pytest.param(
            {"document": "query A { a } query B { b }"},
            "operation_name",
            id="two-operations-unnamed",
        ),
        pytest.param(
            {"document": "query A { a }", "operation_name": "B"},
            "no operation named",
            id="unknown-operation-name",
        ),
        pytest.param(
            {"document": "query ($id: ID!) { order(id: $id) { id } }"},
            "required variables id",
            id="required-variable-unbound",
        ),
        pytest.param(
            {"document": "query { a }", "variables": {"id": "{order_id}"}},
            "not declared",
            id="undeclared-variable",
        ),
        pytest.param(
            {"document": 'query { order(id: "{order_id}") { id } }'},
            "parameters go in variables",
            id="placeholder-in-document",
        ),
        pytest.param({"document": "query { a }", "result": "a..b"}, "result", id="bad-result"),
        pytest.param({"document": "query { a }", "url": "http://x"}, "url", id="unknown-key"),
        pytest.param({"variables": {}}, "document", id="no-document"),
        pytest.param(["query { a }"], "mapping", id="a-list"),
    ],
)
def test_prepare__refuses_bad_documents(raw: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        GraphQLConnector.prepare(raw)


def test_prepare__names_come_from_variables_only() -> None:
    query = GraphQLConnector.prepare(ORDERS)

    assert query.names == ("customer_phone", "status")
    assert isinstance(query.spec, GraphQLSpec)
    assert query.spec.result == "orders"


def test_prepare__a_plain_string_is_a_document() -> None:
    query = GraphQLConnector.prepare('{ echo(text: "hi") }')

    assert isinstance(query.spec, GraphQLSpec)
    assert query.names == ()


# -- health, settings, discovery ---------------------------------------------------------


async def test_health_check__wrong_token_is_an_auth_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceAuthError):
        await make_connector(api_key="nope").health_check()


async def test_health_check__asks_for_typename(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    await make_connector().health_check()

    assert json.loads(recorder.seen[-1].body) == {"query": "query { __typename }"}


def test_settings__base_url_is_the_origin_of_url() -> None:
    settings = GraphQLSettings.model_validate({"url": "https://shop.example:8443/api/graphql"})

    assert settings.base_url == "https://shop.example:8443"


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({"url": "shop.example/graphql"}, id="relative"),
        pytest.param({"url": "ftp://shop.example/graphql"}, id="not-http"),
        pytest.param({"url": "https://u:Secret-pw@shop.example/graphql"}, id="credentials"),
        pytest.param({"url": "https://shop.example/graphql#x"}, id="fragment"),
        pytest.param(
            {"url": "https://shop.example/g", "base_url": "https://other.example"},
            id="other-base-url",
        ),
        pytest.param({}, id="no-url"),
    ],
)
def test_settings__refuses_bad_connections(connection: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        GraphQLSettings.model_validate({**connection, "api_key": "Secret-key-1"})

    assert "Secret-key-1" not in str(caught.value)
    assert "Secret-pw" not in str(caught.value)


def test_registry__loads_the_graphql_entry_point() -> None:
    assert load("graphql") is GraphQLConnector


# -- the worker around it ------------------------------------------------------------------


def tenant_document(endpoint: str, document: str) -> dict[str, Any]:
    return {
        "tenant_id": "gql_shop",
        "data_sources": [
            {
                "id": "orders_gql",
                "type": "graphql",
                "connection": {
                    "url": endpoint,
                    "api_key": "${env:TEST_GQL_TOKEN}",
                    "headers": {"Authorization": "Bearer {api_key}"},
                },
                "queries": {
                    "order_status": {
                        "document": document,
                        "variables": {"id": "{order_id}"},
                        "result": "order",
                    },
                    "failing": {**FAILING},
                },
            }
        ],
        "lookups": {
            "order_status": {
                "source": "orders_gql",
                "params": {"order_id": {"pattern": "[0-9]{1,12}"}},
                "template": "order_status.j2",
                "not_found": "No order #{{ params.order_id }}.",
            },
            "failing": {
                "source": "orders_gql",
                "params": {"order_id": {"pattern": "[0-9]{1,12}"}},
                "fallback": "Orders are offline; we'll write about #{{ params.order_id }}.",
            },
        },
    }


async def test_lookup__renders_the_seed_reply_through_the_pipeline(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_GQL_TOKEN", TOKEN)
    document = (
        "query ($id: ID!) { order(id: $id) "
        "{ status tracking estimated_delivery: estimatedDelivery } }"
    )
    tenant = load_tenant(
        document=tenant_document(endpoint, document), templates_dir=REPO / "templates"
    )

    async with open_worker(tenant, with_queue=False) as worker:
        shipped = await worker.pipeline.lookup("order_status", {"order_id": "12345"})
        missing = await worker.pipeline.lookup("order_status", {"order_id": "99999"})
        failing = await worker.pipeline.lookup("failing", {"order_id": "12345"})

    assert shipped.outcome == "ok", shipped.message
    assert shipped.message.strip().splitlines() == [
        "Your order #12345 has been shipped! 📦",
        "Tracking: UPS123456",
        "Expected delivery: September 12th",
    ]
    assert (missing.outcome, missing.message) == ("not_found", "No order #99999.")
    assert failing.outcome == "fallback"
    assert failing.message == "Orders are offline; we'll write about #12345."


def test_load_tenant__a_mutation_is_refused_when_the_config_loads(endpoint: str) -> None:
    document = "mutation ($id: ID!) { cancelOrder(id: $id) { status } }"

    with pytest.raises(ConfigError, match="not a read"):
        load_tenant(document=tenant_document(endpoint, document), decrypt=False)


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_GRAPHQL_TOKEN", "example-token")

    tenant = load_tenant(REPO / "config" / "examples" / "graphql.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"graphql"}
    assert set(tenant.lookups) == {"order_status", "customer_orders"}
