"""An idle `worker run` on the shared PostgreSQL queue costs the server next to nothing.

One real worker process (tenant ``acme``, a PostgreSQL source) on a fresh queue
database, watched from the ``postgres`` database so the watching is not counted:
once settled it holds at most two connections and runs under 0.2 transactions a
second, readiness probes included, another tenant's jobs do not wake it, and it
still picks up a job at once when one is inserted, and a delayed job or an
expired lease when they fall due, which nobody announces.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.conftest import REPO, WORKER, _env, free_port, job
from tests.support.databases import ADMIN

pytestmark = pytest.mark.slow

TENANT_YAML = """
tenant_id: acme
data_sources:
  - id: crm
    type: postgresql
    connection: {host: 127.0.0.1, port: 5432, username: postgres, database: postgres}
    queries:
      order_status: SELECT 'shipped' AS status, $1::text AS order_id
lookups:
  order_status:
    source: crm
    args: [order_id]
    template: "Order {{ row.order_id }}: {{ row.status }}"
"""
# The worker's pools close connections idle for 30 s; give it that and some.
SETTLE_S = 60
WINDOW_S = 20
# At most this many transactions a second, idle (the limit).
IDLE_TX_PER_S = 0.2
# The application name of the test's own connections to the queue database.
PROBE = "idle-queue-test"


def psql(dsn: str, sql: str) -> str:
    done = subprocess.run(
        ["psql", dsn, "-Atc", sql], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


@dataclass
class IdleWorker:
    dsn: str
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    async def ready(self) -> int:
        """``GET /readyz``'s status, as a probe of the orchestrator's asks it."""

        def get() -> int:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=10) as answer:
                return int(answer.status)

        return await asyncio.to_thread(get)

    async def admin(self, sql: str) -> int:
        """A number about the queue database, asked from the ``postgres`` database."""
        conn = await asyncpg.connect(ADMIN)
        try:
            return int(await conn.fetchval(sql, self.name))
        finally:
            await conn.close()

    async def connections(self) -> int:
        """The worker's connections to the queue database (not the test's own)."""
        return await self.admin(
            f"""SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND application_name <> '{PROBE}'"""
        )

    async def listening(self) -> bool:
        return bool(
            await self.admin(
                """SELECT count(*) FROM pg_stat_activity
                    WHERE datname = $1 AND application_name = 'data-lookup-worker listen'"""
            )
        )

    async def transactions(self) -> int:
        return await self.admin(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1"
        )

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the worker exited:\n{self.log.read_text(encoding='utf-8')}")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdleWorker]:
    name = f"lookup_idle_{uuid.uuid4().hex[:10]}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    folder = tmp_path_factory.mktemp("idle")
    config = folder / "acme.yaml"
    config.write_text(TENANT_YAML, encoding="utf-8")
    psql(ADMIN, f'CREATE DATABASE "{name}"')
    log = folder / "worker.log"
    port = free_port()
    try:
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [
                    *WORKER,
                    "--log-json",
                    "run",
                    "--config",
                    str(config),
                    "--listen",
                    f"127.0.0.1:{port}",
                ],
                cwd=REPO,
                env=_env(QUEUE_DSN=dsn),
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        try:
            yield IdleWorker(dsn, name, proc, log, port)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        psql(
            ADMIN,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )
        psql(ADMIN, f'DROP DATABASE "{name}"')


async def settled(worker: IdleWorker) -> int:
    """Wait until the worker listens and its pools have shrunk back; its connections then."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and (
        not await worker.listening() or await worker.connections() > 2
    ):
        worker.alive()
        await asyncio.sleep(1)
    return await worker.connections()


async def insert(dsn: str, *payloads: object, quietly: bool = False) -> int:
    """Insert jobs as the seed does; how many transactions that took (connecting counts one).

    ``quietly``: with no trigger firing, as a crashed worker or the clock leaves rows.
    """
    conn = await asyncpg.connect(dsn, server_settings={"application_name": PROBE})
    try:
        for payload in payloads:
            if quietly:
                async with conn.transaction():
                    await conn.execute("SET LOCAL session_replication_role = replica")
                    await conn.execute(str(payload))
            else:
                await conn.execute(
                    "INSERT INTO jobs (payload) VALUES ($1::jsonb)", json.dumps(payload)
                )
    finally:
        await conn.close()  # its statistics are flushed as it ends
    return 1 + len(payloads)


@pytest.mark.timeout(180)
async def test_idle_worker__two_connections_few_transactions_and_deaf_to_other_tenants(
    worker: IdleWorker,
) -> None:
    assert await settled(worker) <= 2
    before = await worker.transactions()
    most, ours = 0, 0
    for second in range(WINDOW_S):
        if second == WINDOW_S // 2:  # another tenant's jobs, in the middle of the window
            ours = await insert(worker.dsn, *(job("order_status", "other", order_id="1"),) * 5)
        most = max(most, await worker.connections())
        assert await worker.ready() == 200  # a readiness probe a second, as k8s may send
        await asyncio.sleep(1)
    worker.alive()
    spent = await worker.transactions() - before - ours

    assert most <= 2
    # Woken by each of the other tenant's five jobs, it would claim at least five times;
    # asking the queue for each readiness probe, it would add twenty.
    assert spent <= IDLE_TX_PER_S * WINDOW_S, f"{spent} transactions in {WINDOW_S} s"
    assert psql(worker.dsn, "SELECT count(*) FROM jobs WHERE status = 'pending'") == "5"


async def test_idle_worker__picks_up_an_insert_at_once_and_what_falls_due_on_time(
    worker: IdleWorker,
) -> None:
    # Two rows nobody announces: a lease its worker died holding, running out in 4 s,
    # and a job for 2 s from now.
    await insert(
        worker.dsn,
        f"""INSERT INTO jobs (payload, status, attempt, locked_by, locked_until)
            VALUES ('{json.dumps(job("order_status", "acme", order_id="2"))}'::jsonb,
                    'running', 1, 'gone', now() + interval '4 seconds')""",
        f"""INSERT INTO jobs (payload, run_at)
            VALUES ('{json.dumps(job("order_status", "acme", order_id="3"))}'::jsonb,
                    now() + interval '2 seconds')""",
        quietly=True,
    )
    # A job for now: its insert wakes the worker, whose claim takes it and says when
    # the other two fall due.
    await insert(worker.dsn, job("order_status", "acme", order_id="1"))

    unanswered = (
        "SELECT count(*) FROM jobs WHERE payload->>'tenant_id' = 'acme' AND status <> 'done'"
    )
    deadline = time.monotonic() + 30
    while psql(worker.dsn, unanswered) != "0":
        worker.alive()
        assert time.monotonic() < deadline, psql(worker.dsn, "SELECT * FROM jobs")
        await asyncio.sleep(0.2)

    # How long after it could first be claimed each was answered, by the server's clock.
    late = psql(
        worker.dsn,
        """SELECT string_agg(payload->'parameters'->>'order_id' || ':' ||
                  extract(epoch FROM finished_at - greatest(run_at, created_at
                          + CASE WHEN attempt = 2 THEN interval '4 seconds' END)), ','
                  ORDER BY payload->'parameters'->>'order_id')
             FROM jobs WHERE payload->>'tenant_id' = 'acme'""",
    )
    seconds = {k: float(v) for k, v in (pair.split(":") for pair in late.split(","))}
    # Well within the worker's 20 s long poll: woken by the insert, or by the due time.
    assert set(seconds) == {"1", "2", "3"}
    assert all(0 <= s < 10 for s in seconds.values()), seconds
