"""The audit trail survives stops, crashes, outages and the seed's own table (issue 11).

Each job carries its own customer number (``+1555000NNNN``), so a masked audit
row (``+*******NNNN``) names the job it belongs to.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import REPO, WORKER, Engine, WorkerProcs, _env, job, wait_until
from tests.acceptance.test_postgres_queue import psql, queue_dsn  # noqa: F401 - a fixture
from tests.support.databases import ADMIN, SEED_AUDIT_DDL

pytestmark = pytest.mark.slow


def numbered(n: int, query_type: str = "order_status", **params: str) -> dict[str, Any]:
    payload = job(query_type, **params)
    payload["customer_context"]["phone"] = f"+1555000{n:04d}"
    return payload


def number_of(identifier: str) -> int:
    """``+*******0042`` → 42: the job a masked row belongs to."""
    return int(identifier[-4:])


def insert_jobs(dsn: str, payloads: list[dict[str, Any]]) -> None:
    values = ", ".join("('{}')".format(json.dumps(p).replace("'", "''")) for p in payloads)
    psql(dsn, f"INSERT INTO jobs (payload) VALUES {values}")


def queue_init(dsn: str) -> None:
    done = subprocess.run(
        [*WORKER, "queue", "init", "--dsn", dsn],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def start_run(config: Path, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [*WORKER, "--log-json", "run", "--config", str(config), "--listen", "", *args],
            cwd=REPO,
            env=_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def count_done(dsn: str) -> int:
    return int(psql(dsn, "SELECT count(*) FROM jobs WHERE status = 'done'"))


def test_kill_9_after_a_burst__every_done_job_has_exactly_one_row(
    queue_dsn: str,  # noqa: F811
    tenant_config: Path,
    tmp_path: Path,
) -> None:
    queue_init(queue_dsn)
    # ~60 ms of work on the source each, 10 at a time: the burst lasts seconds
    insert_jobs(
        queue_dsn,
        [numbered(n, "slow_order", order_id="12345", loops="150000") for n in range(300)],
    )
    proc = start_run(
        tenant_config, tmp_path / "worker.log", "--max-in-flight", "10", QUEUE_DSN=queue_dsn
    )
    try:
        wait_until(lambda: count_done(queue_dsn) >= 80, timeout_s=60, what="80 jobs done")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # jobs 1…300 were inserted in order: job id N carries number N - 1
    done = {
        int(i) - 1 for i in psql(queue_dsn, "SELECT id FROM jobs WHERE status = 'done'").split()
    }
    identifiers = psql(queue_dsn, "SELECT customer_identifier FROM data_access_logs").splitlines()
    rows: dict[int, int] = {}
    for identifier in identifiers:
        rows[number_of(identifier)] = rows.get(number_of(identifier), 0) + 1
    assert len(done) >= 80
    missing = sorted(n for n in done if rows.get(n, 0) == 0)
    doubled = sorted(n for n, count in rows.items() if count > 1)
    assert not missing, f"done jobs without an audit row: {missing}"
    assert not doubled, f"jobs with more than one audit row: {doubled}"


def engine_done(engine: Engine) -> list[int]:
    with sqlite3.connect(engine.db) as db:
        return [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'done'")]


def sqlite_identifiers(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT customer_identifier FROM data_access_logs")]


def test_sigterm_under_load__every_answered_job_has_its_row(
    engine: Engine, workers: WorkerProcs
) -> None:
    """HTTP engine, audit in the SQLite file beside the config: a clean stop writes them all."""
    for n in range(300):
        engine.insert(json.dumps(numbered(n, "slow_order", order_id="12345", loops="150000")))
    proc = workers.start("--max-in-flight", "10", WORKER_AUDIT_FLUSH_S="5")
    wait_until(lambda: len(engine_done(engine)) >= 80, timeout_s=60, what="80 jobs done")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, workers.log_of(proc)
    done = {job_id - 1 for job_id in engine_done(engine)}  # job N carries number N - 1
    rows = [number_of(i) for i in sqlite_identifiers(workers.config.parent / "shop.audit.db")]
    assert len(done) >= 80
    assert sorted(n for n in done if n not in rows) == [], "answered jobs without a row"
    assert len(rows) == len(set(rows))


def test_lookup_on_postgres__writes_its_row_before_it_exits(
    queue_dsn: str,  # noqa: F811 - here: the source's and the audit log's database
    tmp_path: Path,
) -> None:
    psql(
        queue_dsn,
        "CREATE TABLE orders (order_id text PRIMARY KEY, status text);"
        "INSERT INTO orders VALUES ('12345', 'shipped')",
    )
    config = tmp_path / "pgshop.yaml"
    config.write_text(
        f"""
