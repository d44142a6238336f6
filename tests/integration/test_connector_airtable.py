"""The airtable connector: httpx through SafeHTTP against the Airtable stand-in."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.airtable import (
    AirtableConnector,
    AirtableSettings,
    FormulaTemplate,
    formula,
    literal,
)
from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.testing import RawQuery
from tests.servers.hostile import Recorder, endless, recorded_app, redirect, serve, stall
from tests.standins.airtable import AirtableStandIn, Record, parse_formula, truthy
from tests.support.connectors import ConnectorFactory, ContractCase, read_rows
from worker.config import load_tenant

BASE = "appTESTbase000001"
TOKEN = "patTEST.stand-in-token-0123456789"
ORDERS = [
    Record("rec00000000000001", {"Order ID": "12345", "Status": "shipped", "Qty": 2}),
    Record("rec00000000000002", {"Order ID": "12346", "Status": "processing", "Qty": 1}),
    Record("rec00000000000003", {"Order ID": "A'B\\C", "Status": "odd", "Gift": True}),
    Record("rec00000000000004", {"Order ID": "12347", "Status": "", "Qty": 3}),
]
CUSTOMERS = [Record("recCUSTOMER00001a", {"Name": "Ana", "Phone": "+1234567890"})]
ORDER_QUERY = {"table": "Orders", "filter": {"Order ID": "{order_id}"}}

REPO = Path(__file__).resolve().parents[2]
MakeConnector = Callable[..., AirtableConnector]


@pytest.fixture
async def stand() -> AsyncIterator[AirtableStandIn]:
    bulk = [Record(f"rec{i:014d}", {"Order ID": str(i), "Status": "open"}) for i in range(250)]
    standin = AirtableStandIn(
        base_id=BASE,
        token=TOKEN,
        tables={"Orders": ORDERS, "Slow": ORDERS, "Bulk": bulk, "Customers": CUSTOMERS},
    )
    async with serve(standin.app()) as url:
        standin.base_url = url
        yield standin


@pytest.fixture
async def make(stand: AirtableStandIn, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    defaults = {"base_url": f"{stand.base_url}/v0", "token": TOKEN, "base_id": BASE}
    factory = ConnectorFactory(AirtableConnector, "orders", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


read = partial(read_rows, timeout_s=10)


def list_requests(stand: AirtableStandIn, table: str = "Orders") -> list[dict[str, list[str]]]:
    """The query parameters of each List records request on ``table``."""
    seen = stand.seen_at(f"/v0/{BASE}/{table}")
    return [parse_qs(urlsplit(s.raw_path).query) for s in seen]


class TestAirtableContract(ContractCase):
    FOUND_QUERY = ORDER_QUERY
    FOUND_PARAMS = Bound(params={"order_id": "12345"})
    MISSING_PARAMS = Bound(params={"order_id": "99999"})
    SLOW_QUERY: ClassVar[RawQuery] = {"table": "Slow", "filter": {"Order ID": "{order_id}"}}
    SLOW_PARAMS = Bound(params={"order_id": "12345"})

    @pytest.fixture
    def connector(self, make: MakeConnector) -> AirtableConnector:
        return make()


# -- reading ------------------------------------------------------------------------


async def test_run__lists_records_with_a_formula_and_a_bearer_token(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    rows = await read(make(), ORDER_QUERY, order_id="12345")

    assert rows == [{"Order ID": "12345", "Status": "shipped", "Qty": 2, "id": "rec00000000000001"}]
    (request,) = stand.seen_at(f"/v0/{BASE}/Orders")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert parse_qs(urlsplit(request.raw_path).query) == {
        "filterByFormula": ["AND({Order ID}='12345')"],
        "maxRecords": ["100"],
        "pageSize": ["100"],
    }


async def test_run__empty_fields_are_left_out_as_airtable_does(make: MakeConnector) -> None:
    rows = await read(make(), ORDER_QUERY, order_id="12347")

    assert rows == [{"Order ID": "12347", "Qty": 3, "id": "rec00000000000004"}]


async def test_run__fields_and_view_are_passed_on(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    query = {**ORDER_QUERY, "fields": ["Status"], "view": "Grid view"}

    rows = await read(make(), query, order_id="12345")

    assert rows == [{"Status": "shipped", "id": "rec00000000000001"}]
    (params,) = list_requests(stand)
    assert params["fields[]"] == ["Status"]
    assert params["view"] == ["Grid view"]


async def test_run__several_fields_and_typed_values(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    query = {"table": "Orders", "filter": {"Status": "{status}", "Qty": "{qty}"}}

    rows = await read(make(), query, status="processing", qty=1)

    assert [row["id"] for row in rows] == ["rec00000000000002"]
    assert stand.formulas == ["AND({Status}='processing',{Qty}=1)"]


@pytest.mark.parametrize(
    ("value", "written"),
    [
        pytest.param("A'B\\C", "'A\\'B\\\\C'", id="quote-and-backslash"),
        pytest.param("x') , TRUE(), ('", "'x\\') , TRUE(), (\\''", id="close-and-inject"),
        pytest.param("x' OR {Status}='shipped", "'x\\' OR {Status}=\\'shipped'", id="or-clause"),
        pytest.param('say "hi"', "'say \"hi\"'", id="double-quotes"),
        pytest.param("a\nb\r\tc\x00d", "'a\\nb\\r\\tcd'", id="control-characters"),
        pytest.param(True, "TRUE()", id="boolean"),
        pytest.param(None, "BLANK()", id="null"),
        pytest.param(2.5, "2.5", id="float"),
        pytest.param(float("inf"), "'inf'", id="non-finite-as-text"),
    ],
)
def test_literal__escapes_as_airtable_reads_it(value: Any, written: str) -> None:
    assert literal(value) == written


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x') , TRUE(), ('", id="close-and-inject"),
        pytest.param("x' OR {Status}='shipped", id="or-clause"),
        pytest.param("\\", id="lone-backslash"),
        pytest.param("12345')", id="paren"),
        pytest.param("{Order ID}", id="field-reference"),
    ],
)
async def test_run__injection_looking_parameters_stay_one_literal(
    make: MakeConnector, stand: AirtableStandIn, value: str
) -> None:
    rows = await read(make(), ORDER_QUERY, order_id=value)

    assert rows == []
    assert stand.formulas == [formula({"Order ID": value})]
    assert stand.formulas[0] == "AND({Order ID}=" + literal(value) + ")"


async def test_run__escaped_value_still_matches_exactly(make: MakeConnector) -> None:
    rows = await read(make(), ORDER_QUERY, order_id="A'B\\C")

    assert [row["id"] for row in rows] == ["rec00000000000003"]


async def test_run__follows_offset_across_pages_up_to_max_rows(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    connector = make(limits=Limits(max_rows=230))

    rows = await read(connector, {"table": "Bulk", "filter": {"Status": "{s}"}}, s="open")

    assert [row["Order ID"] for row in rows] == [str(i) for i in range(230)]
    pages = list_requests(stand, "Bulk")
    assert len(pages) == 3
    assert "offset" not in pages[0]
    assert pages[1]["offset"][0].startswith("itr")
    assert pages[2]["offset"] != pages[1]["offset"]
    assert all(page["maxRecords"] == ["230"] and page["pageSize"] == ["100"] for page in pages)


async def test_run__query_limit_caps_the_request(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    rows = await read(make(), {"table": "Bulk", "limit": 5})

    assert len(rows) == 5
    (page,) = list_requests(stand, "Bulk")
    assert page["maxRecords"] == ["5"] and page["pageSize"] == ["5"]
    assert "filterByFormula" not in page


@pytest.mark.parametrize(
    "table",
    [
        pytest.param("Nope", id="unknown-table"),
        pytest.param("Orders/../Bulk", id="slash-dot-dot"),
        pytest.param("Orders?x=1#", id="query-and-fragment"),
    ],
)
async def test_run__unknown_table_is_not_found_and_stays_one_segment(
    make: MakeConnector, stand: AirtableStandIn, table: str
) -> None:
    rows = await read(make(), {"table": table, "filter": {"Order ID": "{o}"}}, o="12345")

    assert rows == []
    (request,) = stand.seen
    assert request.raw_path.partition("?")[0].count("/") == 3  # /v0/{base}/{one segment}
    assert stand.seen_at(f"/v0/{BASE}/Bulk") == []


# -- errors ---------------------------------------------------------------------------


async def test_run__wrong_token_is_an_auth_error_without_the_token(
    make: MakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "patWRONG.0123456789abcdef"
    connector = make(token=wrong)

    with pytest.raises(SourceAuthError, match="401 AUTHENTICATION_REQUIRED") as caught:
        await read(connector, ORDER_QUERY, order_id="12345")
    with pytest.raises(SourceAuthError):
        await connector.health_check()

    for text in (str(caught.value), caplog.text):
        assert wrong not in text and TOKEN not in text


async def test_run__base_the_token_may_not_read_is_an_auth_error(make: MakeConnector) -> None:
    with pytest.raises(SourceAuthError, match="403 INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"):
        await read(make(base_id="appOTHERbase0001"), ORDER_QUERY, order_id="12345")


async def test_run__unknown_field_is_a_source_error(make: MakeConnector) -> None:
    query = {"table": "Orders", "filter": {"Order Number": "{order_id}"}}

    with pytest.raises(SourceError, match=r"422 INVALID_FILTER_BY_FORMULA.*Unknown field names"):
        await read(make(), query, order_id="12345")


async def test_run__429_with_retry_after_is_retried_within_the_deadline(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    stand.throttle(1, retry_after="1")
    started = time.monotonic()

    rows = await read(make(), ORDER_QUERY, order_id="12345")

    assert [row["id"] for row in rows] == ["rec00000000000001"]
    assert time.monotonic() - started >= 1.0
    assert len(list_requests(stand)) == 2


async def test_run__429_without_retry_after_waits_30_s_so_gives_up_at_once(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    stand.throttle(1, retry_after=None)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="429"):
        await read(make(), ORDER_QUERY, order_id="12345")

    assert time.monotonic() - started < 5  # not the 10 s deadline, nor the 30 s
    assert len(list_requests(stand)) == 1


async def test_run__endless_body_is_cut_off(make: MakeConnector, stand: AirtableStandIn) -> None:
    stand.recorder.misbehave = endless(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 1000000 bytes"):
        await read(make(max_response_bytes=1_000_000), ORDER_QUERY, order_id="1")

    assert time.monotonic() - started < 5
    assert stand.recorder.streamed < 50_000_000


async def test_run__stalled_body_ends_at_the_deadline(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    stand.recorder.misbehave = stall(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(make(), ORDER_QUERY, timeout_s=1, order_id="1")

    assert time.monotonic() - started < 1 + 4  # the stall lasts 20 s


async def test_run__redirect_to_another_host_is_not_followed(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    other = Recorder()
    async with serve(recorded_app(other), host="127.0.0.2") as elsewhere:
        stand.recorder.misbehave = redirect(f"{elsewhere}/v0/{BASE}/Orders")

        with pytest.raises(SourceError, match="another host"):
            await read(make(), ORDER_QUERY, order_id="1")

    assert other.seen == []


async def test_health_check__asks_whoami(make: MakeConnector, stand: AirtableStandIn) -> None:
    await make().health_check()

    assert [s.raw_path for s in stand.seen] == ["/v0/meta/whoami"]


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param("Orders", "is a mapping", id="text"),
        pytest.param({"filter": {}}, "table", id="no-table"),
        pytest.param({"table": "T", "filter": {"a}b": "{x}"}}, "cannot be used", id="brace"),
        pytest.param({"table": "T", "formula": "{A}='{{x}}'"}, "inside a quoted", id="quoted"),
        pytest.param({"table": "T", "formula": "{A}='x"}, "not closed", id="open-string"),
        pytest.param({"table": "T", "formula": "{A={{x}}"}, "field reference", id="open-field"),
        pytest.param({"table": "T", "formula": "{A}={{x y}}"}, "parameter", id="bad-param"),
        pytest.param({"table": "T", "formula": ""}, "formula", id="empty-formula"),
        pytest.param(
            {"table": "T", "sort": [{"field": "A", "direction": "down"}]},
            r"sort\.0\.direction",
            id="sort-direction",
        ),
        pytest.param(
            {"table": "T", "sort": [{"direction": "asc"}]}, r"sort\.0\.field", id="no-field"
        ),
        pytest.param(
            {"table": "T", "record": "{r}", "filter": {"A": "{x}"}},
            "record reads one record: it takes no filter",
            id="record-and-filter",
        ),
        pytest.param(
            {"table": "T", "record": "{r}", "sort": [{"field": "A"}]},
            "takes no sort",
            id="record-sort",
        ),
    ],
)
def test_prepare__refuses_what_it_cannot_bind_safely(raw: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        AirtableConnector.prepare(raw)


def test_settings__default_to_airtable_and_keep_the_token_secret() -> None:
    settings = AirtableSettings.model_validate({"token": TOKEN, "base_id": BASE})

    assert settings.base_url == "https://api.airtable.com/v0"
    assert TOKEN not in repr(settings)


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRTABLE_TOKEN", TOKEN)

    tenant = load_tenant(REPO / "config" / "examples" / "airtable.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"airtable"}
    assert set(tenant.lookups) == {"order_status", "open_orders"}


def test_prepare__names_the_parameters_of_filter_formula_and_record() -> None:
    query = {
        "table": "Orders",
        "filter": {"Status": "{status}"},
        "formula": "AND({Qty}>={{min}}, {Qty}<={{ $json.max }}, {Status}!={{status}})",
    }

    assert AirtableConnector.prepare(query).names == ("status", "min", "max")
    assert AirtableConnector.prepare({"table": "T", "record": "{record_id}"}).names == (
        "record_id",
    )


# -- formulas, sorting and single records ----------------------------------------------


async def test_run__formula_takes_escaped_parameters_where_they_stand(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    query = {"table": "Orders", "formula": "AND({Qty}>={{min}}, {Status}!='processing')"}

    rows = await read(make(), query, min=2)

    assert [row["id"] for row in rows] == ["rec00000000000001", "rec00000000000004"]
    assert stand.formulas == ["AND({Qty}>=2, {Status}!='processing')"]


async def test_run__filter_and_formula_must_both_hold(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    query = {
        "table": "Orders",
        "filter": {"Status": "{status}"},
        "formula": "OR({Qty}=1, FIND({{word}}, {Order ID}))",
    }

    rows = await read(make(), query, status="shipped", word="234")

    assert [row["id"] for row in rows] == ["rec00000000000001"]
    assert stand.formulas == ["AND({Status}='shipped',OR({Qty}=1, FIND('234', {Order ID})))"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("x', TRUE()), OR(TRUE(), '", id="close-and-or"),
        pytest.param("\\', TRUE(), '", id="backslash-quote"),
        pytest.param('"), TRUE(), ("', id="double-quote"),
        pytest.param("} {Status", id="braces"),
        pytest.param("{{min}}", id="placeholder"),
    ],
)
async def test_run__formula_parameters_cannot_leave_their_literal(
    make: MakeConnector, stand: AirtableStandIn, value: str
) -> None:
    query = {"table": "Orders", "formula": "AND({Order ID}={{order_id}}, {Qty}>0)"}

    rows = await read(make(), query, order_id=value)

    assert rows == []
    (sent,) = stand.formulas
    assert sent == f"AND({{Order ID}}={literal(value)}, {{Qty}}>0)"
    assert parse_formula(sent).fields == {"Order ID", "Qty"}


async def test_run__sort_is_sent_as_airtable_reads_it(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    query = {
        "table": "Orders",
        "sort": [{"field": "Qty", "direction": "desc"}, {"field": "Status"}],
    }

    rows = await read(make(), query)

    assert [row.get("Qty") for row in rows] == [3, 2, 1, None]
    (params,) = list_requests(stand)
    assert params["sort[0][field]"] == ["Qty"] and params["sort[0][direction]"] == ["desc"]
    assert params["sort[1][field]"] == ["Status"] and params["sort[1][direction]"] == ["asc"]


async def test_run__sort_pages_keep_their_order(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    query = {"table": "Bulk", "sort": [{"field": "Order ID", "direction": "desc"}]}

    rows = await read(make(limits=Limits(max_rows=150)), query)

    assert [row["Order ID"] for row in rows] == sorted(map(str, range(250)), reverse=True)[:150]
    assert len(list_requests(stand, "Bulk")) == 2


async def test_run__sort_on_an_unknown_field_is_a_source_error(make: MakeConnector) -> None:
    with pytest.raises(SourceError, match="422 UNKNOWN_FIELD_NAME"):
        await read(make(), {"table": "Orders", "sort": [{"field": "Nope"}]})


async def test_run__record_id_gets_one_record(make: MakeConnector, stand: AirtableStandIn) -> None:
    rows = await read(make(), {"table": "Orders", "record": "{r}"}, r="rec00000000000004")

    assert rows == [{"Order ID": "12347", "Qty": 3, "id": "rec00000000000004"}]
    (request,) = stand.seen
    assert request.raw_path == f"/v0/{BASE}/Orders/rec00000000000004"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_run__record_of_another_table_of_the_base_is_found_as_airtable_does(
    make: MakeConnector,
) -> None:
    rows = await read(make(), {"table": "Orders", "record": "{r}"}, r="recCUSTOMER00001a")

    assert [row["id"] for row in rows] == ["recCUSTOMER00001a"]


async def test_run__missing_record_is_not_found(
    make: MakeConnector, stand: AirtableStandIn
) -> None:
    rows = await read(make(), {"table": "Orders", "record": "{r}"}, r="recMISSING000000x")

    assert rows == []
    assert len(stand.seen) == 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("../Bulk", id="dot-dot"),
        pytest.param("rec00000000000001/x", id="slash"),
        pytest.param("rec00000000000001?x=1", id="query"),
        pytest.param("12345", id="not-an-id"),
        pytest.param(None, id="null"),
    ],
)
async def test_run__what_is_not_a_record_id_is_not_found_unasked(
    make: MakeConnector, stand: AirtableStandIn, value: Any
) -> None:
    assert await read(make(), {"table": "Orders", "record": "{r}"}, r=value) == []
    assert stand.seen == []


# -- the escaping, as a property ---------------------------------------------------------

_CONTROL_CHARS = "".join(map(chr, [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]))


@given(st.text(max_size=60))
def test_literal__any_text_reads_back_as_itself(text: str) -> None:
    kept = text.translate({ord(c): None for c in _CONTROL_CHARS})

    parsed = parse_formula("{F}=" + literal(text))

    assert parsed.fields == {"F"}
    assert truthy(parsed.evaluate({"F": kept}))
    assert not truthy(parsed.evaluate({"F": kept + "x"}))


@given(st.one_of(st.text(max_size=60), st.integers(), st.floats(), st.booleans(), st.none()))
def test_formula_template__a_parameter_never_changes_the_formula_around_it(value: Any) -> None:
    template = FormulaTemplate("AND({F}={{v}}, {G}='x')")

    parsed = parse_formula(template.render({"v": value}))

    assert parsed.fields == {"F", "G"}
    for cell in ("other", 12345, None):
        assert not truthy(parsed.evaluate({"F": cell, "G": "y"}))  # the AND still holds
