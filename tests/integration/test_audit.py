"""The audit log on real PostgreSQL and SQLite: batched, masked, nothing lost on close."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from worker.audit import AuditLog, AuditRow, hourly_stats, mask_identifier

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    name = f"lookup_audit_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await admin.execute(f'DROP DATABASE "{name}"')
    finally:
        await admin.close()


def row(source: str = "crm", ms: int = 10, outcome: str = "ok", ago_h: float = 0) -> AuditRow:
    return AuditRow(
        tenant_id="acme",
        data_source_id=source,
        query_type="order_status",
        customer_identifier=mask_identifier("+1234567890"),
        accessed_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=ago_h),
        response_time_ms=ms,
        outcome=outcome,
    )


@pytest.mark.parametrize(
    ("raw", "mode", "expected"),
    [
        pytest.param("+1234567890", "masked", "+******7890", id="phone"),
        pytest.param("5551234", "masked", "***1234", id="no-plus"),
        pytest.param("+12", "masked", "+*2", id="short"),
        pytest.param(None, "masked", None, id="none"),
    ],
)
def test_mask__never_keeps_the_raw_number(raw: str | None, mode: str, expected: str | None) -> None:
    assert mask_identifier(raw, mode=mode) == expected  # type: ignore[arg-type]


def test_mask__hashed_is_keyed_and_stable() -> None:
    one = mask_identifier("+1234567890", mode="hashed", key=b"k1")
    assert one == mask_identifier("+1234567890", mode="hashed", key=b"k1")
    assert one != mask_identifier("+1234567890", mode="hashed", key=b"k2")
    assert one is not None and one.startswith("hmac:") and "1234567890" not in one


async def test_postgres__rows_are_written_in_batches_and_flushed_on_close(pg_dsn: str) -> None:
    audit = AuditLog(pg_dsn, flush_s=60)  # only close() can have written them
    await audit.open()
    for i in range(250):
        audit.record(row(ms=i % 20))
    await audit.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM data_access_logs")
        identifiers = await conn.fetch("SELECT DISTINCT customer_identifier FROM data_access_logs")
        types = await conn.fetchval(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'data_access_logs' AND column_name = 'id'"
        )
    finally:
        await conn.close()
    assert count == 250
    assert [r[0] for r in identifiers] == ["+******7890"]
    assert types == "uuid"


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
async def test_flush__writes_everything_queued_each_round(
    store: str, pg_dsn: str, tmp_path: Path
) -> None:
    target = pg_dsn if store == "postgres" else str(tmp_path / "audit.db")
    # 730 rows, 50 to a statement: one round writes them all (15 statements); a
    # flusher that wrote one statement a round would need 15 rounds of 0.3 s.
    audit = AuditLog(target, batch=50, flush_s=0.3)
    await audit.open()
    try:
        for i in range(730):
            audit.record(row(ms=i))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while audit.pending and loop.time() - started < 10:
            await asyncio.sleep(0.02)
        rounds = (loop.time() - started) / audit.flush_s
        assert rounds < 3, f"the queue took {rounds:.1f} rounds to empty"
    finally:
        await audit.close()
    stats = await hourly_stats(target, "acme", dt.timedelta(hours=1))
    assert sum(s["query_count"] for s in stats) == 730


async def test_postgres__stats_answer_the_seeds_monitoring_query(pg_dsn: str) -> None:
    audit = AuditLog(pg_dsn, flush_s=0.01)
    await audit.open()
    for source, ms in (("crm", 10), ("crm", 30), ("sheet", 100)):
        audit.record(row(source, ms))
    audit.record(row("crm", 999, ago_h=30))  # outside the window
    await audit.close()
    stats = await hourly_stats(pg_dsn, "acme", dt.timedelta(hours=24))
    assert [(s["data_source_id"], s["avg_response_time"], s["query_count"]) for s in stats] == [
        ("crm", 20.0, 2),
        ("sheet", 100.0, 1),
    ]
    assert {"data_source_id", "hour", "avg_response_time", "query_count"} == set(stats[0])


async def test_sqlite__same_table_and_stats(tmp_path: Path) -> None:
    target = str(tmp_path / "acme.audit.db")
    audit = AuditLog(target, flush_s=0.01)
    await audit.open()
    audit.record(row("crm", 10))
    audit.record(row("crm", 20, outcome="fallback"))
    await audit.close()
    stats = await hourly_stats(target, "acme", dt.timedelta(hours=1))
    assert [(s["data_source_id"], s["avg_response_time"], s["query_count"]) for s in stats] == [
        ("crm", 15.0, 2)
    ]
    assert await hourly_stats(str(tmp_path / "none.db"), "acme", dt.timedelta(hours=1)) == []
