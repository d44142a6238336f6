"""The hubspot connector: httpx through SafeHTTP against the HubSpot CRM search stand-in."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.hubspot import HubSpotConnector, HubSpotSettings
from connectors.testing import ConnectorContract, RawQuery
from tests.servers.hostile import Recorder, endless, recorded_app, redirect, serve, stall
from tests.standins.hubspot import CrmObject, HubSpotStandIn
from worker.config import load_tenant

TOKEN = "pat-na1-00000000-stand-in-token"
CONTACTS = [
    CrmObject("101", {"firstname": "Ana", "lastname": "Lima", "phone": "+1234567890"}),
    CrmObject("102", {"firstname": "Ben", "lastname": "Ode", "phone": "+1987654321"}),
    CrmObject("103", {"firstname": "Cy", "phone": None, "email": "cy@example.com"}),
]
CONTACT_QUERY = {
    "object": "contacts",
    "filter": {"phone": "{customer_phone}"},
    "properties": ["firstname"],
}
ANA = {
    "firstname": "Ana",
    "hs_object_id": "101",
    "createdate": "2025-09-01T10:00:00.000Z",
    "lastmodifieddate": "2025-09-02T10:00:00.000Z",
    "id": "101",
}

REPO = Path(__file__).resolve().parents[2]
MakeConnector = Callable[..., HubSpotConnector]


@pytest.fixture
async def stand() -> AsyncIterator[HubSpotStandIn]:
    deals = [
        CrmObject(str(1000 + i), {"dealstage": "open", "dealname": f"D{i}"}) for i in range(450)
    ]
    standin = HubSpotStandIn(
        token=TOKEN, objects={"contacts": CONTACTS, "slow": CONTACTS, "deals": deals}
    )
    async with serve(standin.app()) as url:
        standin.base_url = url
        yield standin


@pytest.fixture
async def make(stand: HubSpotStandIn, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    made: list[HubSpotConnector] = []

    def make(limits: Limits | None = None, **connection: Any) -> HubSpotConnector:
        settings = HubSpotSettings.model_validate(
            {"base_url": stand.base_url, "token": TOKEN, **connection}
        )
        connector = HubSpotConnector("crm", settings, base_dir=tmp_path, limits=limits)
        made.append(connector)
        return connector

    yield make
    for connector in made:
        await connector.close()


async def read(
    connector: HubSpotConnector, raw: RawQuery, timeout_s: float = 10, **params: Any
) -> list[dict[str, Any]]:
    result = await connector.run(connector.prepare(raw), Bound(params=params), timeout_s=timeout_s)
    return result.rows


class TestHubSpotContract(ConnectorContract):
    @pytest.fixture
    def connector(self, make: MakeConnector) -> HubSpotConnector:
        return make()

    @pytest.fixture
    def found_query(self) -> RawQuery:
        return CONTACT_QUERY

    @pytest.fixture
    def found_params(self) -> Bound:
        return Bound(params={"customer_phone": "+1234567890"})

    @pytest.fixture
    def missing_params(self) -> Bound:
        return Bound(params={"customer_phone": "+1000000000"})

    @pytest.fixture
    def slow_query(self) -> RawQuery:
        return {**CONTACT_QUERY, "object": "slow"}

    @pytest.fixture
    def slow_params(self) -> Bound:
        return Bound(params={"customer_phone": "+1234567890"})


# -- reading ------------------------------------------------------------------------


async def test_run__posts_the_documented_search_body(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    rows = await read(make(), CONTACT_QUERY, customer_phone="+1234567890")

    assert rows == [ANA]
    (request,) = stand.seen
    assert (request.method, request.raw_path) == ("POST", "/crm/v3/objects/contacts/search")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {
        "filterGroups": [
            {"filters": [{"propertyName": "phone", "operator": "EQ", "value": "+1234567890"}]}
        ],
        "properties": ["firstname"],
        "limit": 100,
    }


async def test_run__typed_and_null_values(make: MakeConnector, stand: HubSpotStandIn) -> None:
    query = {"object": "contacts", "filter": {"phone": "{p}", "firstname": "{n}"}}

    rows = await read(make(), query, p=None, n="Cy")

    assert [row["id"] for row in rows] == ["103"]
    assert stand.searches[0]["filterGroups"][0]["filters"] == [
        {"propertyName": "phone", "operator": "NOT_HAS_PROPERTY"},
        {"propertyName": "firstname", "operator": "EQ", "value": "Cy"},
    ]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('+1234567890", "operator": "HAS_PROPERTY', id="json-breakout"),
        pytest.param({"$ne": None}, id="operator-object"),
        pytest.param(["+1234567890", "+1987654321"], id="list"),
        pytest.param("{customer_phone}", id="placeholder"),
        pytest.param("*", id="wildcard"),
    ],
)
async def test_run__parameters_only_fill_the_filter_value(
    make: MakeConnector, stand: HubSpotStandIn, value: Any
) -> None:
    rows = await read(make(), CONTACT_QUERY, customer_phone=value)

    assert rows == []
    (search,) = stand.searches
    (rule,) = search["filterGroups"][0]["filters"]
    assert set(rule) == {"propertyName", "operator", "value"}
    assert (rule["propertyName"], rule["operator"]) == ("phone", "EQ")
    assert isinstance(rule["value"], str)


async def test_run__follows_paging_next_after_up_to_max_rows(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    connector = make(limits=Limits(max_rows=430))

    rows = await read(connector, {"object": "deals", "filter": {"dealstage": "{s}"}}, s="open")

    assert [row["id"] for row in rows] == [str(1000 + i) for i in range(430)]
    assert [(s["limit"], s.get("after")) for s in stand.searches] == [
        (200, None),
        (200, "200"),
        (30, "400"),
    ]


async def test_run__query_limit_caps_the_page(make: MakeConnector, stand: HubSpotStandIn) -> None:
    rows = await read(make(), {"object": "deals", "limit": 7})

    assert len(rows) == 7
    assert [s["limit"] for s in stand.searches] == [7]


async def test_run__unknown_object_is_not_found(make: MakeConnector) -> None:
    assert await read(make(), {**CONTACT_QUERY, "object": "widgets"}, customer_phone="1") == []


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../contacts", id="dot-dot"),
        pytest.param("contacts/search?x", id="slash-question"),
    ],
)
def test_prepare__object_type_is_one_plain_name(name: str) -> None:
    with pytest.raises(ConfigError, match="object"):
        HubSpotConnector.prepare({**CONTACT_QUERY, "object": name})


# -- errors ---------------------------------------------------------------------------


async def test_run__wrong_token_is_an_auth_error_without_the_token(
    make: MakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "pat-na1-ffffffff-wrong"
    connector = make(token=wrong)

    with pytest.raises(SourceAuthError, match="401 INVALID_AUTHENTICATION") as caught:
        await read(connector, CONTACT_QUERY, customer_phone="+1234567890")
    with pytest.raises(SourceAuthError):
        await connector.health_check()

    for text in (str(caught.value), caplog.text):
        assert wrong not in text and TOKEN not in text


async def test_run__429_with_retry_after_is_retried_within_the_deadline(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    stand.throttle(1, retry_after="1")
    started = time.monotonic()

    rows = await read(make(), CONTACT_QUERY, customer_phone="+1234567890")

    assert rows == [ANA]
    assert time.monotonic() - started >= 1.0
    assert len(stand.seen) == 2


async def test_run__429_without_retry_after_backs_off_briefly(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    stand.throttle(2, retry_after=None)

    assert await read(make(), CONTACT_QUERY, customer_phone="+1234567890") == [ANA]
    assert len(stand.seen) == 3


async def test_run__429_past_the_deadline_is_unavailable(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    stand.throttle(10, retry_after="60")
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="429"):
        await read(make(), CONTACT_QUERY, timeout_s=10, customer_phone="+1234567890")

    assert time.monotonic() - started < 5  # neither the 60 s asked for nor the 10 s deadline
    assert len(stand.seen) == 1


async def test_run__validation_error_names_hubspot_category(make: MakeConnector) -> None:
    query = {"object": "deals", "filter": {f"p{i}": "{v}" for i in range(11)}}

    with pytest.raises(SourceError, match="400 VALIDATION_ERROR: Too many filters"):
        await read(make(), query, v="x")


async def test_run__endless_body_is_cut_off(make: MakeConnector, stand: HubSpotStandIn) -> None:
    stand.recorder.misbehave = endless(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 1000000 bytes"):
        await read(make(max_response_bytes=1_000_000), CONTACT_QUERY, customer_phone="1")

    assert time.monotonic() - started < 5
    assert stand.recorder.streamed < 50_000_000


async def test_run__stalled_body_ends_at_the_deadline(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    stand.recorder.misbehave = stall(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(make(), CONTACT_QUERY, timeout_s=1, customer_phone="1")

    assert time.monotonic() - started < 1 + 4  # the stall lasts 20 s


async def test_run__redirect_to_another_host_is_not_followed(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    other = Recorder()
    async with serve(recorded_app(other), host="127.0.0.2") as elsewhere:
        stand.recorder.misbehave = redirect(f"{elsewhere}/crm/v3/objects/contacts/search", 307)

        with pytest.raises(SourceError, match="another host"):
            await read(make(), CONTACT_QUERY, customer_phone="1")

    assert other.seen == []


async def test_health_check__reads_account_details(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    await make().health_check()

    assert [s.raw_path for s in stand.seen] == ["/account-info/v3/details"]


def test_settings__default_to_hubspot_and_keep_the_token_secret() -> None:
    settings = HubSpotSettings.model_validate({"token": TOKEN})

    assert settings.base_url == "https://api.hubapi.com"
    assert TOKEN not in repr(settings)


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)

    tenant = load_tenant(REPO / "config" / "examples" / "hubspot.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"hubspot"}
    assert set(tenant.lookups) == {"customer_lookup"}
