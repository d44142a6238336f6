"""Rotating a PostgreSQL password through the tenant's settings, under load (issue 7).

The role authenticates with SCRAM (a pg_hba line the test adds for it): the
password really matters. Jobs keep coming while the password changes on the
server (ALTER ROLE) and the new, encrypted one is PUT to the engine; the
worker follows the new config without a restart. No job is lost, none is
answered twice, and none fails after the new config is in.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, TOKEN, WORKER, _env, job, serve_engine, wait_until

pytestmark = pytest.mark.slow

ROLE = "lookup_rotation"
HBA_LINE = f"host all {ROLE} 127.0.0.1/32 scram-sha-256"


def psql(sql: str, database: str = "postgres") -> str:
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-Atc", sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


@pytest.fixture
def scram_database() -> Iterator[str]:
    """A database with an orders table, readable by a role that must give its password."""
    hba = Path(psql("SHOW hba_file"))
    if HBA_LINE not in hba.read_text():
        hba.write_text(HBA_LINE + "\n" + hba.read_text())
        psql("SELECT pg_reload_conf()")
    name = f"lookup_rot_{uuid.uuid4().hex[:8]}"
    psql(f'CREATE DATABASE "{name}"')
    psql(f"DO $$ BEGIN CREATE ROLE {ROLE} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    psql(f"ALTER ROLE {ROLE} PASSWORD 'first-Pa55'")
    psql(
        "CREATE TABLE orders (order_id text PRIMARY KEY, status text);"
        "INSERT INTO orders VALUES ('12345', 'shipped');"
        f"GRANT SELECT ON orders TO {ROLE}",
        database=name,
    )
    try:
        yield name
    finally:
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        psql(f'DROP DATABASE "{name}"')


def encrypt(secret: str, key: str) -> str:
    done = subprocess.run(
        [*WORKER, "secrets", "encrypt", "--tenant", "shop"],
        cwd=REPO,
        input=secret,
        check=True,
        env=_env(WORKER_SECRET_KEYS=key),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip()


def config(database: str, password_token: str) -> dict[str, object]:
    return {
        "tenant_id": "shop",
        "data_sources": [
            {
                "id": "crm",
                "type": "postgresql",
                "connection": {
                    "host": "127.0.0.1",
                    "database": database,
                    "username": ROLE,
                    "password": password_token,
                    "pool_size": 4,
                },
                "queries": {"order_status": "SELECT status FROM orders WHERE order_id = $1"},
            }
        ],
        "lookups": {"order_status": {"args": ["order_id"], "template": "{{ row.status }}"}},
    }


def test_rotate_password_under_load__no_job_lost_or_failed_after_the_change(
    scram_database: str, tmp_path: Path
) -> None:
    key = subprocess.run(
        [*WORKER, "secrets", "keygen"],
        cwd=REPO,
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "shop.json").write_text(
        json.dumps(config(scram_database, encrypt("first-Pa55", key)))
    )
    stack = contextlib.ExitStack()
    # an engine-served config reaches only public addresses unless the operator allows more
    engine = stack.enter_context(
        serve_engine(tmp_path / "engine.db", configs, WORKER_ALLOW_NETWORKS="127.0.0.0/8")
    )
    log = tmp_path / "worker.log"
    worker_proc: subprocess.Popen[bytes] | None = None
    enqueued: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            enqueued.append(
                (time.monotonic(), engine.enqueue(job("order_status", order_id="12345")))
            )
            time.sleep(0.02)

    try:
        with log.open("wb") as sink:
            worker_proc = subprocess.Popen(
                [*WORKER, "--log-json", "run", "--tenant", "shop", "--listen", ""],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                env=_env(
                    ENGINE_URL=engine.url,
                    ENGINE_TOKEN=TOKEN,
                    WORKER_ALLOW_NETWORKS="127.0.0.0/8",
                    WORKER_SECRET_KEYS=key,
                    WORKER_CONFIG_DIR=str(tmp_path / "none"),
                    WORKER_CONFIG_POLL_S="0.3",
                    AUDIT_DSN=str(tmp_path / "audit.db"),
                ),
            )
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(2)
        psql(f"ALTER ROLE {ROLE} PASSWORD 'second-Pa55'")
        changed_at = time.monotonic()
        status, _ = engine.put_config(config(scram_database, encrypt("second-Pa55", key)))
        assert status == 200
        wait_until(lambda: "config changed" in log.read_text(), timeout_s=15, what="the reload")
        switched_at = time.monotonic()
        time.sleep(2)
        stop.set()
        loader.join(timeout=10)
        ids = [i for _, i in enqueued]
        wait_until(
            lambda: all(engine.job(i)["status"] == "done" for i in ids),
            timeout_s=60,
            what="every job answered",
        )
        replies = engine.replies()
        outcomes = {i: engine.job(i)["outcome"] for i in ids}
    finally:
        stop.set()
        if worker_proc is not None:
            worker_proc.send_signal(signal.SIGTERM)
            worker_proc.wait(timeout=30)
        stack.close()

    assert len(ids) > 100
    assert all(len(replies.get(i, [])) == 1 for i in ids), "a job was lost or answered twice"
    late_failures = [i for at, i in enqueued if at > switched_at + 1 and outcomes[i] != "ok"]
    assert late_failures == []
    early_failures = [i for at, i in enqueued if at < changed_at and outcomes[i] != "ok"]
    assert early_failures == []
    text = log.read_text()
    assert text.count("config changed") == 1
    assert "second-Pa55" not in text and "first-Pa55" not in text
