"""The mysql connector against the live MariaDB (or MySQL) server.

Everything runs in a database of its own, ``lookup_my_<random>``, with a
SELECT-only account of the same name; both are dropped at the end. The server
defaults to root at 127.0.0.1:3306; ``MYSQL_TEST_HOST``, ``MYSQL_TEST_PORT``,
``MYSQL_TEST_USER``, ``MYSQL_TEST_PASSWORD`` point the tests elsewhere and
``MYSQL_TEST_RESTART`` is the command the restart tests run (see `restart_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomysql
import pymysql
import pytest
from pydantic import SecretStr, ValidationError

from connectors import registry
from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    NotARead,
    PreparedQuery,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.mysql import MySQLConnector, MySQLSettings, _deadline_sql
from connectors.registry import load
from connectors.sql import SQLSpec
from connectors.testing import RawQuery
from tests.support.connectors import ConnectorFactory, ContractCase, refused_port
from tests.support.connectors import read_args as read

REPO = Path(__file__).resolve().parents[2]

HOST = os.environ.get("MYSQL_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("MYSQL_TEST_PORT", "3306"))
ADMIN = os.environ.get("MYSQL_TEST_USER", "root")
ADMIN_PASSWORD = os.environ.get("MYSQL_TEST_PASSWORD", "")
RESTART = shlex.split(os.environ.get("MYSQL_TEST_RESTART", ""))
SERVICES = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"

ORDERS = [
    (
        "12345",
        "+1234567890",
        "shipped",
        "UPS123456",
        Decimal("19.50"),
        dt.datetime(2025, 9, 10, 14, 30, 5, 123456),  # noqa: DTZ001 - DATETIME is naive
        dt.date(2025, 9, 12),
        dt.timedelta(hours=9, minutes=30),
        b"\x00\xff",
        "Box 📦",
    ),
    ("12346", "+1234567890", "processing", None, Decimal("5.00"), None, None, None, None, None),
    ("20000", "+1999999999", "delivered", "TRK-3", Decimal("7.25"), None, None, None, b"ok", ""),
]
BULK = [
    (f"B{n:04d}", "+1555000000", "bulk", None, Decimal(n), None, None, None, None, None)
    for n in range(40)
]
ORDER_STATUS = "SELECT status, tracking FROM orders WHERE order_id = $1"
# Six copies of 43 rows: 6e9 rows to count, far more than any deadline here.
HEAVY_COUNT = (
    "SELECT COUNT(*) AS {marker} FROM orders a, orders b, orders c, orders d, orders e, orders f"
)
# Five copies: 1.5e8 rows that stream out one by one.
HEAVY_ROWS = "SELECT a.order_id AS {marker} FROM orders a, orders b, orders c, orders d, orders e"

MakeConnector = Callable[..., MySQLConnector]


@dataclass(frozen=True)
class Server:
    database: str
    #: a SELECT-only account on `database`
    reader: str
    reader_password: str


def admin_connect(database: str | None = None) -> pymysql.Connection[Any]:
    return pymysql.connect(
        host=HOST, port=PORT, user=ADMIN, password=ADMIN_PASSWORD, database=database
    )


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    try:
        admin_connect().close()
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"no MySQL/MariaDB server at {HOST}:{PORT} for the mysql tests: {exc}")
    name = f"lookup_my_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    try:
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
            cur.execute(f"USE {name}")
            cur.execute(
                "CREATE TABLE orders ("
                " order_id VARCHAR(20) PRIMARY KEY, customer_phone VARCHAR(32),"
                " status VARCHAR(20) NOT NULL, tracking VARCHAR(40), total DECIMAL(10, 2),"
                " placed_at DATETIME(6), estimated_delivery DATE, window_start TIME,"
                " label BLOB, note TEXT) ENGINE=InnoDB"
            )
            cur.executemany(
                "INSERT INTO orders VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", ORDERS + BULK
            )
            cur.execute(f"CREATE USER '{name}'@'{HOST}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT SELECT ON {name}.* TO '{name}'@'{HOST}'")
            conn.commit()
        yield Server(name, name, password)
    finally:
        # A new connection: the restart tests end every old one.
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            cur.execute(f"DROP USER IF EXISTS '{name}'@'{HOST}'")


@pytest.fixture
async def make_connector(server: Server) -> AsyncIterator[MakeConnector]:
    factory = ConnectorFactory(MySQLConnector, "shop_mysql", REPO)

    def make(pool_size: int = 2, limits: Limits | None = None, **connection: Any) -> MySQLConnector:
        fields: dict[str, Any] = {
            "host": HOST,
            "port": PORT,
            "database": server.database,
            "username": ADMIN,
            "password": ADMIN_PASSWORD,
            "pool_size": pool_size,
        }
        fields.update(connection)
        settings = MySQLSettings.model_validate({k: v for k, v in fields.items() if v is not None})
        return factory.build(settings, limits=limits)

    yield make
    await factory.aclose()


async def read_unchecked(connector: MySQLConnector, sql: str) -> list[dict[str, Any]]:
    """Run SQL that never went through `prepare`, as a bug or a bad plugin might."""
    query = PreparedQuery(spec=SQLSpec(sql, ()))
    return (await connector.run(query, Bound(), timeout_s=5)).rows


def table_facts(database: str) -> tuple[int, list[str]]:
    """The orders count and the database's tables, seen by the administrator."""
    with admin_connect(database) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM orders")
        (count,) = cur.fetchone() or (0,)
        cur.execute("SHOW TABLES")
        return count, sorted(row[0] for row in cur.fetchall())


