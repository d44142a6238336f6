"""The soap connector against a real SOAP service (spyne, in its own process) on loopback.

spyne writes the WSDL and parses and answers the envelopes zeep builds
(`tests.servers.soap_app`). For the misbehaving cases the connector's
``address`` points at an aiohttp proxy in front of the real service, whose
`Recorder` sees every request and can answer with a redirect, an endless or
stalled body, a 503…; the WSDL still comes from spyne unless a test serves its
own.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from pydantic import ValidationError

from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    NotARead,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.registry import load
from connectors.soap import (
    EnvelopeSpec,
    SOAPConnector,
    SOAPQuery,
    SOAPSettings,
    render_envelope,
)
from connectors.testing import RawQuery
from tests.servers.hostile import (
    Recorder,
    endless,
    redirect,
    serve,
    stall,
    status,
)
from tests.servers.soap_app import NAMESPACE, TOKEN, soap_proxy_app
from tests.support.connectors import ConnectorFactory, ContractCase, read, serve_elsewhere
from tests.support.processes import stop
from worker.config import load_tenant
from worker.service import open_worker

REPO = Path(__file__).resolve().parents[2]

ORDER_STATUS = {"operation": "GetOrderStatus", "args": {"orderId": "{order_id}"}}
LIST_ORDERS = {"operation": "ListOrders", "args": {"customerPhone": "{phone}"}}
SLOW = {"operation": "GetOrderStatusSlowly", "args": {"orderId": "{order_id}", "seconds": 30}}
INVOICE = {"operation": "GetInvoice", "args": {"orderId": "{order_id}"}}
ECHO = {"operation": "Echo", "args": {"text": "{text}"}}

MakeConnector = Callable[..., SOAPConnector]


# -- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The spyne service in its own process; yields its base URL."""
    log = tmp_path_factory.mktemp("soap") / "spyne.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.soap_app"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            pytest.fail(f"the SOAP service did not start: {log.read_text()}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def wsdl_text(service: str) -> str:
    response = httpx.get(f"{service}/?wsdl", headers={"Authorization": f"Bearer {TOKEN}"})
    response.raise_for_status()
    return response.text


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def proxy(recorder: Recorder, service: str) -> AsyncIterator[str]:
    """A recording, misbehaving-on-demand front of the real service."""
    async with serve(soap_proxy_app(recorder, service)) as url:
        yield url


@pytest.fixture
def other_recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def other_host(other_recorder: Recorder) -> AsyncIterator[str]:
    async def stolen(request: web.Request) -> web.Response:
        return web.Response(text="stolen", content_type="text/xml")

    async with serve_elsewhere(other_recorder, stolen) as url:
        yield url


@pytest.fixture
async def make_connector(service: str, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    defaults = {
        "wsdl": f"{service}/?wsdl",
        "api_key": TOKEN,
        "headers": {"Authorization": "Bearer {api_key}"},
    }
    factory = ConnectorFactory(SOAPConnector, "orders_soap", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


class TestSOAPContract(ContractCase):
    FOUND_QUERY = ORDER_STATUS
    FOUND_PARAMS = Bound(params={"order_id": "12345"})
    MISSING_PARAMS = Bound(params={"order_id": "99999"})
    SLOW_QUERY = SLOW
    SLOW_PARAMS = Bound(params={"order_id": "12345"})
    WRITE_QUERY: ClassVar[RawQuery] = {
        "operation": "CancelOrder",
        "args": {"orderId": "{order_id}"},
    }

    @pytest.fixture
    def connector(self, make_connector: MakeConnector) -> SOAPConnector:
        return make_connector()


# -- reads -----------------------------------------------------------------------------------


async def test_run__answer_is_zeeps_object_as_plain_dicts_and_lists(
    make_connector: MakeConnector,
) -> None:
    result = await read(make_connector(), ORDER_STATUS, order_id="12345")

    assert result.rows == [
        {
            "orderId": "12345",
            "status": "shipped",
            "tracking": "UPS123456",
            "estimatedDelivery": "2025-09-12",
            "total": 19.5,
            "items": {"Item": [{"sku": "SKU-789", "quantity": 2}]},
        }
    ]


async def test_run__result_path_picks_inside_the_answer(make_connector: MakeConnector) -> None:
    query = {**ORDER_STATUS, "result": "items.Item"}

    result = await read(make_connector(), query, order_id="12345")

    assert result.rows == [{"sku": "SKU-789", "quantity": 2}]


async def test_run__array_answer_is_one_row_per_item(make_connector: MakeConnector) -> None:
    result = await read(make_connector(), LIST_ORDERS, phone="+1234567890")

    assert [row["orderId"] for row in result.rows] == ["12345", "12346"]
    assert result.rows[1]["tracking"] is None


async def test_run__empty_array_is_not_found(make_connector: MakeConnector) -> None:
    result = await read(make_connector(), LIST_ORDERS, phone="+0000000")

    assert not result.found
    assert result.rows == []


@pytest.mark.parametrize(
    ("value", "found"),
    [
        pytest.param(6, ["12345"], id="int"),
        pytest.param(1.25, ["12345", "12346"], id="float"),
        pytest.param(100, [], id="none-over"),
    ],
)
async def test_run__typed_arguments_follow_the_wsdl(
    make_connector: MakeConnector, value: float, found: list[str]
) -> None:
    query = {"operation": "OrdersOver", "args": {"minTotal": "{min_total}"}}

    result = await read(make_connector(), query, min_total=value)

    assert [row["orderId"] for row in result.rows] == found


async def test_run__rows_are_capped_by_the_limits(make_connector: MakeConnector) -> None:
    result = await read(make_connector(limits=Limits(max_rows=1)), LIST_ORDERS, phone="+1234567890")

    assert len(result.rows) == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("</ns0:text><ns0:admin>true</ns0:admin>", id="close-the-element"),
        pytest.param("<![CDATA[x]]>&amp;&lt;", id="cdata-and-entities"),
        pytest.param('"><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>&e;', id="xxe"),
        pytest.param("{order_id}", id="placeholder-text"),
    ],
)
async def test_run__parameter_is_only_ever_element_text(
    make_connector: MakeConnector, proxy: str, recorder: Recorder, text: str
) -> None:
    result = await read(make_connector(address=f"{proxy}/"), ECHO, text=text)

    assert result.data == text
    sent = etree.fromstring(recorder.seen[-1].body)
    (element,) = sent.iter(f"{{{NAMESPACE}}}text")
    assert element.text == text
    assert len(element) == 0
    assert sent.getroottree().docinfo.doctype == ""


# -- faults and errors ---------------------------------------------------------------------------


async def test_run__soap_fault_is_a_source_error_without_parameter_values(
    make_connector: MakeConnector,
) -> None:
    with pytest.raises(SourceError, match="SOAP fault: Invoice for order … is archived") as caught:
        await read(make_connector(), INVOICE, order_id="12345")

    assert "12345" not in str(caught.value)


async def test_run__unknown_operation_names_the_wsdls_operations(
    make_connector: MakeConnector,
) -> None:
    with pytest.raises(SourceError, match=r"no operation 'GetOrderStatuses' \(it has: Echo, "):
        await read(make_connector(), {"operation": "GetOrderStatuses"})


async def test_run__arguments_that_do_not_fit_are_a_source_error(
    make_connector: MakeConnector,
) -> None:
    query = {"operation": "GetOrderStatus", "args": {"order": "{order_id}"}}

    with pytest.raises(SourceError, match="do not fit operation 'GetOrderStatus'") as caught:
        await read(make_connector(), query, order_id="SECRET-ish-12345")

    assert "SECRET-ish-12345" not in str(caught.value)


async def test_run__entities_in_the_answer_are_refused(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    async def xxe(request: web.Request) -> web.StreamResponse:
        body = (
            '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            f'<EchoResponse xmlns="{NAMESPACE}"><EchoResult>&x;</EchoResult></EchoResponse>'
            "</s:Body></s:Envelope>"
        )
        return web.Response(text=body, content_type="text/xml")

    recorder.misbehave = xxe

    with pytest.raises(SourceError, match="not the operation's SOAP response"):
        await read(make_connector(address=proxy), ECHO, text="x")


async def test_run__an_answer_that_is_not_soap_is_a_source_error(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    recorder.misbehave = html

    with pytest.raises(SourceError, match="not the operation's SOAP response"):
        await read(make_connector(address=proxy), ORDER_STATUS, order_id="12345")


async def test_run__500_without_a_fault_is_a_source_error(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    recorder.misbehave = status(500, body="oops")

    with pytest.raises(SourceError, match="answered 500"):
        await read(make_connector(address=proxy), ORDER_STATUS, order_id="12345")


async def test_run__404_is_not_found(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    recorder.misbehave = status(404)

    assert not (await read(make_connector(address=proxy), ORDER_STATUS, order_id="1")).found


# -- WSDL loading ------------------------------------------------------------------------------


async def test_open__wsdl_file_relative_to_the_config(
    make_connector: MakeConnector, tmp_path: Path, wsdl_text: str
) -> None:
    (tmp_path / "wsdl").mkdir()
    (tmp_path / "wsdl" / "orders.wsdl").write_text(wsdl_text, encoding="utf-8")

    result = await read(make_connector(wsdl="wsdl/orders.wsdl"), ORDER_STATUS, order_id="12345")

    assert result.rows[0]["status"] == "shipped"


async def test_open__missing_wsdl_file_is_unavailable(
    make_connector: MakeConnector, tmp_path: Path
) -> None:
    with pytest.raises(SourceUnavailable, match=r"'nowhere\.wsdl' does not exist") as caught:
        await make_connector(wsdl="nowhere.wsdl").open()

    assert str(tmp_path) not in str(caught.value)


async def test_open__wsdl_that_does_not_parse_is_a_source_error(
    make_connector: MakeConnector, tmp_path: Path
) -> None:
    (tmp_path / "broken.wsdl").write_text("<definitions><oops", encoding="utf-8")

    with pytest.raises(SourceError, match="the WSDL does not load"):
        await make_connector(wsdl="broken.wsdl").open()


async def test_open__wrong_token_for_the_wsdl_is_an_auth_error(
    make_connector: MakeConnector,
) -> None:
    with pytest.raises(SourceAuthError, match="loading the WSDL") as caught:
        await make_connector(api_key="wrong-Token-beefcafe").open()

    assert "wrong-Token-beefcafe" not in str(caught.value)


async def test_open__wsdl_import_from_another_host_is_refused(
    make_connector: MakeConnector,
    proxy: str,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
    wsdl_text: str,
) -> None:
    importing = wsdl_text.replace(
        '<xs:schema targetNamespace="urn:example:orders" elementFormDefault="qualified">',
        '<xs:schema targetNamespace="urn:example:orders" elementFormDefault="qualified">'
        f'<xs:import namespace="urn:other" schemaLocation="{other_host}/other.xsd"/>',
    )
    assert importing != wsdl_text

    async def wsdl(request: web.Request) -> web.StreamResponse:
        return web.Response(text=importing, content_type="text/xml")

    recorder.misbehave = wsdl

    with pytest.raises(SourceError, match=r"another host \(127\.0\.0\.2\)"):
        await make_connector(wsdl=f"{proxy}/?wsdl").open()

    assert other_recorder.seen == []


async def test_open__wsdl_redirect_to_another_host_is_refused(
    make_connector: MakeConnector,
    proxy: str,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
) -> None:
    recorder.misbehave = redirect(f"{other_host}/?wsdl")

    with pytest.raises(SourceError, match="another host"):
        await make_connector(wsdl=f"{proxy}/?wsdl").open()

    assert other_recorder.seen == []


async def test_open__endless_wsdl_is_cut_off(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    recorder.misbehave = endless(recorder, content_type="text/xml")
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 20000 bytes"):
        await make_connector(wsdl=f"{proxy}/?wsdl", max_response_bytes=20_000).open()

    assert time.monotonic() - started < 6  # cut at the cap: the body would go on for 20 s


# -- HTTP safety of reads ---------------------------------------------------------------------


async def test_run__401_is_an_auth_error_without_the_token(
    make_connector: MakeConnector,
    tmp_path: Path,
    wsdl_text: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "orders.wsdl").write_text(wsdl_text, encoding="utf-8")
    wrong = "wrong-Token-0ddba11"

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await read(make_connector(wsdl="orders.wsdl", api_key=wrong), ORDER_STATUS, order_id="1")

    assert wrong not in str(caught.value)
    assert wrong not in caplog.text
    assert TOKEN not in caplog.text


async def test_run__basic_auth_from_username_and_password(
    make_connector: MakeConnector, proxy: str, recorder: Recorder, wsdl_text: str, tmp_path: Path
) -> None:
    (tmp_path / "orders.wsdl").write_text(wsdl_text, encoding="utf-8")
    connector = make_connector(
        wsdl="orders.wsdl", address=proxy, headers={}, username="shop", password="Pa55-w0rd!"
    )

    with pytest.raises(SourceAuthError) as caught:  # the service wants a bearer token
        await read(connector, ORDER_STATUS, order_id="12345")

    expected = "Basic " + base64.b64encode(b"shop:Pa55-w0rd!").decode()
    assert recorder.seen[-1].headers["Authorization"] == expected
    assert "Pa55-w0rd!" not in str(caught.value)


async def test_run__redirect_to_another_host_is_not_followed(
    make_connector: MakeConnector,
    proxy: str,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
) -> None:
    recorder.misbehave = redirect(f"{other_host}/", code=307)

    with pytest.raises(SourceError, match="redirected to another host"):
        await read(make_connector(address=proxy), ORDER_STATUS, order_id="12345")

    assert other_recorder.seen == []


async def test_run__endless_body_is_cut_off(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    connector = make_connector(address=proxy, max_response_bytes=30_000)
    await connector.open()
    recorder.misbehave = endless(recorder, content_type="text/xml")
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 30000 bytes"):
        await read(connector, ORDER_STATUS, timeout_s=10, order_id="12345")

    assert time.monotonic() - started < 6  # cut at the cap, not at the 10 s deadline
    assert recorder.streamed < 50_000_000


async def test_run__deadline_covers_a_stalled_body(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    connector = make_connector(address=proxy)
    await connector.open()
    recorder.misbehave = stall(recorder, content_type="text/xml")
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(connector, ORDER_STATUS, timeout_s=0.5, order_id="12345")

    assert time.monotonic() - started < 0.5 + 4  # the stall lasts 20 s


async def test_run__a_post_is_not_retried_by_default(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    recorder.misbehave = status(503, times=1, retry_after="0")

    with pytest.raises(SourceError, match="answered 503"):
        await read(make_connector(address=proxy), ORDER_STATUS, order_id="12345")

    assert len(recorder.seen) == 1


async def test_run__idempotent_operation_is_retried_on_503(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    recorder.misbehave = status(503, times=2, retry_after="0")
    query = {**ORDER_STATUS, "idempotent": True}

    result = await read(make_connector(address=proxy), query, order_id="12345")

    assert result.rows[0]["status"] == "shipped"
    assert len(recorder.seen) == 3


async def test_run__retry_after_past_the_deadline_is_not_waited_for(
    make_connector: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    connector = make_connector(address=proxy)
    await connector.open()
    recorder.misbehave = status(429, retry_after="30")
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="rate limited"):
        await read(connector, {**ORDER_STATUS, "idempotent": True}, timeout_s=10, order_id="1")

    assert time.monotonic() - started < 5  # neither the 30 s asked for nor the 10 s deadline
    assert len(recorder.seen) == 1


# -- prepare ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        "CancelOrder",
        "deleteOrder",
        "UPDATE_ORDER",
        "SetOrderStatus",
        "create-customer",
        "SubmitPayment",
        "Upsert",
    ],
)
def test_prepare__refuses_operations_named_as_writes(operation: str) -> None:
    with pytest.raises(NotARead, match="reads like a write"):
        SOAPConnector.prepare({"operation": operation})


@pytest.mark.parametrize(
    "operation",
    ["GetOrderStatus", "ListOrders", "CheckStock", "FindCustomer", "SettlementReport", "Status"],
)
def test_prepare__accepts_read_operations(operation: str) -> None:
    query = SOAPConnector.prepare({"operation": operation, "args": {"id": "{order_id}"}})

    assert isinstance(query.spec, SOAPQuery)
    assert query.names == ("order_id",)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param("GetOrderStatus", "a soap query is a mapping", id="a-string"),
        pytest.param({"args": {}}, "operation", id="no-operation"),
        pytest.param({"operation": "Get Order"}, "operation", id="space-in-name"),
        pytest.param({"operation": "GetOrderStatus", "arguments": {}}, "arguments", id="wrong-key"),
        pytest.param({"operation": "GetOrderStatus", "result": "a..b"}, "result", id="bad-result"),
        pytest.param({"operation": "GetOrderStatus", "args": ["x"]}, "args", id="args-list"),
    ],
)
def test_prepare__refuses_bad_shapes(raw: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        SOAPConnector.prepare(raw)


def test_prepare__names_nested_placeholders() -> None:
    query = SOAPConnector.prepare(
        {"operation": "FindOrders", "args": {"filter": {"phone": "{customer_phone}"}, "n": 5}}
    )

    assert query.names == ("customer_phone",)


# -- health, settings, discovery -----------------------------------------------------------------


async def test_health_check__wrong_token_is_an_auth_error(
    make_connector: MakeConnector, tmp_path: Path, wsdl_text: str
) -> None:
    (tmp_path / "orders.wsdl").write_text(wsdl_text, encoding="utf-8")

    with pytest.raises(SourceAuthError):
        await make_connector(wsdl="orders.wsdl", api_key="nope").health_check()


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({"wsdl": "ftp://x.example/s?wsdl"}, id="wsdl-not-http"),
        pytest.param({"wsdl": "https://u:Secret-pw@x.example/s?wsdl"}, id="wsdl-credentials"),
        pytest.param({"wsdl": "s.wsdl", "address": "x.example/soap"}, id="address-relative"),
        pytest.param({"wsdl": "s.wsdl", "username": "u"}, id="username-without-password"),
        pytest.param({"wsdl": "s.wsdl", "url": "http://x"}, id="unknown-key"),
        pytest.param({"wsdl": ""}, id="empty-wsdl"),
    ],
)
def test_settings__refuses_bad_connections(connection: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        SOAPSettings.model_validate({**connection, "api_key": "Secret-pw"})

    assert "Secret-pw" not in str(caught.value)


def test_registry__loads_the_soap_entry_point() -> None:
    assert load("soap") is SOAPConnector


async def test_close__then_run_opens_again(make_connector: MakeConnector) -> None:
    connector = make_connector()
    assert (await read(connector, ORDER_STATUS, order_id="12345")).found
    await connector.close()
    await connector.close()

    assert (await read(connector, ORDER_STATUS, order_id="12345")).found


# -- the worker around it ------------------------------------------------------------------


async def test_lookup__answers_and_falls_back_through_the_pipeline(
    service: str, tmp_path: Path, wsdl_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SOAP_TOKEN", TOKEN)
    (tmp_path / "orders.wsdl").write_text(wsdl_text, encoding="utf-8")
    config = tmp_path / "erp.yaml"
    config.write_text(
        """
tenant_id: erp_shop
data_sources:
  - id: erp_orders
    type: soap
    connection:
      wsdl: orders.wsdl
      api_key: ${env:TEST_SOAP_TOKEN}
      headers: {Authorization: "Bearer {api_key}"}
    queries:
      order_status: {operation: GetOrderStatus, args: {orderId: "{order_id}"}}
      invoice: {operation: GetInvoice, args: {orderId: "{order_id}"}}
lookups:
  order_status:
    source: erp_orders
    params: {order_id: {pattern: '[0-9]{1,12}'}}
    template: >-
      Order #{{ params.order_id }} is {{ row.status }}, tracking {{ row.tracking }},
      due {{ row.estimatedDelivery | date }}; {{ row["items"].Item | length }} line(s).
    not_found: "No order #{{ params.order_id }}."
  invoice:
    source: erp_orders
    params: {order_id: {pattern: '[0-9]{1,12}'}}
    fallback: "Invoices are offline."
""",
        encoding="utf-8",
    )
    tenant = load_tenant(config, templates_dir=REPO / "templates")

    async with open_worker(tenant, with_queue=False) as worker:
        shipped = await worker.pipeline.lookup("order_status", {"order_id": "12345"})
        missing = await worker.pipeline.lookup("order_status", {"order_id": "99999"})
        invoice = await worker.pipeline.lookup("invoice", {"order_id": "12345"})

    assert shipped.outcome == "ok", shipped.message
    assert shipped.message == (
        "Order #12345 is shipped, tracking UPS123456, due September 12th; 1 line(s)."
    )
    assert (missing.outcome, missing.message) == ("not_found", "No order #99999.")
    assert (invoice.outcome, invoice.message) == ("fallback", "Invoices are offline.")


def test_load_tenant__a_write_operation_is_refused_when_the_config_loads() -> None:
    document = {
        "tenant_id": "erp_shop",
        "data_sources": [
            {
                "id": "erp",
                "type": "soap",
                "connection": {"wsdl": "orders.wsdl"},
                "queries": {"cancel": {"operation": "CancelOrder", "args": {"id": "{id}"}}},
            }
        ],
    }

    with pytest.raises(ConfigError, match="reads like a write"):
        load_tenant(document=document)


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERP_SOAP_PASSWORD", "example-password")

    tenant = load_tenant(REPO / "config" / "examples" / "soap.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"soap"}
    assert set(tenant.lookups) == {"order_status", "order_lines"}


# -- raw envelopes, without a WSDL -------------------------------------------------------------

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


def envelope(operation: str, inner: str, soap_ns: str = SOAP11) -> str:
    return (
        f'<soapenv:Envelope xmlns:soapenv="{soap_ns}" xmlns:ord="{NAMESPACE}">'
        f"<soapenv:Header/><soapenv:Body><ord:{operation}>{inner}</ord:{operation}>"
        "</soapenv:Body></soapenv:Envelope>"
    )


RAW_STATUS = {
    "envelope": envelope("GetOrderStatus", "<ord:orderId>{order_id}</ord:orderId>"),
    "action": "GetOrderStatus",
    "result": "GetOrderStatusResult",
}
RAW_ECHO = {
    "envelope": envelope("Echo", "<ord:text>{text}</ord:text>"),
    "action": "Echo",
    "result": "EchoResult",
}
RAW_LIST = {
    "envelope": envelope("ListOrders", "<ord:customerPhone>{phone}</ord:customerPhone>"),
    "action": "ListOrders",
    "result": "ListOrdersResult.OrderStatus",
}


@pytest.fixture
def make_raw(make_connector: MakeConnector, service: str) -> MakeConnector:
    """Connectors with no WSDL: reads go to ``address`` (the spyne service by default)."""

    def make(limits: Limits | None = None, **overrides: Any) -> SOAPConnector:
        return make_connector(limits, wsdl=None, **{"address": f"{service}/", **overrides})

    return make


async def test_envelope__read_without_a_wsdl_gives_rows_by_the_result_path(
    make_raw: MakeConnector,
) -> None:
    connector = make_raw()

    found = await read(connector, RAW_STATUS, order_id="12345")
    listed = await read(connector, RAW_LIST, phone="+1234567890")
    missing = await read(connector, RAW_STATUS, order_id="99999")

    assert found.rows == [
        {
            "orderId": "12345",
            "status": "shipped",
            "tracking": "UPS123456",
            "estimatedDelivery": "2025-09-12",
            "total": "19.50",
            "items": {"Item": {"sku": "SKU-789", "quantity": "2"}},
        }
    ]
    assert [row["orderId"] for row in listed.rows] == ["12345", "12346"]
    assert "tracking" not in listed.rows[1]  # spyne leaves out a null; no WSDL says it exists
    assert not missing.found


async def test_envelope__without_result_the_answer_is_the_operations_response(
    make_raw: MakeConnector,
) -> None:
    result = await read(make_raw(), {"envelope": RAW_ECHO["envelope"]}, text="hi")

    assert result.rows == [{"EchoResult": "hi"}]


async def test_envelope__posted_as_soap_11_with_the_soapaction_header(
    make_raw: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    result = await read(make_raw(address=proxy), RAW_ECHO, text="a & b")

    assert result.data == "a & b"
    (seen,) = recorder.seen
    assert seen.method == "POST"
    assert seen.headers["SOAPAction"] == '"Echo"'
    assert seen.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert b"<ord:text>a &amp; b</ord:text>" in seen.body


async def test_envelope__soap_12_sends_the_action_in_the_content_type(
    make_raw: MakeConnector, other_host: str, other_recorder: Recorder
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = (
            f'<e:Envelope xmlns:e="{SOAP12}"><e:Body><r:EchoResponse xmlns:r="{NAMESPACE}">'
            "<r:EchoResult>twelve</r:EchoResult></r:EchoResponse></e:Body></e:Envelope>"
        )
        return web.Response(text=body, content_type="application/soap+xml")

    other_recorder.misbehave = answer
    query = {**RAW_ECHO, "envelope": envelope("Echo", "<ord:text>{text}</ord:text>", SOAP12)}

    result = await read(make_raw(address=other_host), query, text="x")

    assert result.data == "twelve"
    (seen,) = other_recorder.seen
    assert seen.headers["Content-Type"] == 'application/soap+xml; charset=utf-8; action="Echo"'
    assert "SOAPAction" not in seen.headers


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("<b>bold</b>", id="tags"),
        pytest.param("</ord:text><ord:extra>1</ord:extra><ord:text>", id="close-and-inject"),
        pytest.param("a]]>b<![CDATA[c", id="cdata-end"),
        pytest.param("&amp; &lt; &#x41; &x;", id="entities"),
        pytest.param("\"quotes\" and 'apostrophes'", id="quotes"),
        pytest.param("{order_id}", id="placeholder-text"),
        pytest.param("Café ☕ 👋", id="unicode"),
    ],
)
async def test_envelope__a_parameter_comes_back_as_the_same_text(
    make_raw: MakeConnector, value: str
) -> None:
    result = await read(make_raw(), RAW_ECHO, text=value, order_id="12345")

    assert result.data == value


async def test_envelope__a_value_inside_cdata_and_attributes_stays_text(
    make_raw: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    inner = '<ord:text note="{text}"><![CDATA[{text}]]></ord:text>'
    query = {"envelope": envelope("Echo", inner), "result": "EchoResult"}
    evil = 'x]]></ord:text>"<ord:evil/>'

    async def canned(request: web.Request) -> web.StreamResponse:
        # spyne's schema has no "note" attribute: answer here, the request is what counts
        body = (
            f'<s:Envelope xmlns:s="{SOAP11}"><s:Body><EchoResponse xmlns="{NAMESPACE}">'
            "<EchoResult>ok</EchoResult></EchoResponse></s:Body></s:Envelope>"
        )
        return web.Response(text=body, content_type="text/xml")

    recorder.misbehave = canned

    result = await read(make_raw(address=proxy), query, text=evil)

    assert result.data == "ok"
    tree = etree.fromstring(recorder.seen[0].body)
    (text,) = tree.iter(f"{{{NAMESPACE}}}text")
    assert (text.text, text.get("note"), len(text)) == (evil, evil, 0)


@settings(max_examples=300, deadline=None)
@given(value=st.text())
def test_render_envelope__any_value_stays_one_text_node(value: str) -> None:
    inner = '<ord:text a="{v}">{v}</ord:text><ord:n><![CDATA[[{v}]]]></ord:n>'
    spec = SOAPConnector.prepare({"envelope": envelope("Echo", inner)}).spec
    assert isinstance(spec, EnvelopeSpec)

    try:
        body = render_envelope(spec, {"v": value})
    except ValueError:
        # Only a value XML 1.0 cannot carry is refused.
        assert any(
            (ord(c) < 0x20 and c not in "\t\n\r")
            or 0xD800 <= ord(c) <= 0xDFFF
            or c in "\ufffe\uffff"
            for c in value
        )
        return
    tree = etree.fromstring(body)
    tags = [etree.QName(e).localname for e in tree.iter() if isinstance(e.tag, str)]
    assert tags == ["Envelope", "Header", "Body", "Echo", "text", "n"]
    text = next(tree.iter(f"{{{NAMESPACE}}}text"))
    assert (text.text or "", text.get("a")) == (value, value)
    assert next(tree.iter(f"{{{NAMESPACE}}}n")).text == f"[{value}]"


async def test_envelope__a_value_xml_cannot_carry_is_refused_before_sending(
    make_raw: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    with pytest.raises(SourceError, match="characters XML cannot carry"):
        await read(make_raw(address=proxy), RAW_ECHO, text="nul\x00byte")

    assert recorder.seen == []


async def test_envelope__a_fault_is_a_source_error_without_parameter_values(
    make_raw: MakeConnector,
) -> None:
    query = {"envelope": envelope("GetInvoice", "<ord:orderId>{order_id}</ord:orderId>")}

    with pytest.raises(SourceError, match="SOAP fault: Invoice for order … is archived") as caught:
        await read(make_raw(), query, order_id="12345")

    assert "12345" not in str(caught.value)


async def test_envelope__an_answer_with_a_dtd_is_refused(
    make_raw: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    async def xxe(request: web.Request) -> web.StreamResponse:
        body = (
            '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
            f'<s:Envelope xmlns:s="{SOAP11}"><s:Body>'
            f'<EchoResponse xmlns="{NAMESPACE}"><EchoResult>&x;</EchoResult></EchoResponse>'
            "</s:Body></s:Envelope>"
        )
        return web.Response(text=body, content_type="text/xml")

    recorder.misbehave = xxe

    with pytest.raises(SourceError, match=r"not a safe, well-formed SOAP 1\.1 envelope"):
        await read(make_raw(address=proxy), RAW_ECHO, text="x")


async def test_envelope__an_endless_answer_is_cut_off(
    make_raw: MakeConnector, proxy: str, recorder: Recorder
) -> None:
    recorder.misbehave = endless(recorder, "text/xml")

    with pytest.raises(SourceError, match="larger than"):
        await read(make_raw(address=proxy, max_response_bytes=100_000), RAW_ECHO, text="x")


async def test_envelope__with_a_wsdl_goes_to_its_service_address(
    make_connector: MakeConnector,
) -> None:
    result = await read(make_connector(), RAW_STATUS, order_id="12346")

    assert result.rows[0]["status"] == "processing"


async def test_envelope__a_wsdl_query_on_a_source_without_wsdl_says_so(
    make_raw: MakeConnector,
) -> None:
    with pytest.raises(SourceError, match="has no wsdl: its queries must be raw envelopes"):
        await read(make_raw(), ORDER_STATUS, order_id="12345")


async def test_envelope__health_check_without_a_wsdl(make_raw: MakeConnector) -> None:
    await make_raw().health_check()


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param({"envelope": "<a>{x}"}, "not well-formed", id="broken"),
        pytest.param({"envelope": "<a>{x}</a>"}, "SOAP 1.1 or 1.2 Envelope", id="not-envelope"),
        pytest.param(
            {"envelope": f'<e:Envelope xmlns:e="{SOAP11}"><e:Header/></e:Envelope>'},
            "exactly one operation",
            id="no-body",
        ),
        pytest.param(
            {"envelope": envelope("Echo", "").replace("</soapenv:Body>", "<x/></soapenv:Body>")},
            "exactly one operation",
            id="two-operations",
        ),
        pytest.param(
            {"envelope": '<!DOCTYPE e [<!ENTITY x "y">]>' + envelope("Echo", "&x;")},
            "not well-formed, safe XML",
            id="dtd",
        ),
        pytest.param({**RAW_ECHO, "action": "{action}"}, "action", id="action-parameter"),
        pytest.param({**RAW_ECHO, "operation": "Echo"}, "operation", id="both-shapes"),
        pytest.param(
            {"envelope": envelope("Echo", "<?pi {text}?>")},
            "not in comments or processing instructions",
            id="placeholder-in-pi",
        ),
    ],
)
def test_envelope__prepare_refuses_bad_envelopes(raw: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        SOAPConnector.prepare(raw)


def test_envelope__prepare_refuses_a_write_operation_and_names_placeholders() -> None:
    with pytest.raises(NotARead, match="reads like a write"):
        SOAPConnector.prepare({"envelope": envelope("CancelOrder", "<ord:id>{id}</ord:id>")})

    query = SOAPConnector.prepare(
        {"envelope": envelope("ListOrders", '<ord:a x="{first}">{second}</ord:a>{third}')}
    )
    assert query.names == ("second", "first", "third")


def test_settings__raw_envelopes_need_an_address_without_a_wsdl() -> None:
    with pytest.raises(ValidationError, match="give a wsdl, or the service's address"):
        SOAPSettings.model_validate({"api_key": "k"})

    assert SOAPSettings.model_validate({"address": "https://erp.example/soap"}).wsdl is None
