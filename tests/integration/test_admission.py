"""Admission, not expiry: a real ``worker run`` on the direct PostgreSQL queue, reading a
PostgreSQL source slower than its pool, at default settings unless a test says otherwise.

No wall-clock asserts: each test waits, with seconds of margin, for what the queue's
``jobs`` table says, and checks outcomes and attempts.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pymysql
import pytest

from connectors.base import Bound
from connectors.mysql import MySQLConnector, MySQLSettings
from connectors.postgresql import APPLICATION_NAME, PostgreSQLConnector, PostgreSQLSettings
from connectors.sqlserver import _Pool, _Read
from tests.support.databases import fresh_postgres
from worker.config import load_tenant
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.sources import Sources

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
tenant_id: burst
data_sources:
  - id: crm
    type: postgresql
    connection: {{host: 127.0.0.1, database: {database}, username: postgres{connection}}}
    {source}
    queries:
      slow: SELECT $1::text AS id, pg_sleep({sleep_s}) IS NULL AS slept
lookups:
  slow:
    source: crm
    query: slow
    args: [id]
    template: "done {{{{ row.id }}}}"
"""


@dataclass
class Burst:
    """A queue database, a source database and a tenant config reading it."""

    queue: str
    source: str
    config: Path

    async def enqueue(self, count: int) -> None:
        payloads = [
            json.dumps(
                {
                    "job_type": "data_lookup",
                    "tenant_id": "burst",
                    "query_type": "slow",
                    "parameters": {"id": str(n)},
                    "reply_to": "+15550001",
                }
            )
            for n in range(count)
        ]
        conn = await asyncpg.connect(self.queue)
        try:  # one statement: the jobs arrive at once
            await conn.execute(
                "INSERT INTO jobs (payload) SELECT p::jsonb FROM unnest($1::text[]) AS p", payloads
            )
        finally:
            await conn.close()

    async def statuses(self) -> dict[str, int]:
        conn = await asyncpg.connect(self.queue)
        try:
            rows = await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
        finally:
            await conn.close()
        return {r[0]: r[1] for r in rows}

    async def outcomes(self) -> dict[tuple[str | None, int], int]:
        """How many jobs ended with each (outcome, attempt)."""
        conn = await asyncpg.connect(self.queue)
        try:
            rows = await conn.fetch("SELECT outcome, attempt, count(*) FROM jobs GROUP BY 1, 2")
        finally:
            await conn.close()
        return {(r[0], r[1]): r[2] for r in rows}


@pytest.fixture
async def databases() -> AsyncIterator[tuple[str, str]]:
    async with fresh_postgres("lookup_admit_q") as queue, fresh_postgres("lookup_admit_s") as src:
        yield queue, src


