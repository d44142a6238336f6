"""The rest_api connector against a real aiohttp API on loopback (`tests.servers.rest_app`).

Besides the connector contract, the safety cases of the API connectors' issue:
a parameter cannot leave its path segment or change the host (checked on the
raw path the server received), redirects to another host are not followed (the
other host, a second server on 127.0.0.2, sees nothing), an endless body is cut
off, a stalled body hits the deadline, retries happen only for idempotent reads
and only within the deadline (counted on the server), and no secret reaches an
error text or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote
from xml.etree.ElementTree import ParseError

import pytest
from aiohttp import web
from defusedxml import DefusedXmlException
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

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
from connectors.egress import Reach, parse_networks, reaching, refusal_in
from connectors.http_base import BasicAuthSettings, OAuth2ClientCredentialsSettings
from connectors.registry import load
from connectors.rest import RESTConnector, RESTSettings, xml_document
from connectors.testing import RawQuery
from tests.servers.hostile import (
    Recorder,
    dropping_server,
    endless,
    redirect,
    serve,
    stall,
    status,
)
from tests.servers.rest_app import (
    API_KEY,
    BASIC_PASSWORD,
    BASIC_USER,
    CLIENT_ID,
    CLIENT_SECRET,
    ITEMS,
    PRODUCTS,
    OAuthServer,
    rest_app,
    token_app,
)
from tests.support.connectors import ConnectorFactory, ContractCase, read, serve_elsewhere
from worker import secrets
from worker.config import load_tenant
from worker.sources import Sources

REPO = Path(__file__).resolve().parents[2]
STOCK = "/products/{sku}/stock"
SEED_CONNECTION: dict[str, Any] = {
    "base_url": "https://inventory.company.com/api",
    "api_key": "encrypted_api_key",
    "headers": {"Authorization": "Bearer {api_key}"},
}

MakeConnector = Callable[..., RESTConnector]


# -- servers and connectors --------------------------------------------------------


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def api(recorder: Recorder) -> AsyncIterator[str]:
    """The inventory API; yields its base URL (``…/api``)."""
    async with serve(rest_app(recorder)) as url:
        yield f"{url}/api"


@pytest.fixture
def other_recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def other_host(other_recorder: Recorder) -> AsyncIterator[str]:
    """A second server on another loopback address: it must never be reached."""

    async def stolen(request: web.Request) -> web.Response:
        return web.json_response({"stolen": True})

    async with serve_elsewhere(other_recorder, stolen) as url:
        yield url


@pytest.fixture
async def make_connector(api: str, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    defaults = {**SEED_CONNECTION, "base_url": api, "api_key": API_KEY}
    factory = ConnectorFactory(RESTConnector, "inventory_api", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


class TestRESTContract(ContractCase):
    FOUND_QUERY = STOCK
    FOUND_PARAMS = Bound(params={"sku": "SKU-789"})
    MISSING_PARAMS = Bound(params={"sku": "SKU-000"})
    SLOW_QUERY: ClassVar[RawQuery] = {"path": "/slow", "params": {"seconds": "{seconds}"}}
    SLOW_PARAMS = Bound(params={"seconds": 30})
    WRITE_QUERY: ClassVar[RawQuery] = {"path": "/products/{sku}", "method": "DELETE"}

    @pytest.fixture
    def connector(self, make_connector: MakeConnector) -> RESTConnector:
        return make_connector()


# -- the seed's shapes ---------------------------------------------------------------


def test_settings__seed_connection_loads_as_written() -> None:
    settings = RESTSettings.model_validate(SEED_CONNECTION)

    assert settings.base_url == "https://inventory.company.com/api"
    assert isinstance(settings.api_key, SecretStr)
    assert "encrypted_api_key" not in repr(settings)


async def test_run__seed_endpoint_sends_the_bearer_key_and_reads_one_row(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    result = await read(make_connector(), STOCK, sku="SKU-789")

    assert result.rows == [{"sku": "SKU-789", "name": "Blue Mug", "quantity": 42}]
    assert result.data == result.rows[0]
    (seen,) = recorder.seen
    assert (seen.method, seen.raw_path) == ("GET", "/api/products/SKU-789/stock")
    assert seen.headers["Authorization"] == f"Bearer {API_KEY}"
    assert seen.headers["Accept"].startswith("application/json")


async def test_run__result_path_picks_a_list_into_rows(make_connector: MakeConnector) -> None:
    query = {"path": "/orders", "params": {"customer_phone": "{phone}"}, "result": "data.items"}

    result = await read(make_connector(), query, phone="+1234567890")

    assert [row["order_id"] for row in result.rows] == ["12345", "12346"]
    assert result.data == result.rows


@pytest.mark.parametrize(
    ("result_path", "found"),
    [
        pytest.param("data.items.0.status", ["shipped"], id="scalar"),
        pytest.param("data.count", [2], id="number"),
        pytest.param("data.nothing", None, id="missing-key"),
        pytest.param("data.items.7", None, id="index-past-the-end"),
    ],
)
async def test_run__result_path_reaches_into_the_answer(
    make_connector: MakeConnector, result_path: str, found: list[Any] | None
) -> None:
    query = {"path": "/orders", "params": {"customer_phone": "+1234567890"}, "result": result_path}

    result = await read(make_connector(), query)

    if found is None:
        assert not result.found
        assert result.rows == []
    else:
        assert [row["value"] for row in result.rows] == found


async def test_run__empty_list_is_not_found(make_connector: MakeConnector) -> None:
    query = {"path": "/orders", "params": {"customer_phone": "{phone}"}, "result": "data.items"}

    result = await read(make_connector(), query, phone="+0000")

    assert not result.found


async def test_run__rows_are_capped_by_the_limits(make_connector: MakeConnector) -> None:
    query = {"path": "/orders", "result": "data.items"}

    result = await read(make_connector(limits=Limits(max_rows=2)), query)

    assert len(result.rows) == 2


async def test_run__text_body_is_data_and_value_row(make_connector: MakeConnector) -> None:
    result = await read(make_connector(), "/notes/{sku}", sku="SKU-789")

    assert result.data == "Handle with care: SKU-789 is fragile."
    assert result.rows == [{"value": result.data}]


async def test_run__text_404_is_not_found(make_connector: MakeConnector) -> None:
    result = await read(make_connector(), "/notes/{sku}", sku="SKU-000")

    assert not result.found


async def test_run__head_answers_the_status(make_connector: MakeConnector) -> None:
    query = {"path": STOCK, "method": "HEAD"}

    assert (await read(make_connector(), query, sku="SKU-789")).rows == [{"status": 200}]
    assert not (await read(make_connector(), query, sku="SKU-000")).found


async def test_run__post_binds_typed_values_into_the_json_body(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    query = {"path": "/search", "method": "POST", "body": {"sku": "{sku}"}, "result": "data.items"}

    result = await read(make_connector(), query, sku="SKU-790")

    assert [row["name"] for row in result.rows] == ["Red Mug"]
    assert json.loads(recorder.seen[-1].body) == {"sku": "SKU-790"}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"$ne": None}, id="operator-object"),
        pytest.param('", "name": "Blue Mug', id="json-breakout"),
        pytest.param(["SKU-789"], id="list"),
    ],
)
async def test_run__post_body_value_stays_one_json_value(
    make_connector: MakeConnector, recorder: Recorder, value: Any
) -> None:
    query = {"path": "/search", "method": "POST", "body": {"sku": "{sku}"}, "result": "data.items"}

    result = await read(make_connector(), query, sku=value)

    assert not result.found
    assert json.loads(recorder.seen[-1].body) == {"sku": value}


async def test_run__query_parameter_is_one_encoded_value(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    query = {"path": "/orders", "params": {"customer_phone": "{phone}"}, "result": "data.items"}

    result = await read(make_connector(), query, phone="+1234567890&status=delivered")

    assert not result.found
    assert recorder.seen[-1].raw_path == (
        "/api/orders?customer_phone=%2B1234567890%26status%3Ddelivered"
    )


# -- a parameter cannot leave its place -------------------------------------------------

ESCAPES = [
    pytest.param("../../admin", id="dot-dot-slash"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".", id="dot"),
    pytest.param("%2e%2e", id="encoded-dot-dot"),
    pytest.param("%2e%2e%2fadmin", id="encoded-dot-dot-slash"),
    pytest.param("..%2F..%2Fadmin", id="mixed-encoding"),
    pytest.param("@127.0.0.2", id="at-host"),
    pytest.param("x@127.0.0.2:81", id="userinfo-port"),
    pytest.param("#fragment", id="hash"),
    pytest.param("?admin=1", id="question-mark"),
    pytest.param("SKU-789\r\nX-Injected: 1", id="crlf"),
    pytest.param("SKU-789\nHost: 127.0.0.2", id="lf-host"),
    pytest.param("http://127.0.0.2/steal", id="absolute-url"),
    pytest.param("//127.0.0.2/steal", id="scheme-relative"),
    pytest.param("..\\..\\admin", id="backslashes"),
    pytest.param("SKU 1/2", id="space-and-slash"),
    pytest.param(" ", id="space"),
]


def encoded_segment(value: str) -> str:
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded.strip(".") == "" else encoded


@pytest.mark.parametrize("value", ESCAPES)
async def test_run__parameter_cannot_escape_its_path_segment(
    make_connector: MakeConnector,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
    value: str,
) -> None:
    result = await read(make_connector(), STOCK, sku=value)

    (seen,) = recorder.seen
    assert seen.raw_path == f"/api/products/{encoded_segment(value)}/stock"
    assert "X-Injected" not in seen.headers
    assert seen.host.startswith("127.0.0.1:")
    assert other_recorder.seen == []
    assert result.found == (value == "SKU 1/2")  # the one real SKU, found as one segment


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("{other}/steal", id="absolute-url-as-whole-path"),
        pytest.param("//{host}/steal", id="scheme-relative-as-whole-path"),
        pytest.param("../../steal", id="dot-dot-as-whole-path"),
    ],
)
async def test_run__whole_path_parameter_cannot_point_elsewhere(
    make_connector: MakeConnector,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
    value: str,
) -> None:
    target = value.format(other=other_host, host=other_host.removeprefix("http://"))

    result = await read(make_connector(), "{target}", target=target)

    assert not result.found
    (seen,) = recorder.seen
    assert seen.raw_path == "/api/" + encoded_segment(target)
    assert other_recorder.seen == []


@pytest.mark.parametrize(
    ("path", "error"),
    [
        pytest.param("http://127.0.0.2/x", "no scheme or host", id="absolute-url"),
        pytest.param("https:x", "no scheme or host", id="scheme-only"),
        pytest.param("//127.0.0.2/x", "no scheme or host", id="scheme-relative"),
        pytest.param("/redirect?to=http://x", "no scheme or host", id="url-in-query"),
        pytest.param("/products?sku={sku}", "put them under params", id="query-string"),
        pytest.param("/products#top", "put them under params", id="fragment"),
        pytest.param("/a/../admin", r"'\.\.' step", id="dot-dot"),
        pytest.param("/a/./b", r"'\.' or", id="dot"),
        pytest.param("/a\\b", "backslash", id="backslash"),
        pytest.param("/a b", "space", id="space"),
        pytest.param("/a\r\nX: 1", "control", id="crlf"),
    ],
)
def test_prepare__refuses_a_path_that_leaves_base_url(path: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        RESTConnector.prepare(path)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"path": "/x", "method": "DELETE"}, id="delete"),
        pytest.param({"path": "/x", "method": "put"}, id="put-lower-case"),
        pytest.param({"path": "/x", "method": "PATCH"}, id="patch"),
    ],
)
def test_prepare__refuses_writes(raw: RawQuery) -> None:
    with pytest.raises(NotARead):
        RESTConnector.prepare(raw)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param({"path": "/x", "body": {"a": 1}}, "takes no body", id="get-with-body"),
        pytest.param({"path": "/x", "method": "FETCH"}, "method", id="unknown-method"),
        pytest.param({"path": "/x", "params": {"a": ["b"]}}, "params", id="list-param"),
        pytest.param({"path": "/x", "result": "a..b"}, "result", id="bad-result-path"),
        pytest.param({"path": "/x", "headers": {"X": "{sku}"}}, "headers", id="query-headers"),
        pytest.param({"method": "GET"}, "path", id="no-path"),
        pytest.param(["/x"], "a path, or a mapping", id="a-list"),
    ],
)
def test_prepare__refuses_bad_shapes(raw: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        RESTConnector.prepare(raw)


def test_prepare__names_the_placeholders_of_path_params_and_body() -> None:
    query = RESTConnector.prepare(
        {
            "path": "/shops/{shop}/search",
            "method": "post",
            "params": {"lang": "{locale}", "limit": 5},
            "body": {"sku": "{sku}", "filters": [{"phone": "{{customer_phone}}"}]},
        }
    )

    assert query.names == ("shop", "locale", "sku", "customer_phone")


# -- redirects, size, deadline ---------------------------------------------------------


async def test_run__redirect_to_another_host_is_not_followed(
    make_connector: MakeConnector,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
) -> None:
    recorder.misbehave = redirect(f"{other_host}/api/products/SKU-789/stock")

    with pytest.raises(SourceError, match="redirected to another host"):
        await read(make_connector(), STOCK, sku="SKU-789")

    assert len(recorder.seen) == 1
    assert other_recorder.seen == []


async def test_run__redirect_on_the_same_host_is_followed(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    async def moved(request: web.Request) -> web.StreamResponse | None:
        if "old" not in request.path:
            return None
        return web.Response(status=301, headers={"Location": "/api/products/SKU-789/stock"})

    recorder.misbehave = moved

    result = await read(make_connector(), "/old/{sku}", sku="SKU-789")

    assert result.rows[0]["quantity"] == 42
    assert [s.raw_path for s in recorder.seen] == [
        "/api/old/SKU-789",
        "/api/products/SKU-789/stock",
    ]


async def test_run__endless_body_is_cut_off_at_max_response_bytes(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = endless(recorder)
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 100000 bytes"):
        await read(make_connector(max_response_bytes=100_000), STOCK, timeout_s=10, sku="x")

    assert time.monotonic() - started < 6  # cut at the cap, not at the 10 s deadline
    assert recorder.streamed < 50_000_000  # the client hung up long before the server's cap


async def test_run__source_max_bytes_caps_the_body_too(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = endless(recorder)

    with pytest.raises(SourceError, match="larger than 2000 bytes"):
        await read(make_connector(limits=Limits(max_bytes=2_000)), STOCK, sku="x")


async def test_run__deadline_covers_a_body_that_stalls_after_the_headers(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = stall(recorder)
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(make_connector(), STOCK, timeout_s=0.5, sku="SKU-789")

    assert time.monotonic() - started < 0.5 + 4  # the stall lasts 20 s
    assert len(recorder.seen) == 1  # a timeout is not retried


# -- retries ------------------------------------------------------------------------------


async def test_run__idempotent_read_is_retried_on_503_with_retry_after(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(503, times=2, retry_after="0")

    result = await read(make_connector(), STOCK, sku="SKU-789")

    assert result.found
    assert len(recorder.seen) == 3


async def test_run__idempotent_read_is_retried_on_429(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(429, times=1, retry_after="0")

    assert (await read(make_connector(), STOCK, sku="SKU-789")).found
    assert len(recorder.seen) == 2


async def test_run__retries_stop_at_the_configured_count(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(503, retry_after="0")

    with pytest.raises(SourceError, match="answered 503"):
        await read(make_connector(retries=1), STOCK, sku="SKU-789")

    assert len(recorder.seen) == 2


async def test_run__post_is_never_retried(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(503, times=1, retry_after="0")
    query = {"path": "/search", "method": "POST", "body": {"sku": "{sku}"}}

    with pytest.raises(SourceError, match="answered 503"):
        await read(make_connector(), query, sku="SKU-789")

    assert len(recorder.seen) == 1


async def test_run__retry_after_past_the_deadline_is_not_waited_for(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(429, times=1, retry_after="30")
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="rate limited"):
        await read(make_connector(), STOCK, timeout_s=10, sku="SKU-789")

    assert time.monotonic() - started < 5  # neither the 30 s asked for nor the 10 s deadline
    assert len(recorder.seen) == 1


@pytest.mark.parametrize(
    ("method", "attempts"),
    [pytest.param("GET", 3, id="get-retried"), pytest.param("POST", 1, id="post-not-retried")],
)
async def test_run__connect_errors_are_retried_only_for_idempotent_reads(
    tmp_path: Path, method: str, attempts: int
) -> None:
    async with dropping_server() as (url, accepted):
        settings = RESTSettings(base_url=url, retries=2)
        connector = RESTConnector("flaky", settings, base_dir=tmp_path)
        query = {"path": "/search", "method": method}
        try:
            with pytest.raises(SourceUnavailable, match="cannot reach"):
                await read(connector, query, timeout_s=5)
        finally:
            await connector.close()

    assert len(accepted) == attempts


async def test_run__connect_retries_stay_within_the_deadline(tmp_path: Path) -> None:
    async with dropping_server() as (url, accepted):
        connector = RESTConnector("flaky", RESTSettings(base_url=url, retries=5), base_dir=tmp_path)
        started = time.monotonic()
        try:
            with pytest.raises(SourceError):
                await read(connector, "/x", timeout_s=0.5)
        finally:
            await connector.close()

    assert time.monotonic() - started < 0.5 + 4
    assert 1 <= len(accepted) < 6


# -- auth and secrets -----------------------------------------------------------------------


async def test_run__401_is_an_auth_error_without_the_token(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    wrong = "wrong-Key-77c0ffee"

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await read(make_connector(api_key=wrong), STOCK, sku="SKU-789")

    assert wrong not in str(caught.value)
    assert recorder.seen[-1].headers["Authorization"] == f"Bearer {wrong}"


def _echo_secret(recorder: Recorder) -> Any:
    return status(500, body=f"internal error; you sent Bearer {API_KEY}")


@pytest.mark.parametrize(
    "misbehave",
    [
        pytest.param(lambda r: status(401, body=f"bad token {API_KEY}"), id="401"),
        pytest.param(lambda r: status(403), id="403"),
        pytest.param(_echo_secret, id="500-echoing-the-header"),
        pytest.param(lambda r: status(503, retry_after="0"), id="503"),
        pytest.param(lambda r: redirect("http://127.0.0.2:9/"), id="redirect"),
        pytest.param(lambda r: endless(r), id="endless"),
        pytest.param(lambda r: stall(r), id="stall"),
    ],
)
async def test_run__no_secret_in_error_text_or_log(
    make_connector: MakeConnector,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
    misbehave: Callable[[Recorder], Any],
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder.misbehave = misbehave(recorder)

    with pytest.raises(SourceError) as caught:
        await read(make_connector(max_response_bytes=10_000), "/orders", timeout_s=1, sku="SKU-789")

    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(caught.value)
    assert API_KEY not in caplog.text


async def test_run__json_content_type_that_does_not_parse_is_a_source_error(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(text="{oops", content_type="application/json")

    recorder.misbehave = broken

    with pytest.raises(SourceError, match="not valid JSON"):
        await read(make_connector(), STOCK, sku="SKU-789")


async def test_run__binary_answer_is_a_source_error(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    async def image(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x89PNG\r\n", content_type="image/png")

    recorder.misbehave = image

    with pytest.raises(SourceError, match="image/png, neither JSON, XML nor text"):
        await read(make_connector(), STOCK, sku="SKU-789")


async def test_run__500_is_a_source_error(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    recorder.misbehave = status(500)

    with pytest.raises(SourceError, match="answered 500"):
        await read(make_connector(), STOCK, sku="SKU-789")
    assert len(recorder.seen) == 1


# -- health, settings, discovery ------------------------------------------------------------


async def test_health_check__wrong_key_is_an_auth_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceAuthError):
        await make_connector(api_key="nope").health_check()


async def test_health_check__uses_health_path(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    await make_connector(health_path="/health").health_check()

    assert recorder.seen[-1].raw_path == "/api/health"
    with pytest.raises(SourceError, match="answered 404"):
        await make_connector(health_path="/nowhere").health_check()


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({"base_url": "ftp://x"}, id="not-http"),
        pytest.param({"base_url": "/api"}, id="relative"),
        pytest.param({"base_url": "https://u:p@x.example"}, id="credentials"),
        pytest.param({"base_url": "https://x.example/?k=1"}, id="query"),
        pytest.param({"base_url": "https://x.example", "health_path": "//y/"}, id="health-host"),
        pytest.param({"base_url": "https://x.example", "health_path": "/{sku}"}, id="health-param"),
        pytest.param({"base_url": "https://x.example", "token": "t"}, id="unknown-key"),
        pytest.param({}, id="no-base-url"),
    ],
)
def test_settings__refuses_bad_connections(connection: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RESTSettings.model_validate(connection)


def test_registry__loads_the_rest_api_entry_point() -> None:
    assert load("rest_api") is RESTConnector


async def test_close__then_run_opens_again(make_connector: MakeConnector) -> None:
    connector = make_connector()
    assert (await read(connector, STOCK, sku="SKU-789")).found
    await connector.close()

    assert (await read(connector, STOCK, sku="SKU-789")).found


async def test_run__concurrent_reads_share_one_client(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    connector = make_connector()
    query = RESTConnector.prepare(STOCK)

    results = await asyncio.gather(
        *(connector.run(query, Bound(params={"sku": "SKU-789"}), timeout_s=5) for _ in range(20))
    )

    assert all(r.found for r in results)
    assert len(recorder.seen) == 20


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTORY_API_KEY", "example-key")

    tenant = load_tenant(REPO / "config" / "examples" / "rest_api.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"rest_api"}
    assert set(tenant.lookups) == {"check_stock", "customer_orders", "find_product"}


# -- auth: basic, bearer, header, query ---------------------------------------------------

GOOD_AUTH = [
    pytest.param(
        {"type": "basic", "username": BASIC_USER, "password": BASIC_PASSWORD},
        "password",
        id="basic",
    ),
    pytest.param({"type": "bearer", "token": API_KEY}, "token", id="bearer"),
    pytest.param({"type": "header", "name": "X-API-Key", "value": API_KEY}, "value", id="header"),
    pytest.param({"type": "query", "name": "api_key", "value": API_KEY}, "value", id="query"),
]


def auth_connector(make_connector: MakeConnector, auth: dict[str, Any], **more: Any) -> Any:
    """A connector with ``auth`` and without the seed's bearer header."""
    return make_connector(headers={}, api_key=None, auth=auth, **more)


