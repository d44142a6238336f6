"""The direct PostgreSQL queue through a real PgBouncer, with real ``worker run`` processes.

Hundreds of tenant workers share one queue, so the queue's connections go
through PgBouncer. Session pooling changes nothing for the worker. Transaction
pooling lends a server connection for one transaction at a time: the worker is
told so (``QUEUE_POOL_MODE=transaction``: no prepared-statement cache, no
session settings) and its ``LISTEN`` goes straight to PostgreSQL
(``QUEUE_LISTEN_DSN``), since a notification is delivered to a session, not to
whoever holds the server connection when it arrives. Jobs are inserted as the
seed does, straight into PostgreSQL, so the insert's ``NOTIFY`` is real.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import REPO, TENANT_YAML, WORKER, _env, job, wait_until
from tests.support.pgbouncer import PGBOUNCER_BINARY, PgBouncer, run_pgbouncer
from worker.runtime import RunSettings

pytestmark = pytest.mark.slow

DIRECT = "postgresql://postgres@127.0.0.1:5432/{}"
ADMIN = DIRECT.format("postgres")
#: How long an idle worker's claim waits when nothing wakes it.
CLAIM_WAIT_S = RunSettings.wait_s


def psql(dsn: str, sql: str) -> str:
    done = subprocess.run(
        ["psql", "-X", "-q", dsn, "-Atc", sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


@pytest.fixture
def queue_db() -> Iterator[str]:
    """A new database's name, dropped afterwards (with whatever still holds it)."""
    name = f"lookup_pgbouncer_{uuid.uuid4().hex[:10]}"
    psql(ADMIN, f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        psql(ADMIN, f'DROP DATABASE "{name}" WITH (FORCE)')  # PgBouncer may still hold it


@pytest.fixture
def bouncer(tmp_path: Path) -> Iterator[Callable[..., PgBouncer]]:
    """Starts one PgBouncer with the given ``pool_mode`` and ``pool_size``; stopped afterwards."""
    if not PGBOUNCER_BINARY.exists():
        message = "pgbouncer is not installed: ./scripts/test.sh installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(run_pgbouncer(tmp_path / "pgbouncer", **kw))


@dataclass
class Workers:
    """``worker run`` processes, one tenant each, on copies of the acceptance tenant's config."""

    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, tenant: str, **env: str) -> subprocess.Popen[bytes]:
        folder = self.root / tenant
        folder.mkdir()
        for name in ("shop.db", "faq.json"):
            shutil.copy(REPO / "config" / "demo" / name, folder / name)
        config = TENANT_YAML.format(templates=REPO / "templates")
        (folder / "shop.yaml").write_text(config.replace("tenant_id: shop", f"tenant_id: {tenant}"))
        cmd = [*WORKER, "--log-json", "run", "--config", str(folder / "shop.yaml"), "--listen", ""]
        with (folder / "worker.log").open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=_env(**env), stdout=subprocess.DEVNULL, stderr=log
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.root.glob("*/worker.log"))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path / "tenants")
    started.root.mkdir()
    try:
        yield started
    finally:
        for proc in started.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in started.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def queue_init(dsn: str, **env: str) -> None:
    """``worker queue init`` on ``dsn``; a failure fails the test, with its stderr."""
    init = subprocess.run(
        [*WORKER, "queue", "init", "--dsn", dsn],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr


def insert(db: str, payloads: list[dict[str, Any]]) -> list[int]:
    """``INSERT INTO jobs (payload) VALUES …`` on PostgreSQL itself; the new ids."""
    values = ", ".join("('{}')".format(json.dumps(p).replace("'", "''")) for p in payloads)
    out = psql(DIRECT.format(db), f"INSERT INTO jobs (payload) VALUES {values} RETURNING id")
    return [int(line) for line in out.split()]


def unanswered(db: str, ids: list[int]) -> int:
    listed = ",".join(map(str, ids))
    return int(
        psql(
            DIRECT.format(db),
            f"SELECT count(*) FROM jobs WHERE id IN ({listed}) AND status <> 'done'",
        )
    )


def backends(db: str) -> int:
    """Server sessions on ``db``: PgBouncer's and whatever connects directly."""
    return int(psql(ADMIN, f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"))


def wait_answered(
    db: str, ids: list[int], workers: Workers, *, sample: Callable[[], None] = lambda: None
) -> None:
    """Until every job in ``ids`` is done; fails at once, with the logs, if a worker exits."""

    def done() -> bool:
        sample()
        if any(proc.poll() is not None for proc in workers.procs):
            pytest.fail(f"a worker exited:\n{workers.logs()}")
        return unanswered(db, ids) == 0

    try:
        wait_until(done, 60, what="the jobs to be answered")
    except AssertionError:
        rows = psql(DIRECT.format(db), "SELECT id, status, outcome, attempt, error FROM jobs")
        pytest.fail(f"jobs not answered:\n{rows}\nworker logs:\n{workers.logs()}")


def answered_rows(db: str) -> list[str]:
    """Per job: tenant, order, status, outcome, attempt, replies written, the reply's first line."""
    return psql(
        DIRECT.format(db),
        """SELECT j.payload->>'tenant_id', j.payload->'parameters'->>'order_id', j.status,
                  coalesce(j.outcome, ''), j.attempt,
                  (SELECT count(*) FROM outbound_messages m WHERE m.job_id = j.id),
                  (SELECT split_part(m.message, E'\\n', 1) FROM outbound_messages m
                    WHERE m.job_id = j.id)
             FROM jobs j ORDER BY j.id""",
    ).splitlines()


SHIPPED = "Your order #12345 has been shipped! 📦"


def test_session_pooling__the_worker_answers_as_it_does_directly(
    bouncer: Callable[..., PgBouncer], queue_db: str, workers: Workers
) -> None:
    pool = bouncer(pool_mode="session", pool_size=20)
    queue_init(pool.dsn(queue_db))
    workers.start("shop", QUEUE_DSN=pool.dsn(queue_db))
    ids = insert(
        queue_db,
        [
            job("order_status", order_id="12345"),
            job("order_status", order_id="99999"),
            job("order_status", tenant="someone_else", order_id="12345"),
        ],
    )
    wait_answered(queue_db, ids[:2], workers)
    assert answered_rows(queue_db) == [
        f"shop|12345|done|ok|1|1|{SHIPPED}",
        "shop|99999|done|not_found|1|1|No order #99999 here.",
        "someone_else|12345|pending||0|0|",
    ]


def transaction_env(pool: PgBouncer, db: str) -> dict[str, str]:
    """Claims and completions through PgBouncer; ``LISTEN`` on a session of its own."""
    return {
        "QUEUE_DSN": pool.dsn(db),
        "QUEUE_POOL_MODE": "transaction",
        "QUEUE_LISTEN_DSN": DIRECT.format(db),
    }


TENANTS = ("shop_a", "shop_b", "shop_c")


def test_transaction_pooling__tenants_share_a_few_server_connections(
    bouncer: Callable[..., PgBouncer], queue_db: str, workers: Workers
) -> None:
    pool = bouncer(pool_mode="transaction", pool_size=2)
    queue_init(DIRECT.format(queue_db))
    for tenant in TENANTS:
        workers.start(tenant, **transaction_env(pool, queue_db))
    orders = ("12345", "99999", "12345", "12345")
    ids = insert(queue_db, [job("order_status", t, order_id=o) for t in TENANTS for o in orders])
    seen: list[int] = []
    wait_answered(queue_db, ids, workers, sample=lambda: seen.append(backends(queue_db)))
    assert answered_rows(queue_db) == [
        f"{t}|{o}|done|{'ok' if o == '12345' else 'not_found'}|1|1|"
        + (SHIPPED if o == "12345" else f"No order #{o} here.")
        for t in TENANTS
        for o in orders
    ]
    # Every worker's claims and completions went through PgBouncer's 2 server
    # sessions; the other sessions on the database are the workers' LISTEN, one each.
    (stats,) = (row for row in pool.show("STATS") if row["database"] == queue_db)
    assert int(stats["total_xact_count"]) >= len(ids)
    assert max(seen) <= pool.pool_size + len(TENANTS)


def test_transaction_pooling__a_new_job_wakes_the_idle_worker(
    bouncer: Callable[..., PgBouncer], queue_db: str, workers: Workers
) -> None:
    pool = bouncer(pool_mode="transaction", pool_size=2)
    # The migrations hold a transaction-scoped lock: transaction pooling serves them.
    queue_init(pool.dsn(queue_db), **transaction_env(pool, queue_db))
    workers.start("shop", **transaction_env(pool, queue_db))
    wait_answered(queue_db, insert(queue_db, [job("order_status", order_id="12345")]), workers)
    time.sleep(2)  # the worker is in its long poll now: only the NOTIFY can end it early
    inserted = time.monotonic()
    wait_answered(queue_db, insert(queue_db, [job("order_status", order_id="12345")]), workers)
    picked_up_s = time.monotonic() - inserted
    assert picked_up_s < CLAIM_WAIT_S / 2, f"answered after {picked_up_s:.1f} s: not woken"


def test_transaction_pooling_without_the_settings__the_worker_stops_and_says_what_to_set(
    bouncer: Callable[..., PgBouncer], queue_db: str, workers: Workers
) -> None:
    """Unset, the worker would cache prepared statements on server sessions it does not
    keep (another client's statement of the same name, or none) and LISTEN on one it
    lends out (no wake-up ever arrives): it must not start half-working."""
    pool = bouncer(pool_mode="transaction", pool_size=1)
    queue_init(DIRECT.format(queue_db))
    proc = workers.start("shop", QUEUE_DSN=pool.dsn(queue_db))
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker kept running behind a transaction pool:\n{workers.logs()}")
    log = workers.logs()
    assert proc.returncode != 0
    assert "QUEUE_POOL_MODE=transaction" in log
    assert "Traceback" not in log
