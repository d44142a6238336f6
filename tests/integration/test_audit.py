"""The audit log on real PostgreSQL and SQLite: batched, masked, nothing lost on close."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.databases import SEED_AUDIT_DDL, fresh_postgres
from worker.audit import AuditLog, AuditRow, hourly_stats, mask_identifier, tenant_uuid
from worker.stores.base import Claim, ClaimedJob
from worker.stores.postgres import PostgresStore


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    async with fresh_postgres("lookup_audit") as target:
        yield target


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
    # flusher that wrote one statement a round would need 15 rounds of 2 s. Rounds
    # this long leave a busy machine seconds of margin.
    audit = AuditLog(target, batch=50, flush_s=2)
    await audit.open()
    try:
        for i in range(730):
            audit.record(row(ms=i))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while audit.pending and loop.time() - started < 40:
            await asyncio.sleep(0.02)
        rounds = (loop.time() - started) / audit.flush_s
        assert rounds < 4, f"the queue took {rounds:.1f} rounds to empty"
    finally:
        await audit.close()
    stats = await hourly_stats(target, "acme", dt.timedelta(hours=1))
    assert sum(s["query_count"] for s in stats) == 730


async def test_flush__rows_recorded_during_a_write_wait_for_the_next_round(
    tmp_path: Path,
) -> None:
    # A busy worker records rows while a batch is written: the round ends anyway (it
    # used to write on until the buffer was empty, a few rows at a time, never pausing).
    audit = AuditLog(str(tmp_path / "audit.db"), flush_s=60)
    await audit.open()
    write = audit._write

    async def write_while_answering(rows: list[AuditRow]) -> None:
        audit.record(row())  # a lookup answered meanwhile
        await write(rows)

    audit._write = write_while_answering  # type: ignore[method-assign]
    try:
        for _ in range(3):
            audit.record(row())
        await audit._write_pending()
        assert audit.pending == 1
    finally:
        audit._write = write  # type: ignore[method-assign]
        await audit.close()
    stats = await hourly_stats(str(tmp_path / "audit.db"), "acme", dt.timedelta(hours=1))
    assert sum(s["query_count"] for s in stats) == 4


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


# -- nothing lost: stops, completions, refusals, the seed's own table (issue 11) ----------


async def fetch(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
async def test_close__rows_the_flusher_had_in_hand_are_written(
    store: str, pg_dsn: str, tmp_path: Path
) -> None:
    target = pg_dsn if store == "postgres" else str(tmp_path / "audit.db")
    audit = AuditLog(target, flush_s=60)
    await audit.open()
    audit.record(row())
    await asyncio.sleep(0.2)  # the flusher has seen the row and waits out its window
    audit.record(row())
    await audit.close()
    stats = await hourly_stats(target, "acme", dt.timedelta(hours=1))
    assert sum(s["query_count"] for s in stats) == 2


async def test_postgres__the_seeds_own_table_is_written_as_it_is(pg_dsn: str) -> None:
    await fetch(pg_dsn, SEED_AUDIT_DDL)
    configured = uuid.UUID("0b9e6f3a-6d1c-4d0e-9d7a-3f1a2b3c4d5e")
    audit = AuditLog(pg_dsn, flush_s=0.01)
    await audit.open()
    audit.record(row("crm", 10))
    other = row("crm", 30)
    other.tenant_id, other.tenant_uuid = "beta", configured
    audit.record(other)
    await audit.close()
    rows = await fetch(pg_dsn, "SELECT tenant_id, data_source_id FROM data_access_logs")
    assert sorted(str(r[0]) for r in rows) == sorted([str(tenant_uuid("acme")), str(configured)])
    assert tenant_uuid("acme") == uuid.uuid5(uuid.NAMESPACE_URL, "tenant:acme")
    stats = await hourly_stats(pg_dsn, "beta", dt.timedelta(hours=1), tenant=configured)
    assert [(s["data_source_id"], s["query_count"]) for s in stats] == [("crm", 1)]


async def test_sqlite__a_table_without_outcome_and_a_numbered_id(tmp_path: Path) -> None:
    target = tmp_path / "audit.db"
    with sqlite3.connect(target) as db:
        db.execute(
            """CREATE TABLE data_access_logs (id INTEGER PRIMARY KEY, tenant_id UUID NOT NULL,
               data_source_id TEXT, query_type TEXT, customer_identifier TEXT,
               accessed_at TEXT, response_time_ms INTEGER)"""
        )
    audit = AuditLog(str(target), flush_s=0.01)
    await audit.open()
    audit.record(row("crm", 10))
    await audit.close()
    with sqlite3.connect(target) as db:
        written = db.execute("SELECT id, tenant_id FROM data_access_logs").fetchall()
    assert written == [(1, str(tenant_uuid("acme")))]
    stats = await hourly_stats(str(target), "acme", dt.timedelta(hours=1))
    assert [s["query_count"] for s in stats] == [1]


async def carrying(dsn: str) -> tuple[PostgresStore, AuditLog, list[BaseException]]:
    """A store and an audit log in one database, rows going with the completions."""
    store = PostgresStore(dsn)
    await store.open()
    audit = AuditLog(dsn, flush_s=0.05, with_completion=True)
    await audit.open()
    refusals: list[BaseException] = []

    def refused(exc: BaseException) -> None:
        refusals.append(exc)
        audit.refused(exc)

    assert store.carry_audit(audit.table, refused)
    return store, audit, refusals


async def claimed_job(store: PostgresStore) -> ClaimedJob:
    await store.enqueue({"job_type": "data_lookup", "tenant_id": "acme"})
    (job,) = await store.claim(Claim("acme", ["data_lookup"], 1, 30, "w1"))
    return job


async def test_completion__carries_the_row_in_its_statement(pg_dsn: str) -> None:
    store, audit, refusals = await carrying(pg_dsn)
    try:
        job, lost = await claimed_job(store), await claimed_job(store)
        first, second = row(), row()
        audit.record(first)
        audit.record(second)
        assert audit.holding(first) and audit.pending == 2
        assert await store.complete(int(job.id), outcome="ok", result={}, attempt=1, audit=first)
        # an older attempt: the lease is lost, so the job is not done and carries no row
        assert not await store.complete(
            int(lost.id), outcome="ok", result={}, attempt=7, audit=second
        )
        assert first.stored and not second.stored
        audit.settle(first)
        audit.settle(second)  # a data access all the same: the buffer writes it
    finally:
        await store.close()
        await audit.close()
    ids = await fetch(pg_dsn, "SELECT id::text FROM data_access_logs ORDER BY id")
    assert sorted(r[0] for r in ids) == sorted([first.id, second.id])
    assert refusals == []


async def test_completion__a_refusing_audit_table_never_costs_the_completion(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, audit, refusals = await carrying(pg_dsn)
    try:
        await fetch(pg_dsn, "ALTER TABLE data_access_logs ADD COLUMN must text NOT NULL")
        job = await claimed_job(store)
        carried = row()
        audit.record(carried)
        assert await store.complete(int(job.id), outcome="ok", result={}, attempt=1, audit=carried)
        assert not carried.stored and len(refusals) == 1
        audit.settle(carried)
        assert not audit.holding(row()), "rows go through the buffer for a while"
        await asyncio.sleep(0.5)  # the buffer is refused too, and retried
        assert audit.pending == 1
        await fetch(pg_dsn, "ALTER TABLE data_access_logs ALTER COLUMN must DROP NOT NULL")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while audit.pending and loop.time() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await store.close()
        await audit.close()
    assert (await store_status(pg_dsn, int(job.id))) == "done"
    assert [r[0] for r in await fetch(pg_dsn, "SELECT id::text FROM data_access_logs")] == [
        carried.id
    ]
    refused_lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refused_lines) <= 3


async def store_status(dsn: str, job_id: int) -> str:
    rows = await fetch(dsn, f"SELECT status FROM jobs WHERE id = {job_id}")
    return str(rows[0][0])


async def test_open__a_store_that_does_not_answer_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    audit = AuditLog(
        f"postgresql://postgres@127.0.0.1:5432/absent_{uuid.uuid4().hex[:8]}", close_s=1
    )
    await audit.open()
    audit.record(row())
    await audit.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("refused" in m for m in messages)
    assert any("1 audit row(s) could not be written" in m for m in messages)