async def running(marker: str) -> list[str]:
    """Statements the server is running now whose text holds ``marker``."""
    conn = await aiomysql.connect(host=HOST, port=PORT, user=ADMIN, password=ADMIN_PASSWORD)
    try:
        cur = await conn.cursor()
        await cur.execute(
            "SELECT info FROM information_schema.processlist"
            " WHERE info LIKE %s AND id <> CONNECTION_ID()",
            (f"%{marker}%",),
        )
        return [row[0] for row in await cur.fetchall()]
    finally:
        conn.close()


async def wait_running(marker: str, *, within_s: float = 5) -> None:
    async with asyncio.timeout(within_s):
        while not await running(marker):
            await asyncio.sleep(0.02)


async def gone_after(marker: str, *, within_s: float = 1) -> float:
    """Seconds until no statement with ``marker`` runs; fails after ``within_s``."""
    started = time.monotonic()
    while await running(marker):
        if time.monotonic() - started > within_s:
            pytest.fail(f"the server still runs {marker} {within_s} s later")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def borrowed(connector: MySQLConnector) -> int:
    """Connections taken from the pool (or being opened for it) and not given back."""
    pool = connector._pool
    assert pool is not None, "the connector is not open"
    return int(pool.pool.size - pool.pool.freesize)


def new_marker() -> str:
    return f"lookup_my_mark_{secrets.token_hex(4)}"


def closed_port() -> int:
    return refused_port()


# -- the shared contract -----------------------------------------------------------


class TestMySQLContract(ContractCase):
    FOUND_QUERY = "SELECT status, tracking, total, placed_at FROM orders WHERE order_id = $1"
    FOUND_PARAMS = Bound(args=("12345",))
    MISSING_PARAMS = Bound(args=("99999",))
    SLOW_QUERY = "SELECT SLEEP($1) AS slept"
    SLOW_PARAMS = Bound(args=(30,))
    WRITE_QUERY = "DELETE FROM orders"

    @pytest.fixture
    async def connector(self, make_connector: MakeConnector) -> MySQLConnector:
        # One connection: a read left running, or a connection never given back,
        # would block every later read.
        return make_connector(pool_size=1)


# -- prepare -----------------------------------------------------------------------


def test_prepare__rewrites_dollar_placeholders_to_format_style_in_order() -> None:
    query = MySQLConnector.prepare(
        "SELECT * FROM orders WHERE customer_phone = $2 AND order_id = $1"
    )

    assert query.positional == 2
    assert isinstance(query.spec, SQLSpec)
    assert query.spec.text == "SELECT * FROM orders WHERE customer_phone = %s AND order_id = %s"
    assert query.spec.arguments(("12345", "+1")) == ("+1", "12345")


