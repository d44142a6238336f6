"""A customer's words against real sources: refused cleanly, never held against the source.

One tenant reads PostgreSQL, MariaDB, SQLite, Redis and the loopback REST app.
Values a database refuses (``"abc"`` for an integer, a regular expression that
does not parse) are ``invalid_input`` and leave the source's circuit alone; text
no driver can encode (a lone surrogate) is refused where the payload is read,
for every connector; a backtracking tenant pattern runs in linear time.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pymysql
import pytest
import redis.asyncio

from tests.servers.hostile import Recorder, serve
from tests.servers.rest_app import API_KEY, rest_app
from worker.config import load_tenant
from worker.metrics import Metrics
from worker.pipeline import Answer, Pipeline
from worker.sources import Sources

REPO = Path(__file__).resolve().parents[2]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
REDIS_URL = "redis://127.0.0.1:6379/0"

TENANT = """
tenant_id: shop
data_sources:
  - id: pg
    type: postgresql
    connection: {{host: 127.0.0.1, port: 5432, username: postgres, database: {pg_db}}}
    circuit: {{failures: 3, reset_s: 60}}
    queries:
      by_id: SELECT status FROM orders WHERE id = $1
      by_day: SELECT status FROM orders WHERE placed = $1
  - id: my
    type: mysql
    connection: {{host: 127.0.0.1, port: 3306, username: root, database: {my_db}}}
    circuit: {{failures: 3, reset_s: 60}}
    queries:
      by_id: SELECT status FROM orders WHERE id = $1
      by_status: SELECT status FROM orders WHERE status REGEXP $1
      by_count: SELECT status FROM orders WHERE CAST($1 AS UNSIGNED) - 1 > id
  - id: lite
    type: sqlite
    connection: {{path: shop.db}}
    queries:
      by_id: SELECT status FROM orders WHERE order_id = $1
  - id: kv
    type: redis
    connection: {{url: "redis://127.0.0.1:6379/0"}}
    queries:
      by_id: {{command: HGETALL, key: "{ns}order:{{order_id}}"}}
  - id: api
    type: rest_api
    connection: {{base_url: "{api}", api_key: "{api_key}",
                 headers: {{Authorization: "Bearer {{api_key}}"}}}}
    queries:
      stock: /products/{{sku}}/stock
lookups:
  pg_order:
    source: pg
    query: by_id
    args: [order_id]
    template: "{{{{ row.status }}}}"
  pg_day:
    source: pg
    query: by_day
    args: [day]
    template: "{{{{ row.status }}}}"
  my_order:
    source: my
    query: by_id
    args: [order_id]
    template: "{{{{ row.status }}}}"
  my_status:
    source: my
    query: by_status
    args: [status]
    template: "{{{{ row.status }}}}"
  my_count:
    source: my
    query: by_count
    args: [count]
    template: "{{{{ row.status }}}}"
  lite_order:
    source: lite
    query: by_id
    args: [order_id]
    template: "{{{{ row.status }}}}"
  kv_order:
    source: kv
    query: by_id
    template: "{{{{ row.status }}}}"
  stock:
    source: api
    query: stock
    template: "{{{{ row.quantity }}}}"
  sku_check:
    source: api
    query: stock
    params:
      sku: {{pattern: '(a+)+b', max_length: 200}}
    template: "{{{{ row.quantity }}}}"
