"""The sqlite connector: read-only pool, `$n` binding, deadlines that stop the work."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    NotARead,
    PreparedQuery,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.registry import load
from connectors.sql import SQLSpec
from connectors.sqlite import SQLiteConnector, SQLiteSettings
from connectors.testing import RawQuery
from tests.support.connectors import ConnectorFactory, ContractCase
from tests.support.connectors import read_args as read

ORDERS = [
    ("12345", "+1234567890", "shipped", "TRK-1", 19.5, b"\x00\xff"),
    ("12346", "+1234567890", "processing", None, 5.0, None),
    ("20000", "+1999999999", "delivered", "TRK-3", 7.25, None),
]
ORDER_STATUS = "SELECT status, tracking_number FROM orders WHERE order_id = $1"
FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"

MakeConnector = Callable[..., SQLiteConnector]


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with connect(path) as conn:
        conn.execute(
            "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_phone TEXT, status TEXT,"
            " tracking_number TEXT, total REAL, label BLOB)"
        )
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", ORDERS)
        conn.commit()
    return path


def order_count(path: Path) -> int:
    with connect(path) as conn:
        count: int = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        return count


@pytest.fixture
async def make_connector(db_path: Path) -> AsyncIterator[MakeConnector]:
    factory = ConnectorFactory(SQLiteConnector, "shop", db_path.parent)

    def make(
        path: str = "shop.db", pool_size: int = 2, limits: Limits | None = None
    ) -> SQLiteConnector:
        return factory.make(limits, path=path, pool_size=pool_size)

    yield make
    await factory.aclose()


class TestSQLiteContract(ContractCase):
    FOUND_QUERY = ORDER_STATUS
    FOUND_PARAMS = Bound(args=("12345",))
    MISSING_PARAMS = Bound(args=("99999",))
    SLOW_QUERY = FOREVER
    WRITE_QUERY = "DELETE FROM orders"

    @pytest.fixture
    async def connector(self, make_connector: MakeConnector) -> SQLiteConnector:
        # One connection: a read left running would block every later one.
        return make_connector(pool_size=1)


# -- prepare -----------------------------------------------------------------------


def test_prepare__rewrites_dollar_placeholders_for_sqlite() -> None:
    query = SQLiteConnector.prepare(
        "SELECT * FROM orders WHERE customer_phone = $2 AND order_id = $1"
    )

    assert query.positional == 2
    assert isinstance(query.spec, SQLSpec)
    assert query.spec.text == "SELECT * FROM orders WHERE customer_phone = ?2 AND order_id = ?1"


def test_prepare__accepts_the_sql_mapping_form() -> None:
    assert SQLiteConnector.prepare({"sql": ORDER_STATUS}) == SQLiteConnector.prepare(ORDER_STATUS)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"sql": 1}, id="sql-not-text"),
        pytest.param({"query": ORDER_STATUS}, id="wrong-key"),
        pytest.param({"sql": ORDER_STATUS, "limit": 1}, id="extra-key"),
        pytest.param("   ", id="blank"),
    ],
)
def test_prepare__refuses_bad_shapes(raw: RawQuery) -> None:
    with pytest.raises(ConfigError, match=r"sqlite query|non-empty"):
        SQLiteConnector.prepare(raw)


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("DELETE FROM orders", id="delete"),
        pytest.param("UPDATE orders SET status = 'x'", id="update"),
        pytest.param("INSERT INTO orders (order_id) VALUES ($1)", id="insert"),
        pytest.param("SELECT 1; DROP TABLE orders", id="stacked"),
        pytest.param("PRAGMA query_only = 0", id="pragma"),
        pytest.param("ATTACH DATABASE 'other.db' AS other", id="attach"),
        pytest.param("WITH x AS (SELECT 1) DELETE FROM orders", id="cte-delete"),
    ],
)
def test_prepare__refuses_writes(sql: str) -> None:
    with pytest.raises(NotARead):
        SQLiteConnector.prepare(sql)


# -- run ---------------------------------------------------------------------------


async def test_run__binds_out_of_order_args(make_connector: MakeConnector) -> None:
    connector = make_connector()
    sql = "SELECT order_id FROM orders WHERE customer_phone = $2 AND order_id = $1"

    assert await read(connector, sql, "12345", "+1234567890") == [{"order_id": "12345"}]
    assert await read(connector, sql, "+1234567890", "12345") == []


async def test_run__binds_one_arg_used_twice(make_connector: MakeConnector) -> None:
    sql = "SELECT order_id FROM orders WHERE order_id = $1 OR tracking_number = $1 ORDER BY 1"

    assert await read(make_connector(), sql, "TRK-3") == [{"order_id": "20000"}]


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param("1 OR 1=1", id="or-true"),
        pytest.param("'; DROP TABLE orders; --", id="drop-table"),
        pytest.param("12345' OR '1'='1", id="quote-or"),
        pytest.param("12345; DELETE FROM orders", id="stacked-delete"),
        pytest.param("$1", id="placeholder-text"),
    ],
)
async def test_run__injection_text_is_just_data(
    make_connector: MakeConnector, db_path: Path, evil: str
) -> None:
    assert await read(make_connector(), ORDER_STATUS, evil) == []
    assert order_count(db_path) == len(ORDERS)


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param(["DELETE FROM orders"], id="delete"),
        pytest.param(["INSERT INTO orders (order_id) VALUES ('x')"], id="insert"),
        pytest.param(["PRAGMA query_only = 0", "DELETE FROM orders"], id="query-only-off"),
        pytest.param(["CREATE TABLE t (x)"], id="create"),
    ],
)
async def test_run__database_is_read_only_even_without_prepare(
    make_connector: MakeConnector, db_path: Path, statements: list[str]
) -> None:
    connector = make_connector(pool_size=1)  # the same connection for every statement
    *setup, write = statements
    for sql in setup:
        await connector.run(PreparedQuery(spec=SQLSpec(sql, ())), Bound(), timeout_s=5)

    with pytest.raises(SourceError, match=r"readonly|read-only"):
        await connector.run(PreparedQuery(spec=SQLSpec(write, ())), Bound(), timeout_s=5)
    assert order_count(db_path) == len(ORDERS)


async def test_run__long_recursive_cte_is_interrupted_by_timeout_s(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    started = time.monotonic()

    with pytest.raises(SourceTimeout, match="deadline"):
        await read(connector, FOREVER, timeout_s=0.3)

    assert time.monotonic() - started < 0.3 + 4
    async with asyncio.timeout(1):  # the only connection is free again: the CTE stopped
        assert await read(connector, ORDER_STATUS, "12345")


async def test_run__long_recursive_cte_is_interrupted_by_cancellation(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    task = asyncio.create_task(read(connector, FOREVER, timeout_s=60))
    await asyncio.sleep(0.2)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with asyncio.timeout(1):
        assert await read(connector, ORDER_STATUS, "12345")


async def test_run__waiting_for_a_busy_pool_counts_against_timeout_s(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    hog = asyncio.create_task(read(connector, FOREVER, timeout_s=60))
    await asyncio.sleep(0.1)

    with pytest.raises(SourceTimeout):
        await read(connector, ORDER_STATUS, "12345", timeout_s=0.3)

    hog.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hog
    async with asyncio.timeout(1):
        assert await read(connector, ORDER_STATUS, "12345")


async def test_run__rows_are_plain_values(make_connector: MakeConnector) -> None:
    rows = await read(make_connector(), "SELECT * FROM orders WHERE order_id = $1", "12345")

    assert rows == [
        {
            "order_id": "12345",
            "customer_phone": "+1234567890",
            "status": "shipped",
            "tracking_number": "TRK-1",
            "total": 19.5,
            "label": "AP8=",  # bytes that are not UTF-8 come back as base64
        }
    ]


async def test_run__rows_are_capped_by_the_limits(make_connector: MakeConnector) -> None:
    connector = make_connector(limits=Limits(max_rows=2))

    assert len(await read(connector, "SELECT order_id FROM orders")) == 2


async def test_run__sql_error_is_a_source_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match="no such column: nope"):
        await read(make_connector(), "SELECT nope FROM orders")


async def test_run__missing_args_are_a_source_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match="takes 1 argument"):
        await read(make_connector(), ORDER_STATUS)


async def test_run__missing_database_file_is_unavailable(
    make_connector: MakeConnector, tmp_path: Path
) -> None:
    connector = make_connector(path="nowhere/missing.db")

    with pytest.raises(SourceUnavailable, match=r"'nowhere/missing\.db' does not exist") as caught:
        await read(connector, ORDER_STATUS, "12345")
    assert str(tmp_path) not in str(caught.value)
    assert not (tmp_path / "nowhere").exists()  # a read-only open creates nothing


async def test_run__a_file_that_is_not_a_database_is_a_source_error(
    make_connector: MakeConnector, tmp_path: Path
) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)

    with pytest.raises(SourceError, match="not a database"):
        await read(make_connector(path="junk.db"), ORDER_STATUS, "12345")


async def test_run__absolute_path_is_used_as_is(
    make_connector: MakeConnector, db_path: Path
) -> None:
    assert await read(make_connector(path=str(db_path)), ORDER_STATUS, "12345")


async def test_health_check__missing_file_is_unavailable(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceUnavailable):
        await make_connector(path="missing.db").health_check()


async def test_close__stops_reads_in_flight_and_wakes_waiters(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    running = asyncio.create_task(read(connector, FOREVER, timeout_s=60))
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(read(connector, ORDER_STATUS, "12345"))
    await asyncio.sleep(0.05)

    async with asyncio.timeout(2):
        await connector.close()

    with pytest.raises(SourceError, match="interrupted"):
        await running
    with pytest.raises(SourceUnavailable, match="closed"):
        await waiting


async def test_run__after_close_opens_again(make_connector: MakeConnector) -> None:
    connector = make_connector()
    assert await read(connector, ORDER_STATUS, "12345")
    await connector.close()

    assert await read(connector, ORDER_STATUS, "12345")


# -- settings and discovery ----------------------------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({"path": "x.db", "pool_size": 0}, id="pool-size-zero"),
        pytest.param({"path": ""}, id="empty-path"),
        pytest.param({"path": "x.db", "password": "hunter2"}, id="unknown-key"),
        pytest.param({}, id="no-path"),
    ],
)
def test_settings__refuses_bad_connections(connection: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SQLiteSettings.model_validate(connection)


def test_registry__loads_the_sqlite_entry_point() -> None:
    assert load("sqlite") is SQLiteConnector
