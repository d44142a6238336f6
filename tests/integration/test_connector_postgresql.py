"""The postgresql connector on the local PostgreSQL 15: read-only pool, typed binding, deadlines.

Every test reads a database of its own module (``lookup_pg_<random>``), made
at the start and dropped at the end; the server itself is shared with other
test runs, so nothing here touches another database, and only the restart
test (marked slow) restarts the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

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
from connectors.postgresql import (
    APPLICATION_NAME,
    PostgreSQLConnector,
    PostgreSQLSettings,
    _check_session,
    _ReadSession,
)
from connectors.registry import load
from connectors.sql import SQLSpec
from connectors.testing import RawQuery
from tests.support.connectors import ConnectorFactory, ContractCase, refused_port
from tests.support.connectors import read_args as read
from worker.errors import InputRefused

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
PORT = 5432
ADMIN_USER = "postgres"

UUID_1 = uuid.UUID("6f1c2a4e-8b0d-4c3e-9a57-2d9e0b1f7c11")
UUID_2 = uuid.UUID("0d4b7e6a-3c21-4f8e-b5a9-7e2c1d0f9a22")
ORDER_STATUS = "SELECT status, tracking FROM orders WHERE order_id = $1"
ORDER_COUNT = 3
SCHEMA = f"""
CREATE TABLE orders (
    order_id text PRIMARY KEY,
    status text NOT NULL,
    tracking text,
    estimated_delivery date,
    total numeric(10,2),
    id uuid,
    created timestamptz,
    blob bytea,
    notes text NULL,
    items integer,
    customer_phone text,
    meta jsonb
);
INSERT INTO orders VALUES
  ('12345', 'shipped', 'TRK-1', '2025-09-12', 19.50, '{UUID_1}', '2025-09-01 10:30:00+00',
   '\\x00ff', NULL, 3, '+1234567890', '{{"gift": true}}'),
  ('12346', 'processing', NULL, NULL, 5.00, '{UUID_2}', '2025-09-03 08:00:00+00',
   'label', 'leave at the door', 1, '+1234567890', NULL),
  ('20000', 'delivered', 'TRK-3', '2025-08-01', 7.25, NULL, '2025-07-28 16:45:00+00',
   NULL, NULL, 3, '+1999999999', NULL);
CREATE SEQUENCE order_numbers;
CREATE TABLE widgets (sku text PRIMARY KEY, name text);
INSERT INTO widgets VALUES ('W-1', 'sprocket');
"""

MakeConnector = Callable[..., PostgreSQLConnector]

PSQL = ["psql", "-h", HOST, "-p", str(PORT), "-U", ADMIN_USER, "-X", "-q", "-At"]
PSQL += ["-v", "ON_ERROR_STOP=1"]
WORKER = str(Path(sys.executable).parent / "worker")


#: psql's words for a server that is restarting (other test runs restart it too)
RESTARTING = ("connection to server", "starting up", "shutting down", "administrator command")


def psql(sql: str, *, database: str = "postgres") -> str:
    """Run SQL as the superuser through psql (setup and teardown only)."""
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            [*PSQL, "-d", database, "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return done.stdout.strip()
        if not any(word in done.stderr for word in RESTARTING) or time.monotonic() > deadline:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of this module's own, with the ``orders`` table; dropped at the end."""
    name = f"lookup_pg_{secrets.token_hex(4)}"
    psql(f"CREATE DATABASE {name}")
    try:
        psql(SCHEMA, database=name)
        yield name
    finally:
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        psql(f"DROP DATABASE IF EXISTS {name}")