"""


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    name = f"lookup_ci_{secrets.token_hex(4)}"

    async def run(*statements: str, database: str = "postgres") -> None:
        conn = await asyncpg.connect(**PG, database=database)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    try:
        asyncio.run(
            run(
                "CREATE TABLE orders (id int PRIMARY KEY, placed date, status text)",
                "INSERT INTO orders VALUES (12345, '2025-09-10', 'shipped')",
                database=name,
            )
        )
        yield name
    finally:
        asyncio.run(
            run(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
                f"DROP DATABASE IF EXISTS {name}",
            )
        )


@pytest.fixture(scope="module")
def my_db() -> Iterator[str]:
    name = f"lookup_ci_{secrets.token_hex(4)}"
    with pymysql.connect(**MY) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        cur.execute(f"CREATE TABLE {name}.orders (id INT PRIMARY KEY, status VARCHAR(20))")
        cur.execute(f"INSERT INTO {name}.orders VALUES (12345, 'shipped')")
        conn.commit()
    try:
        yield name
    finally:
        with pymysql.connect(**MY) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
async def kv_ns() -> AsyncIterator[str]:
    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    ns = f"lookup-ci:{secrets.token_hex(4)}:"
    await client.hset(f"{ns}order:12345", mapping={"status": "shipped"})
    try:
        yield ns
    finally:
        keys = [key async for key in client.scan_iter(match=f"{ns}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def api() -> AsyncIterator[str]:
    async with serve(rest_app(Recorder())) as url:
        yield f"{url}/api"


@dataclass
class Shop:
    pipeline: Pipeline
    sources: Sources
    metrics: Metrics

    async def ask(self, lookup: str, **params: Any) -> Answer:
        return await self.pipeline.answer(
            {
                "job_type": "data_lookup",
                "tenant_id": "shop",
                "query_type": lookup,
                "parameters": params,
                "customer_context": {"phone": "+15550001111"},
            }
        )

    def circuit(self, source_id: str) -> tuple[str, int]:
        circuit = self.sources.circuit(source_id)
        return circuit.state, circuit._failed


@pytest.fixture
async def shop(tmp_path: Path, pg_db: str, my_db: str, kv_ns: str, api: str) -> AsyncIterator[Shop]:
    shutil.copy(REPO / "config" / "demo" / "shop.db", tmp_path / "shop.db")
    text = TENANT.format(pg_db=pg_db, my_db=my_db, ns=kv_ns, api=api, api_key=API_KEY)
    (tmp_path / "shop.yaml").write_text(text, encoding="utf-8")
    tenant = load_tenant(tmp_path / "shop.yaml")
    metrics = Metrics()
    sources = Sources(tenant, metrics)
    try:
        yield Shop(Pipeline(tenant, sources, metrics), sources, metrics)
    finally:
        await sources.close()


# -- values the database refuses ----------------------------------------------------


async def test_postgresql__text_for_an_integer_is_invalid_input_and_never_opens_the_circuit(
    shop: Shop,
) -> None:
    for _ in range(10):  # the circuit opens after 3 failures: these are not failures
        answer = await shop.ask("pg_order", order_id="abc")
        assert answer.outcome == "invalid_input"
        assert answer.result == {"errors": ["the order id is not in a form the system accepts"]}
        assert "abc" not in str(answer.message)
    assert shop.circuit("pg") == ("closed", 0)
    assert shop.metrics.circuit_open.labels("pg")._value.get() == 0
    good = await shop.ask("pg_order", order_id="12345")
    assert (good.outcome, good.message) == ("ok", "shipped")


@pytest.mark.parametrize(
    ("lookup", "params"),
    [
        pytest.param("pg_order", {"order_id": "99999999999"}, id="int4-out-of-range"),
        pytest.param("pg_day", {"day": "2025-02-30"}, id="date-that-does-not-exist"),
        pytest.param("pg_day", {"day": "not a day"}, id="date-not-a-date"),
    ],
)
async def test_postgresql__refused_values_are_invalid_input(
    shop: Shop, lookup: str, params: dict[str, str]
) -> None:
    for _ in range(4):
        answer = await shop.ask(lookup, **params)
        assert answer.outcome == "invalid_input", answer.result
        assert "is not in a form the system accepts" in answer.result["errors"][0]
    assert shop.circuit("pg") == ("closed", 0)


async def test_postgresql__a_real_failure_still_counts(shop: Shop, pg_db: str) -> None:
    # The circuit still does its job: a missing table is the source's failure, not the customer's.
    conn = await asyncpg.connect(**PG, database=pg_db)
    try:
        await conn.execute("ALTER TABLE orders RENAME TO orders_gone")
        answer = await shop.ask("pg_order", order_id="12345")
        assert answer.outcome == "fallback"
        assert shop.circuit("pg") == ("closed", 1)
    finally:
        await conn.execute("ALTER TABLE orders_gone RENAME TO orders")
        await conn.close()


@pytest.mark.parametrize(
    ("lookup", "params"),
    [
        pytest.param("my_status", {"status": "(ship"}, id="regexp-1139"),
        pytest.param("my_count", {"count": "0"}, id="unsigned-out-of-range-1690"),
    ],
)
async def test_mariadb__refused_values_are_invalid_input_and_never_open_the_circuit(
    shop: Shop, lookup: str, params: dict[str, str]
) -> None:
    for _ in range(5):
        answer = await shop.ask(lookup, **params)
        assert answer.outcome == "invalid_input", answer.result
        name = next(iter(params)).replace("_", " ")
        assert answer.result == {"errors": [f"the {name} is not in a form the system accepts"]}
    assert shop.circuit("my") == ("closed", 0)
    good = await shop.ask("my_order", order_id="12345")
    assert (good.outcome, good.message) == ("ok", "shipped")


async def test_mariadb__text_for_an_integer_is_compared_not_refused(shop: Shop) -> None:
    # MariaDB only warns (1292) and compares 'abc' as 0: nothing to refuse, no row, no leak.
    answer = await shop.ask("my_order", order_id="abc")
    assert answer.outcome == "not_found"
    assert shop.circuit("my") == ("closed", 0)


# -- text no driver can encode ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lookup", "params", "good"),
    [
        pytest.param("my_order", {"order_id": "12345"}, "shipped", id="mysql"),
        pytest.param("lite_order", {"order_id": "12345"}, "shipped", id="sqlite"),
        pytest.param("kv_order", {"order_id": "12345"}, "shipped", id="redis"),
        pytest.param("stock", {"sku": "SKU-789"}, "42", id="rest_api"),
        pytest.param("pg_order", {"order_id": "12345"}, "shipped", id="postgresql"),
    ],
)
async def test_lone_surrogate__is_invalid_input_for_every_connector(
    shop: Shop, lookup: str, params: dict[str, str], good: str
) -> None:
    (name,) = params
    answer = await shop.ask(lookup, **{name: "12\ud800"})
    assert answer.outcome == "invalid_input"
    label = name.replace("_", " ")
    assert answer.result == {"errors": [f"the {label} contains characters that cannot be read"]}
    assert answer.message is not None and answer.reply_to == "+15550001111"
    answer.message.encode("utf-8")  # the reply itself can be sent
    source = answer.source_id or ""
    assert shop.circuit(source) == ("closed", 0)
    after = await shop.ask(lookup, **params)
    assert (after.outcome, after.message) == ("ok", good)


async def test_nul_byte__is_invalid_input_before_postgresql_sees_it(shop: Shop) -> None:
    answer = await shop.ask("pg_order", order_id="123\x0045")
    assert answer.outcome == "invalid_input"
    assert answer.result == {"errors": ["the order id contains characters that are not allowed"]}


# -- tenant patterns ---------------------------------------------------------------------


async def test_backtracking_pattern__answers_quickly_and_the_worker_keeps_answering(
    shop: Shop,
) -> None:
    # `(a+)+b` against 30 a's takes Python's `re` minutes; on RE2 it is linear.
    attack = asyncio.create_task(shop.ask("sku_check", sku="a" * 30))
    other = await asyncio.wait_for(shop.ask("stock", sku="SKU-789"), timeout=10)
    assert (other.outcome, other.message) == ("ok", "42")
    answer = await asyncio.wait_for(attack, timeout=10)
    assert answer.outcome == "invalid_input"
    assert answer.result == {"errors": ["the sku is not in the expected format"]}
