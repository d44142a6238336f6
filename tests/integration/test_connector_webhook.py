"""The webhook connector against a real aiohttp receiver on loopback that checks signatures.

The receiver verifies each request as the module docstring of `connectors.webhook`
tells a tenant to (`connectors.webhook.verify`): a request whose signature does not
verify is refused with 401, which the lookup turns into its fallback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connectors.base import (
    Bound,
    ConfigError,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.egress import Reach, parse_networks
from connectors.registry import load
from connectors.webhook import (
    SIGNATURE_HEADER,
    WebhookConnector,
    WebhookSettings,
    sign,
    verify,
)
from tests.servers.hostile import serve
from tests.support.connectors import ConnectorFactory, ContractCase, read
from worker.config import load_tenant
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.sources import Sources

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec-0123456789abcdef"
ORDERS = {"12345": {"order_id": "12345", "status": "shipped", "tracking_number": "UPS123456"}}

MakeConnector = Callable[..., WebhookConnector]


@dataclass
class Receiver:
    """What the tenant's endpoint saw: each verified body, and each refused one."""

    secret: str = SECRET
    bodies: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    hits: int = 0


def receiver_app(seen: Receiver) -> web.Application:
    async def hook(request: web.Request) -> web.StreamResponse:
        seen.hits += 1
        raw = await request.read()
        if not verify(seen.secret, raw, request.headers.get(SIGNATURE_HEADER, "")):
            seen.refused += 1
            return web.json_response({"error": "bad signature"}, status=401)
        body = json.loads(raw)
        seen.bodies.append(body)
        return await _answer(body["event"], body["parameters"])

    app = web.Application()
    app.router.add_post("/hook", hook)
    return app


async def _answer(event: str, params: dict[str, Any]) -> web.StreamResponse:
    if event == "ping":
        return web.json_response({"ok": True})
    if event == "order_status":
        order = ORDERS.get(str(params.get("order_id")))
        return web.json_response(order) if order else web.Response(status=404)
    if event == "wrapped":
        order = ORDERS.get(str(params.get("id")))
        return web.json_response({"data": {"order": order}})
    if event == "orders":
        return web.json_response([ORDERS["12345"], {"order_id": "9", "status": "new"}])
    if event == "slow":
        await asyncio.sleep(float(params.get("seconds", 30)))
        return web.json_response({"late": True})
    if event == "broken":
        return web.json_response({"error": "boom"}, status=500)
    if event == "not_json":
        return web.Response(text="<html>hello</html>", content_type="text/html")
    if event == "redirect":
        raise web.HTTPTemporaryRedirect("/hook")
    return web.Response(status=404)


@pytest.fixture
def seen() -> Receiver:
    return Receiver()


@pytest.fixture
async def hook_url(seen: Receiver) -> AsyncIterator[str]:
    async with serve(receiver_app(seen)) as url:
        yield f"{url}/hook"