def test_prepare__accepts_the_sql_mapping_form() -> None:
    assert MySQLConnector.prepare({"sql": ORDER_STATUS}) == MySQLConnector.prepare(ORDER_STATUS)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"sql": 1}, id="sql-not-text"),
        pytest.param({"query": ORDER_STATUS}, id="wrong-key"),
        pytest.param("   ", id="blank"),
    ],
)
def test_prepare__refuses_bad_shapes(raw: RawQuery) -> None:
    with pytest.raises(ConfigError, match=r"mysql query|non-empty"):
        MySQLConnector.prepare(raw)


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("DELETE FROM orders", id="delete"),
        pytest.param("UPDATE orders SET status = 'x'", id="update"),
        pytest.param("INSERT INTO orders (order_id) VALUES ($1)", id="insert"),
        pytest.param("SELECT 1; DROP TABLE orders", id="stacked"),
        pytest.param("SELECT * INTO OUTFILE 'orders.csv' FROM orders", id="into-outfile"),
        pytest.param("SET SESSION max_statement_time = 0", id="set"),
        pytest.param("/*! DROP TABLE orders */ SELECT 1", id="executable-comment"),
        pytest.param("LOCK TABLES orders WRITE", id="lock"),
        pytest.param("DO SLEEP(1)", id="do"),
    ],
)
def test_prepare__refuses_writes(sql: str) -> None:
    with pytest.raises(NotARead):
        MySQLConnector.prepare(sql)


# -- run: binding and values ---------------------------------------------------------


async def test_run__binds_typed_args_out_of_order(make_connector: MakeConnector) -> None:
    connector = make_connector()
    sql = "SELECT order_id FROM orders WHERE customer_phone = $2 AND total > $1 ORDER BY 1"

    assert await read(connector, sql, 6, "+1234567890") == [{"order_id": "12345"}]
    assert await read(connector, sql, Decimal("4.99"), "+1234567890") == [
        {"order_id": "12345"},
        {"order_id": "12346"},
    ]
    assert await read(connector, sql, "+1234567890", 6) == []


async def test_run__binds_one_arg_used_twice(make_connector: MakeConnector) -> None:
    sql = "SELECT order_id FROM orders WHERE order_id = $1 OR tracking = $1 ORDER BY 1"

    assert await read(make_connector(), sql, "TRK-3") == [{"order_id": "20000"}]


@pytest.mark.parametrize(
    ("sql", "args", "expected"),
    [
        pytest.param("SELECT 'a%b' AS t", (), [{"t": "a%b"}], id="no-args"),
        pytest.param("SELECT '100%' AS t, $1 AS p", ("%s",), [{"t": "100%", "p": "%s"}], id="arg"),
        pytest.param(
            "SELECT order_id FROM orders WHERE tracking LIKE 'TRK-%' AND customer_phone = $1",
            ("+1999999999",),
            [{"order_id": "20000"}],
            id="like",
        ),
        pytest.param("SELECT 7 % 4 AS m", (), [{"m": 3}], id="modulo"),
    ],
)
async def test_run__literal_percent_signs_survive(
    make_connector: MakeConnector, sql: str, args: tuple[object, ...], expected: object
) -> None:
    assert await read(make_connector(), sql, *args) == expected


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param("1 OR 1=1", id="or-true"),
        pytest.param("'; DROP TABLE orders; --", id="drop-table"),
        pytest.param("12345' OR '1'='1", id="quote-or"),
        pytest.param("12345\\' OR 1=1 -- ", id="backslash-quote"),
        pytest.param("12345; DELETE FROM orders", id="stacked-delete"),
        pytest.param("%s", id="format-placeholder"),
        pytest.param("$1", id="dollar-placeholder"),
    ],
)
async def test_run__injection_text_is_just_data(
    make_connector: MakeConnector, server: Server, evil: str
) -> None:
    before = table_facts(server.database)

    assert await read(make_connector(), ORDER_STATUS, evil) == []
    assert table_facts(server.database) == before


