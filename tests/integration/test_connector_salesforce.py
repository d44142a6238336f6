"""The salesforce connector: real simple-salesforce against the Salesforce stand-in.

The stand-in serves the SOAP login and the REST query resources over TLS (with the
test CA of `tests.support.tls`), because simple-salesforce only speaks https. The
connector is pointed at it by configuration alone: ``domain`` is the stand-in's
``https://127.0.0.1:port`` URL (simple-salesforce's ``scratch_url`` login) and
``ca_file`` the test CA; the login answer's ``serverUrl`` brings the REST calls back.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
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
from connectors.salesforce import SalesforceConnector, SalesforceSettings
from connectors.testing import RawQuery
from tests.servers.hostile import Recorder, recorded_app, redirect, serve, stall
from tests.standins import endless_until_hangup, serve_tls
from tests.standins.salesforce import SalesforceStandIn
from tests.support.connectors import ConnectorFactory, ContractCase, read_rows
from tests.support.tls import Certs
from worker.config import load_tenant

USERNAME = "integration@tenant.example"
PASSWORD = "correct horse battery"
SECURITY_TOKEN = "TOKENtoken0123456789"
ORDERS: list[dict[str, Any]] = [
    {"Id": "801000000000001AAA", "OrderNumber": "00012345", "Status": "Activated", "Total": 19.5},
    {"Id": "801000000000002AAA", "OrderNumber": "00012346", "Status": "Draft", "Total": 5},
    {"Id": "801000000000003AAA", "OrderNumber": "O'Brien\\1", "Status": "Odd", "Total": 1},
]
STATUS = "SELECT Status FROM Order WHERE OrderNumber = {order_id}"

REPO = Path(__file__).resolve().parents[2]
MakeConnector = Callable[..., SalesforceConnector]


@pytest.fixture
async def stand(tls_certs: Certs) -> AsyncIterator[SalesforceStandIn]:
    contacts = [
        {"Id": f"003{i:015d}", "LastName": f"Person {i}", "Phone": "+1000000000"} for i in range(20)
    ]
    standin = SalesforceStandIn(
        username=USERNAME,
        password=PASSWORD,
        security_token=SECURITY_TOKEN,
        objects={"Order": ORDERS, "SlowOrder": ORDERS, "Contact": contacts},
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_certs.server_cert, tls_certs.server_key)
    async with serve_tls(standin.app(), context) as url:
        standin.base_url = url
        yield standin


@pytest.fixture
async def make(
    stand: SalesforceStandIn, tls_certs: Certs, tmp_path: Path
) -> AsyncIterator[MakeConnector]:
    defaults = {
        "username": USERNAME,
        "password": PASSWORD,
        "security_token": SECURITY_TOKEN,
        "domain": stand.base_url,
        "ca_file": str(tls_certs.ca),
    }
    factory = ConnectorFactory(SalesforceConnector, "crm", tmp_path, defaults)
    yield factory.make
    await factory.aclose()


read = partial(read_rows, timeout_s=10)


def rest_requests(stand: SalesforceStandIn) -> list[str]:
    return [s.raw_path for s in stand.seen_at("/services/data/")]


class TestSalesforceContract(ContractCase):
    FOUND_QUERY: ClassVar[RawQuery] = {"soql": STATUS}
    FOUND_PARAMS = Bound(params={"order_id": "00012345"})
    MISSING_PARAMS = Bound(params={"order_id": "99999999"})
    SLOW_QUERY: ClassVar[RawQuery] = {
        "soql": "SELECT Status FROM SlowOrder WHERE OrderNumber = {order_id}"
    }
    SLOW_PARAMS = Bound(params={"order_id": "00012345"})
    WRITE_QUERY: ClassVar[RawQuery] = {
        "soql": "SELECT Id FROM Order WHERE OrderNumber = {order_id} FOR UPDATE"
    }

    @pytest.fixture
    def connector(self, make: MakeConnector) -> SalesforceConnector:
        return make()


# -- reading ------------------------------------------------------------------------


async def test_run__logs_in_by_soap_then_queries_by_rest(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    rows = await read(make(), {"soql": STATUS}, order_id="00012345")

    assert rows == [{"Status": "Activated"}]
    login, query = stand.seen
    assert (login.method, login.raw_path) == ("POST", "/services/Soap/u/59.0")
    assert login.headers["SOAPAction"] == "login"
    assert (query.method, urlsplit(query.raw_path).path) == ("GET", "/services/data/v59.0/query/")
    assert parse_qs(urlsplit(query.raw_path).query) == {
        "q": ["SELECT Status FROM Order WHERE OrderNumber = '00012345'"]
    }
    (session,) = stand.sessions
    assert query.headers["Authorization"] == f"Bearer {session}"
    assert stand.logins == 1


async def test_run__seed_placeholder_spellings_mean_the_same(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    soql = "SELECT Id, Status, Total FROM Order WHERE OrderNumber = {{$json.order_id}}"

    rows = await read(make(), soql, order_id="00012346")

    assert rows == [{"Id": "801000000000002AAA", "Status": "Draft", "Total": 5}]
    assert stand.queries == ["SELECT Id, Status, Total FROM Order WHERE OrderNumber = '00012346'"]


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        pytest.param(
            "00012345' OR Status != '",
            "'00012345\\' OR Status != \\''",
            id="quote-breakout",
        ),
        pytest.param("x\\' OR Id != null", "'x\\\\\\' OR Id != null'", id="backslash-quote"),
        pytest.param("1\nLIMIT 1", "'1\\nLIMIT 1'", id="newline"),
        pytest.param("{order_id}", "'{order_id}'", id="placeholder"),
        pytest.param('a"b', "'a\\\"b'", id="double-quote"),
    ],
)
async def test_run__parameters_are_quoted_by_soql_rules(
    make: MakeConnector, stand: SalesforceStandIn, value: str, sent: str
) -> None:
    rows = await read(make(), {"soql": STATUS}, order_id=value)

    assert rows == []
    assert stand.queries == [f"SELECT Status FROM Order WHERE OrderNumber = {sent}"]


async def test_run__escaped_value_still_matches_exactly(make: MakeConnector) -> None:
    rows = await read(make(), "SELECT Id FROM Order WHERE OrderNumber = {n}", n="O'Brien\\1")

    assert rows == [{"Id": "801000000000003AAA"}]


async def test_run__like_placeholder_escapes_wildcards(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    soql = "SELECT Id FROM Order WHERE Status LIKE '{s:like}%'"

    assert await read(make(), soql, s="Act") == [{"Id": "801000000000001AAA"}]
    assert await read(make(), soql, s="%") == []
    assert stand.queries == [
        "SELECT Id FROM Order WHERE Status LIKE 'Act%'",
        "SELECT Id FROM Order WHERE Status LIKE '\\%%'",
    ]


async def test_run__typed_values_become_soql_literals(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    soql = "SELECT Id FROM Order WHERE Total = {total} AND OrderNumber IN {numbers}"

    rows = await read(make(), soql, total=19.5, numbers=["00012345", "x'y"])

    assert rows == [{"Id": "801000000000001AAA"}]
    assert stand.queries == [
        "SELECT Id FROM Order WHERE Total = 19.5 AND OrderNumber IN ('00012345','x\\'y')"
    ]


async def test_run__follows_next_records_url_up_to_max_rows(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    stand.batch_size = 3
    connector = make(limits=Limits(max_rows=10))

    rows = await read(connector, "SELECT LastName FROM Contact WHERE Phone = {p}", p="+1000000000")

    assert [row["LastName"] for row in rows] == [f"Person {i}" for i in range(10)]
    paths = [urlsplit(p).path for p in rest_requests(stand)]
    assert paths[0] == "/services/data/v59.0/query/"
    assert [p.rpartition("-")[2] for p in paths[1:]] == ["3", "6", "9"]
    assert all(p.startswith("/services/data/v59.0/query/01g") for p in paths[1:])


async def test_run__no_record_is_not_found(make: MakeConnector) -> None:
    connector = make()
    result = await connector.run(
        connector.prepare(STATUS), Bound(params={"order_id": "nope"}), timeout_s=10
    )

    assert not result.found


# -- auth and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"password": "wrong password"}, id="password"),
        pytest.param({"security_token": "WRONGtoken"}, id="security-token"),
        pytest.param({"username": "someone@else.example"}, id="username"),
    ],
)
async def test_run__refused_login_is_an_auth_error_without_secrets(
    make: MakeConnector, caplog: pytest.LogCaptureFixture, change: dict[str, str]
) -> None:
    caplog.set_level(logging.DEBUG)
    connector = make(**change)

    with pytest.raises(SourceAuthError, match=r"refused the login \(INVALID_LOGIN\)") as caught:
        await read(connector, {"soql": STATUS}, order_id="00012345")
    with pytest.raises(SourceAuthError):
        await connector.health_check()

    for secret in (PASSWORD, SECURITY_TOKEN, *change.values()):
        assert secret not in str(caught.value)
        assert secret not in caplog.text


async def test_run__expired_session_logs_in_again(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    connector = make()
    await read(connector, {"soql": STATUS}, order_id="00012345")
    stand.expire_sessions()

    assert await read(connector, {"soql": STATUS}, order_id="00012345") == [{"Status": "Activated"}]
    assert stand.logins == 2
    assert len(rest_requests(stand)) == 3  # ok, 401 INVALID_SESSION_ID, ok


async def test_run__503_with_retry_after_is_retried_within_the_deadline(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    connector = make()
    await connector.health_check()
    stand.throttle(1, retry_after="1")
    started = time.monotonic()

    assert await read(connector, {"soql": STATUS}, order_id="00012345") == [{"Status": "Activated"}]

    assert time.monotonic() - started >= 1.0
    assert len([p for p in rest_requests(stand) if "/query/" in p]) == 2


async def test_run__503_past_the_deadline_is_unavailable(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    connector = make()
    await connector.health_check()
    stand.throttle(10, retry_after="30")
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="503"):
        await read(connector, {"soql": STATUS}, timeout_s=10, order_id="00012345")

    assert time.monotonic() - started < 5  # neither the 30 s asked for nor the 10 s deadline
    assert len([p for p in rest_requests(stand) if "/query/" in p]) == 1


async def test_run__api_limit_exceeded_is_unavailable(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    stand.api_limit_exceeded = True

    with pytest.raises(SourceUnavailable, match="API request limit"):
        await read(make(), {"soql": STATUS}, order_id="00012345")


async def test_run__malformed_query_names_the_code_and_masks_the_value(
    make: MakeConnector,
) -> None:
    soql = "SELECT Status FROM Order WHERE OrderNumber = {order_id} ORDER"

    with pytest.raises(SourceError, match="400 MALFORMED_QUERY") as caught:
        await read(make(), soql, order_id="CUST-7781")

    assert "CUST-7781" not in str(caught.value)
    assert "unexpected token: ORDER" in str(caught.value)


async def test_run__unknown_object_is_a_source_error(make: MakeConnector) -> None:
    with pytest.raises(SourceError, match="400 INVALID_TYPE"):
        await read(make(), "SELECT Id FROM Invoice__x WHERE Name = {n}", n="1")


# -- the bounded transport -----------------------------------------------------------------


async def test_run__endless_body_is_cut_off(make: MakeConnector, stand: SalesforceStandIn) -> None:
    connector = make(max_response_bytes=1_000_000)
    await connector.health_check()
    stand.recorder.misbehave = endless_until_hangup(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceError, match="larger than 1000000 bytes"):
        await read(connector, {"soql": STATUS}, order_id="1")

    assert time.monotonic() - started < 5
    assert stand.recorder.streamed < 50_000_000


async def test_run__stalled_body_ends_at_the_deadline(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    connector = make()
    await connector.health_check()
    stand.recorder.misbehave = stall(stand.recorder)
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(connector, {"soql": STATUS}, timeout_s=1, order_id="1")

    assert time.monotonic() - started < 1 + 4  # the stall lasts 20 s


async def test_run__redirect_to_another_host_is_not_followed(
    make: MakeConnector, stand: SalesforceStandIn
) -> None:
    other = Recorder()
    async with serve(recorded_app(other), host="127.0.0.2") as elsewhere:
        connector = make()
        await connector.health_check()
        stand.recorder.misbehave = redirect(f"{elsewhere}/services/data/v59.0/query/")

        with pytest.raises(SourceError, match="another host"):
            await read(connector, {"soql": STATUS}, order_id="1")

    assert other.seen == []


async def test_run__untrusted_certificate_is_refused(make: MakeConnector, tls_certs: Certs) -> None:
    connector = make(ca_file=str(tls_certs.other_ca))

    with pytest.raises(SourceUnavailable):
        await read(connector, {"soql": STATUS}, timeout_s=3, order_id="1")


async def test_health_check__reads_limits(make: MakeConnector, stand: SalesforceStandIn) -> None:
    await make().health_check()

    assert rest_requests(stand) == ["/services/data/v59.0/limits/"]


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("soql", "error", "problem"),
    [
        pytest.param("UPDATE Order SET Status = 'x'", NotARead, "one SOQL SELECT", id="update"),
        pytest.param("DELETE FROM Order", NotARead, "one SOQL SELECT", id="delete"),
        pytest.param("SELECT Id FROM Order FOR UPDATE", NotARead, "FOR UPDATE", id="for-update"),
        pytest.param("SELECT Id FROM Order FOR VIEW", NotARead, "FOR VIEW", id="for-view"),
        pytest.param(
            "SELECT Id FROM Knowledge__kav UPDATE VIEWSTAT",
            NotARead,
            "UPDATE VIEWSTAT",
            id="update-viewstat",
        ),
        pytest.param("SELECT Id FROM Order; SELECT Id FROM User", NotARead, "';'", id="two"),
        pytest.param(
            "SELECT Id FROM Order WHERE Name = '{name}'",
            ConfigError,
            "without quotes",
            id="quoted-placeholder",
        ),
        pytest.param(
            "SELECT Id FROM Order WHERE Name LIKE {n:like}",
            ConfigError,
            "inside a quoted",
            id="bare-like",
        ),
        pytest.param(
            "SELECT Id FROM Order WHERE Name = 'x", ConfigError, "unterminated", id="open"
        ),
    ],
)
def test_prepare__refuses_what_is_not_one_plain_select(
    soql: str, error: type[Exception], problem: str
) -> None:
    with pytest.raises(error, match=problem):
        SalesforceConnector.prepare({"soql": soql})


def test_prepare__a_for_update_inside_a_string_is_data() -> None:
    query = SalesforceConnector.prepare("SELECT Id FROM Case WHERE Subject = 'FOR UPDATE; x'")

    assert query.names == ()


def test_settings__domain_forms() -> None:
    def domain(value: str) -> str:
        settings = SalesforceSettings(username="u", password="p", domain=value)  # type: ignore[arg-type]
        return settings.login_url

    assert domain("login") == "https://login.salesforce.com"
    assert domain("test") == "https://test.salesforce.com"
    assert domain("acme.my.salesforce.com") == "https://acme.my.salesforce.com"
    assert domain("https://proxy.example:8443/") == "https://proxy.example:8443"
    for bad in ("http://plain.example", "https://x.example/services", "a/b"):
        with pytest.raises(ValidationError):
            domain(bad)


def test_settings__secrets_stay_out_of_repr_and_errors() -> None:
    settings = SalesforceSettings.model_validate(
        {"username": USERNAME, "password": PASSWORD, "security_token": SECURITY_TOKEN}
    )
    assert PASSWORD not in repr(settings) and SECURITY_TOKEN not in repr(settings)

    with pytest.raises(ValidationError) as caught:
        SalesforceSettings.model_validate({"username": "", "password": PASSWORD})
    assert PASSWORD not in str(caught.value)


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SALESFORCE_USERNAME", "SALESFORCE_PASSWORD", "SALESFORCE_SECURITY_TOKEN"):
        monkeypatch.setenv(name, "example")

    tenant = load_tenant(REPO / "config" / "examples" / "salesforce.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"salesforce"}
    assert set(tenant.lookups) == {"order_status", "contact_by_name"}
    assert tenant.lookups["contact_by_name"].query.names == ("last_name",)
