"""Lookups per second each database connector sustains, next to its raw driver (issue 4).

Run it from the repository:  ``.venv/bin/python bench/connectors.py [--quick]``

For every database connector that is installed and whose server answers on
loopback (sqlite, postgresql, mysql, redis), it creates its own data (an
``orders`` table of 10,000 rows, or as many Redis hashes under a random key
prefix), loads a one-source tenant config, and runs the same lookup by primary
key at 1, 10 and 100 lookups in flight:

- through the pipeline: ``Pipeline.answer`` on a job payload, in process, as the
  worker does for each job (parameter rules, the connector's read with its
  deadline and read-only transaction, the Jinja reply), without the audit log;
- through the raw driver: the same query in a loop on a pool of the same size.

What it created is dropped at the end. Nothing asserts a time: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import os
import platform
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from samples import Samples  # noqa: E402 - bench/samples.py, beside this script

from worker.config import load_tenant  # noqa: E402 - after the path is set
from worker.errors import ConfigError  # noqa: E402
from worker.metrics import Metrics  # noqa: E402
from worker.pipeline import Pipeline  # noqa: E402
from worker.sources import Sources  # noqa: E402

PG_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL = {"host": "127.0.0.1", "port": int(os.environ.get("BENCH_MYSQL_PORT", "3306")),
         "user": os.environ.get("BENCH_MYSQL_USER", "root")}  # fmt: skip
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ORDERS = 10_000
POOL = 10  # the network connectors' default pool_size; SQLite's is 4
SQLITE_POOL = 4
SQL = "SELECT status, tracking, estimated_delivery FROM orders WHERE order_id = $1"
TEMPLATE = "Your order #{{ params.order_id }} is {{ row.status }} (tracking {{ row.tracking }})."

Read = Callable[[int], Awaitable[Any]]


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    warmup_s: float
    measure_s: float


@dataclass
class Figure:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Kind:
    """One connector under test: its config, and the raw driver's read."""

    name: str
    connection: dict[str, Any]
    query: Any
    raw: Read
    close: Callable[[], Awaitable[None]]


# -- measuring ----------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def loop(read: Read, samples: Samples) -> int:
    errors = 0
    while (started := time.perf_counter()) < samples.until:
        try:
            await read(random.randint(1, ORDERS))
        except Exception:  # a figure, not a test: count it and go on
            errors += 1
            continue
        samples.add(started)
    return errors


async def measure(read: Read, in_flight: int, plan: Plan) -> Figure:
    samples = Samples.window(plan.warmup_s, plan.measure_s)
    errors = await asyncio.gather(*(loop(read, samples) for _ in range(in_flight)))
    latencies = samples.latencies_s
    return Figure(
        samples.rate, percentile(latencies, 0.5), percentile(latencies, 0.99), sum(errors)
    )


# -- the pipeline ---------------------------------------------------------------------


def tenant_document(kind: Kind) -> dict[str, Any]:
    lookup: dict[str, Any] = {
        "source": "db",
        "params": {"order_id": {"type": "string", "pattern": "[0-9]{1,9}"}},
        "template": TEMPLATE,
        "not_found": "No order #{{ params.order_id }}.",
        "fallback": "The order system is not answering.",
    }
    if isinstance(kind.query, str):
        lookup["args"] = ["order_id"]
    return {
        "tenant_id": "bench",
        "data_sources": [
            {"id": "db", "type": kind.name, "connection": kind.connection,
             "queries": {"order_status": kind.query}}
        ],
        "lookups": {"order_status": lookup},
    }  # fmt: skip


@contextlib.asynccontextmanager
async def pipeline_for(kind: Kind) -> AsyncIterator[Read]:
    tenant = load_tenant(document=tenant_document(kind), name=f"{kind.name} bench config")
    if tenant.problems:
        raise ConfigError("; ".join(tenant.problems))
    sources = Sources(tenant)
    pipeline = Pipeline(tenant, sources, Metrics())
    bad: list[str] = []

    async def read(order_id: int) -> Any:
        payload = {
            "job_type": "data_lookup",
            "tenant_id": "bench",
            "query_type": "order_status",
            "parameters": {"order_id": str(order_id)},
            "customer_context": {"phone": "+15550001111"},
        }
        answer = await pipeline.answer(payload)
        if answer.outcome != "ok":
            bad.append(f"{answer.outcome}: {answer.result}")
            raise RuntimeError(bad[-1])
        return answer

    try:
        yield read
    finally:
        await sources.close()
        if bad:
            print(f"    {kind.name}: {len(bad)} lookup(s) not ok, e.g. {bad[0][:160]}")