async def test_run__rows_are_plain_values(make_connector: MakeConnector) -> None:
    rows = await read(
        make_connector(),
        "SELECT * FROM orders WHERE order_id IN ($1, $2) ORDER BY 1",
        "12345",
        "12346",
    )

    assert rows == [
        {
            "order_id": "12345",
            "customer_phone": "+1234567890",
            "status": "shipped",
            "tracking": "UPS123456",
            "total": 19.5,  # DECIMAL
            "placed_at": "2025-09-10T14:30:05.123456",  # DATETIME(6)
            "estimated_delivery": "2025-09-12",  # DATE
            "window_start": 34200.0,  # TIME arrives as a timedelta: seconds
            "label": "AP8=",  # a BLOB that is not UTF-8 comes back as base64
            "note": "Box 📦",  # utf8mb4
        },
        {
            "order_id": "12346",
            "customer_phone": "+1234567890",
            "status": "processing",
            "tracking": None,
            "total": 5,  # a whole DECIMAL is an int
            "placed_at": None,
            "estimated_delivery": None,
            "window_start": None,
            "label": None,
            "note": None,
        },
    ]


async def test_run__expressions_of_every_kind_are_plain_values(
    make_connector: MakeConnector,
) -> None:
    sql = (
        "SELECT CAST('123.450' AS DECIMAL(10,3)) AS d, CAST(NULL AS CHAR) AS n,"
        " X'6F6B' AS utf8_bytes, CAST('2024-02-29 23:59:59' AS DATETIME) AS ts,"
        " CAST('-01:30:00' AS TIME) AS neg_time, 18446744073709551615 AS big_unsigned,"
        " 1.5e0 AS dbl, TRUE AS yes, JSON_OBJECT('a', 1) AS js, $1 AS echoed"
    )

    assert await read(make_connector(), sql, dt.date(2025, 1, 2)) == [
        {
            "d": 123.45,
            "n": None,
            "utf8_bytes": "ok",
            "ts": "2024-02-29T23:59:59",
            "neg_time": -5400.0,
            "big_unsigned": 18446744073709551615,
            "dbl": 1.5,
            "yes": 1,
            "js": '{"a": 1}',
            "echoed": "2025-01-02",
        }
    ]


async def test_run__rows_are_capped_by_the_limits(make_connector: MakeConnector) -> None:
    connector = make_connector(limits=Limits(max_rows=3))

    rows = await read(connector, "SELECT order_id FROM orders ORDER BY order_id")

    assert rows == [{"order_id": "12345"}, {"order_id": "12346"}, {"order_id": "20000"}]
    assert borrowed(connector) == 0
    assert connector._pool is not None and connector._pool.pool.freesize == 1  # kept: drained


async def test_run__a_huge_result_is_cut_at_the_cap_not_read_to_the_end(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(limits=Limits(max_rows=5))
    marker = new_marker()
    started = time.monotonic()

    rows = await read(connector, HEAVY_ROWS.format(marker=marker), timeout_s=30)

    assert len(rows) == 5
    # 1.5e8 rows would take far longer than this to stream
    assert time.monotonic() - started < 6, "it read far more than it returned"
    assert borrowed(connector) == 0
    await gone_after(marker)  # the server gave up streaming to a closed connection


# -- run: read-only ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        pytest.param(
            "INSERT INTO orders (order_id, status) VALUES ('x', 'y')", "READ ONLY", id="insert"
        ),
        pytest.param("UPDATE orders SET status = 'lost'", "READ ONLY", id="update"),
        pytest.param("DELETE FROM orders", "READ ONLY", id="delete"),
        pytest.param(
            "REPLACE INTO orders (order_id, status) VALUES ('x', 'y')", "READ ONLY", id="replace"
        ),
        pytest.param("SELECT * FROM orders FOR UPDATE", "READ ONLY", id="locking-read"),
        pytest.param("CREATE TEMPORARY TABLE scratch (x INT)", "READ ONLY", id="temporary-table"),
        pytest.param("SET TRANSACTION READ WRITE", "can't be changed", id="set-read-write"),
        pytest.param(
            "SELECT 1; CREATE TABLE lookup_my_scratch (x INT)", "SQL syntax", id="multi-statement"
        ),
    ],
)
async def test_run__the_session_refuses_writes_that_bypass_prepare(
    make_connector: MakeConnector, server: Server, sql: str, refusal: str
) -> None:
    connector = make_connector(pool_size=1)
    before = table_facts(server.database)

    with pytest.raises(SourceError, match=refusal):
        await read_unchecked(connector, sql)

    assert table_facts(server.database) == before
    assert await read(connector, ORDER_STATUS, "12345")  # the connection is still good


