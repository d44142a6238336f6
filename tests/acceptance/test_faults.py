"""Faults survived with nothing lost and no reply doubled (issue 6)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.acceptance.conftest import (
    ENDLESS_LOOPS,
    REPO,
    TOKEN,
    WORKER,
    Engine,
    WorkerProcs,
    _env,
    free_port,
    job,
    wait_until,
)

pytestmark = pytest.mark.slow


class FlakyFront:
    """An HTTP front for the real engine: refuses, then answers 500, then passes calls through."""

    def __init__(self, engine_url: str, *, refuse_s: float, fail_s: float) -> None:
        self.engine_url = engine_url
        self.refuse_s = refuse_s
        self.fail_s = fail_s
        self.port = free_port()
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FlakyFront:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _main(self) -> None:
        await asyncio.sleep(self.refuse_s)  # nothing listens: connections are refused
        ends = time.monotonic() + self.fail_s
        session = aiohttp.ClientSession()

        async def handle(request: web.Request) -> web.StreamResponse:
            if time.monotonic() < ends:
                self.failed += 1
                return web.json_response({"error": "engine down"}, status=500)
            async with session.request(
                request.method,
                self.engine_url + request.path_qs,
                data=await request.read(),
                headers={
                    k: v
                    for k, v in request.headers.items()
                    if k.lower() in ("authorization", "content-type", "idempotency-key")
                },
            ) as upstream:
                body = await upstream.read()
                return web.Response(
                    body=body, status=upstream.status, content_type=upstream.content_type
                )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()
        await session.close()


def test_engine_outage__backoff_then_every_job_answered_once(
    engine: Engine, workers: WorkerProcs
) -> None:
    ids = [engine.enqueue(job("order_status", order_id="12345")) for _ in range(5)]
    with FlakyFront(engine.url, refuse_s=15, fail_s=15) as front:  # 30 s of outage
        workers.engine = Engine(front.url, TOKEN, engine.db, engine.proc)
        proc = workers.start()
        more = [engine.enqueue(job("order_status", order_id="12347")) for _ in range(5)]
        wait_until(
            lambda: all(engine.job(i)["status"] == "done" for i in ids + more),
            timeout_s=60,
            what="every job after the outage",
        )
        assert front.failed > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    replies = engine.replies()
    assert all(len(replies[i]) == 1 for i in ids + more)
    log = workers.log_of(proc)
    assert "claiming failed" in log and "next try in" in log


def test_hanging_source__other_lookups_are_not_held_up(
    engine: Engine, workers: WorkerProcs
) -> None:
    proc = workers.start("--max-in-flight", "20", "--grace", "0.5")
    hung = [
        engine.enqueue(job("slow_order", order_id="12345", loops=ENDLESS_LOOPS)) for _ in range(8)
    ]
    wait_until(
        lambda: all(engine.job(i)["status"] == "running" for i in hung[:4]),
        what="the hung jobs to be claimed",
    )
    started = time.monotonic()
    quick = engine.enqueue(job("faq", topic="returns"))
    wait_until(lambda: engine.job(quick)["status"] == "done", timeout_s=30, what="the quick job")
    # not behind the hung reads (their deadline is 60 s): seconds of margin either way
    assert time.monotonic() - started < 10
    assert engine.job(quick)["outcome"] == "ok"
    assert all(engine.job(i)["status"] == "running" for i in hung[:4])
    proc.send_signal(signal.SIGTERM)  # --grace 0.5: the hung jobs are handed back
    assert proc.wait(timeout=30) == 0


@pytest.fixture
def pg_queue() -> Iterator[str]:
    name = f"lookup_fault_{uuid.uuid4().hex[:10]}"
    admin = ["psql", "postgresql://postgres@127.0.0.1:5432/postgres", "-Atc"]
    subprocess.run([*admin, f'CREATE DATABASE "{name}"'], check=True, timeout=30)
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        subprocess.run(
            [
                *admin,
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            ],
            check=False,
            timeout=30,
        )
        subprocess.run([*admin, f'DROP DATABASE "{name}"'], check=False, timeout=30)


def _pg_ready() -> bool:
    done = subprocess.run(
        ["pg_isready", "-h", "127.0.0.1", "-p", "5432"],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return done.returncode == 0


def test_queue_database_restart__workers_reconnect_and_carry_on(
    pg_queue: str, tenant_config: Path, tmp_path: Path
) -> None:
    init = subprocess.run(
        [*WORKER, "queue", "init", "--dsn", pg_queue],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*WORKER, "--log-json", "run", "--config", str(tenant_config), "--listen", ""],
            cwd=REPO,
            env=_env(QUEUE_DSN=pg_queue),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )

    def insert(n: int, order_id: str) -> None:
        values = ",".join(
            f'(\'{{"job_type": "data_lookup", "tenant_id": "shop", '
            f'"query_type": "order_status", "parameters": {{"order_id": "{order_id}"}}, '
            f'"reply_to": "+1555"}}\')'
            for _ in range(n)
        )
        subprocess.run(
            ["psql", pg_queue, "-c", f"INSERT INTO jobs (payload) VALUES {values}"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def counts() -> tuple[int, int]:
        done = subprocess.run(
            [
                "psql",
                pg_queue,
                "-Atc",
                "SELECT (SELECT count(*) FROM jobs WHERE status = 'done'), "
                "(SELECT count(*) FROM outbound_messages)",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if done.returncode != 0:
            return (-1, -1)
        a, b = done.stdout.strip().split("|")
        return int(a), int(b)

    try:
        insert(20, "12345")
        wait_until(lambda: counts() == (20, 20), timeout_s=30, what="the first jobs")
        subprocess.run(["pg_ctlcluster", "15", "main", "restart"], check=True, timeout=120)
        wait_until(_pg_ready, timeout_s=60, what="PostgreSQL back")
        insert(20, "12347")
        wait_until(lambda: counts() == (40, 40), timeout_s=60, what="the jobs after the restart")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text


def test_sigkill_with_100_in_flight__a_second_worker_answers_each_once(
    engine: Engine, workers: WorkerProcs, tmp_path: Path
) -> None:
    name = f"lookup_kill_{uuid.uuid4().hex[:8]}"
    admin = ["psql", "postgresql://postgres@127.0.0.1:5432/postgres", "-Atc"]
    subprocess.run([*admin, f'CREATE DATABASE "{name}"'], check=True, timeout=30)
    try:
        config = tmp_path / "slow.yaml"
        config.write_text(
            "tenant_id: shop\n"
            "data_sources:\n"
            "  - id: crm\n    type: postgresql\n"
            f"    connection: {{host: 127.0.0.1, database: {name}, username: postgres,"
            " pool_size: 30}\n"
            "    queries: {slow: 'SELECT $1::text AS id, pg_sleep(1.5) IS NULL AS slept'}\n"
            "lookups:\n"
            "  slow: {source: crm, query: slow, args: [id], template: 'done {{ row.id }}'}\n",
            encoding="utf-8",
        )
        workers.config = config
        ids = [engine.enqueue(job("slow", id=str(n))) for n in range(100)]
        first = workers.start("--max-in-flight", "100")
        # Admission claims 30 (the pool) until it has seen how long a read takes, then
        # the rest: every job claimed, most of them still running when it is killed.
        wait_until(
            lambda: all(engine.job(i)["status"] != "pending" for i in ids),
            timeout_s=30,
            what="all 100 jobs claimed",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        answered_before = set(engine.replies())
        second = workers.start("--max-in-flight", "100")
        wait_until(
            lambda: all(engine.job(i)["status"] == "done" for i in ids),
            timeout_s=90,
            what="every job answered by the second worker",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        replies = engine.replies()
        assert all(replies[i] == [f"done {n}"] for n, i in enumerate(ids))
        assert len(answered_before) < 100
        assert {engine.job(i)["attempt"] for i in ids if i not in answered_before} == {2}
    finally:
        subprocess.run(
            [
                *admin,
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            ],
            check=False,
            timeout=30,
        )
        subprocess.run([*admin, f'DROP DATABASE "{name}"'], check=False, timeout=30)
