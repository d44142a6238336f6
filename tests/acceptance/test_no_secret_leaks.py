"""After runs with a failed login, a bad key and a source error, no secret is anywhere.

Greps the worker's log lines, the audit table, /metrics, what the engine got
(job results, sent messages) and the CLI's output for every credential.
"""

from __future__ import annotations

import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, WORKER, Engine, WorkerProcs, _env, job, wait_until

pytestmark = pytest.mark.slow

DB_PASSWORD = "Wr0ng-Pa55word-4-root"
REDIS_PASSWORD = "R3dis-Secret-Value"


def keygen() -> str:
    done = subprocess.run(
        [*WORKER, "secrets", "keygen"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def encrypt(secret: str, key: str) -> str:
    done = subprocess.run(
        [*WORKER, "secrets", "encrypt"],
        cwd=REPO,
        input=secret,
        env=_env(WORKER_SECRET_KEYS=key),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_no_secret_reaches_logs_audit_metrics_or_the_engine(
    engine: Engine, workers: WorkerProcs, tmp_path: Path
) -> None:
    key = keygen()
    token = encrypt(DB_PASSWORD, key)
    config = workers.config
    config.write_text(
        config.read_text(encoding="utf-8").replace(
            "data_sources:\n",
            "data_sources:\n"
            "  - id: crm\n    type: mysql\n"
            "    connection: {host: 127.0.0.1, database: mysql, username: root,\n"
            f"                 password: '{token}'}}\n"
            "    queries: {q: 'SELECT 1 AS one WHERE 1 = $1'}\n"
            "  - id: cache\n    type: redis\n"
            f"    connection: {{url: 'redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0'}}\n"
            "    queries: {q: {command: GET, key: 'order:{order_id}'}}\n",
            1,
        )
        + "  crm_lookup: {source: crm, query: q, args: [n], params: {n: {type: integer}}}\n"
        + "  cache_lookup: {source: cache, query: q}\n",
        encoding="utf-8",
    )
    ids = [
        engine.enqueue(job("crm_lookup", n="1")),  # failed login
        engine.enqueue(job("cache_lookup", order_id="1")),  # AUTH refused
        engine.enqueue(job("broken_order", order_id="1")),  # source error
        engine.enqueue(job("order_status", order_id="12345")),
    ]
    proc = workers.start(WORKER_SECRET_KEYS=key)
    wait_until(
        lambda: all(engine.job(i)["status"] == "done" for i in ids), timeout_s=30, what="all jobs"
    )
    with urllib.request.urlopen(f"{proc.http}/metrics", timeout=10) as resp:  # type: ignore[attr-defined]  # noqa: S310
        metrics = resp.read().decode()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    outcomes = [engine.job(i)["outcome"] for i in ids]
    assert outcomes == ["fallback", "fallback", "fallback", "ok"]
    assert "authentication failed" in str(engine.job(ids[0])["result"]).lower()

    # a bad key: the config does not load, and says which value, not what it is
    bad_key = subprocess.run(
        [*WORKER, "config", "check", "--config", str(config)],
        cwd=REPO,
        env=_env(WORKER_SECRET_KEYS=keygen()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_key.returncode == 3 and "does not decrypt" in bad_key.stderr  # an invalid config

    audit = (config.parent / "shop.audit.db").read_bytes()
    engine_side = str([engine.job(i) for i in ids]) + str(engine.messages())
    places = {
        "worker log": workers.log_of(proc),
        "audit table": audit.decode("latin-1"),
        "metrics": metrics,
        "engine": engine_side,
        "bad-key output": bad_key.stdout + bad_key.stderr,
    }
    for secret in (DB_PASSWORD, REDIS_PASSWORD, token, key, engine.token):
        for place, text in places.items():
            assert secret not in text, f"a secret leaked into the {place}"
    assert "+1234567890" not in places["audit table"]