async def test_run__a_session_cannot_leave_read_only_for_the_next_read(
    make_connector: MakeConnector, server: Server
) -> None:
    connector = make_connector(pool_size=1)  # the same connection every time
    await read_unchecked(connector, "SET SESSION TRANSACTION READ WRITE")
    await read_unchecked(connector, "SET autocommit = 1")

    with pytest.raises(SourceError, match="READ ONLY"):
        await read_unchecked(connector, "DELETE FROM orders")
    assert table_facts(server.database)[0] == len(ORDERS + BULK)


async def test_run__a_select_only_account_also_stops_ddl(
    make_connector: MakeConnector, server: Server
) -> None:
    # DDL commits implicitly, so a READ ONLY transaction does not stop it: the
    # account must not be able to. This is the setup the README recommends.
    connector = make_connector(username=server.reader, password=server.reader_password)

    with pytest.raises(SourceError, match="command denied"):
        await read_unchecked(connector, "DROP TABLE orders")
    assert table_facts(server.database)[1] == ["orders"]
    assert await read(connector, ORDER_STATUS, "12345")


# -- run: deadlines and cancellation -------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("SELECT SLEEP(30) AS {marker}", id="sleep"),
        pytest.param(HEAVY_COUNT, id="cpu-bound-count"),
    ],
)
async def test_run__deadline_stops_the_server_query(
    make_connector: MakeConnector, statement: str
) -> None:
    connector = make_connector(pool_size=1)
    marker = new_marker()
    started = time.monotonic()

    with pytest.raises(SourceTimeout, match="deadline"):
        await read(connector, statement.format(marker=marker), timeout_s=0.5)

    assert time.monotonic() - started < 0.5 + 4
    assert await running(marker) == []
    assert borrowed(connector) == 0
    assert connector._pool is not None and connector._pool.pool.freesize == 1, (
        "the server stopped the statement itself: the connection is kept"
    )


@pytest.mark.parametrize("wait_s", [0.05, 0.3], ids=["early", "mid-query"])
async def test_run__caller_cancellation_stops_the_server_query(
    make_connector: MakeConnector, wait_s: float
) -> None:
    connector = make_connector(pool_size=1)
    marker = new_marker()
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(wait_s):
            await read(connector, f"SELECT SLEEP(30) AS {marker}", timeout_s=60)

    assert time.monotonic() - started < wait_s + 4
    assert await gone_after(marker, within_s=5) < 5  # killed, not left to its 30 s
    assert borrowed(connector) == 0


async def test_run__without_a_server_time_limit_kill_query_still_stops_the_statement(
    make_connector: MakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    connector = make_connector(pool_size=1)
    await connector.open()
    assert connector._pool is not None
    # Ask for the other flavour's variable, which this server lacks (as MySQL 5.6 would).
    connector._pool.mariadb = not connector._pool.mariadb
    marker = new_marker()
    started = time.monotonic()

    with (
        caplog.at_level(logging.WARNING, logger="connectors.mysql"),
        pytest.raises(SourceTimeout, match="deadline"),
    ):
        await read(connector, f"SELECT SLEEP(30) AS {marker}", timeout_s=0.5)

    assert time.monotonic() - started < 0.5 + 4
    assert "KILL QUERY only" in caplog.text
    assert not connector._pool.server_deadline
    await gone_after(marker, within_s=0.5)
    assert borrowed(connector) == 0
    assert await read(connector, ORDER_STATUS, "12345")


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5, 8, 13, 30], ids=lambda n: f"after-{n}-yields")
async def test_run__cancellation_at_any_point_borrows_nothing(
    make_connector: MakeConnector, yields: int
) -> None:
    connector = make_connector(pool_size=1)
    await connector.open()
    marker = new_marker()
    task = asyncio.create_task(read(connector, f"SELECT SLEEP(30) AS {marker}", timeout_s=60))
    for _ in range(yields):
        await asyncio.sleep(0)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert borrowed(connector) == 0
    await gone_after(marker, within_s=0.5)
    assert await read(connector, ORDER_STATUS, "12345", timeout_s=2)