def make_burst(
    databases: tuple[str, str],
    tmp_path: Path,
    *,
    sleep_s: float,
    connection: str = "",
    source: str = "",
) -> Burst:
    queue, src = databases
    subprocess.run(
        [sys.executable, "-m", "worker.cli", "queue", "init", "--dsn", queue],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = tmp_path / "burst.yaml"
    database = src.rsplit("/", 1)[1]
    config.write_text(
        CONFIG.format(database=database, connection=connection, source=source, sleep_s=sleep_s),
        encoding="utf-8",
    )
    return Burst(queue, src, config)


@pytest.fixture
def worker_run(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`worker run` processes started by a test; stopped (SIGTERM) afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_worker(burst: Burst, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    cmd = [sys.executable, "-m", "worker.cli", "--log-json", "run", "--config", str(burst.config)]
    with log.open("wb") as sink:
        procs.append(
            subprocess.Popen(
                [*cmd, "--listen", ""],
                cwd=REPO,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "QUEUE_DSN": burst.queue},
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        )


async def wait_for(burst: Burst, done: int, timeout_s: float) -> list[dict[str, int]]:
    """Poll the jobs table until ``done`` jobs are done; every sample seen on the way."""
    seen: list[dict[str, int]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            seen.append(await burst.statuses())
            if seen[-1].get("done", 0) >= done:
                return seen
            await asyncio.sleep(0.2)


async def test_burst_larger_than_the_pool__is_answered_ok_at_default_settings(
    databases: tuple[str, str], tmp_path: Path, worker_run: list[subprocess.Popen[bytes]]
) -> None:
    burst = make_burst(databases, tmp_path, sleep_s=1)
    await burst.enqueue(200)
    start_worker(burst, worker_run, tmp_path / "worker.log")
    # 25 reads at once (the default pool) take ~8 s for 200 one-second reads: 60 s of margin
    await wait_for(burst, 200, timeout_s=60)
    assert await burst.outcomes() == {("ok", 1): 200}
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


async def test_jobs_it_cannot_start_in_time__stay_pending_not_expired(
    databases: tuple[str, str], tmp_path: Path, worker_run: list[subprocess.Popen[bytes]]
) -> None:
    # Two reads at once, half a second each: 40 start and end within a 10 s deadline.
    # Claiming all 80 would have answered the last ones with the fallback (20 s).
    burst = make_burst(databases, tmp_path, sleep_s=0.5, source="max_concurrency: 2")
    await burst.enqueue(80)
    start_worker(burst, worker_run, tmp_path / "worker.log")
    seen = await wait_for(burst, 80, timeout_s=90)
    busy = [s for s in seen if s.get("done", 0) >= 1 and s.get("pending", 0) + s.get("running", 0)]
    assert busy, "the worker was never seen between its first answer and its last"
    assert max(s.get("running", 0) for s in seen) <= 40
    assert busy[0].get("pending", 0) > busy[0].get("running", 0)  # most left in the queue
    assert await burst.outcomes() == {("ok", 1): 80}  # none fell back, none leased twice


async def test_pool__grows_for_a_burst_and_shrinks_back_when_idle(
    databases: tuple[str, str],
) -> None:
    _, src = databases
    settings = PostgreSQLSettings(dsn=src, pool_idle_s=1)
    connector = PostgreSQLConnector("crm", settings, base_dir=REPO)
    query = PostgreSQLConnector.prepare("SELECT pg_sleep(0.5) IS NULL AS slept")
    admin = await asyncpg.connect(src)

    async def sessions() -> int:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = $1",
                APPLICATION_NAME,
            )
        )

    try:
        await connector.open()
        assert await sessions() == 1  # a quiet source costs one connection
        reads = [connector.run(query, Bound(), timeout_s=10) for _ in range(12)]
        await asyncio.gather(*reads)
        assert await sessions() == 12  # grown on demand
        async with asyncio.timeout(20):  # idle for 1 s: closed again (seconds of margin)
            while await sessions() > 1:
                await asyncio.sleep(0.2)
        assert (await connector.run(query, Bound(), timeout_s=10)).found
    finally:
        await connector.close()
        await admin.close()


async def test_mysql_pool__grows_for_a_burst_and_shrinks_back_when_idle() -> None:
    name = f"lookup_admit_{secrets.token_hex(4)}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    settings = MySQLSettings(host="127.0.0.1", username="root", database=name, pool_idle_s=1)
    connector = MySQLConnector("shop", settings, base_dir=REPO)
    query = MySQLConnector.prepare("SELECT SLEEP(0.5) AS slept")

    def sessions() -> int:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.PROCESSLIST WHERE db = %s", [name])
            (count,) = cur.fetchone()  # type: ignore[misc]
        return int(count)

    try:
        await asyncio.gather(*(connector.run(query, Bound(), timeout_s=10) for _ in range(12)))
        assert sessions() == 12  # grown on demand
        async with asyncio.timeout(20):  # idle for 1 s: closed again, all but one
            while sessions() > 1:
                await asyncio.sleep(0.2)
        assert (await connector.run(query, Bound(), timeout_s=10)).found
    finally:
        await connector.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name}")
        admin.close()


class _FakeSession:
    """Stands in for a pymssql connection (no SQL Server runs here): knows if it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


async def test_sqlserver_pool__reads_on_its_own_threads_and_idle_connections_close() -> None:
    pool = _Pool("crm", 4, idle_s=0.5)
    sessions = [_FakeSession() for _ in range(4)]
    threads: set[str] = set()
    both = asyncio.Barrier(4)  # all four slots in use at once: four connections open

    async def read(session: _FakeSession) -> None:
        def work(r: _Read) -> list[dict[str, object]]:
            threads.add(threading.current_thread().name)
            r.conn = r.conn or session
            r.done.set()
            return []

        slot = await pool.acquire()
        await both.wait()
        await pool.start(_Read(slot), work)

    try:
        await asyncio.gather(*(read(s) for s in sessions))
        assert len(threads) >= 1 and all(t.startswith("sqlserver-crm") for t in threads)
        async with asyncio.timeout(20):  # unused for 0.5 s: closed, all but one
            while sum(s.closed for s in sessions) < 3:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # and the one kept stays open (no timing asserted)
        assert sum(s.closed for s in sessions) == 3
    finally:
        await pool.close()
    assert all(s.closed for s in sessions)


async def twenty_reads_at_once(source: dict[str, Any]) -> int:
    """20 reads at once of ``source``'s ``slow`` query, all answered ok and its circuit
    still closed; the limit its gate came to."""
    tenant = load_tenant(document={"tenant_id": "full", "data_sources": [source]})
    sources = Sources(tenant)
    pipeline = Pipeline(tenant, sources, Metrics())
    try:
        answers = await asyncio.gather(
            *(pipeline.lookup("slow", {"id": str(n)}) for n in range(20))
        )
        assert [a.outcome for a in answers] == ["ok"] * 20, {str(a.result) for a in answers}
        assert sources.circuit(source["id"]).state == "closed"
        return sources.gate(source["id"]).limit
    finally:
        await sources.close()


async def test_full_source__reads_wait_for_the_connections_it_has(
    databases: tuple[str, str],
) -> None:
    """A database that refuses more connections (here: a role limited to 3) is not a
    failing source: the reads past its limit wait for those 3, and are answered ok."""
    _, src = databases
    role = f"lookup_admit_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(src)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3')
    source = {
        "id": "crm",
        "type": "postgresql",
        "connection": {"dsn": src, "username": role},
        "queries": {
            "slow": {"query": "SELECT $1::text AS id, pg_sleep(0.3) IS NULL AS s", "args": ["id"]}
        },
    }
    try:
        assert await twenty_reads_at_once(source) <= 3
    finally:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def test_full_mysql_source__reads_wait_for_the_connections_it_has() -> None:
    name = f"lookup_admit_{secrets.token_hex(4)}"
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(f"CREATE USER '{name}'@'127.0.0.1' WITH MAX_USER_CONNECTIONS 3")
        cur.execute(f"GRANT SELECT ON {name}.* TO '{name}'@'127.0.0.1'")
    source = {
        "id": "shop",
        "type": "mysql",
        "connection": {"host": "127.0.0.1", "username": name, "database": name},
        "queries": {"slow": {"query": "SELECT $1 AS id, SLEEP(0.3) AS s", "args": ["id"]}},
    }
    try:
        await twenty_reads_at_once(source)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER '{name}'@'127.0.0.1'")
            cur.execute(f"DROP DATABASE {name}")
        admin.close()
