"""`worker run` claiming straight from the PostgreSQL queue (contract §4), as a subprocess."""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, WORKER, _env, answers, free_port, job, wait_until

pytestmark = pytest.mark.slow


def psql(dsn: str, sql: str) -> str:
    done = subprocess.run(
        ["psql", dsn, "-Atc", sql], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


@pytest.fixture
def queue_dsn() -> Iterator[str]:
    name = f"lookup_accept_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    psql(admin, f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(
            admin,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )
        psql(admin, f'DROP DATABASE "{name}"')


def test_queue_init_then_run_once_answers_from_the_tables(
    queue_dsn: str, tenant_config: Path
) -> None:
    init = subprocess.run(
        [*WORKER, "queue", "init", "--dsn", queue_dsn],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    again = subprocess.run(
        [*WORKER, "queue", "init", "--dsn", queue_dsn],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    for payload in (
        job("order_status", order_id="12345"),
        job("order_status", order_id="99999"),
        job("order_status", tenant="someone_else", order_id="12345"),
    ):
        text = json.dumps(payload).replace("'", "''")
        psql(queue_dsn, f"INSERT INTO jobs (payload) VALUES ('{text}')")
    run = subprocess.run(
        [*WORKER, "run", "--config", str(tenant_config), "--once", "--listen", ""],
        cwd=REPO,
        env=_env(QUEUE_DSN=queue_dsn),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    rows = psql(queue_dsn, "SELECT id, status, outcome, attempt FROM jobs ORDER BY id").splitlines()
    assert rows == ["1|done|ok|1", "2|done|not_found|1", "3|pending||0"]
    messages = psql(
        queue_dsn,
        "SELECT job_id, \"to\", split_part(message, E'\\n', 1) FROM outbound_messages"
        " ORDER BY job_id",
    )
    assert messages.splitlines()[0].startswith("1|+1234567890|Your order #12345 has been shipped!")
    assert messages.splitlines()[1] == "2|+1234567890|No order #99999 here."


def test_run_observes_how_long_each_claimed_job_waited(queue_dsn: str, tenant_config: Path) -> None:
    """``worker_queue_lag_seconds``: from a job's ``run_at`` to its claim, per claimed job."""
    subprocess.run(
        [*WORKER, "queue", "init", "--dsn", queue_dsn], cwd=REPO, env=_env(), check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [*WORKER, "run", "--config", str(tenant_config), "--listen", f"127.0.0.1:{port}"],
        cwd=REPO, env=_env(QUEUE_DSN=queue_dsn), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), what="the worker")
        for order in ("12345", "12346"):
            text = json.dumps(job("order_status", order_id=order))
            psql(queue_dsn, f"INSERT INTO jobs (payload) VALUES ('{text}')")
        wait_until(
            lambda: psql(queue_dsn, "SELECT count(*) FROM jobs WHERE status = 'done'") == "2",
            what="both jobs answered",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "worker_queue_lag_seconds_count 2.0" in metrics