tenant_id: pgshop
data_sources:
  - id: crm
    type: postgresql
    connection: {{dsn: "{queue_dsn}"}}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
lookups:
  order_status:
    source: crm
    args: [order_id]
    template: "Order {{{{ params.order_id }}}}: {{{{ row.status }}}}"
""",
        encoding="utf-8",
    )
    for _ in range(3):  # the issue saw it fail 4 runs of 4
        done = subprocess.run(
            [*WORKER, "lookup", "--config", str(config), "order_status", "order_id=12345"],
            cwd=REPO,
            env=_env(AUDIT_DSN=queue_dsn),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "shipped" in done.stdout
    rows = psql(queue_dsn, "SELECT tenant_id, data_source_id, outcome FROM data_access_logs")
    assert rows.splitlines() == ["pgshop|crm|ok"] * 3


@pytest.mark.parametrize(
    "tenant_uuid",
    [
        pytest.param(None, id="name-based-uuid"),
        pytest.param("0b9e6f3a-6d1c-4d0e-9d7a-3f1a2b3c4d5e", id="configured-uuid"),
    ],
)
def test_seed_table_as_it_is__rows_written_run_once_exits_0_stats_work(
    queue_dsn: str,  # noqa: F811
    tenant_config: Path,
    tenant_uuid: str | None,
) -> None:
    queue_init(queue_dsn)
    psql(queue_dsn, SEED_AUDIT_DDL)
    if tenant_uuid:
        text = tenant_config.read_text(encoding="utf-8")
        tenant_config.write_text(f"tenant_uuid: {tenant_uuid}\n{text}", encoding="utf-8")
    insert_jobs(queue_dsn, [numbered(n, order_id="12345") for n in range(20)])
    run = subprocess.run(
        [*WORKER, "run", "--config", str(tenant_config), "--once", "--listen", ""],
        cwd=REPO,
        env=_env(QUEUE_DSN=queue_dsn),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert count_done(queue_dsn) == 20
    expected = tenant_uuid or str(uuid.uuid5(uuid.NAMESPACE_URL, "tenant:shop"))
    rows = psql(
        queue_dsn,
        "SELECT tenant_id, data_source_id, query_type, count(*) FROM data_access_logs"
        " GROUP BY 1, 2, 3",
    )
    assert rows == f"{expected}|shop_db|order_status|20"
    stats = subprocess.run(
        [*WORKER, "stats", "--config", str(tenant_config), "--json"],
        cwd=REPO,
        env=_env(QUEUE_DSN=queue_dsn),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stats.returncode == 0, stats.stderr
    assert [(s["data_source_id"], s["query_count"]) for s in json.loads(stats.stdout)] == [
        ("shop_db", 20)
    ]


def test_audit_store_down_for_10_s__jobs_answered_throughout_rows_arrive_after(
    engine: Engine,
    workers: WorkerProcs,
    queue_dsn: str,  # noqa: F811 - here: the audit log's own database
) -> None:
    name = queue_dsn.rsplit("/", 1)[1]
    proc = workers.start(AUDIT_DSN=queue_dsn)
    ids = [engine.enqueue(numbered(n, order_id="12345")) for n in range(5)]
    wait_until(lambda: len(engine_done(engine)) == 5, timeout_s=30, what="the first jobs")
    wait_until(
        lambda: psql(queue_dsn, "SELECT count(*) FROM data_access_logs") == "5",
        timeout_s=30,
        what="the first rows",
    )
    psql(ADMIN, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    psql(ADMIN, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    down_at = time.monotonic()
    try:
        ids += [engine.enqueue(numbered(n, order_id="12345")) for n in range(5, 25)]
        wait_until(lambda: len(engine_done(engine)) == 25, timeout_s=30, what="jobs in the outage")
        answered_in = time.monotonic() - down_at
        time.sleep(max(0.0, 10 - answered_in))
    finally:
        psql(ADMIN, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    wait_until(
        lambda: psql(queue_dsn, "SELECT count(*) FROM data_access_logs") == "25",
        timeout_s=40,
        what="the outage's rows",
    )
    identifiers = psql(queue_dsn, "SELECT customer_identifier FROM data_access_logs").split()
    assert sorted(number_of(i) for i in identifiers) == list(range(25))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    log = workers.log_of(proc)
    refusals = [line for line in log.splitlines() if "audit store refused" in line]
    assert 1 <= len(refusals) <= 3, refusals  # one line per distinct error, not one per round
    assert "Traceback" not in log
    assert "takes rows again" in log