@pytest.mark.parametrize(("auth", "secret_key"), GOOD_AUTH)
async def test_auth__each_kind_is_let_in(
    make_connector: MakeConnector, recorder: Recorder, auth: dict[str, Any], secret_key: str
) -> None:
    result = await read(auth_connector(make_connector, auth), STOCK, sku="SKU-789")

    assert result.rows[0]["quantity"] == 42
    seen = recorder.seen[-1]
    if auth["type"] == "basic":
        expected = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
        assert seen.headers["Authorization"] == f"Basic {expected}"
    elif auth["type"] == "query":
        assert seen.raw_path == f"/api/products/SKU-789/stock?api_key={API_KEY}"
        assert "Authorization" not in seen.headers
    elif auth["type"] == "header":
        assert seen.headers["X-API-Key"] == API_KEY


@pytest.mark.parametrize(("auth", "secret_key"), GOOD_AUTH)
async def test_auth__a_wrong_secret_is_an_auth_error_that_names_no_secret(
    make_connector: MakeConnector,
    caplog: pytest.LogCaptureFixture,
    auth: dict[str, Any],
    secret_key: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Secret-0d15ea5e"

    with pytest.raises(SourceAuthError, match=r"authentication failed \(401\)") as caught:
        await read(auth_connector(make_connector, {**auth, secret_key: wrong}), STOCK, sku="x")

    assert wrong not in f"{caught.value} {caught.value!r} {caplog.text}"


async def test_auth__query_key_stays_out_of_errors_and_logs(
    make_connector: MakeConnector, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    recorder.misbehave = status(500)
    connector = auth_connector(
        make_connector, {"type": "query", "name": "api_key", "value": API_KEY}
    )

    with pytest.raises(SourceError, match="answered 500") as caught:
        await read(connector, STOCK, sku="SKU-789")

    assert "api_key=" in recorder.seen[-1].raw_path
    assert API_KEY not in f"{caught.value} {caught.value!r} {caplog.text}"


@pytest.mark.parametrize(
    ("auth", "where"),
    [
        pytest.param({"type": "basic", "username": "u"}, "auth.basic.password", id="no-password"),
        pytest.param({"type": "bearer", "token": "a\r\nX: 1"}, "auth.bearer.token", id="crlf"),
        pytest.param(
            {"type": "header", "name": "X Key", "value": "v"}, "auth.header.name", id="bad-header"
        ),
        pytest.param({"type": "digest", "token": "t"}, "auth", id="unknown-type"),
        pytest.param(
            {
                "type": "oauth2_client_credentials",
                "token_url": "ftp://x/t",
                "client_id": "c",
                "client_secret": "hush-Hush-5ec2e7",
            },
            "auth.oauth2_client_credentials.token_url",
            id="token-url-not-http",
        ),
        pytest.param(
            {"type": "bearer", "token": "t", "extra": 1}, "auth.bearer.extra", id="unknown-key"
        ),
    ],
)
def test_settings__bad_auth_is_refused_naming_its_path(auth: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RESTSettings.model_validate({"base_url": "https://x.example", "auth": auth})

    locations = {".".join(map(str, e["loc"])) for e in caught.value.errors()}
    assert where in locations
    assert "hush-Hush-5ec2e7" not in str(caught.value)


def test_settings__auth_and_an_authorization_header_are_not_both_given() -> None:
    with pytest.raises(ValidationError, match="auth sets the Authorization header"):
        RESTSettings.model_validate(
            {**SEED_CONNECTION, "auth": {"type": "bearer", "token": "t0ken-Value"}}
        )


def test_config__auth_secrets_take_env_and_enc_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = secrets.keygen()
    monkeypatch.setenv("WORKER_SECRET_KEYS", key)
    monkeypatch.setenv("SHOP_OAUTH_SECRET", "env-Client-Secret-31d4")
    config = {
        "tenant_id": "shop",
        "data_sources": [
            {
                "id": "basic_api",
                "type": "rest_api",
                "connection": {
                    "base_url": "https://api.example.com",
                    "auth": {
                        "type": "basic",
                        "username": "shop",
                        "password": secrets.encrypt("enc-Password-77aa", keys=key),
                    },
                },
                "queries": {"stock": STOCK},
            },
            {
                "id": "oauth_api",
                "type": "rest_api",
                "connection": {
                    "base_url": "https://api.example.com",
                    "auth": {
                        "type": "oauth2_client_credentials",
                        "token_url": "https://login.example.com/oauth/token",
                        "client_id": "shop",
                        "client_secret": "${env:SHOP_OAUTH_SECRET}",
                    },
                },
                "queries": {"stock": STOCK},
            },
        ],
    }
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(config), encoding="utf-8")

    tenant = load_tenant(path)

    basic = tenant.sources["basic_api"].settings
    oauth = tenant.sources["oauth_api"].settings
    assert isinstance(basic, RESTSettings) and isinstance(oauth, RESTSettings)
    assert isinstance(basic.auth, BasicAuthSettings)
    assert basic.auth.password.get_secret_value() == "enc-Password-77aa"
    assert isinstance(oauth.auth, OAuth2ClientCredentialsSettings)
    assert oauth.auth.client_secret.get_secret_value() == "env-Client-Secret-31d4"
    assert {"enc-Password-77aa", "env-Client-Secret-31d4"} <= tenant.secrets  # redacted
    assert "enc-Password-77aa" not in repr(basic)


# -- auth: OAuth2 client credentials --------------------------------------------------------

TOKEN_PATH = "/oauth/token"


@pytest.fixture
def oauth() -> OAuthServer:
    return OAuthServer()


@pytest.fixture
def token_recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def token_url(token_recorder: Recorder, oauth: OAuthServer) -> AsyncIterator[str]:
    """The token endpoint, on its own origin as an identity provider's would be."""
    async with serve(token_app(token_recorder, oauth)) as url:
        yield url + TOKEN_PATH


@pytest.fixture
async def oauth_api(recorder: Recorder, oauth: OAuthServer) -> AsyncIterator[str]:
    """The inventory API, letting ``oauth``'s live tokens in."""
    async with serve(rest_app(recorder, oauth=oauth)) as url:
        yield f"{url}/api"


@pytest.fixture
def make_oauth(
    make_connector: MakeConnector, oauth_api: str, token_url: str
) -> Callable[..., RESTConnector]:
    def make(limits: Limits | None = None, **auth: Any) -> RESTConnector:
        block = {
            "type": "oauth2_client_credentials",
            "token_url": token_url,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "inventory:read",
            **auth,
        }
        return make_connector(
            limits=limits, base_url=oauth_api, headers={}, api_key=None, auth=block
        )

    return make


def bearer_tokens(recorder: Recorder) -> list[str]:
    return [s.headers.get("Authorization", "").removeprefix("Bearer ") for s in recorder.seen]


async def test_oauth2__token_request_follows_rfc_6749_section_4_4(
    make_oauth: Callable[..., RESTConnector], oauth: OAuthServer, token_recorder: Recorder
) -> None:
    assert (await read(make_oauth(audience="https://api.example"), STOCK, sku="SKU-789")).found

    (form,) = oauth.requests
    assert form == {
        "grant_type": "client_credentials",
        "scope": "inventory:read",
        "audience": "https://api.example",
    }
    (seen,) = token_recorder.seen
    assert seen.method == "POST"
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    pair = base64.b64decode(seen.headers["Authorization"].removeprefix("Basic ")).decode()
    assert pair == f"{CLIENT_ID}:{CLIENT_SECRET}"


async def test_oauth2__client_credentials_in_the_body(
    make_oauth: Callable[..., RESTConnector], oauth: OAuthServer, token_recorder: Recorder
) -> None:
    assert (await read(make_oauth(client_auth="body"), STOCK, sku="SKU-789")).found

    assert oauth.requests[0]["client_secret"] == CLIENT_SECRET
    assert "Authorization" not in token_recorder.seen[0].headers


async def test_oauth2__token_is_reused_until_it_expires_then_fetched_again(
    make_oauth: Callable[..., RESTConnector], oauth: OAuthServer, recorder: Recorder
) -> None:
    oauth.lifetime_s = 2.0
    connector = make_oauth()

    for _ in range(3):
        assert (await read(connector, STOCK, sku="SKU-789")).found
    assert oauth.issued == 1
    assert len(set(bearer_tokens(recorder))) == 1

    await asyncio.sleep(oauth.lifetime_s + 0.5)
    assert (await read(connector, STOCK, sku="SKU-789")).found

    assert oauth.issued == 2
    assert len(recorder.seen) == 4  # fetched again before it ran out: no 401 and retry
    assert len(set(bearer_tokens(recorder))) == 2


async def test_oauth2__twenty_concurrent_reads_share_one_token_fetch(
    make_oauth: Callable[..., RESTConnector], oauth: OAuthServer, recorder: Recorder
) -> None:
    oauth.delay_s = 0.3  # the first fetch is still out when the other 19 reads start
    connector = make_oauth()
    query = RESTConnector.prepare(STOCK)

    results = await asyncio.gather(
        *(connector.run(query, Bound(params={"sku": "SKU-789"}), timeout_s=10) for _ in range(20))
    )

    assert all(r.found for r in results)
    assert oauth.issued == 1
    assert len(recorder.seen) == 20
    assert len(set(bearer_tokens(recorder))) == 1


async def test_oauth2__a_revoked_token_is_refreshed_once_on_401(
    make_oauth: Callable[..., RESTConnector], oauth: OAuthServer, recorder: Recorder
) -> None:
    connector = make_oauth()
    assert (await read(connector, STOCK, sku="SKU-789")).found
    oauth.revoke_all()  # the token still has an hour on its clock

    assert (await read(connector, STOCK, sku="SKU-789")).found

    assert oauth.issued == 2
    tokens = bearer_tokens(recorder)
    assert len(tokens) == 3 and tokens[0] == tokens[1] != tokens[2]


async def test_oauth2__an_api_that_refuses_every_token_is_an_auth_error_after_one_retry(
    make_connector: MakeConnector,
    api: str,
    token_url: str,
    oauth: OAuthServer,
    recorder: Recorder,
) -> None:
    """The API (`api`, not `oauth_api`) knows nothing of the token server's tokens."""
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    connector = make_connector(headers={}, api_key=None, auth=auth)

    with pytest.raises(SourceAuthError, match=r"authentication failed \(401\)"):
        await read(connector, STOCK, sku="SKU-789")

    assert oauth.issued == 2
    assert len(recorder.seen) == 2


async def test_oauth2__a_bad_client_secret_is_a_clear_source_error_without_secrets(
    make_oauth: Callable[..., RESTConnector],
    oauth: OAuthServer,
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-Client-Secret-6b1d"
    connector = make_oauth(client_secret=wrong)

    with pytest.raises(SourceAuthError) as caught:
        await read(connector, STOCK, sku="SKU-789")
    with pytest.raises(SourceAuthError):
        await connector.health_check()

    assert caught.value.message == (
        "the OAuth2 token endpoint refused the client credentials (401: invalid_client)"
    )
    assert recorder.seen == []  # the API was never called without a token
    assert oauth.issued == 0
    text = f"{caught.value} {caught.value!r} {caplog.text}"
    assert wrong not in text
    assert CLIENT_SECRET not in text


@pytest.mark.parametrize(
    ("misbehave", "error"),
    [
        pytest.param(status(500), "token endpoint answered 500", id="500"),
        pytest.param(redirect("http://127.0.0.2:9/token"), "redirected", id="redirect"),
        pytest.param(
            status(200, body='{"token_type": "Bearer"}'), "sent no usable token", id="no-token"
        ),
        pytest.param(
            status(200, body='{"access_token": "a b\\r\\nX: 1"}'),
            "sent no usable token",
            id="token-with-crlf",
        ),
        pytest.param(
            status(200, body='{"access_token": "abc", "token_type": "mac"}'),
            "non-Bearer",
            id="mac-token",
        ),
    ],
)
async def test_oauth2__a_broken_token_endpoint_is_a_source_error(
    make_oauth: Callable[..., RESTConnector],
    token_recorder: Recorder,
    recorder: Recorder,
    misbehave: Any,
    error: str,
) -> None:
    token_recorder.misbehave = misbehave

    with pytest.raises(SourceError, match=error):
        await read(make_oauth(), STOCK, sku="SKU-789")

    assert recorder.seen == []


async def test_oauth2__an_endless_token_answer_is_cut_off(
    make_oauth: Callable[..., RESTConnector], token_recorder: Recorder
) -> None:
    token_recorder.misbehave = endless(token_recorder)

    with pytest.raises(SourceError, match="larger than 64000 bytes"):
        await read(make_oauth(), STOCK, sku="SKU-789")


async def test_oauth2__the_token_url_is_held_to_the_tenants_network_rules(
    oauth: OAuthServer, tmp_path: Path
) -> None:
    """API allowed (127.0.0.1), token endpoint not (127.0.0.2): refused, nothing sent there."""
    api_recorder, token_recorder = Recorder(), Recorder()
    async with (
        serve(rest_app(api_recorder, oauth=oauth)) as api_url,
        serve(token_app(token_recorder, oauth), host="127.0.0.2") as token_base,
    ):
        source = {
            "id": "oauth_api",
            "type": "rest_api",
            "connection": {
                "base_url": f"{api_url}/api",
                "retries": 0,
                "auth": {
                    "type": "oauth2_client_credentials",
                    "token_url": token_base + TOKEN_PATH,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                },
            },
            "queries": {"stock": STOCK},
        }
        tenant = load_tenant(document={"tenant_id": "acme", "data_sources": [source]})
        reach = Reach(trusted=False, allow_networks=parse_networks("127.0.0.1/32"))
        sources = Sources(dataclasses.replace(tenant, reach=reach, base_dir=tmp_path))
        connector = RESTConnector(
            "oauth_api", tenant.sources["oauth_api"].settings, base_dir=tmp_path, reach=reach
        )
        prepared = RESTConnector.prepare(STOCK)
        try:
            # through Sources: the early check names the token endpoint's address
            with pytest.raises(SourceUnavailable, match=r"127\.0\.0\.2 is not a public address"):
                async with sources.guarded("oauth_api"):
                    await sources.get("oauth_api")
            # straight, as after a DNS change: the connect itself is refused
            with reaching(reach), pytest.raises(SourceUnavailable) as caught:
                await connector.run(prepared, Bound(params={"sku": "SKU-789"}), timeout_s=5)
        finally:
            await sources.close()
            await connector.close()

    assert refusal_in(caught.value) is not None
    assert token_recorder.seen == []
    assert api_recorder.seen == []
    assert oauth.issued == 0


def test_targets__include_the_token_endpoint() -> None:
    settings = RESTSettings.model_validate(
        {
            "base_url": "https://api.example.com/v1",
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "https://login.example.net:8443/oauth/token",
                "client_id": "c",
                "client_secret": "s3cret-Value",
            },
        }
    )
    connector = RESTConnector("api", settings, base_dir=REPO)

    assert connector.targets() == [("api.example.com", 443), ("login.example.net", 8443)]


# -- pagination -------------------------------------------------------------------------------

ALL_IDS = [item["id"] for item in ITEMS]

PAGE_STYLES = [
    pytest.param(
        {"path": "/paged/next", "result": "items",
         "pagination": {"type": "next_url", "next": "links.next"}},
        ["/api/paged/next", *(f"/api/paged/next?page={n}" for n in range(2, 6))],
        id="next-url-in-body",
    ),
    pytest.param(
        {"path": "/paged/link", "pagination": {"type": "link_header"}},
        ["/api/paged/link", *(f"/api/paged/link?page={n}" for n in range(2, 6))],
        id="link-header",
    ),
    pytest.param(
        {"path": "/paged/cursor", "result": "data",
         "pagination": {"type": "cursor", "cursor": "meta.next_cursor", "param": "after"}},
        ["/api/paged/cursor", *(f"/api/paged/cursor?after={n * 5}" for n in range(1, 5))],
        id="cursor",
    ),
    pytest.param(
        {"path": "/paged/page", "result": "results", "pagination": {"type": "page"}},
        [f"/api/paged/page?page={n}" for n in range(1, 7)],
        id="page-number",
    ),
    pytest.param(
        {"path": "/paged/offset", "result": "results", "pagination": {"type": "offset"}},
        [f"/api/paged/offset?offset={n}" for n in (0, 5, 10, 15, 20, 23)],  # by rows given
        id="offset",
    ),
]  # fmt: skip


def decoded_paths(recorder: Recorder) -> list[str]:
    """The paths the server saw, cursors decoded to the offsets they stand for."""
    paths = []
    for seen in recorder.seen:
        path, _, cursor = seen.raw_path.partition("?after=")
        offset = base64.urlsafe_b64decode(unquote(cursor)).decode() if cursor else ""
        paths.append(f"{path}?after={offset}" if cursor else path)
    return paths


@pytest.mark.parametrize(("query", "paths"), PAGE_STYLES)
async def test_pagination__reads_every_page_of_each_style(
    make_connector: MakeConnector, recorder: Recorder, query: dict[str, Any], paths: list[str]
) -> None:
    result = await read(make_connector(), query)

    assert [row["id"] for row in result.rows] == ALL_IDS
    assert result.data == result.rows
    assert decoded_paths(recorder) == paths


@pytest.mark.parametrize(("query", "paths"), PAGE_STYLES)
async def test_pagination__stops_at_max_pages(
    make_connector: MakeConnector, recorder: Recorder, query: dict[str, Any], paths: list[str]
) -> None:
    capped = {**query, "pagination": {**query["pagination"], "max_pages": 2}}

    result = await read(make_connector(), capped)

    assert [row["id"] for row in result.rows] == ALL_IDS[:10]
    assert decoded_paths(recorder) == paths[:2]


@pytest.mark.parametrize(("query", "paths"), PAGE_STYLES)
async def test_pagination__stops_at_the_sources_max_rows(
    make_connector: MakeConnector, recorder: Recorder, query: dict[str, Any], paths: list[str]
) -> None:
    result = await read(make_connector(limits=Limits(max_rows=7)), query)

    assert [row["id"] for row in result.rows] == ALL_IDS[:7]
    assert len(recorder.seen) == 2


async def test_pagination__an_empty_first_page_is_not_found(make_connector: MakeConnector) -> None:
    query = {"path": "/paged/offset", "params": {"offset": 100}, "result": "results",
             "pagination": {"type": "offset", "start": 100}}  # fmt: skip

    assert not (await read(make_connector(), query)).found


async def test_pagination__offset_steps_by_the_configured_step(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    query = {"path": "/paged/offset", "params": {"per_page": 2}, "result": "results",
             "pagination": {"type": "offset", "step": 10, "max_pages": 5}}  # fmt: skip

    result = await read(make_connector(), query)

    assert [row["id"] for row in result.rows] == [1, 2, 11, 12, 21, 22]
    assert len(recorder.seen) == 4  # the fourth page (offset 30) is empty


async def test_pagination__a_next_link_to_another_host_is_not_followed(
    make_connector: MakeConnector,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
) -> None:
    async def elsewhere(request: web.Request) -> web.StreamResponse:
        body = {"items": [{"id": 1}], "links": {"next": f"{other_host}/api/paged/next?page=2"}}
        return web.json_response(body)

    recorder.misbehave = elsewhere
    query = {"path": "/paged/next", "result": "items",
             "pagination": {"type": "next_url", "next": "links.next"}}  # fmt: skip

    with pytest.raises(SourceError, match="link points to another host; not followed"):
        await read(make_connector(), query)

    assert len(recorder.seen) == 1
    assert other_recorder.seen == []


async def test_pagination__a_link_back_to_a_page_already_read_ends_the_read(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        return web.json_response({"items": [{"id": 1}], "links": {"next": request.path}})

    recorder.misbehave = loop
    query = {"path": "/paged/next", "result": "items",
             "pagination": {"type": "next_url", "next": "links.next", "max_pages": 50}}  # fmt: skip

    result = await read(make_connector(), query)

    assert result.rows == [{"id": 1}]
    assert len(recorder.seen) == 1


async def test_pagination__all_pages_share_the_reads_deadline(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    async def slow_pages(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.4)
        number = int(request.query.get("page", "1"))
        return web.json_response({"results": [{"id": number}]})

    recorder.misbehave = slow_pages
    query = {"path": "/paged/page", "result": "results",
             "pagination": {"type": "page", "max_pages": 100}}  # fmt: skip
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(make_connector(), query, timeout_s=1)

    assert time.monotonic() - started < 1 + 4
    assert len(recorder.seen) < 10  # 100 pages of 0.4 s would take 40 s


async def test_pagination__query_auth_is_sent_on_every_page(
    make_connector: MakeConnector, recorder: Recorder
) -> None:
    connector = auth_connector(
        make_connector, {"type": "query", "name": "api_key", "value": API_KEY}
    )
    query = {"path": "/paged/next", "result": "items",
             "pagination": {"type": "next_url", "next": "links.next"}}  # fmt: skip

    result = await read(connector, query)

    assert len(result.rows) == len(ITEMS)
    assert all(f"api_key={API_KEY}" in seen.raw_path for seen in recorder.seen)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(
            {"path": "/x", "method": "HEAD", "pagination": {"type": "page"}}, "HEAD", id="head"
        ),
        pytest.param(
            {"path": "/x", "format": "text", "pagination": {"type": "page"}}, "text", id="text"
        ),
        pytest.param(
            {"path": "/x", "pagination": {"type": "cursor", "cursor": "next"}},
            r"pagination\.cursor\.param: Field required",
            id="cursor-without-param",
        ),
        pytest.param(
            {"path": "/x", "pagination": {"type": "scroll"}}, "pagination", id="unknown-type"
        ),
        pytest.param(
            {"path": "/x", "pagination": {"type": "page", "max_pages": 1000}},
            r"pagination\.page\.max_pages",
            id="too-many-pages",
        ),
        pytest.param(
            {"path": "/x", "pagination": {"type": "page", "param": "a&b=c"}},
            r"pagination\.page\.param",
            id="param-with-ampersand",
        ),
    ],
)
def test_prepare__refuses_bad_pagination_naming_its_path(raw: RawQuery, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        RESTConnector.prepare(raw)


# -- XML --------------------------------------------------------------------------------------


async def test_xml__answer_is_parsed_into_rows_by_the_result_path(
    make_connector: MakeConnector,
) -> None:
    result = await read(make_connector(), {"path": "/catalog", "result": "catalog.product"})

    assert result.rows[:2] == [
        {"@id": "SKU-789", "name": "Blue Mug", "quantity": "42"},
        {"@id": "SKU-790", "name": "Red Mug", "quantity": "0"},
    ]
    assert len(result.rows) == len(PRODUCTS)


async def test_xml__one_element_is_one_row(make_connector: MakeConnector) -> None:
    query = {"path": "/catalog", "params": {"sku": "{sku}"}, "result": "catalog.product"}

    result = await read(make_connector(), query, sku="SKU-790")

    assert result.rows == [{"@id": "SKU-790", "name": "Red Mug", "quantity": "0"}]


XML_AS_TEXT = "<stock><sku>SKU-789</sku><quantity>42</quantity></stock>"


@pytest.mark.parametrize(
    ("content_type", "body", "query", "rows"),
    [
        pytest.param("text/plain", XML_AS_TEXT, {"format": "xml", "result": "stock"},
                     [{"sku": "SKU-789", "quantity": "42"}], id="xml-sent-as-text"),
        pytest.param("application/xml", XML_AS_TEXT, {"format": "text"},
                     [{"value": XML_AS_TEXT}], id="xml-kept-as-text"),
        pytest.param("text/plain", '{"quantity": 42}', {"format": "json"},
                     [{"quantity": 42}], id="json-sent-as-text"),
        pytest.param("text/xml", XML_AS_TEXT, {"result": "stock.quantity"},
                     [{"value": "42"}], id="text-xml-by-content-type"),
        pytest.param("application/atom+xml", "<feed><entry>a</entry><entry>b</entry></feed>",
                     {"result": "feed.entry"}, [{"value": "a"}, {"value": "b"}], id="plus-xml"),
    ],
)  # fmt: skip
async def test_format__says_how_to_read_the_answer(
    make_connector: MakeConnector,
    recorder: Recorder,
    content_type: str,
    body: str,
    query: dict[str, Any],
    rows: list[dict[str, Any]],
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, content_type=content_type)

    recorder.misbehave = answer

    assert (await read(make_connector(), {"path": "/anything", **query})).rows == rows


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>"""
XXE = """<?xml version="1.0"?>
<!DOCTYPE stock [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><stock>&xxe;</stock>"""
EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE stock SYSTEM "http://127.0.0.2:9/evil.dtd"><stock>&ent;</stock>"""


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(BILLION_LAUGHS, "declares entities", id="entity-expansion"),
        pytest.param(XXE, "declares entities", id="external-entity"),
        pytest.param(EXTERNAL_DTD, "not well-formed XML", id="external-dtd"),
        pytest.param("<stock><sku>1</stock>", "not well-formed XML", id="malformed"),
        pytest.param("<a>" * 150 + "</a>" * 150, "nested deeper than 100", id="too-deep"),
    ],
)
async def test_xml__hostile_or_broken_documents_are_refused(
    make_connector: MakeConnector,
    recorder: Recorder,
    other_host: str,
    other_recorder: Recorder,
    body: str,
    error: str,
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, content_type="application/xml")

    recorder.misbehave = answer

    with pytest.raises(SourceError, match=error) as caught:
        await read(make_connector(), "/catalog")

    assert "root:" not in str(caught.value)
    assert other_recorder.seen == []


def test_xml_document__shape() -> None:
    body = b"""<?xml version="1.0"?>
    <r:order xmlns:r="urn:x" id="7">
      <line sku="A">2</line><line sku="B">1</line>
      <note/>
      <customer><name> Ana </name></customer>
      Thanks
    </r:order>"""

    assert xml_document(body) == {
        "order": {
            "@id": "7",
            "line": [{"@sku": "A", "#text": "2"}, {"@sku": "B", "#text": "1"}],
            "note": None,
            "customer": {"name": "Ana"},
            "#text": "Thanks",
        }
    }


def test_xml_document__too_many_elements() -> None:
    with pytest.raises(ValueError, match="more than 10 elements"):
        xml_document(b"<a>" + b"<b/>" * 20 + b"</a>", max_elements=10)


@given(
    st.binary(max_size=300) | st.text(alphabet="<>/a b=\"'&;!?[]-x", max_size=80).map(str.encode)
)
def test_xml_document__any_bytes_parse_or_raise_a_known_error(body: bytes) -> None:
    try:
        document = xml_document(body)
    except (DefusedXmlException, ParseError, ValueError):
        return
    assert isinstance(document, dict) and len(document) == 1
    json.dumps(document)