async def test_run__many_reads_cancelled_at_random_leak_nothing(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=3)
    marker = new_marker()
    slow = f"SELECT SLEEP($1) AS {marker}"
    rng = random.Random(4)  # the same interleavings each run

    async def one() -> None:
        pause, timeout_s = rng.random() * 0.3, rng.choice([0.05, 0.2, 5])
        task = asyncio.create_task(read(connector, slow, pause, timeout_s=timeout_s))
        await asyncio.sleep(rng.random() * 0.2)
        if rng.random() < 0.5:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SourceTimeout):
            await task

    for _ in range(2):
        await asyncio.gather(*(one() for _ in range(40)))

    assert borrowed(connector) == 0
    assert connector._pool is not None and connector._pool.pool.size <= 3
    await gone_after(marker, within_s=0.5)
    assert await read(connector, ORDER_STATUS, "12345", timeout_s=2)


async def test_run__a_dropped_connection_wakes_a_read_waiting_for_the_pool(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    marker = new_marker()
    hog = asyncio.create_task(read(connector, f"SELECT SLEEP(30) AS {marker}", timeout_s=60))
    await wait_running(marker)
    waiting = asyncio.create_task(read(connector, ORDER_STATUS, "12345", timeout_s=20))
    await asyncio.sleep(0.1)  # it is waiting for the only connection

    hog.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hog

    async with asyncio.timeout(2):
        assert await waiting == [{"status": "shipped", "tracking": "UPS123456"}]
    assert borrowed(connector) == 0


async def test_run__waiting_for_a_busy_pool_counts_against_timeout_s(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    marker = new_marker()
    hog = asyncio.create_task(read(connector, f"SELECT SLEEP(30) AS {marker}", timeout_s=60))
    await wait_running(marker)
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await read(connector, ORDER_STATUS, "12345", timeout_s=0.3)

    assert time.monotonic() - started < 0.3 + 4  # the hog holds the slot for 30 s
    hog.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hog
    assert borrowed(connector) == 0


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["fields", "dsn"])
async def test_run__bad_credentials_fail_clearly_without_the_secret(
    make_connector: MakeConnector, server: Server, form: str
) -> None:
    wrong = "Wrong-Pa55word-" + secrets.token_hex(4)
    if form == "fields":
        connector = make_connector(username=server.reader, password=wrong)
    else:
        dsn = f"mysql://{server.reader}:{wrong}@{HOST}:{PORT}/{server.database}"
        connector = make_connector(
            dsn=dsn, host=None, port=None, database=None, username=None, password=None
        )

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await read(connector, ORDER_STATUS, "12345")

    text = f"{caught.value} {caught.value!r}"
    assert "shop_mysql" in text
    assert server.reader in text
    assert wrong not in text
    assert wrong not in repr(connector.settings)
    with pytest.raises(SourceAuthError):
        await connector.health_check()


@pytest.mark.parametrize(
    ("host", "port"),
    [
        pytest.param("127.0.0.1", None, id="closed-port"),
        pytest.param("lookup-my-nowhere.invalid", 3306, id="unknown-host"),
    ],
)
async def test_run__unreachable_server_is_unavailable_fast(
    make_connector: MakeConnector, host: str, port: int | None
) -> None:
    port = port or closed_port()
    connector = make_connector(host=host, port=port)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match=f"cannot reach {re.escape(host)}:{port}"):
        await read(connector, ORDER_STATUS, "12345", timeout_s=30)

    assert time.monotonic() - started < 5  # not the 30 s deadline
    with pytest.raises(SourceUnavailable):
        await connector.open()


async def test_run__unknown_database_is_a_source_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match="MySQL error 1049: Unknown database 'lookup_my_nope'"):
        await read(make_connector(database="lookup_my_nope"), ORDER_STATUS, "12345")


