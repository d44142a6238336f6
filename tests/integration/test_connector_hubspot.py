"""The hubspot connector: httpx through SafeHTTP against the HubSpot CRM search stand-in."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

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
from connectors.testing import RawQuery
from tests.servers.hostile import Recorder, endless, recorded_app, redirect, serve, stall
from tests.standins.hubspot import CrmObject, HubSpotStandIn
from tests.support.connectors import ConnectorFactory, ContractCase, read_rows
from worker.config import load_tenant
from worker.errors import InputRefused

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

COMPANIES = [
    CrmObject("201", {"name": "Acme Corp", "revenue": "100", "domain": "acme.com", "tier": "gold"}),
    CrmObject("202", {"name": "Beta Labs", "revenue": "2500", "domain": "beta.io", "tier": None}),
    CrmObject("203", {"name": "Gamma", "revenue": "40", "domain": "gamma.acme.com", "tier": "tin"}),
]

REPO = Path(__file__).resolve().parents[2]
MakeConnector = Callable[..., HubSpotConnector]


@pytest.fixture
async def stand() -> AsyncIterator[HubSpotStandIn]:
    deals = [
        CrmObject(str(1000 + i), {"dealstage": "open", "dealname": f"D{i}"}) for i in range(450)
    ]
    standin = HubSpotStandIn(
        token=TOKEN,
        objects={"contacts": CONTACTS, "slow": CONTACTS, "deals": deals, "companies": COMPANIES},
    )
    async with serve(standin.app()) as url:
        standin.base_url = url
        yield standin


@pytest.fixture
async def make(stand: HubSpotStandIn, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    defaults = {"base_url": stand.base_url, "token": TOKEN}
    factory = ConnectorFactory(HubSpotConnector, "crm", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


read = partial(read_rows, timeout_s=10)


class TestHubSpotContract(ContractCase):
    FOUND_QUERY = CONTACT_QUERY
    FOUND_PARAMS = Bound(params={"customer_phone": "+1234567890"})
    MISSING_PARAMS = Bound(params={"customer_phone": "+1000000000"})
    SLOW_QUERY: ClassVar[RawQuery] = {**CONTACT_QUERY, "object": "slow"}
    SLOW_PARAMS = Bound(params={"customer_phone": "+1234567890"})

    @pytest.fixture
    def connector(self, make: MakeConnector) -> HubSpotConnector:
        return make()


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


# -- the other search operators, groups and reads by id ----------------------------------


def company(rule: dict[str, Any]) -> dict[str, Any]:
    return {"object": "companies", "filters": [rule], "properties": ["name"]}


@pytest.mark.parametrize(
    ("rule", "params", "found"),
    [
        pytest.param({"operator": "EQ", "value": "{v}"}, {"v": 100}, ["201"], id="EQ"),
        pytest.param({"operator": "NEQ", "value": "{v}"}, {"v": "100"}, ["202", "203"], id="NEQ"),
        pytest.param({"operator": "LT", "value": "{v}"}, {"v": "100"}, ["203"], id="LT"),
        pytest.param({"operator": "LTE", "value": "{v}"}, {"v": "100"}, ["201", "203"], id="LTE"),
        pytest.param({"operator": "GT", "value": "{v}"}, {"v": "100"}, ["202"], id="GT"),
        pytest.param({"operator": "GTE", "value": "{v}"}, {"v": 100}, ["201", "202"], id="GTE"),
        pytest.param(
            {"operator": "BETWEEN", "value": "{low}", "highValue": "{high}"},
            {"low": "40", "high": "100"},
            ["201", "203"],
            id="BETWEEN",
        ),
        pytest.param(
            {"operator": "IN", "values": ["{a}", "2500"]}, {"a": "40"}, ["202", "203"], id="IN"
        ),
        pytest.param(
            {"operator": "NOT_IN", "values": ["{a}", "2500"]}, {"a": "40"}, ["201"], id="NOT_IN"
        ),
    ],
)
async def test_run__comparison_operators_reach_hubspot_with_bound_values(
    make: MakeConnector,
    stand: HubSpotStandIn,
    rule: dict[str, Any],
    params: dict[str, Any],
    found: list[str],
) -> None:
    rows = await read(make(), company({"propertyName": "revenue", **rule}), **params)

    assert [row["id"] for row in rows] == found
    (sent,) = stand.searches[0]["filterGroups"][0]["filters"]
    assert sent["propertyName"] == "revenue" and sent["operator"] == rule["operator"]
    for key in ("value", "highValue"):
        if key in rule:
            assert isinstance(sent[key], str)
    if "values" in rule:
        assert all(isinstance(v, str) for v in sent["values"])


@pytest.mark.parametrize(
    ("rule", "found"),
    [
        pytest.param({"operator": "HAS_PROPERTY"}, ["201", "203"], id="HAS_PROPERTY"),
        pytest.param({"operator": "NOT_HAS_PROPERTY"}, ["202"], id="NOT_HAS_PROPERTY"),
    ],
)
async def test_run__property_presence_operators_send_no_value(
    make: MakeConnector, stand: HubSpotStandIn, rule: dict[str, Any], found: list[str]
) -> None:
    rows = await read(make(), company({"propertyName": "tier", **rule}))

    assert [row["id"] for row in rows] == found
    assert stand.searches[0]["filterGroups"][0]["filters"] == [{"propertyName": "tier", **rule}]


async def test_run__contains_token_with_the_configs_wildcard(make: MakeConnector) -> None:
    query = company({"propertyName": "domain", "operator": "CONTAINS_TOKEN", "value": "*{d}"})

    rows = await read(make(), query, d="acme.com")

    assert [row["id"] for row in rows] == ["201", "203"]


async def test_run__not_contains_token(make: MakeConnector) -> None:
    query = company({"propertyName": "name", "operator": "NOT_CONTAINS_TOKEN", "value": "{w}"})

    assert [row["id"] for row in await read(make(), query, w="ACME")] == ["202", "203"]


@pytest.mark.parametrize("value", ["*", "*.com", "ac*"])
async def test_run__a_customers_wildcard_is_refused_unasked(
    make: MakeConnector, stand: HubSpotStandIn, value: str
) -> None:
    query = company({"propertyName": "domain", "operator": "CONTAINS_TOKEN", "value": "{d}"})

    with pytest.raises(InputRefused, match="may not hold") as caught:
        await read(make(), query, d=value)

    assert value not in str(caught.value).replace("'*'", "")
    assert stand.seen == []


async def test_run__a_list_parameter_fills_in_values(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    query = company({"propertyName": "tier", "operator": "IN", "values": ["{tiers}"]})

    rows = await read(make(), query, tiers=["gold", "tin"])

    assert [row["id"] for row in rows] == ["201", "203"]
    assert stand.searches[0]["filterGroups"][0]["filters"][0]["values"] == ["gold", "tin"]


async def test_run__filter_and_filters_are_one_group(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    query = {
        "object": "companies",
        "filter": {"tier": "{tier}"},
        "filters": [{"propertyName": "revenue", "operator": "GT", "value": "{min}"}],
    }

    rows = await read(make(), query, tier="gold", min="50")

    assert [row["id"] for row in rows] == ["201"]
    assert stand.searches[0]["filterGroups"] == [
        {
            "filters": [
                {"propertyName": "tier", "operator": "EQ", "value": "gold"},
                {"propertyName": "revenue", "operator": "GT", "value": "50"},
            ]
        }
    ]


async def test_run__filter_groups_are_ored(make: MakeConnector, stand: HubSpotStandIn) -> None:
    query = {
        "object": "companies",
        "filterGroups": [
            {"filters": [{"propertyName": "domain", "operator": "EQ", "value": "{domain}"}]},
            {
                "filters": [
                    {"propertyName": "name", "operator": "CONTAINS_TOKEN", "value": "{name}"},
                    {"propertyName": "tier", "operator": "HAS_PROPERTY"},
                ]
            },
        ],
    }

    rows = await read(make(), query, domain="beta.io", name="gamma")

    assert [row["id"] for row in rows] == ["202", "203"]
    assert len(stand.searches[0]["filterGroups"]) == 2


async def test_run__hubspots_filter_limits_come_back_as_its_400(make: MakeConnector) -> None:
    rule = {"propertyName": "tier", "operator": "HAS_PROPERTY"}
    query = {"object": "companies", "filterGroups": [{"filters": [rule] * 6}] * 5}

    with pytest.raises(SourceError, match="400 VALIDATION_ERROR: Too many filters"):
        await read(make(), query)


async def test_run__id_reads_one_object_with_its_properties(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    query = {"object": "contacts", "id": "{contact_id}", "properties": ["firstname", "phone"]}

    rows = await read(make(), query, contact_id="102")

    assert rows == [
        {
            "firstname": "Ben",
            "phone": "+1987654321",
            "hs_object_id": "102",
            "createdate": "2025-09-01T10:00:00.000Z",
            "lastmodifieddate": "2025-09-02T10:00:00.000Z",
            "id": "102",
        }
    ]
    (request,) = stand.seen
    assert request.method == "GET"
    assert request.raw_path == "/crm/v3/objects/contacts/102?properties=firstname%2Cphone"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_run__id_property_looks_up_a_unique_property(
    make: MakeConnector, stand: HubSpotStandIn
) -> None:
    query = {"object": "contacts", "id": "{email}", "idProperty": "email"}

    rows = await read(make(), query, email="cy@example.com")

    assert [row["id"] for row in rows] == ["103"]
    assert stand.seen[0].raw_path.endswith("/contacts/cy%40example.com?idProperty=email")


async def test_run__id_property_that_is_not_unique_is_hubspots_400(make: MakeConnector) -> None:
    query = {"object": "contacts", "id": "{p}", "idProperty": "phone"}

    with pytest.raises(SourceError, match="400 VALIDATION_ERROR"):
        await read(make(), query, p="+1234567890")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("999", id="unknown"),
        pytest.param("../search", id="dot-dot"),
        pytest.param("101/x?y=1", id="slash-query"),
        pytest.param("Ana", id="not-numeric"),
    ],
)
async def test_run__missing_object_is_not_found_and_the_id_stays_one_segment(
    make: MakeConnector, stand: HubSpotStandIn, value: str
) -> None:
    assert await read(make(), {"object": "contacts", "id": "{i}"}, i=value) == []

    (request,) = stand.seen
    assert request.method == "GET"
    assert request.raw_path.partition("?")[0].count("/") == 5  # /crm/v3/objects/contacts/{one}


@pytest.mark.parametrize("value", [None, "", "  "])
async def test_run__empty_id_is_not_found_unasked(
    make: MakeConnector, stand: HubSpotStandIn, value: Any
) -> None:
    assert await read(make(), {"object": "contacts", "id": "{i}"}, i=value) == []
    assert stand.seen == []


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(
            company({"propertyName": "a", "operator": "BETWEEN", "value": "{x}"}),
            r"filters\.0: .*BETWEEN takes highValue, value",
            id="between-without-high",
        ),
        pytest.param(
            company({"propertyName": "a", "operator": "IN", "value": "{x}"}),
            "IN takes values",
            id="in-with-value",
        ),
        pytest.param(
            company({"propertyName": "a", "operator": "HAS_PROPERTY", "value": "x"}),
            "HAS_PROPERTY takes no value",
            id="has-property-with-value",
        ),
        pytest.param(
            company({"propertyName": "a", "operator": "IN", "values": []}),
            r"filters\.0\.values",
            id="empty-values",
        ),
        pytest.param(
            company({"propertyName": "a", "operator": "LIKE", "value": "x"}),
            r"filters\.0\.operator",
            id="unknown-operator",
        ),
        pytest.param(
            company({"property": "a", "operator": "EQ", "value": "x"}),
            r"filters\.0\.propertyName",
            id="no-property-name",
        ),
        pytest.param(
            {"object": "companies", "filter": {"a": "x"}, "filterGroups": [{"filters": []}]},
            "filterGroups",
            id="groups-and-filter",
        ),
        pytest.param(
            {"object": "companies", "filterGroups": [{"filters": []}]},
            r"filterGroups\.0\.filters",
            id="empty-group",
        ),
        pytest.param(
            {"object": "contacts", "id": "{i}", "filter": {"a": "x"}},
            "id reads one object: it takes no filter",
            id="id-and-filter",
        ),
        pytest.param(
            {"object": "contacts", "idProperty": "email"}, "idProperty goes with id", id="lone"
        ),
    ],
)
def test_prepare__refuses_a_filter_hubspot_would_not_take(raw: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        HubSpotConnector.prepare(raw)


def test_prepare__names_the_parameters_of_every_operand() -> None:
    query = {
        "object": "deals",
        "filterGroups": [
            {
                "filters": [
                    {
                        "propertyName": "a",
                        "operator": "BETWEEN",
                        "value": "{lo}",
                        "highValue": "{hi}",
                    },
                    {"propertyName": "b", "operator": "IN", "values": ["x", "{one}"]},
                ]
            }
        ],
    }

    assert HubSpotConnector.prepare(query).names == ("lo", "hi", "one")
    assert HubSpotConnector.prepare({"object": "deals", "id": "{deal_id}"}).names == ("deal_id",)
