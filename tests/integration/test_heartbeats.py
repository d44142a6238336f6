"""Heartbeats survive the queue store's errors: the error is logged, and retried.

A real SQLite queue file, locked by another connection (as a backup tool or a
stuck process would) while a job is in flight: the heartbeat's UPDATE fails
with sqlite3's own "database is locked" (as `QueueUnavailable`). The heartbeats
must go on once the lock is gone, so the job keeps its lease and is answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from worker.config import load_tenant
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.queues import StoreQueue
from worker.runtime import RunSettings, Runtime
from worker.sources import Sources
from worker.stores.sqlite import SQLiteStore

#: Long enough that the lock and the retry after it fit in it with seconds to spare.
LEASE_S = 12.0

CONFIG = """
tenant_id: shop
data_sources:
  - id: orders_api
    type: rest_api
    connection: {{base_url: "{url}"}}
    queries:
      order_status: /orders/{{order_id}}
lookups:
  order_status:
    params: {{order_id: {{pattern: "[0-9]{{1,12}}"}}}}
    template: "{{{{ row.status }}}}"
    timeout_s: 60
"""


class HeldSource:
    """An HTTP source whose answers wait until the test lets them go."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def order(self, request: web.Request) -> web.Response:
        self.asked.set()
        await self.release.wait()
        return web.json_response({"status": "shipped"})


@pytest.fixture
async def held_source() -> AsyncIterator[tuple[HeldSource, str]]:
    source = HeldSource()
    app = web.Application()
    app.add_routes([web.get("/orders/{order_id}", source.order)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield source, f"http://127.0.0.1:{port}"
    finally:
        source.release.set()
        await runner.cleanup()


async def _locked_until(path: Path, job_id: int) -> str:
    def read() -> str:
        with contextlib.closing(sqlite3.connect(path)) as db:
            (until,) = db.execute(
                "SELECT locked_until FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return str(until)

    return await asyncio.to_thread(read)


async def _wait_for(check: Callable[[], bool], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.05)


async def test_heartbeats__a_locked_store_is_logged_and_the_beats_resume(
    tmp_path: Path,
    queue_path: Path,
    held_source: tuple[HeldSource, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, url = held_source
    (tmp_path / "shop.yaml").write_text(CONFIG.format(url=url), encoding="utf-8")
    tenant = load_tenant(tmp_path / "shop.yaml")
    sources = Sources(tenant)
    queue = StoreQueue(SQLiteStore(queue_path), "shop", "w1", lease_s=LEASE_S)
    await queue.store.open()
    # The seam: a short busy wait, so the held lock comes out as sqlite3's error at once
    # rather than after the store's 30 s.
    await queue.store.db.execute("PRAGMA busy_timeout=200")  # type: ignore[attr-defined]
    job_id = await queue.store.enqueue(
        {
            "job_type": "data_lookup",
            "tenant_id": "shop",
            "query_type": "order_status",
            "parameters": {"order_id": "12345"},
            "reply_to": "+15550001",
        }
    )
    runtime = Runtime(queue, Pipeline(tenant, sources, Metrics()), RunSettings(once=True))
    blocker = sqlite3.connect(queue_path, isolation_level=None, timeout=30, check_same_thread=False)
    running = asyncio.create_task(runtime.run(asyncio.Event()))
    try:
        async with asyncio.timeout(90):
            await source.asked.wait()  # the job is in flight
            before = await _locked_until(queue_path, job_id)
            await asyncio.to_thread(blocker.execute, "BEGIN EXCLUSIVE")
            with caplog.at_level(logging.WARNING, logger="worker.runtime"):

                def beat_failed() -> bool:  # the claim loop may meet the lock first
                    return any(
                        "heartbeat of job" in r.getMessage()
                        and "database is locked" in r.getMessage()
                        for r in caplog.records
                    )

                await _wait_for(beat_failed)
                await asyncio.to_thread(blocker.execute, "ROLLBACK")
                assert await _locked_until(queue_path, job_id) == before
                started = asyncio.get_running_loop().time()
                while await _locked_until(queue_path, job_id) == before:  # the next beat lands
                    assert asyncio.get_running_loop().time() - started < LEASE_S
                    await asyncio.sleep(0.1)
                source.release.set()
                await running
        row = await queue.store.job(job_id)
        assert row is not None and (row.status, row.attempt) == ("done", 1)
        assert runtime.answered == 1
        failures = [r for r in caplog.records if "heartbeat of job" in r.getMessage()]
        assert len(failures) == 1, "one line for the error, not one a round"
        assert "OperationalError: database is locked" in failures[0].getMessage()
        assert not [r for r in caplog.records if "lease lost" in r.getMessage()]
    finally:
        blocker.close()
        source.release.set()
        await asyncio.wait([running], timeout=30)
        await queue.close()
        await sources.close()