async def test_run__sql_error_names_the_problem(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match=r"MySQL error 1054: Unknown column 'nope'"):
        await read(make_connector(), "SELECT nope FROM orders WHERE order_id = $1", "12345")


async def test_run__errors_never_carry_parameter_values(make_connector: MakeConnector) -> None:
    value = "secret-value-" + secrets.token_hex(4)

    with pytest.raises(SourceError, match="SQL syntax") as caught:
        # sqlglot reads QUALIFY, MariaDB and MySQL do not: the server's syntax error
        # quotes the text from there on, value included (a broken query no longer loads).
        await read(make_connector(), "SELECT order_id FROM orders QUALIFY order_id = $1", value)

    assert value not in str(caught.value)


async def test_run__missing_args_are_a_source_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match="takes 1 argument"):
        await read(make_connector(), ORDER_STATUS)


# -- the pool --------------------------------------------------------------------------


async def test_open__detects_the_server_flavour(make_connector: MakeConnector) -> None:
    connector = make_connector()
    await connector.open()
    version = (await read(connector, "SELECT VERSION() AS v"))[0]["v"]

    assert connector._pool is not None
    assert connector._pool.mariadb == ("MariaDB" in version)


@pytest.mark.parametrize(
    ("mariadb", "remaining_s", "sql"),
    [
        pytest.param(True, 1.5, "SET SESSION max_statement_time = 1.500", id="mariadb"),
        pytest.param(False, 1.5, "SET SESSION max_execution_time = 1500", id="mysql"),
        pytest.param(True, -1, "SET SESSION max_statement_time = 0.001", id="mariadb-spent"),
        pytest.param(False, 0.0001, "SET SESSION max_execution_time = 1", id="mysql-spent"),
    ],
)
def test_deadline_sql__speaks_each_servers_dialect(
    mariadb: bool, remaining_s: float, sql: str
) -> None:
    assert _deadline_sql(mariadb, remaining_s) == sql


async def test_run__concurrent_reads_stay_within_pool_size(make_connector: MakeConnector) -> None:
    connector = make_connector(pool_size=3)

    results = await asyncio.gather(
        *(read(connector, "SELECT SLEEP(0.05) AS s, $1 AS n", n) for n in range(12))
    )

    assert [rows[0]["n"] for rows in results] == list(range(12))
    assert connector._pool is not None and connector._pool.pool.size <= 3
    assert borrowed(connector) == 0


