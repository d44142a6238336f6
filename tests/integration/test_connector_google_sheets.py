"""The google_sheets connector: real gspread and google-auth against the Sheets stand-in.

The stand-in (`tests.standins.google_sheets`) serves both the Sheets API v4 and the
OAuth token endpoint; the service-account key is a real RSA key made here, whose
``token_uri`` names the stand-in, and ``api_base_url`` rebases gspread's requests.
Nothing here reaches Google.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.google_sheets import GoogleSheetsConnector, GoogleSheetsSettings, parse_filter
from connectors.testing import RawQuery
from tests.servers.hostile import Recorder, endless, recorded_app, redirect, serve, stall
from tests.standins.google_sheets import JWT_BEARER, GoogleSheetsStandIn, Spreadsheet
from tests.support.connectors import ConnectorFactory, ContractCase, read_rows
from worker.config import load_tenant

SHEET_ID = "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"
EMAIL = "lookups@tenant-project.iam.gserviceaccount.com"
CUSTOMERS: list[list[Any]] = [
    ["name", "email", "phone", "plan", "balance", "notes"],
    ["Ana Lima", "ana@example.com", "+1234567890", "Pro", 42.5, "ignored: column F"],
    ["Ben Ode", "ben@example.com", " +1987654321 ", "Free", 0],
    ["Cy Park", "", "+1555000111"],
]
SEED_QUERY = {"range": "Customers!A:E", "filter": "phone = {{$json.customer_phone}}"}
ANA = {
    "name": "Ana Lima",
    "email": "ana@example.com",
    "phone": "+1234567890",
    "plan": "Pro",
    "balance": 42.5,
}

REPO = Path(__file__).resolve().parents[2]
MakeConnector = Callable[..., GoogleSheetsConnector]


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_file(key: rsa.RSAPrivateKey, token_uri: str, email: str = EMAIL) -> dict[str, str]:
    """A service-account key as the Cloud console writes it."""
    return {
        "type": "service_account",
        "project_id": "tenant-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem(key),
        "client_email": email,
        "client_id": "108000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }


@pytest.fixture(scope="module")
def sa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def stand(sa_key: rsa.RSAPrivateKey) -> AsyncIterator[GoogleSheetsStandIn]:
    many = [CUSTOMERS[0]] + [
        [f"Customer {i}", f"c{i}@example.com", "+1000000000", "Team", i] for i in range(250)
    ]
    book = Spreadsheet(
        "CRM export",
        {"Customers": CUSTOMERS, "Slow": CUSTOMERS, "Many": many},
        readers={EMAIL},
    )
    standin = GoogleSheetsStandIn({SHEET_ID: book, "unshared": Spreadsheet("x", {"A": []})})
    standin.register(EMAIL, sa_key.public_key())
    async with serve(standin.app()) as url:
        standin.base_url = url
        yield standin


@pytest.fixture
async def make(
    stand: GoogleSheetsStandIn, sa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> AsyncIterator[MakeConnector]:
    defaults = {
        "service_account": json.dumps(key_file(sa_key, f"{stand.base_url}/token")),
        "spreadsheet_id": SHEET_ID,
        "api_base_url": f"{stand.base_url}/v4",
    }
    factory = ConnectorFactory(GoogleSheetsConnector, "crm_sheet", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


read = partial(read_rows, timeout_s=10)


def data_requests(stand: GoogleSheetsStandIn) -> list[str]:
    """The paths (query strings left off) of the values.get requests the stand-in saw."""
    seen = stand.seen_at(f"/v4/spreadsheets/{SHEET_ID}/values/")
    return [s.raw_path.partition("?")[0] for s in seen]


class TestGoogleSheetsContract(ContractCase):
    FOUND_QUERY = SEED_QUERY
    FOUND_PARAMS = Bound(params={"customer_phone": "+1234567890"})
    MISSING_PARAMS = Bound(params={"customer_phone": "+1000000001"})
    SLOW_QUERY: ClassVar[RawQuery] = {"range": "Slow!A:E", "filter": "phone = {customer_phone}"}
    SLOW_PARAMS = Bound(params={"customer_phone": "+1234567890"})

    @pytest.fixture
    def connector(self, make: MakeConnector) -> GoogleSheetsConnector:
        return make()


# -- reading ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row_filter",
    [
        pytest.param("phone = {{$json.customer_phone}}", id="seed-n8n-spelling"),
        pytest.param("phone = {{customer_phone}}", id="double-braces"),
        pytest.param("phone = {customer_phone}", id="contract-spelling"),
        pytest.param({"phone": "{customer_phone}"}, id="mapping"),
        pytest.param("phone = {customer_phone} AND plan = 'Pro'", id="two-clauses"),
    ],
)
async def test_run__seed_filter_finds_the_row_by_header_name(
    make: MakeConnector, row_filter: Any
) -> None:
    rows = await read(
        make(), {"range": "Customers!A:E", "filter": row_filter}, customer_phone="+1234567890"
    )

    assert rows == [ANA]


async def test_run__reads_through_values_get_with_a_readonly_token(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    await read(make(), SEED_QUERY, customer_phone="+1234567890")

    assert data_requests(stand) == [f"/v4/spreadsheets/{SHEET_ID}/values/Customers%21A%3AE"]
    query = stand.seen_at("/v4/")[0].raw_path.partition("?")[2]
    assert sorted(query.split("&")) == [
        "dateTimeRenderOption=FORMATTED_STRING",
        "majorDimension=ROWS",
        "valueRenderOption=UNFORMATTED_VALUE",
    ]
    (token_request,) = stand.seen_at("/token")
    form = dict(pair.split("=", 1) for pair in token_request.body.decode().split("&"))
    assert form["grant_type"] == JWT_BEARER.replace(":", "%3A")
    (scope,) = {entry[1] for entry in stand.tokens.values()}
    assert scope == "https://www.googleapis.com/auth/spreadsheets.readonly"
    api = stand.seen_at("/v4/")[0]
    assert api.headers["Authorization"].startswith("Bearer ya29.")


async def test_run__cells_compare_as_trimmed_text(make: MakeConnector) -> None:
    rows = await read(make(), SEED_QUERY, customer_phone="+1987654321")

    assert rows == [
        {
            "name": "Ben Ode",
            "email": "ben@example.com",
            "phone": " +1987654321 ",
            "plan": "Free",
            "balance": 0,
        }
    ]


async def test_run__missing_trailing_cells_are_none(make: MakeConnector) -> None:
    rows = await read(make(), SEED_QUERY, customer_phone="+1555000111")

    assert rows == [
        {"name": "Cy Park", "email": "", "phone": "+1555000111", "plan": None, "balance": None}
    ]


async def test_run__formatted_render_gives_text(make: MakeConnector) -> None:
    rows = await read(make(), {**SEED_QUERY, "render": "formatted"}, customer_phone="+1234567890")

    assert rows[0]["balance"] == "42.5"


async def test_run__no_matching_row_is_not_found(make: MakeConnector) -> None:
    connector = make()
    result = await connector.run(
        connector.prepare(SEED_QUERY), Bound(params={"customer_phone": "+19"}), timeout_s=10
    )

    assert not result.found


async def test_run__unknown_spreadsheet_is_not_found(make: MakeConnector) -> None:
    connector = make(spreadsheet_id="doesNotExist")

    assert await read(connector, SEED_QUERY, customer_phone="+1234567890") == []
    with pytest.raises(SourceError, match="no such spreadsheet"):
        await connector.health_check()


async def test_run__sheet_not_shared_is_an_auth_error(make: MakeConnector) -> None:
    with pytest.raises(SourceAuthError, match="403 PERMISSION_DENIED"):
        await read(make(spreadsheet_id="unshared"), {"range": "A!A:B"})


async def test_run__unknown_column_names_the_header(make: MakeConnector) -> None:
    with pytest.raises(SourceError, match=r"no column 'mobile'.*columns: name, email, phone"):
        await read(make(), {"range": "Customers!A:E", "filter": "mobile = {p}"}, p="1")


async def test_run__bad_range_is_a_source_error(make: MakeConnector) -> None:
    with pytest.raises(SourceError, match="400 INVALID_ARGUMENT: Unable to parse range: Nope!A:E"):
        await read(make(), {"range": "Nope!A:E"})


async def test_run__row_cap_stops_at_max_rows(make: MakeConnector) -> None:
    connector = make(limits=Limits(max_rows=7))

    rows = await read(connector, {"range": "Many", "filter": "phone = {p}"}, p="+1000000000")

    assert [row["name"] for row in rows] == [f"Customer {i}" for i in range(7)]


async def test_run__query_limit_caps_below_max_rows(make: MakeConnector) -> None:
    rows = await read(
        make(), {"range": "Many", "filter": "phone = {p}", "limit": 3}, p="+1000000000"
    )

    assert len(rows) == 3


async def test_run__whole_range_comes_in_one_answer(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    """values.get is not paged: 250 rows are one request (the row cap applies after)."""
    rows = await read(make(), {"range": "Many!A:E"})

    assert len(rows) == 100  # Limits().max_rows
    assert len(data_requests(stand)) == 1


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("+1234567890' OR '1'='1", id="quote-injection"),
        pytest.param("{customer_phone}", id="placeholder-in-value"),
        pytest.param('=IMPORTXML("http://evil", "//a")', id="formula"),
        pytest.param("+1234567890\r\nX-Injected: 1", id="crlf"),
        pytest.param("../../other/values/A1", id="path"),
    ],
)
async def test_run__parameters_stay_data(
    make: MakeConnector, stand: GoogleSheetsStandIn, value: str
) -> None:
    rows = await read(make(), SEED_QUERY, customer_phone=value)

    assert rows == []
    (request,) = stand.seen_at("/v4/")
    assert request.raw_path == (
        f"/v4/spreadsheets/{SHEET_ID}/values/Customers%21A%3AE?majorDimension=ROWS"
        "&valueRenderOption=UNFORMATTED_VALUE&dateTimeRenderOption=FORMATTED_STRING"
    )
    assert "Injected" not in str(request.headers)


# -- auth, rate limits and errors ----------------------------------------------------------


async def test_run__key_google_rejects_is_an_auth_error_without_secrets(
    make: MakeConnector, stand: GoogleSheetsStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = json.dumps(key_file(other, f"{stand.base_url}/token"))
    connector = make(service_account=document)

    with pytest.raises(SourceAuthError, match="invalid_grant") as caught:
        await read(connector, SEED_QUERY, customer_phone="+1234567890")

    secret_lines = pem(other).splitlines()[1:-1]
    for text in (str(caught.value), caplog.text):
        assert not any(line in text for line in secret_lines)
    assert data_requests(stand) == []


async def test_run__revoked_access_is_an_auth_error_without_the_token(
    make: MakeConnector, stand: GoogleSheetsStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = make()
    await read(connector, SEED_QUERY, customer_phone="+1234567890")
    stand.reject_all_tokens = True

    with pytest.raises(SourceAuthError, match="401 UNAUTHENTICATED") as caught:
        await read(connector, SEED_QUERY, customer_phone="+1234567890")

    assert stand.tokens, "tokens were issued"
    for token in stand.tokens:
        assert token not in str(caught.value)
        assert token not in caplog.text
    # google-auth refreshes the token on a 401 and tries again, twice, then gives up.
    assert len(data_requests(stand)) == 1 + 3


async def test_run__429_is_retried_with_backoff_within_the_deadline(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    connector = make()
    stand.throttle(1, retry_after=None)  # Google sends none: exponential back-off

    rows = await read(connector, SEED_QUERY, customer_phone="+1234567890")

    assert rows == [ANA]
    assert len(data_requests(stand)) == 2


async def test_run__429_honours_retry_after(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    connector = make()
    stand.throttle(1, retry_after="1")
    started = time.monotonic()

    assert await read(connector, SEED_QUERY, customer_phone="+1234567890") == [ANA]

    assert time.monotonic() - started >= 1.0
    assert len(data_requests(stand)) == 2


async def test_run__429_past_the_deadline_is_unavailable_at_once(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    connector = make()
    stand.throttle(10, retry_after="30")
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="429"):
        await read(connector, SEED_QUERY, timeout_s=10, customer_phone="+1234567890")

    assert time.monotonic() - started < 5  # neither the 30 s asked for nor the 10 s deadline
    assert len(data_requests(stand)) == 1


# -- the bounded transport -----------------------------------------------------------------


async def test_run__endless_body_is_cut_off(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    connector = make(max_response_bytes=1_000_000)
    await read(connector, SEED_QUERY, customer_phone="+1")  # the token is fetched
    stand.recorder.misbehave = endless(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 1000000 bytes"):
        await read(connector, SEED_QUERY, customer_phone="+1")

    assert time.monotonic() - started < 5
    assert stand.recorder.streamed < 50_000_000


async def test_run__stalled_body_ends_at_the_deadline(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    connector = make()
    await read(connector, SEED_QUERY, customer_phone="+1")
    stand.recorder.misbehave = stall(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(connector, SEED_QUERY, timeout_s=1, customer_phone="+1")

    assert time.monotonic() - started < 1 + 4  # the stall lasts 20 s


async def test_run__redirect_to_another_host_is_not_followed(
    make: MakeConnector, stand: GoogleSheetsStandIn
) -> None:
    other = Recorder()
    async with serve(recorded_app(other), host="127.0.0.2") as elsewhere:
        connector = make()
        await read(connector, SEED_QUERY, customer_phone="+1")
        stand.recorder.misbehave = redirect(f"{elsewhere}/v4/spreadsheets/{SHEET_ID}/values/A")

        with pytest.raises(SourceError, match="another host"):
            await read(connector, SEED_QUERY, customer_phone="+1")

    assert other.seen == []


async def test_run__unreachable_api_is_unavailable(make: MakeConnector) -> None:
    connector = make(api_base_url="http://127.0.0.1:9/v4")

    with pytest.raises(SourceUnavailable):
        await read(connector, SEED_QUERY, timeout_s=3, customer_phone="+1")


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row_filter", "problem"),
    [
        pytest.param("phone == {p}", "use a {param} placeholder", id="double-equals"),
        pytest.param("phone = p", "use a {param} placeholder", id="bare-word"),
        pytest.param("= {p}", "cannot read the filter clause", id="no-column"),
        pytest.param("phone = {p} and phone = {q}", "twice", id="repeated-column"),
        pytest.param("phone = {p} or ", "compares with '{p} or'", id="dangling-or"),
        pytest.param("phone = {p} or or email = {e}", "cannot read the filter", id="double-or"),
        pytest.param([], "at least one group", id="empty-list"),
        pytest.param([{"phone": "{p}"}, {}], "at least one group", id="empty-group"),
    ],
)
def test_prepare__refuses_a_filter_it_cannot_read(row_filter: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        GoogleSheetsConnector.prepare({"range": "A:B", "filter": row_filter})


def test_prepare__names_the_filter_parameters() -> None:
    query = GoogleSheetsConnector.prepare(
        {"range": "Customers!A:E", "filter": "phone = {{$json.customer_phone}} and plan = {plan}"}
    )

    assert query.names == ("customer_phone", "plan")


def test_prepare__refuses_a_query_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="is a mapping"):
        GoogleSheetsConnector.prepare("Customers!A:E")


@pytest.fixture
def pasted_key(sa_key: rsa.RSAPrivateKey) -> dict[str, str]:
    return key_file(sa_key, "https://oauth2.googleapis.com/token")


def test_settings__accept_the_key_as_a_mapping_and_keep_it_secret(
    pasted_key: dict[str, str],
) -> None:
    settings = GoogleSheetsSettings.model_validate(
        {"service_account": pasted_key, "spreadsheet_id": SHEET_ID}
    )

    assert settings.service_account is not None
    assert json.loads(settings.service_account.get_secret_value()) == pasted_key
    assert pasted_key["private_key"] not in repr(settings)
    assert settings.api_base_url == "https://sheets.googleapis.com/v4"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param({"type": "authorized_user"}, "not a service-account key", id="wrong-type"),
        pytest.param({"private_key": None}, "no private_key", id="no-key"),
    ],
)
def test_settings__refuse_a_bad_key_without_repeating_it(
    pasted_key: dict[str, str], change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        GoogleSheetsSettings.model_validate(
            {"service_account": {**pasted_key, **change}, "spreadsheet_id": SHEET_ID}
        )

    assert pasted_key["private_key"].splitlines()[1] not in str(caught.value)


async def test_settings__key_file_works_like_the_pasted_key(
    make: MakeConnector, stand: GoogleSheetsStandIn, sa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    (tmp_path / "sa.json").write_text(json.dumps(key_file(sa_key, f"{stand.base_url}/token")))
    connector = make(service_account=None, service_account_file="sa.json")

    assert await read(connector, SEED_QUERY, customer_phone="+1234567890") == [ANA]


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch, pasted_key: dict[str, str]) -> None:
    monkeypatch.setenv("SHEETS_SERVICE_ACCOUNT", json.dumps(pasted_key))
    monkeypatch.setenv("SHEETS_CUSTOMERS_ID", SHEET_ID)

    tenant = load_tenant(REPO / "config" / "examples" / "google_sheets.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"google_sheets"}
    assert set(tenant.lookups) == {"customer_lookup", "active_customer"}
    assert tenant.lookups["customer_lookup"].query.names == ("customer_phone",)


# -- any-of filters ---------------------------------------------------------------------

BEN = {
    "name": "Ben Ode",
    "email": "ben@example.com",
    "phone": " +1987654321 ",
    "plan": "Free",
    "balance": 0,
}


@pytest.mark.parametrize(
    "row_filter",
    [
        pytest.param("phone = {phone} or email = {email}", id="text"),
        pytest.param("phone = {phone} OR email = {{$json.email}}", id="upper-case-n8n"),
        pytest.param([{"phone": "{phone}"}, {"email": "{email}"}], id="list-of-mappings"),
    ],
)
async def test_run__any_of_groups_keep_a_row_matching_one(
    make: MakeConnector, row_filter: Any
) -> None:
    query = {"range": "Customers!A:E", "filter": row_filter}

    by_email = await read(make(), query, phone="+10", email="ben@example.com")
    both = await read(make(), query, phone="+1234567890", email="ben@example.com")
    neither = await read(make(), query, phone="+10", email="nobody@example.com")

    assert by_email == [BEN]
    assert both == [ANA, BEN]  # sheet order, each row once
    assert neither == []


async def test_run__and_binds_before_or(make: MakeConnector) -> None:
    query = {
        "range": "Customers!A:E",
        "filter": "phone = {phone} or email = {email} and plan = 'Pro'",
    }

    assert await read(make(), query, phone="+10", email="ben@example.com") == []
    assert await read(make(), query, phone="+10", email="ana@example.com") == [ANA]


async def test_run__a_row_matching_two_groups_comes_once(make: MakeConnector) -> None:
    query = {"range": "Customers!A:E", "filter": [{"plan": "Pro"}, {"name": "{name}"}]}

    assert await read(make(), query, name="Ana Lima") == [ANA]


async def test_run__unknown_column_in_any_group_names_the_header(make: MakeConnector) -> None:
    query = {"range": "Customers!A:E", "filter": "phone = {p} or mobile = {p}"}

    with pytest.raises(SourceError, match="no column 'mobile'"):
        await read(make(), query, p="+1234567890")


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        pytest.param("a = {x}", [{"a": "{x}"}], id="one"),
        pytest.param(
            "a = {x} and b = 'y' or c = {z}", [{"a": "{x}", "b": "y"}, {"c": "{z}"}], id="and-or"
        ),
        pytest.param("plan = 'Pro or Free'", [{"plan": "Pro or Free"}], id="or-in-quotes"),
        pytest.param('note = "a and b" and c = {z}', [{"note": "a and b", "c": "{z}"}], id="and-q"),
        pytest.param("a = {x} or a = {y}", [{"a": "{x}"}, {"a": "{y}"}], id="column-per-group"),
        pytest.param("order = {x}", [{"order": "{x}"}], id="keyword-inside-a-word"),
    ],
)
def test_parse_filter__or_joins_groups_of_and_clauses(
    text: str, groups: list[dict[str, str]]
) -> None:
    assert parse_filter(text) == groups


def test_prepare__names_the_parameters_of_every_group() -> None:
    query = GoogleSheetsConnector.prepare(
        {"range": "A:E", "filter": [{"phone": "{phone}"}, {"email": "{email}", "plan": "{phone}"}]}
    )

    assert query.names == ("phone", "email")