@contextlib.asynccontextmanager
async def admin(database: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain superuser connection, outside any connector, to look at the server."""
    conn = await asyncpg.connect(host=HOST, port=PORT, user=ADMIN_USER, database=database)
    try:
        yield conn
    finally:
        await conn.close()


async def order_count(database: str) -> int:
    async with admin(database) as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM orders")
        return count


async def running(database: str, marker: str) -> int:
    """How many sessions run a statement containing ``marker`` right now."""
    async with admin(database) as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE $1",
            f"%{marker}%",
        )
        return count


async def eventually(check: Callable[[], Awaitable[bool]], *, within_s: float) -> float:
    """Seconds until ``check`` holds; fails when it does not within ``within_s``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within_s:
            pytest.fail(f"still not true after {within_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def slow_sql() -> tuple[str, str]:
    """A 30-second query, and the marker that finds it in pg_stat_activity."""
    marker = f"lookup_slow_{secrets.token_hex(4)}"
    return f"/* {marker} */ SELECT pg_sleep(30) AS slept", marker


def settings(db: str, **overrides: Any) -> PostgreSQLSettings:
    fields: dict[str, Any] = {
        "host": HOST,
        "port": PORT,
        "database": db,
        "username": ADMIN_USER,
        "pool_size": 2,
    }
    fields.update(overrides)
    return PostgreSQLSettings.model_validate(fields)


@pytest.fixture
async def make_connector(database: str, tmp_path: Path) -> AsyncIterator[MakeConnector]:
    factory = ConnectorFactory(PostgreSQLConnector, "crm", tmp_path)

    def make(
        limits: Limits | None = None, source_id: str = "crm", **overrides: Any
    ) -> PostgreSQLConnector:
        connection = overrides.pop("connection", None) or settings(database, **overrides)
        return factory.build(connection, limits=limits, source_id=source_id)

    yield make
    await factory.aclose()
    # A connection refused after TLS was set up (asyncpg's sslmode "prefer" then tries
    # again without TLS) closes its TLS transport in the background: let that finish
    # before pytest-asyncio closes the loop, or its socket is reported as leaked.
    await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so an unclosed socket is blamed on the test that left it."""
    yield
    gc.collect()


def unprepared(sql: str) -> PreparedQuery:
    """A statement that never went through `prepare` (as if it slipped past it)."""
    return PreparedQuery(spec=SQLSpec(sql, ()), positional=0)


def pool_of(connector: PostgreSQLConnector) -> Any:
    pool = connector.pool
    assert pool is not None, "the connector is not open"
    return pool


def nothing_borrowed(connector: PostgreSQLConnector) -> bool:
    pool = pool_of(connector)
    return bool(pool.get_idle_size() == pool.get_size())


class TestPostgreSQLContract(ContractCase):
    FOUND_QUERY = ORDER_STATUS
    FOUND_PARAMS = Bound(args=("12345",))
    MISSING_PARAMS = Bound(args=("99999",))
    WRITE_QUERY = "DELETE FROM orders"

    @pytest.fixture
    def connector(self, make_connector: MakeConnector) -> PostgreSQLConnector:
        return make_connector()

    @pytest.fixture
    def slow_query(self) -> RawQuery | None:
        return slow_sql()[0]


# -- settings and discovery ----------------------------------------------------------


def test_settings__the_seed_connection_validates_as_written() -> None:
    seed = {
        "host": "tenant-db.company.com",
        "database": "crm_prod",
        "username": "flomastr_readonly",
        "password": "encrypted_password",
    }

    parsed = PostgreSQLSettings.model_validate(seed)

    assert (parsed.host, parsed.port, parsed.pool_size) == ("tenant-db.company.com", 5432, 25)
    assert parsed.statement_timeout_ms is None
    assert "encrypted_password" not in repr(parsed)


def test_settings__a_dsn_alone_is_enough() -> None:
    parsed = PostgreSQLSettings.model_validate({"dsn": "postgresql://u:pw@db:5433/crm"})

    assert parsed.dsn is not None and parsed.host is None
    assert "pw@" not in repr(parsed)


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"host": "db", "database": "crm"}, id="no-username"),
        pytest.param({"host": "db", "username": "u"}, id="no-database"),
        pytest.param({"dsn": "postgresql://db/crm", "host": "db"}, id="dsn-and-host"),
        pytest.param({"dsn": "mysql://db/crm"}, id="dsn-of-another-kind"),
        pytest.param({"dsn": "postgresql://db/crm", "pool_size": 0}, id="pool-size-zero"),
        pytest.param({"dsn": "postgresql://db/crm", "pool_size": 101}, id="pool-size-too-big"),
        pytest.param({"dsn": "postgresql://db/crm", "port": 0}, id="port-zero"),
        pytest.param({"dsn": "postgresql://db/crm", "statement_timeout_ms": 0}, id="timeout-zero"),
        pytest.param({"dsn": "postgresql://db/crm", "user": "u"}, id="unknown-key"),
    ],
)
def test_settings__refuses_bad_connections(connection: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PostgreSQLSettings.model_validate(connection)


def test_settings__a_bad_dsn_is_never_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        PostgreSQLSettings.model_validate({"dsn": "mysql://u:hunter2-secret@db/crm"})

    messages = " ".join(err["msg"] for err in caught.value.errors())
    assert "postgresql://" in messages
    assert "hunter2-secret" not in messages


def test_registry__loads_the_postgresql_entry_point() -> None:
    assert load("postgresql") is PostgreSQLConnector
    assert registry.driver_extra("postgresql") == "postgresql"


@pytest.mark.slow
def test_config_example__passes_config_check() -> None:
    env = {**os.environ, "CRM_DB_PASSWORD": "not-a-real-password"}
    done = subprocess.run(
        [WORKER, "config", "check", "--config", str(REPO / "config/examples/postgresql.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "ok — 1 source(s), 2 lookup(s)" in done.stdout
    assert "not-a-real-password" not in done.stdout + done.stderr


# -- prepare -----------------------------------------------------------------------


def test_prepare__keeps_dollar_placeholders_for_asyncpg() -> None:
    query = PostgreSQLConnector.prepare(
        "SELECT * FROM orders WHERE customer_phone = $2 AND order_id = $1"
    )

    assert query.positional == 2
    assert isinstance(query.spec, SQLSpec)
    assert query.spec.text == "SELECT * FROM orders WHERE customer_phone = $2 AND order_id = $1"


def test_prepare__accepts_the_sql_mapping_form() -> None:
    assert PostgreSQLConnector.prepare({"sql": ORDER_STATUS}) == PostgreSQLConnector.prepare(
        ORDER_STATUS
    )


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
    with pytest.raises(ConfigError, match=r"postgresql query|non-empty"):
        PostgreSQLConnector.prepare(raw)


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("DELETE FROM orders", id="delete"),
        pytest.param("UPDATE orders SET status = 'x'", id="update"),
        pytest.param("INSERT INTO orders (order_id) VALUES ($1)", id="insert"),
        pytest.param("SELECT 1; DROP TABLE orders", id="stacked"),
        pytest.param("WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone", id="cte"),
        pytest.param("SET default_transaction_read_only = off", id="set"),
        pytest.param("COPY orders TO PROGRAM 'sh'", id="copy"),
        pytest.param("SELECT * INTO orders_copy FROM orders", id="select-into"),
    ],
)
def test_prepare__refuses_writes(sql: str) -> None:
    with pytest.raises(NotARead):
        PostgreSQLConnector.prepare(sql)


# -- reading and binding -------------------------------------------------------------

BY_ORDER = "SELECT order_id FROM orders WHERE {} ORDER BY order_id"


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        pytest.param("order_id = $1", "12345", ["12345"], id="text-from-text"),
        pytest.param("order_id = $1", 12345, ["12345"], id="text-from-integer"),
        pytest.param("items = $1", "3", ["12345", "20000"], id="integer-from-text"),
        pytest.param("items = $1", 1, ["12346"], id="integer-from-integer"),
        pytest.param("estimated_delivery = $1", "2025-09-12", ["12345"], id="date-from-iso-text"),
        pytest.param("total = $1", "19.50", ["12345"], id="numeric-from-text"),
        pytest.param("total = $1", 7.25, ["20000"], id="numeric-from-float"),
        pytest.param("id = $1", str(UUID_2), ["12346"], id="uuid-from-text"),
        pytest.param("created < $1", "2025-08-30T00:00:00+00:00", ["20000"], id="timestamptz"),
        pytest.param("(notes IS NULL) = $1", "false", ["12346"], id="boolean-from-text"),
        pytest.param("total > $1::float8", "8", ["12345"], id="float-from-text"),
        pytest.param("tracking = $1", None, [], id="null-matches-nothing"),
    ],
)
async def test_run__binds_typed_values(
    make_connector: MakeConnector, where: str, value: object, expected: list[str]
) -> None:
    rows = await read(make_connector(), BY_ORDER.format(where), value)

    assert [row["order_id"] for row in rows] == expected


async def test_run__binds_out_of_order_args(make_connector: MakeConnector) -> None:
    connector = make_connector()
    sql = "SELECT order_id FROM orders WHERE customer_phone = $2 AND order_id = $1"

    assert await read(connector, sql, "12345", "+1234567890") == [{"order_id": "12345"}]
    assert await read(connector, sql, "+1234567890", "12345") == []


async def test_run__binds_one_arg_used_twice(make_connector: MakeConnector) -> None:
    sql = "SELECT order_id FROM orders WHERE order_id = $1 OR tracking = $1 ORDER BY 1"

    assert await read(make_connector(), sql, "TRK-3") == [{"order_id": "20000"}]


async def test_run__value_that_cannot_have_the_column_type_is_a_clean_error(
    make_connector: MakeConnector,
) -> None:
    # The customer's value, not a source failure: `InputRefused`, which names the $n.
    with pytest.raises(InputRefused, match=r"\$1 is not a valid int4") as caught:
        await read(make_connector(), BY_ORDER.format("items = $1"), "abc' OR 1=1")

    assert "abc" not in str(caught.value)


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param("1 OR 1=1", id="or-true"),
        pytest.param("'; DROP TABLE orders; --", id="drop-table"),
        pytest.param("12345' OR '1'='1", id="quote-or"),
        pytest.param("12345; DELETE FROM orders", id="stacked-delete"),
        pytest.param("$1", id="placeholder-text"),
        pytest.param("12345\\'; DELETE FROM orders; --", id="backslash-quote"),
    ],
)
async def test_run__injection_text_is_just_data(
    make_connector: MakeConnector, database: str, evil: str
) -> None:
    assert await read(make_connector(), ORDER_STATUS, evil) == []
    assert await order_count(database) == ORDER_COUNT


async def test_run__happy_path_reads_the_seed_query(make_connector: MakeConnector) -> None:
    rows = await read(make_connector(), ORDER_STATUS, "12345")

    assert rows == [{"status": "shipped", "tracking": "TRK-1"}]


async def test_run__unknown_order_is_not_found(make_connector: MakeConnector) -> None:
    result = await make_connector().run(
        PostgreSQLConnector.prepare(ORDER_STATUS), Bound(args=("99999",)), timeout_s=5
    )

    assert not result.found
    assert result.rows == []


async def test_run__rows_are_plain_values(make_connector: MakeConnector) -> None:
    rows = await read(make_connector(), "SELECT * FROM orders ORDER BY order_id")

    assert rows[0] == {
        "order_id": "12345",
        "status": "shipped",
        "tracking": "TRK-1",
        "estimated_delivery": "2025-09-12",
        "total": 19.5,
        "id": str(UUID_1),
        "created": "2025-09-01T10:30:00+00:00",
        "blob": "AP8=",  # bytes that are not UTF-8 come back as base64
        "notes": None,
        "items": 3,
        "customer_phone": "+1234567890",
        "meta": {"gift": True},  # jsonb as a value, not as its text
    }
    assert rows[1]["blob"] == "label"
    assert rows[1]["total"] == 5
    assert rows[1]["estimated_delivery"] is None


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param("SELECT 1.10::numeric AS v", 1.1, id="numeric"),
        pytest.param("SELECT 'NaN'::numeric AS v", "NaN", id="numeric-nan"),
        pytest.param("SELECT interval '90 minutes' AS v", 5400.0, id="interval"),
        pytest.param("SELECT time '08:30' AS v", "08:30:00", id="time"),
        pytest.param("SELECT timestamp '2025-09-12 08:30' AS v", "2025-09-12T08:30:00", id="ts"),
        pytest.param("SELECT ARRAY[1, 2, 3] AS v", [1, 2, 3], id="array"),
        pytest.param("SELECT '[1, {\"a\": null}]'::json AS v", [1, {"a": None}], id="json"),
        pytest.param("SELECT inet '10.0.0.1' AS v", "10.0.0.1", id="inet"),
        pytest.param("SELECT true AS v", True, id="boolean"),
        pytest.param("SELECT NULL AS v", None, id="null"),
    ],
)
async def test_run__driver_types_become_json_values(
    make_connector: MakeConnector, sql: str, expected: object
) -> None:
    assert await read(make_connector(), sql) == [{"v": expected}]


async def test_run__rows_are_capped_by_the_limits(make_connector: MakeConnector) -> None:
    connector = make_connector(limits=Limits(max_rows=2))

    assert len(await read(connector, "SELECT order_id FROM orders")) == 2


async def test_run__the_cap_stops_fetching_instead_of_slicing(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(limits=Limits(max_rows=3))
    started = time.monotonic()

    # A billion rows, produced one at a time: fetching them all would never end.
    rows = await read(connector, "SELECT generate_series(1, 1000000000) AS n", timeout_s=10)

    assert rows == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert time.monotonic() - started < 6  # within the 10 s deadline: it stopped fetching


async def test_run__sql_error_is_a_source_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match='column "nope" does not exist'):
        await read(make_connector(), "SELECT nope FROM orders")


async def test_run__server_error_quoting_a_value_does_not_repeat_it(
    make_connector: MakeConnector,
) -> None:
    # SQLSTATE 22P02: a value refused (`InputRefused`), not a source failure.
    with pytest.raises(InputRefused, match=r"InvalidTextRepresentationError") as caught:
        await read(make_connector(), "SELECT $1::text::int AS n", "secret-ish-value")

    assert "secret-ish-value" not in str(caught.value)


async def test_run__missing_args_are_a_source_error(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceError, match="takes 1 argument"):
        await read(make_connector(), ORDER_STATUS)


async def test_run__schema_change_between_reads_is_read_again(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector(pool_size=1)
    assert await read(connector, "SELECT * FROM widgets") == [{"sku": "W-1", "name": "sprocket"}]

    async with admin(database) as conn:
        await conn.execute("ALTER TABLE widgets ADD COLUMN colour text DEFAULT 'red'")
    try:
        rows = await read(connector, "SELECT * FROM widgets")
    finally:
        async with admin(database) as conn:
            await conn.execute("ALTER TABLE widgets DROP COLUMN colour")

    assert rows == [{"sku": "W-1", "name": "sprocket", "colour": "red"}]


# -- read-only -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param(["DELETE FROM orders"], id="delete"),
        pytest.param(["UPDATE orders SET status = 'lost'"], id="update"),
        pytest.param(["INSERT INTO orders (order_id, status) VALUES ('x', 'y')"], id="insert"),
        pytest.param(["CREATE TABLE sneaky (x int)"], id="create"),
        pytest.param(["SELECT nextval('order_numbers')"], id="nextval"),
        pytest.param(
            [
                "SELECT set_config('default_transaction_read_only', 'off', false)",
                "DELETE FROM orders",
            ],
            id="session-default-off-first",
        ),
        pytest.param(
            ["SELECT set_config('transaction_read_only', 'off', true)"], id="transaction-off"
        ),
    ],
)
async def test_run__session_is_read_only_even_without_prepare(
    make_connector: MakeConnector, database: str, statements: list[str]
) -> None:
    connector = make_connector(pool_size=1)  # the same connection for every statement
    *setup, write = statements
    for sql in setup:
        await connector.run(unprepared(sql), Bound(), timeout_s=5)

    with pytest.raises(SourceError, match=r"read-only transaction|read-write mode"):
        await connector.run(unprepared(write), Bound(), timeout_s=5)
    assert await order_count(database) == ORDER_COUNT


async def test_pool__a_server_that_does_not_report_read_only_gets_its_session_reset(
    database: str,
) -> None:
    # PostgreSQL before 14 sends no ParameterStatus for default_transaction_read_only:
    # a session that hides the one this server sent stands for such a server.
    class OlderServer(_ReadSession):
        __slots__ = ()

        def get_settings(self) -> Any:
            return types.SimpleNamespace()

    conn = await asyncpg.connect(
        host=HOST,
        port=PORT,
        user=ADMIN_USER,
        database=database,
        connection_class=OlderServer,
        server_settings={"default_transaction_read_only": "on"},
    )
    try:
        await conn.use_statement_timeout(1234)
        await conn.execute("SET default_transaction_read_only = off")

        await _check_session(conn)

        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        assert await conn.fetchval("SHOW statement_timeout") == "0"
        assert conn._statement_timeout_ms is None  # set again by the next read
    finally:
        await conn.close()


async def test_pool__every_driver_session_is_read_only(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector()
    await connector.open()

    async with pool_of(connector).acquire() as conn:
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        assert await conn.fetchval("SHOW application_name") == APPLICATION_NAME
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("DELETE FROM orders")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE sneaky (x int)")
    assert await order_count(database) == ORDER_COUNT


# -- deadlines and cancellation --------------------------------------------------------


def as_ms(setting: str) -> int:
    if setting.endswith("ms"):
        return int(setting[:-2])
    if setting.endswith("s"):
        return int(setting[:-1]) * 1000
    return int(setting)


async def test_run__statement_timeout_is_timeout_s_capped(
    make_connector: MakeConnector,
) -> None:
    sql = "SELECT current_setting('statement_timeout') AS st"
    connector = make_connector()

    st = as_ms((await read(connector, sql, timeout_s=3))[0]["st"])
    capped = as_ms(
        (await read(make_connector(statement_timeout_ms=1500), sql, timeout_s=3))[0]["st"]
    )
    # A read that asks for another timeout_s sets the pooled session anew.
    outside = await connector.run(unprepared("SHOW statement_timeout"), Bound(), timeout_s=9)

    assert 2500 <= st <= 3000
    assert capped == 1500
    assert 8000 <= as_ms(outside.rows[0]["statement_timeout"]) <= 9000


async def test_run__deadline_stops_the_server_query(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector()
    sql, marker = slow_sql()
    started = time.monotonic()

    with pytest.raises(SourceTimeout, match="deadline"):
        await read(connector, sql, timeout_s=0.5)

    assert time.monotonic() - started < 0.5 + 4  # the query sleeps 30 s
    await eventually(lambda: _none_running(database, marker), within_s=5)
    assert nothing_borrowed(connector)


async def test_run__caller_deadline_stops_the_server_query(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector()
    sql, marker = slow_sql()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await read(connector, sql, timeout_s=60)

    await eventually(lambda: _none_running(database, marker), within_s=1)
    assert nothing_borrowed(connector)


async def test_run__server_statement_timeout_stops_a_query_on_its_own(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector(statement_timeout_ms=300)
    sql, marker = slow_sql()
    started = time.monotonic()

    with pytest.raises(SourceTimeout, match="server stopped it"):
        await read(connector, sql, timeout_s=20)

    assert time.monotonic() - started < 0.3 + 4  # neither the 30 s sleep nor the 20 s deadline
    assert await running(database, marker) == 0
    assert nothing_borrowed(connector)


async def test_run__cancelled_read_returns_its_connection_and_stops_the_query(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector(pool_size=1)
    sql, marker = slow_sql()
    task = asyncio.create_task(read(connector, sql, timeout_s=60))
    await eventually(lambda: _some_running(database, marker), within_s=5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    took = await eventually(lambda: _none_running(database, marker), within_s=5)
    assert nothing_borrowed(connector)
    assert took < 5  # stopped, not left to its 30 s
    async with asyncio.timeout(1):  # the only connection is free again
        assert await read(connector, ORDER_STATUS, "12345")


async def test_run__waiting_for_a_busy_pool_counts_against_timeout_s(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(pool_size=1)
    hog = asyncio.create_task(read(connector, slow_sql()[0], timeout_s=60))
    await asyncio.sleep(0.2)

    with pytest.raises(SourceTimeout):
        await read(connector, ORDER_STATUS, "12345", timeout_s=0.3)

    hog.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hog
    async with asyncio.timeout(1):
        assert await read(connector, ORDER_STATUS, "12345")


async def _none_running(database: str, marker: str) -> bool:
    return await running(database, marker) == 0


async def _some_running(database: str, marker: str) -> bool:
    return await running(database, marker) > 0


# -- failures to connect ---------------------------------------------------------------


def closed_port() -> int:
    return refused_port(HOST)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


async def test_run__unreachable_port_is_unavailable_fast(
    make_connector: MakeConnector,
) -> None:
    connector = make_connector(port=closed_port())
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="connection refused"):
        await read(connector, ORDER_STATUS, "12345", timeout_s=30)

    assert time.monotonic() - started < 5  # not the 30 s deadline


async def test_run__seed_host_that_does_not_resolve_is_unavailable_fast(
    make_connector: MakeConnector,
) -> None:
    seed = PostgreSQLSettings.model_validate(
        {
            "host": "tenant-db.company.com",
            "database": "crm_prod",
            "username": "flomastr_readonly",
            "password": "encrypted_password",
        }
    )
    connector = make_connector(connection=seed)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match=r"tenant-db\.company\.com") as caught:
        await read(connector, ORDER_STATUS, "12345", timeout_s=10)

    assert time.monotonic() - started < 5.5
    assert "encrypted_password" not in str(caught.value)


async def test_run__silent_server_gives_up_within_timeout_s(
    make_connector: MakeConnector, silent_server: int
) -> None:
    connector = make_connector(port=silent_server)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="no answer in time"):
        await read(connector, ORDER_STATUS, "12345", timeout_s=1)

    assert 0.9 < time.monotonic() - started < 1 + 4  # the server never answers


async def test_open__reports_an_unreachable_server(make_connector: MakeConnector) -> None:
    connector = make_connector(port=closed_port())

    with pytest.raises(SourceUnavailable, match="connection refused"):
        await connector.open()
    assert connector.pool is None  # nothing half-open is kept; the next read tries again


async def test_health_check__unreachable_is_unavailable(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceUnavailable):
        await make_connector(port=closed_port()).health_check()


@pytest.mark.parametrize(
    "how",
    [pytest.param("fields", id="username-password"), pytest.param("dsn", id="dsn")],
)
async def test_run__bad_credentials_name_the_source_not_the_secret(
    make_connector: MakeConnector, database: str, how: str
) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    user = f"nobody_{secrets.token_hex(4)}"
    dsn = f"postgresql://{user}:{password}@{HOST}:{PORT}/{database}"
    connection = (
        PostgreSQLSettings(dsn=dsn)  # type: ignore[arg-type]
        if how == "dsn"
        else settings(database, username=user, password=password)
    )
    connector = make_connector(connection=connection, source_id="primary_crm")

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await read(connector, ORDER_STATUS, "12345")

    assert "primary_crm" in str(caught.value)
    for text in (str(caught.value), repr(caught.value)):
        assert password not in text
        assert dsn not in text


async def test_run__missing_database_is_a_clear_error(make_connector: MakeConnector) -> None:
    connector = make_connector(database=f"lookup_pg_missing_{secrets.token_hex(4)}")

    with pytest.raises(SourceError, match="does not exist"):
        await read(connector, ORDER_STATUS, "12345")


# -- the pool's life -------------------------------------------------------------------


async def test_run__a_killed_session_is_replaced_without_a_failed_read(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector(pool_size=1)
    pid_sql = "SELECT pg_backend_pid() AS pid"
    (first,) = await read(connector, pid_sql)

    async with admin(database) as conn:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", first["pid"])
    (second,) = await read(connector, pid_sql)

    assert second["pid"] != first["pid"]


async def test_run__after_close_opens_again(make_connector: MakeConnector) -> None:
    connector = make_connector()
    assert await read(connector, ORDER_STATUS, "12345")
    await connector.close()

    assert await read(connector, ORDER_STATUS, "12345")


async def session_pids(connector: PostgreSQLConnector, count: int) -> set[int]:
    """The server pids of ``count`` pooled sessions (reads held long enough to use each)."""
    sql = "SELECT pg_backend_pid() AS pid, pg_sleep(0.2) AS slept"
    results = await asyncio.gather(*(read(connector, sql) for _ in range(count)))
    return {row["pid"] for rows in results for row in rows}


async def test_close__ends_every_session(make_connector: MakeConnector, database: str) -> None:
    connector = make_connector(pool_size=3)
    pids = await session_pids(connector, 3)
    assert len(pids) == 3

    await connector.close()

    async def all_gone() -> bool:
        async with admin(database) as conn:
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)
            )
        return bool(left == 0)

    await eventually(all_gone, within_s=2)  # a backend takes a moment to exit


def pg_restart() -> None:
    subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True, timeout=60)


async def wait_for_server(database: str, *, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            async with admin(database) as conn:
                await conn.fetchval("SELECT 1")
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_run__server_restart_mid_run_recovers(
    make_connector: MakeConnector, database: str
) -> None:
    connector = make_connector(pool_size=3)
    before = await session_pids(connector, 3)
    assert len(before) == 3  # the pool holds three sessions
    in_flight = asyncio.create_task(read(connector, "SELECT pg_sleep(20) AS slept", timeout_s=25))
    await asyncio.sleep(0.2)

    started = time.monotonic()
    await asyncio.to_thread(pg_restart)
    await wait_for_server(database)
    back_after = time.monotonic() - started

    # The read the restart cut short fails once, as a source error (a fallback).
    with pytest.raises(SourceUnavailable):
        await in_flight
    # Every later read works, on new sessions, without restarting the worker.
    after = await session_pids(connector, 3)
    assert len(after) == 3
    assert not after & before
    assert await read(connector, ORDER_STATUS, "12345") == [
        {"status": "shipped", "tracking": "TRK-1"}
    ]
    print(f"server restarted and answering again after {back_after:.1f} s")


# -- end to end ------------------------------------------------------------------------


@pytest.mark.slow
def test_cli__lookup_answers_from_postgresql(database: str, tmp_path: Path) -> None:
    config = tmp_path / "crm.yaml"
    config.write_text(
        f"""
tenant_id: acme_crm
templates_dir: {REPO / "templates"}
data_sources:
  - id: primary_crm
    type: postgresql
    connection:
      host: {HOST}
      port: {PORT}
      database: {database}
      username: {ADMIN_USER}
      pool_size: 2
    queries:
      order_status: SELECT status, tracking, estimated_delivery FROM orders WHERE order_id = $1
lookups:
  order_status:
    source: primary_crm
    args: [order_id]
    params:
      order_id: {{pattern: '[0-9]{{1,12}}'}}
    template: order_status.j2
""",
        encoding="utf-8",
    )
    done = subprocess.run(
        [WORKER, "lookup", "--config", str(config), "order_status", "order_id=12345", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["outcome"] == "ok"
    assert answer["message"] == (
        "Your order #12345 has been shipped! 📦\nTracking: TRK-1\nExpected delivery: September 12th"
    )
    assert answer["data"] == [
        {"status": "shipped", "tracking": "TRK-1", "estimated_delivery": "2025-09-12"}
    ]
