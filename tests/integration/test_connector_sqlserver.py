"""The sqlserver connector: settings, SQL checks, value quoting, errors, real sockets.

No SQL Server runs on this machine, and none can be installed here: Debian
has only the FreeTDS client, and no PyPI or npm package ships the server. So
everything that needs no server is tested for real here — settings, `prepare`
(one read statement), how values are quoted into the statement by pymssql's
own quoting, error translation with pymssql's own exception classes, the pool
(slots come back after failures and cancellations), and real TDS login
attempts to a closed and to a silent port — and the live tests (the
`ConnectorContract` suite and server-side checks) run only when
``SQLSERVER_TEST_DSN`` names a server (``mssql://sa:PASSWORD@host:1433/master``;
the login must be able to create and drop databases named ``lookup_test_*``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pymssql
import pytest
from pydantic import ValidationError

from connectors import registry
from connectors.base import (
    Bound,
    ConfigError,
    NotARead,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.registry import load
from connectors.sql import SQLSpec
from connectors.sqlserver import (
    SQLServerConnector,
    SQLServerSettings,
    SQLServerTarget,
    error_numbers,
    render_sql,
    translate_error,
)
from connectors.testing import RawQuery
from tests.support.connectors import ConnectorFactory, ContractCase, refused_port, silent_listener
from tests.support.connectors import read_args as read
from worker.config import load_tenant

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Pa55word"
LIVE_DSN = os.environ.get("SQLSERVER_TEST_DSN")
NO_SERVER = (
    "no SQL Server on this machine (none installs from Debian, PyPI or npm here); "
    "set SQLSERVER_TEST_DSN=mssql://… to run the live tests"
)
ORDER_STATUS = "SELECT status, tracking FROM orders WHERE order_id = $1"


def rendered(sql: str, *args: Any) -> str:
    spec = SQLServerConnector.prepare(sql).spec
    assert isinstance(spec, SQLSpec)
    return render_sql(spec.text, spec.arguments(args))


# -- settings ---------------------------------------------------------------------


def test_settings__accept_the_contract_fields() -> None:
    settings = SQLServerSettings.model_validate(
        {"host": "sql.local", "database": "crm", "username": "reader", "password": SECRET}
    )

    assert settings.port == 1433
    assert settings.pool_size == 25
    assert settings.tds_version == "7.4"
    assert settings.target() == SQLServerTarget("sql.local", 1433, "crm", "reader", SECRET)
    assert SECRET not in repr(settings)
    assert SECRET not in repr(settings.target())


def test_settings__take_a_dsn_instead() -> None:
    settings = SQLServerSettings.model_validate(
        {"dsn": "mssql://read%40er:p%3Ass%2Fw@sql.local:14333/crm%20prod", "pool_size": 2}
    )

    assert settings.target() == SQLServerTarget("sql.local", 14333, "crm prod", "read@er", "p:ss/w")
    assert "p:ss/w" not in repr(settings)


@pytest.mark.parametrize(
    ("connection", "problem"),
    [
        pytest.param({"database": "crm"}, "give host", id="no-host"),
        pytest.param({"host": "h", "username": "u"}, "go together", id="user-no-password"),
        pytest.param(
            {"host": "h", "dsn": f"mssql://u:{SECRET}@h/db"}, "not both", id="host-and-dsn"
        ),
        pytest.param(
            {"dsn": f"mssql://u:{SECRET}@h/db", "port": 1433}, "not both", id="port-and-dsn"
        ),
        pytest.param(
            {"dsn": f"postgresql://u:{SECRET}@h/db"}, "dsn must look like", id="dsn-scheme"
        ),
        pytest.param({"dsn": f"mssql://u:{SECRET}@h:99999/db"}, "dsn is not a URL", id="dsn-port"),
        pytest.param({"dsn": f"mssql://u:{SECRET}@h/db?encrypt=1"}, "no options", id="dsn-options"),
        pytest.param({"host": "h", "port": 0}, "port", id="port-0"),
        pytest.param({"host": "h", "pool_size": 65}, "pool_size", id="pool-big"),
        pytest.param({"host": "h", "tds_version": "8.0"}, "tds_version", id="tds-version"),
        pytest.param({"host": "h", "login_timeout_s": 0}, "login_timeout_s", id="login-timeout-0"),
        pytest.param({"host": "h", "server": "h"}, "server", id="unknown-key"),
    ],
)
def test_settings__refuse_bad_connections(connection: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        SQLServerSettings.model_validate(connection)

    assert SECRET not in str(caught.value)


def test_connector__is_found_by_its_type_name() -> None:
    cls = load("sqlserver")

    assert cls is SQLServerConnector
    assert registry.driver_extra("sqlserver") == "sqlserver"


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSSQL_PASSWORD", SECRET)

    tenant = load_tenant(REPO / "config" / "examples" / "sqlserver.yaml")

    assert tenant.problems == []
    assert set(tenant.lookups) == {"order_status", "customer_lookup"}


# -- prepare ------------------------------------------------------------------------


def test_prepare__rewrites_dollar_placeholders_for_pymssql() -> None:
    query = SQLServerConnector.prepare("SELECT * FROM orders WHERE phone = $2 AND order_id = $1")

    assert query.positional == 2
    assert query.spec == SQLSpec(
        text="SELECT * FROM orders WHERE phone = %s AND order_id = %s", order=(1, 0)
    )


def test_prepare__accepts_the_sql_mapping_form() -> None:
    assert SQLServerConnector.prepare({"sql": ORDER_STATUS}) == SQLServerConnector.prepare(
        ORDER_STATUS
    )


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("DELETE FROM orders", id="delete"),
        pytest.param("UPDATE orders SET status = 'x' WHERE order_id = $1", id="update"),
        pytest.param("INSERT INTO orders (order_id) VALUES ($1)", id="insert"),
        pytest.param(
            "MERGE orders AS t USING x AS s ON 1 = 1 WHEN MATCHED THEN DELETE;", id="merge"
        ),
        pytest.param("SELECT 1; DROP TABLE orders", id="stacked"),
        pytest.param("EXEC sp_who", id="exec"),
        pytest.param("EXECUTE xp_cmdshell 'dir'", id="xp-cmdshell"),
        pytest.param("SELECT * INTO copy FROM orders", id="select-into"),
        pytest.param("WITH x AS (SELECT 1 AS a) DELETE FROM orders", id="cte-delete"),
        pytest.param("TRUNCATE TABLE orders", id="truncate"),
        pytest.param("BEGIN TRAN", id="begin"),
    ],
)
def test_prepare__refuses_writes(sql: str) -> None:
    with pytest.raises(NotARead):
        SQLServerConnector.prepare(sql)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"sql": 1}, id="sql-not-text"),
        pytest.param({"query": ORDER_STATUS}, id="wrong-key"),
        pytest.param({"sql": ORDER_STATUS, "limit": 1}, id="extra-key"),
        pytest.param("  ", id="blank"),
        pytest.param("SELECT $2", id="gap-in-placeholders"),
    ],
)
def test_prepare__refuses_bad_shapes(raw: RawQuery) -> None:
    with pytest.raises(ConfigError):
        SQLServerConnector.prepare(raw)


# -- binding (values quoted by pymssql) --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        pytest.param("12345", "N'12345'", id="text"),
        pytest.param("'; DROP TABLE orders; --", "N'''; DROP TABLE orders; --'", id="drop-table"),
        pytest.param("12345' OR '1'='1", "N'12345'' OR ''1''=''1'", id="quote-or"),
        pytest.param("%s %d %%", "N'%s %d %%'", id="percent-signs"),
        pytest.param("$1", "N'$1'", id="placeholder-text"),
        pytest.param('{"$ne": null}', "N'{\"$ne\": null}'", id="json-text"),
        pytest.param("čaj 漢字", "N'čaj 漢字'", id="unicode"),
        pytest.param(42, "42", id="int"),
        pytest.param(1.5, "1.5", id="float"),
        pytest.param(True, "1", id="bool"),
        pytest.param(None, "NULL", id="null"),
        pytest.param(decimal.Decimal("19.90"), "19.9", id="decimal"),
        pytest.param(dt.date(2025, 9, 12), "N'2025-09-12'", id="date"),
        pytest.param(uuid.UUID(int=1), "N'00000000-0000-0000-0000-000000000001'", id="uuid"),
        pytest.param(b"\x00\xff", "0x00ff", id="bytes"),
    ],
)
def test_render_sql__quotes_each_value_as_a_literal(value: Any, literal: str) -> None:
    assert rendered(ORDER_STATUS, value) == (
        f"SELECT status, tracking FROM orders WHERE order_id = {literal}"
    )


def test_render_sql__leaves_percent_signs_in_the_query_alone() -> None:
    sql = "SELECT '%s', 7 % 2 AS m FROM t WHERE n LIKE '%sale%' AND a = $2 AND b = $1 AND c = $2"

    assert rendered(sql, "x", 5) == (
        "SELECT '%s', 7 % 2 AS m FROM t WHERE n LIKE '%sale%' AND a = 5 AND b = N'x' AND c = 5"
    )


def test_render_sql__refuses_too_few_values() -> None:
    with pytest.raises(ValueError, match="more placeholders"):
        render_sql("SELECT %s, %s", ("only one",))


# -- errors ---------------------------------------------------------------------------

LOGIN_FAILED = (
    18456,
    b"Login failed for user 'reader'.DB-Lib error message 20018, severity 14:\n"
    b"General SQL Server error: Check messages from the SQL Server\n"
    b"DB-Lib error message 20002, severity 9:\nAdaptive Server connection failed (sql.local)\n",
)
REFUSED = (
    20009,
    b"DB-Lib error message 20009, severity 9:\nUnable to connect: Adaptive Server is unavailable "
    b"or does not exist (sql.local)\nNet-Lib error during Connection refused (111)\n",
)
QUERY_TIMEOUT = (
    20003,
    b"DB-Lib error message 20003, severity 6:\nAdaptive Server connection timed out (h)\n",
)
DEAD = (20047, b"DB-Lib error message 20047, severity 9:\nDBPROCESS is dead or not enabled\n")
NO_TABLE = (
    208,
    f"Invalid object name '{SECRET}'.DB-Lib error message 20018, severity 16:\n".encode(),
)


@pytest.mark.parametrize(
    ("exc", "login", "kind", "text"),
    [
        # connect() wraps (number, message) in one more tuple; cursor errors do not.
        pytest.param(
            pymssql.OperationalError(LOGIN_FAILED),
            True,
            SourceAuthError,
            "authentication failed",
            id="login-failed",
        ),
        pytest.param(
            pymssql.OperationalError((4060, b'Cannot open database "crm" requested by the login.')),
            True,
            SourceAuthError,
            "may not open the database",
            id="cannot-open-db",
        ),
        pytest.param(
            pymssql.OperationalError(REFUSED), True, SourceUnavailable, "cannot reach", id="refused"
        ),
        pytest.param(
            pymssql.OperationalError(
                (20002, b"DB-Lib error message 20003, severity 6:\nTDS server connection timed out")
            ),
            True,
            SourceUnavailable,
            "cannot reach",
            id="login-timeout",
        ),
        pytest.param(
            pymssql.OperationalError(*QUERY_TIMEOUT),
            False,
            SourceTimeout,
            "deadline",
            id="query-timeout",
        ),
        pytest.param(
            pymssql.OperationalError(*DEAD), False, SourceUnavailable, "lost", id="dead-connection"
        ),
        pytest.param(
            pymssql.ProgrammingError(*NO_TABLE),
            False,
            SourceError,
            r"ProgrammingError: 208, 20018",
            id="no-table",
        ),
        pytest.param(
            pymssql.InterfaceError("Connection is closed."),
            False,
            SourceUnavailable,
            "not usable",
            id="closed",
        ),
        pytest.param(
            pymssql.IntegrityError(2627, b"Violation of PRIMARY KEY"),
            False,
            SourceError,
            "2627",
            id="integrity",
        ),
    ],
)
def test_translate_error__maps_pymssql_errors_without_server_text(
    exc: pymssql.Error, login: bool, kind: type[SourceError], text: str
) -> None:
    error = translate_error("crm", exc, login=login)

    assert type(error) is kind
    assert re.search(text, str(error)), str(error)
    assert "crm" in str(error)
    assert SECRET not in str(error) and "reader" not in str(error) and "sql.local" not in str(error)


def test_error_numbers__reads_both_argument_shapes() -> None:
    assert error_numbers(pymssql.OperationalError(LOGIN_FAILED)) == {18456, 20018, 20002}
    assert error_numbers(pymssql.OperationalError(*QUERY_TIMEOUT)) == {20003}
    assert error_numbers(pymssql.InterfaceError("Cursor is closed.")) == set()


# -- real connection attempts (no server needed) -----------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    return refused_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with silent_listener(64) as port:
        yield port


@pytest.fixture
async def make_connector() -> AsyncIterator[Any]:
    factory = ConnectorFactory(SQLServerConnector, "crm", REPO)
    yield factory.make
    await factory.aclose()


async def test_run__closed_port_is_unavailable_at_once(
    make_connector: Any, closed_port: int
) -> None:
    connector = make_connector(
        host="127.0.0.1", port=closed_port, username="reader", password=SECRET
    )
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="cannot reach SQL Server") as caught:
        await read(connector, ORDER_STATUS, "12345", timeout_s=30)

    assert time.monotonic() - started < 5  # not the 30 s deadline
    assert "crm" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


async def test_health_check__closed_port_is_unavailable(
    make_connector: Any, closed_port: int
) -> None:
    connector = make_connector(dsn=f"mssql://reader:{SECRET}@127.0.0.1:{closed_port}/crm")

    with pytest.raises(SourceUnavailable) as caught:
        await connector.health_check()

    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("login_timeout_s", "timeout_s", "expected_s"),
    [
        pytest.param(1, 10, 1, id="login-timeout"),
        pytest.param(5, 1, 1, id="capped-by-the-read-deadline"),
    ],
)
async def test_run__silent_host_is_unavailable_within_the_login_timeout(
    make_connector: Any,
    silent_port: int,
    login_timeout_s: float,
    timeout_s: float,
    expected_s: float,
) -> None:
    connector = make_connector(host="127.0.0.1", port=silent_port, login_timeout_s=login_timeout_s)
    started = time.monotonic()

    with pytest.raises((SourceUnavailable, SourceTimeout)):
        await read(connector, ORDER_STATUS, "12345", timeout_s=timeout_s)

    elapsed = time.monotonic() - started
    assert elapsed < expected_s + 0.5, f"took {elapsed:.2f} s"


async def test_run__failed_reads_give_their_pool_slot_back(
    make_connector: Any, closed_port: int
) -> None:
    connector = make_connector(host="127.0.0.1", port=closed_port, pool_size=2)

    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(
            *(read(connector, ORDER_STATUS, str(n)) for n in range(12)), return_exceptions=True
        )

    assert all(isinstance(outcome, SourceUnavailable) for outcome in outcomes), outcomes


async def test_run__cancelled_login_frees_its_slot_once_the_thread_ends(
    make_connector: Any, silent_port: int
) -> None:
    connector = make_connector(host="127.0.0.1", port=silent_port, pool_size=1, login_timeout_s=1)
    task = asyncio.create_task(read(connector, ORDER_STATUS, "1", timeout_s=10))
    await asyncio.sleep(0.2)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # The one slot is back when the login gives up (1 s): the next read gets it.
    started = time.monotonic()
    with pytest.raises(SourceUnavailable):
        await read(connector, ORDER_STATUS, "1", timeout_s=30)
    assert time.monotonic() - started < 1 + 1 + 4  # not the 30 s deadline
    await connector.close()
    await connector.close()


async def test_close__waits_for_a_read_in_flight_then_refuses_new_ones(
    make_connector: Any, silent_port: int
) -> None:
    connector = make_connector(host="127.0.0.1", port=silent_port, login_timeout_s=1)
    task = asyncio.create_task(read(connector, ORDER_STATUS, "1", timeout_s=10))
    await asyncio.sleep(0.2)

    await connector.close()

    with pytest.raises(SourceUnavailable):
        await task


async def test_close__without_open_and_twice_is_harmless(make_connector: Any) -> None:
    connector = make_connector(host="127.0.0.1")

    await connector.close()
    await connector.open()
    await connector.close()
    await connector.close()


# -- live server (only with SQLSERVER_TEST_DSN) ------------------------------------------------

live = pytest.mark.skipif(LIVE_DSN is None, reason=NO_SERVER)

#: Far longer than a second: a triple cross join of the catalogue views.
SLOW = (
    "SELECT COUNT_BIG(*) AS n FROM sys.all_objects a CROSS JOIN sys.all_objects b "
    "CROSS JOIN sys.all_objects c WHERE a.object_id + b.object_id + c.object_id = $1"
)


def live_connection() -> dict[str, Any]:
    assert LIVE_DSN is not None
    target = SQLServerSettings.model_validate({"dsn": LIVE_DSN}).target()
    return {
        "host": target.host,
        "port": target.port,
        "username": target.username,
        "password": target.password,
    }


@pytest.fixture
def live_database() -> Iterator[str]:
    """A fresh database with an orders table, dropped afterwards."""
    name = f"lookup_test_{uuid.uuid4().hex[:8]}"
    conn = live_admin()
    try:
        cursor = conn.cursor()
        cursor.execute(f"CREATE DATABASE [{name}]")
        cursor.execute(
            f"CREATE TABLE [{name}].dbo.orders (order_id NVARCHAR(20) PRIMARY KEY,"
            " status NVARCHAR(20), tracking NVARCHAR(20), total DECIMAL(10, 2),"
            " placed DATETIMEOFFSET, ref UNIQUEIDENTIFIER, label VARBINARY(10))"
        )
        cursor.execute(
            f"INSERT INTO [{name}].dbo.orders VALUES ('12345', 'shipped', 'TRK-1', 19.90,"
            " '2025-09-12 08:30:00 +00:00', '00000000-0000-0000-0000-000000000001', 0x00ff),"
            " ('12346', 'processing', NULL, 5.00, NULL, NULL, NULL)"
        )
        yield name
    finally:
        conn.cursor().execute(f"ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE")
        conn.cursor().execute(f"DROP DATABASE [{name}]")
        conn.close()


def live_admin() -> pymssql.Connection:
    target = SQLServerSettings.model_validate({"dsn": LIVE_DSN}).target()
    return pymssql.connect(
        server=target.host,
        port=str(target.port),
        user=target.username,
        password=target.password,
        autocommit=True,
        login_timeout=10,
    )


@pytest.fixture
def live_connector(live_database: str, make_connector: Any) -> SQLServerConnector:
    connector: SQLServerConnector = make_connector(
        database=live_database, pool_size=4, **live_connection()
    )
    return connector


@live
class TestSQLServerContract(ContractCase):
    FOUND_QUERY = ORDER_STATUS
    FOUND_PARAMS = Bound(args=("12345",))
    MISSING_PARAMS = Bound(args=("99999",))
    SLOW_QUERY = SLOW
    SLOW_PARAMS = Bound(args=(-1,))
    WRITE_QUERY = "DELETE FROM orders"

    @pytest.fixture
    def connector(self, live_connector: SQLServerConnector) -> SQLServerConnector:
        return live_connector


@live
async def test_live_run__converts_values(live_connector: SQLServerConnector) -> None:
    rows = await read(
        live_connector, "SELECT total, placed, ref, label FROM orders WHERE order_id = $1", "12345"
    )

    assert rows == [
        {
            "total": 19.9,
            "placed": "2025-09-12T08:30:00+00:00",
            "ref": "00000000-0000-0000-0000-000000000001",
            "label": "AP8=",
        }
    ]


@live
async def test_live_run__a_write_that_slips_past_prepare_is_rolled_back(
    live_connector: SQLServerConnector, live_database: str
) -> None:
    await live_connector._read("DELETE FROM orders; SELECT 1 AS ok", timeout_s=5)

    assert await read(live_connector, "SELECT COUNT(*) AS n FROM orders") == [{"n": 2}]


@live
async def test_live_run__deadline_stops_the_server_query(
    live_connector: SQLServerConnector,
) -> None:
    with pytest.raises(SourceTimeout):
        await read(live_connector, SLOW, -1, timeout_s=1)

    await asyncio.sleep(1.5)  # FreeTDS's whole-second timeout, then the cancel
    conn = live_admin()
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT COUNT(*) FROM sys.dm_exec_requests r JOIN sys.dm_exec_sessions s"
            " ON r.session_id = s.session_id WHERE s.program_name = 'data-lookup-worker'"
        )
        assert cursor.fetchone() == (0,)
    finally:
        conn.close()


@live
async def test_live_run__bad_credentials_name_the_source_without_the_secret(
    make_connector: Any,
) -> None:
    connection = {**live_connection(), "password": SECRET}
    connector = make_connector(**connection)

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await read(connector, "SELECT 1 AS ok")

    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