async def test_close__stops_reads_in_flight_and_wakes_waiters(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    marker = new_marker()
    running_read = asyncio.create_task(
        read(connector, f"SELECT SLEEP(30) AS {marker}", timeout_s=60)
    )
    await wait_running(marker)
    waiting = asyncio.create_task(read(connector, ORDER_STATUS, "12345", timeout_s=60))
    await asyncio.sleep(0.05)

    async with asyncio.timeout(2):
        await connector.close()

    with pytest.raises(SourceUnavailable, match="closed"):
        await running_read
    with pytest.raises(SourceUnavailable, match="closed"):
        await waiting


async def test_run__after_close_opens_again(make_connector: MakeConnector) -> None:
    connector = make_connector()
    assert await read(connector, ORDER_STATUS, "12345")
    await connector.close()

    assert await read(connector, ORDER_STATUS, "12345")


def restart_server() -> None:
    """Restart the server and return once it answers again (up to 30 s).

    ``MYSQL_TEST_RESTART`` is a command that does it. Without it: ``SHUTDOWN``,
    then ``scripts/services.sh`` starts it again the way the machine does
    (``service mariadb restart`` needs Debian's ``debian.cnf``, which this
    machine lacks, and its init script does not see the server the machine
    started).
    """
    if RESTART:
        subprocess.run(RESTART, check=True, capture_output=True, timeout=60)
    else:
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@pid_file")
            (pid_file,) = cur.fetchone() or ("",)
            cur.execute("SHUTDOWN")
        wait_for(lambda: not Path(pid_file).exists(), "the server to stop")
        wait_for(lambda: not answers(), "the port to close")
        subprocess.run([str(SERVICES)], check=True, capture_output=True, timeout=60)
    wait_for(answers, "the server to answer again")


def answers() -> bool:
    try:
        admin_connect().close()
    except pymysql.err.OperationalError:
        return False
    return True


def wait_for(condition: Callable[[], bool], what: str, *, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {within_s} s for {what}")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("block_the_loop", [False, True], ids=["loop-running", "loop-blocked"])
async def test_run__recovers_after_a_server_restart(
    make_connector: MakeConnector, block_the_loop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    connector = make_connector(pool_size=3)
    await asyncio.gather(*(read(connector, "SELECT SLEEP(0.1) AS s") for _ in range(3)))
    assert connector._pool is not None and connector._pool.pool.freesize == 3
    started = time.monotonic()

    if block_the_loop:
        # Nothing runs meanwhile: the pool's sockets have not yet seen the server go.
        restart_server()
    else:
        await asyncio.to_thread(restart_server)
    restarted = time.monotonic()
    with caplog.at_level(logging.INFO, logger="connectors.mysql"):
        rows = await read(connector, ORDER_STATUS, "12345")

    assert rows == [{"status": "shipped", "tracking": "UPS123456"}]
    if block_the_loop:
        assert "retrying on another" in caplog.text  # a dead connection, retried once
    assert borrowed(connector) == 0
    print(
        f"restart took {restarted - started:.1f} s;"
        f" the first read after it {1000 * (time.monotonic() - restarted):.0f} ms"
    )


# -- settings, discovery and the example config ------------------------------------------


def test_settings__take_a_dsn() -> None:
    settings = MySQLSettings.model_validate(
        {"dsn": "mysql://reader:p%40ss%3Aw0rd@db.internal:3307/shop", "pool_size": 4}
    )

    login = settings.login()
    assert (login.host, login.port, login.user, login.database) == (
        "db.internal",
        3307,
        "reader",
        "shop",
    )
    assert login.password == "p@ss:w0rd"
    assert "p@ss" not in repr(settings) + repr(login)


def test_settings__take_host_fields_with_defaults() -> None:
    settings = MySQLSettings.model_validate(
        {"host": "db", "database": "shop", "username": "reader", "password": "pw"}
    )

    assert (settings.port, settings.pool_size, settings.charset) == (3306, 25, "utf8mb4")
    assert isinstance(settings.password, SecretStr)


@pytest.mark.parametrize(
    ("connection", "problem"),
    [
        pytest.param({"username": "u"}, "host", id="no-host"),
        pytest.param({"host": "db"}, "username is required", id="no-user"),
        pytest.param({"dsn": "mysql://u:pw@db/x", "host": "db"}, "not both", id="dsn-and-host"),
        pytest.param({"dsn": "postgres://u:pw@db/x"}, "mysql://", id="wrong-scheme"),
        pytest.param({"dsn": "mysql://u:pw@db:99999/x"}, "not a URL", id="bad-port"),
        pytest.param({"dsn": "mysql://u:pw@db/x?ssl=1"}, "no ?options", id="dsn-options"),
        pytest.param({"dsn": "mysql://db/x"}, "no user", id="dsn-no-user"),
        pytest.param({"host": "db", "username": "u", "pool_size": 0}, "greater", id="pool-zero"),
        pytest.param(
            {"host": "db", "username": "u", "charset": "klingon"}, "character set", id="charset"
        ),
        pytest.param({"host": "db", "username": "u", "sslmode": "x"}, "Extra", id="unknown-key"),
    ],
)
def test_settings__refuse_bad_connections(connection: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MySQLSettings.model_validate(connection)

    messages = " ".join(error["msg"] for error in caught.value.errors())
    assert problem in messages
    assert "pw" not in messages


def test_registry__loads_the_mysql_entry_point() -> None:
    assert load("mysql") is MySQLConnector
    assert registry.driver_extra("mysql") == "mysql"


@pytest.mark.slow
def test_example_config__passes_config_check() -> None:
    env = {**os.environ, "MYSQL_PASSWORD": "example-password"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "config",
            "check",
            "--config",
            "config/examples/mysql.yaml",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "example-password" not in done.stdout + done.stderr