# -- data and raw drivers, per database --------------------------------------------


def order_rows() -> list[tuple[int, str, str, str]]:
    states = ("shipped", "processing", "delivered")
    return [
        (i, states[i % 3], f"TRK{i:08d}", f"2025-09-{1 + i % 28:02d}") for i in range(1, ORDERS + 1)
    ]


def sqlite_seed(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, status TEXT, tracking TEXT,"
            " estimated_delivery TEXT)"
        )
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", order_rows())


@contextlib.asynccontextmanager
async def sqlite_kind(folder: Path) -> AsyncIterator[Kind]:
    path = folder / "orders.db"
    sqlite_seed(path)
    pool: asyncio.Queue[sqlite3.Connection] = asyncio.Queue()
    for _ in range(SQLITE_POOL):
        pool.put_nowait(sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False))
    text = SQL.replace("$1", "?")

    def fetch(conn: sqlite3.Connection, order_id: int) -> Any:
        return conn.execute(text, (order_id,)).fetchone()

    async def raw(order_id: int) -> Any:
        conn = await pool.get()
        try:
            return await asyncio.to_thread(fetch, conn, order_id)
        finally:
            pool.put_nowait(conn)

    async def close() -> None:
        while not pool.empty():
            pool.get_nowait().close()

    yield Kind("sqlite", {"path": str(path), "pool_size": SQLITE_POOL}, SQL, raw, close)


def pg_dsn(database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(PG_DSN)._replace(path="/" + database))


@contextlib.asynccontextmanager
async def postgresql_kind(folder: Path) -> AsyncIterator[Kind]:
    import asyncpg

    name = f"lookup_bench_{secrets.token_hex(4)}_connectors"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(pg_dsn(name))
        await conn.execute(
            "CREATE TABLE orders (order_id int PRIMARY KEY, status text, tracking text,"
            " estimated_delivery date)"
        )
        rows = [(i, s, t, dt.date.fromisoformat(d)) for i, s, t, d in order_rows()]
        await conn.copy_records_to_table("orders", records=rows)
        await conn.close()
        pool = await asyncpg.create_pool(pg_dsn(name), min_size=POOL, max_size=POOL)

        async def raw(order_id: int) -> Any:
            return await pool.fetchrow(SQL, order_id)

        connection = {"dsn": pg_dsn(name), "pool_size": POOL}
        yield Kind("postgresql", connection, SQL, raw, pool.close)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def mysql_kind(folder: Path) -> AsyncIterator[Kind]:
    import aiomysql

    name = f"lookup_bench_{secrets.token_hex(4)}"
    admin = await aiomysql.connect(**MYSQL, autocommit=True)
    async with admin.cursor() as cur:
        await cur.execute(f"CREATE DATABASE `{name}`")
    try:
        async with admin.cursor() as cur:
            await cur.execute(
                f"CREATE TABLE `{name}`.orders (order_id INT PRIMARY KEY, status VARCHAR(20),"
                " tracking VARCHAR(20), estimated_delivery DATE)"
            )
            await cur.executemany(
                f"INSERT INTO `{name}`.orders VALUES (%s, %s, %s, %s)", order_rows()
            )
        pool = await aiomysql.create_pool(
            **MYSQL, db=name, minsize=POOL, maxsize=POOL, autocommit=True
        )
        text = SQL.replace("$1", "%s")

        async def raw(order_id: int) -> Any:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(text, (order_id,))
                return await cur.fetchone()

        async def close() -> None:
            pool.close()
            await pool.wait_closed()

        connection = {"host": MYSQL["host"], "port": MYSQL["port"], "database": name,
                      "username": MYSQL["user"], "pool_size": POOL}  # fmt: skip
        yield Kind("mysql", connection, SQL, raw, close)
    finally:
        async with admin.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@contextlib.asynccontextmanager