@pytest.fixture
async def make_connector(hook_url: str, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    defaults = {"url": hook_url, "secret": SECRET}
    factory = ConnectorFactory(WebhookConnector, "orders_hook", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


class TestWebhookContract(ContractCase):
    FOUND_QUERY = "order_status"
    FOUND_PARAMS = Bound(params={"order_id": "12345"})
    MISSING_PARAMS = Bound(params={"order_id": "00000"})
    SLOW_QUERY = "slow"
    SLOW_PARAMS = Bound(params={"seconds": 30})

    @pytest.fixture
    def connector(self, make_connector: MakeConnector) -> WebhookConnector:
        return make_connector()


# -- the wire ---------------------------------------------------------------------


async def test_run__posts_signed_json_the_receiver_verifies(
    make_connector: MakeConnector, seen: Receiver
) -> None:
    result = await read(make_connector(), "order_status", order_id="12345")

    assert result.rows == [ORDERS["12345"]]
    assert seen.refused == 0
    (body,) = seen.bodies
    assert body["event"] == "order_status"
    assert body["source"] == "orders_hook"
    assert body["parameters"] == {"order_id": "12345"}
    assert len(body["delivery"]) == 32


async def test_run__payload_template_binds_typed_values_and_result_picks_inside(
    make_connector: MakeConnector, seen: Receiver
) -> None:
    query = {"event": "wrapped", "payload": {"id": "{order_id}", "n": 1}, "result": "data.order"}

    result = await read(make_connector(), query, order_id="12345", other="x")

    assert result.rows == [ORDERS["12345"]]
    assert seen.bodies[0]["parameters"] == {"id": "12345", "n": 1}
    assert WebhookConnector.prepare(query).names == ("order_id",)


async def test_run__a_list_answer_is_one_row_per_item(make_connector: MakeConnector) -> None:
    result = await read(make_connector(), "orders")

    assert [row["order_id"] for row in result.rows] == ["12345", "9"]


async def test_run__wrong_secret_is_refused_as_an_auth_failure(
    make_connector: MakeConnector, seen: Receiver
) -> None:
    with pytest.raises(SourceAuthError, match="401"):
        await read(make_connector(secret="not-the-shared-secret"), "order_status", order_id="1")

    assert seen.refused == 1 and seen.bodies == []


@pytest.mark.parametrize(
    ("event", "match"),
    [
        pytest.param("broken", "500", id="5xx"),
        pytest.param("not_json", "not JSON", id="html-answer"),
        pytest.param("redirect", "redirected", id="redirect-not-followed"),
    ],
)
async def test_run__failures_are_source_errors_and_never_retried(
    make_connector: MakeConnector, seen: Receiver, event: str, match: str
) -> None:
    with pytest.raises(SourceError, match=match):
        await read(make_connector(), event)

    assert seen.hits == 1  # a POST is sent once: no retry, no redirect followed


async def test_run__connection_timeout_caps_the_deadline(make_connector: MakeConnector) -> None:
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(make_connector(timeout_s=0.5), "slow", timeout_s=30, seconds=30)

    assert time.monotonic() - started < 5


def test_prepare__refuses_bad_queries() -> None:
    with pytest.raises(ConfigError, match="event"):
        WebhookConnector.prepare({"event": "has spaces"})
    with pytest.raises(ConfigError, match="payload"):
        WebhookConnector.prepare({"event": "x", "payload": "not a mapping"})
    with pytest.raises(ConfigError, match="method: Extra"):
        WebhookConnector.prepare({"event": "x", "method": "DELETE"})


def test_settings__short_secret_and_bad_url_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="url") as bad_url:
        WebhookSettings.model_validate({"url": "ftp://x/hook", "secret": SECRET})
    with pytest.raises(ValueError, match="secret") as short:
        WebhookSettings.model_validate({"url": "https://x/hook", "secret": "short"})

    assert SECRET not in str(bad_url.value) and "short'" not in str(short.value)


def test_verify__tolerance_and_tampering() -> None:
    body = b'{"event":"x"}'
    now = int(time.time())
    header = sign(SECRET, body, now)

    assert verify(SECRET, body, header)
    assert not verify(SECRET, body + b" ", header)
    assert not verify("other-secret-value", body, header)
    assert not verify(SECRET, body, sign(SECRET, body, now - 301))
    assert not verify(SECRET, body, "v1=abc")


def test_registry__webhook_is_an_installed_type() -> None:
    assert load("webhook") is WebhookConnector
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "connectors", "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    rows = {row["type"]: row for row in json.loads(done.stdout)}
    assert rows["webhook"]["installed"], rows["webhook"]


# -- through a tenant config ----------------------------------------------------------


def _tenant_yaml(url: str, secret: str) -> str:
    return f"""
tenant_id: hooks
data_sources:
  - id: orders_hook
    type: webhook
    connection: {{url: "{url}", secret: "{secret}"}}
    queries:
      order_status: order_status
lookups:
  order_status:
    source: orders_hook
    params:
      order_id: {{pattern: '[0-9]{{3,12}}'}}
    template: "Order {{{{ params.order_id }}}}: {{{{ row.status }}}}."
    not_found: "No order {{{{ params.order_id }}}}."
    fallback: "Our order system is down."
"""


@pytest.mark.parametrize(
    ("secret", "order_id", "outcome", "message"),
    [
        pytest.param(SECRET, "12345", "ok", "Order 12345: shipped.", id="signed-ok"),
        pytest.param(SECRET, "99999", "not_found", "No order 99999.", id="404-not-found"),
        pytest.param(
            "wrong-secret-0123456",
            "12345",
            "fallback",
            "Our order system is down.",
            id="401-fallback",
        ),
    ],
)
async def test_lookup__through_the_pipeline(
    hook_url: str, tmp_path: Path, secret: str, order_id: str, outcome: str, message: str
) -> None:
    path = tmp_path / "hooks.yaml"
    path.write_text(_tenant_yaml(hook_url, secret), encoding="utf-8")
    tenant = load_tenant(path)
    sources = Sources(tenant, Metrics())
    try:
        answer = await Pipeline(tenant, sources).lookup("order_status", {"order_id": order_id})
    finally:
        await sources.close()

    assert (answer.outcome, answer.message) == (outcome, message)
    assert secret not in json.dumps(answer.as_json())


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_HOOK_SECRET", "0123456789abcdef")

    tenant = load_tenant(REPO / "config" / "examples" / "webhook.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"webhook"}
    assert set(tenant.lookups) == {"order_status", "customer_orders"}


# -- an engine-served config (contract §5.0) -------------------------------------------


@pytest.mark.parametrize(
    ("allow", "reached"),
    [
        pytest.param("", False, id="loopback-refused"),
        pytest.param("127.0.0.1/32", True, id="allowed-network-read"),
    ],
)
async def test_egress__an_untrusted_config_reaches_only_what_the_operator_allows(
    hook_url: str, seen: Receiver, tmp_path: Path, allow: str, reached: bool
) -> None:
    source = {
        "id": "orders_hook",
        "type": "webhook",
        "connection": {"url": hook_url, "secret": SECRET},
        "queries": {"order_status": "order_status"},
    }
    tenant = load_tenant(document={"tenant_id": "acme", "data_sources": [source]})
    reach = Reach(trusted=False, data_dir=None, allow_networks=parse_networks(allow))
    sources = Sources(dataclasses.replace(tenant, reach=reach, base_dir=tmp_path))
    prepared = tenant.sources["orders_hook"].queries["order_status"].prepared

    async def ask() -> Any:
        async with sources.guarded("orders_hook"):
            connector = await sources.get("orders_hook")
            bound = Bound(params={"order_id": "12345"})
            return await connector.run(prepared, bound, timeout_s=5)

    try:
        if reached:
            assert (await ask()).rows == [ORDERS["12345"]]
        else:
            with pytest.raises(SourceUnavailable, match="not a public address"):
                await ask()
    finally:
        await sources.close()

    assert seen.hits == (1 if reached else 0)
