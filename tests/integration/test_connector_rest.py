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
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
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
from connectors.registry import load
from connectors.rest import RESTConnector, RESTSettings
from connectors.testing import ConnectorContract, RawQuery
from tests.servers.hostile import (
    Recorder,
    dropping_server,
    endless,
    recorded_app,
    redirect,
    serve,
    stall,
    status,
)
from tests.servers.rest_app import API_KEY, rest_app
from worker.config import load_tenant

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

    app = recorded_app(other_recorder)
    app.router.add_route("*", "/{tail:.*}", stolen)
    async with serve(app, host="127.0.0.2") as url:
        yield url


@pytest.fixture
async def make_connector(api: str, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    made: list[RESTConnector] = []

    def make(limits: Limits | None = None, **overrides: Any) -> RESTConnector:
        connection = {**SEED_CONNECTION, "base_url": api, "api_key": API_KEY, **overrides}
        settings = RESTSettings.model_validate(connection)
        connector = RESTConnector("inventory_api", settings, base_dir=tmp_path, limits=limits)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.close()


async def read(connector: RESTConnector, raw: RawQuery, timeout_s: float = 5, **params: Any) -> Any:
    query = RESTConnector.prepare(raw)
    return await connector.run(query, Bound(params=params), timeout_s=timeout_s)


class TestRESTContract(ConnectorContract):
    @pytest.fixture
    def connector(self, make_connector: MakeConnector) -> RESTConnector:
        return make_connector()

    @pytest.fixture
    def found_query(self) -> RawQuery:
        return STOCK

    @pytest.fixture
    def found_params(self) -> Bound:
        return Bound(params={"sku": "SKU-789"})

    @pytest.fixture
    def missing_params(self) -> Bound:
        return Bound(params={"sku": "SKU-000"})

    @pytest.fixture
    def slow_query(self) -> RawQuery | None:
        return {"path": "/slow", "params": {"seconds": "{seconds}"}}

    @pytest.fixture
    def slow_params(self) -> Bound:
        return Bound(params={"seconds": 30})

    @pytest.fixture
    def write_query(self) -> RawQuery | None:
        return {"path": "/products/{sku}", "method": "DELETE"}


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

    with pytest.raises(SourceError, match="image/png, neither JSON nor text"):
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