async def redis_kind(folder: Path) -> AsyncIterator[Kind]:
    import redis.asyncio as aioredis

    prefix = f"lookup_bench_{secrets.token_hex(4)}"
    # Blocking: at 100 in flight, wait for one of the POOL connections as the connector does.
    pool = aioredis.BlockingConnectionPool.from_url(
        REDIS_URL, max_connections=POOL, decode_responses=True
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for i, status, tracking, day in order_rows():
                pipe.hset(f"{prefix}:order:{i}", mapping={
                    "status": status, "tracking": tracking, "estimated_delivery": day})  # fmt: skip
            await pipe.execute()

        async def raw(order_id: int) -> Any:
            return await client.hgetall(f"{prefix}:order:{order_id}")

        query = {"command": "HGETALL", "key": f"{prefix}:order:{{order_id}}"}
        yield Kind("redis", {"url": REDIS_URL, "pool_size": POOL}, query, raw, client.aclose)
    finally:
        cleanup = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in cleanup.scan_iter(f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await cleanup.delete(*keys[start : start + 1000])
        await cleanup.aclose()


KINDS = {
    "sqlite": (None, sqlite_kind),
    "postgresql": ("asyncpg", postgresql_kind),
    "mysql": ("aiomysql", mysql_kind),
    "redis": ("redis", redis_kind),
}


# -- the run ------------------------------------------------------------------------


def missing(name: str, driver: str | None) -> str | None:
    """Why this connector cannot be measured here, or None."""
    for module in (f"connectors.{name}", driver):
        if module and importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    try:
        importlib.import_module(f"connectors.{name}")
    except Exception as exc:  # a connector half-written by someone else
        return f"connectors.{name} does not import ({type(exc).__name__}: {exc})"
    return None


async def bench_kind(kind: Kind, plan: Plan) -> list[list[str]]:
    rows = []
    async with pipeline_for(kind) as through_pipeline:
        for n in plan.levels:
            piped = await measure(through_pipeline, n, plan)
            raw = await measure(kind.raw, n, plan)
            rows.append(table_row(kind.name, n, piped, raw))
            print(f"  {kind.name:<10} {n:>3} in flight: pipeline {piped.rate:8,.0f}/s, "
                  f"raw driver {raw.rate:8,.0f}/s", flush=True)  # fmt: skip
    await kind.close()
    return rows


def table_row(name: str, n: int, piped: Figure, raw: Figure) -> list[str]:
    errors = piped.errors + raw.errors
    share = f"{100 * piped.rate / raw.rate:.0f}%" if raw.rate else "-"
    return [
        name, str(n), f"{piped.rate:,.0f}", f"{piped.p50_ms:.2f}", f"{piped.p99_ms:.2f}",
        f"{raw.rate:,.0f}", f"{raw.p50_ms:.2f}", f"{raw.p99_ms:.2f}", share,
        str(errors) if errors else "",
    ]  # fmt: skip


def print_table(rows: Sequence[Sequence[str]]) -> None:
    headers = ["connector", "in flight", "pipeline/s", "p50 ms", "p99 ms", "raw driver/s",
               "p50 ms", "p99 ms", "pipeline/raw", "errors"]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("\nlookups per second by connector: the pipeline next to the raw driver")
    print("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


async def run(plan: Plan, only: Sequence[str]) -> None:
    one, five, _ = os.getloadavg()
    print(f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores;"
          f" Python {platform.python_version()}; load average {one:.2f} / {five:.2f}")  # fmt: skip
    print(f"pool {POOL} per source (SQLite {SQLITE_POOL}), the same for the raw driver;"
          f" {plan.measure_s:g} s a figure after {plan.warmup_s:g} s of warm-up")  # fmt: skip
    rows: list[list[str]] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lookup-bench-") as tmp:
        for name in only:
            driver, make = KINDS[name]
            why = missing(name, driver)
            if why:
                skipped.append(f"{name}: skipped, {why}")
                continue
            try:
                async with make(Path(tmp)) as kind:
                    rows += await bench_kind(kind, plan)
            except (OSError, ConnectionError) as exc:
                skipped.append(f"{name}: skipped, its server does not answer ({exc})")
            except Exception as exc:
                skipped.append(f"{name}: failed: {type(exc).__name__}: {exc}")
    if rows:
        print_table(rows)
    for line in skipped:
        print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s a figure instead of 3 s")
    parser.add_argument("--only", nargs="*", choices=sorted(KINDS), default=list(KINDS))
    args = parser.parse_args()
    plan = Plan((1, 10, 100), 0.3, 1.0) if args.quick else Plan((1, 10, 100), 1.0, 3.0)
    asyncio.run(run(plan, args.only))


if __name__ == "__main__":
    main()
