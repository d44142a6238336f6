"""A local config file reloads without a restart: on SIGHUP, and with ``--watch`` when it
or a template changes. A file that does not load is logged with its file and line, and
the worker keeps answering with the config it had."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import REPO, Engine, WorkerProcs, job, wait_until

pytestmark = pytest.mark.slow

CONFIG = """\
tenant_id: shop
templates_dir: tmpl
data_sources:
  - id: db
    type: sqlite
    connection: {{path: shop.db}}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
lookups:
  order_status:
    source: db
    args: [order_id]
    template: "{template}"
  from_file:
    source: db
    query: order_status
    args: [order_id]
    template: reply.j2
"""
#: the line of the order_status template in CONFIG
TEMPLATE_LINE = 13


@pytest.fixture
def local(engine: Engine, tmp_path: Path) -> Iterator[WorkerProcs]:
    """Workers on a config file of the test's own (the engine only queues and delivers)."""
    folder = tmp_path / "tenant"
    (folder / "tmpl").mkdir(parents=True)
    shutil.copy(REPO / "config" / "demo" / "shop.db", folder / "shop.db")
    (folder / "tmpl" / "reply.j2").write_text("file v1: {{ row.status }}", encoding="utf-8")
    config = folder / "shop.yaml"
    config.write_text(CONFIG.format(template="v1: {{ row.status }}"), encoding="utf-8")
    with WorkerProcs(engine, config, tmp_path) as procs:
        yield procs


def _answer(engine: Engine, lookup: str) -> str:
    job_id = engine.enqueue(job(lookup, order_id="12345"))
    wait_until(lambda: job_id in engine.replies(), what=f"the reply to {lookup}")
    [reply] = engine.replies()[job_id]
    return reply


def _lines(procs: WorkerProcs, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    text = procs.log_of(proc)
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _logged(procs: WorkerProcs, proc: subprocess.Popen[bytes], text: str) -> int:
    return sum(text in line["msg"] for line in _lines(procs, proc))


def test_sighup__reloads_the_file_and_keeps_the_old_config_when_the_new_one_is_invalid(
    engine: Engine, local: WorkerProcs
) -> None:
    proc = local.start()
    assert _answer(engine, "order_status") == "v1: shipped"

    local.config.write_text(CONFIG.format(template="v2: {{ row.status }}"), encoding="utf-8")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _logged(local, proc, "config reloaded") == 1, what="the reload")
    assert _answer(engine, "order_status") == "v2: shipped"

    local.config.write_text(CONFIG.format(template="{{ row.status"), encoding="utf-8")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _logged(local, proc, "config reload (SIGHUP) failed") == 1, what="an error")
    [error] = [line for line in _lines(local, proc) if "reload (SIGHUP) failed" in line["msg"]]
    assert error["level"] == "error"
    assert f"{local.config}:{TEMPLATE_LINE}: lookups.order_status.template" in error["msg"]
    assert _answer(engine, "order_status") == "v2: shipped"  # the config it had
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "Traceback" not in local.log_of(proc)


def test_watch__a_changed_template_file_is_used_without_a_signal(
    engine: Engine, local: WorkerProcs
) -> None:
    proc = local.start("--watch", WORKER_CONFIG_POLL_S="0.2")
    assert _answer(engine, "from_file") == "file v1: shipped"
    (local.config.parent / "tmpl" / "reply.j2").write_text(
        "file v2, {{ row.status }}", encoding="utf-8"
    )
    wait_until(lambda: _logged(local, proc, "config reloaded") == 1, what="the reload")
    assert _answer(engine, "from_file") == "file v2, shipped"
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert _logged(local, proc, "config reloaded") == 1  # an unchanged file is not reloaded


def test_sighup__to_worker_run_processes_reaches_every_child(
    engine: Engine, local: WorkerProcs
) -> None:
    """The parent of ``--processes 2`` passes SIGHUP on: both children reload, none stops."""
    proc = local.start("--processes", "2")

    def serving() -> int:  # the run loop's first line: each child's SIGHUP handler is in
        return sum(line["msg"] == "serving tenant shop" for line in _lines(local, proc))

    wait_until(lambda: serving() == 2, what="both children serving")
    assert _answer(engine, "order_status") == "v1: shipped"
    local.config.write_text(CONFIG.format(template="v2: {{ row.status }}"), encoding="utf-8")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: _logged(local, proc, "config reloaded") == 2, what="both reloads")
    assert proc.poll() is None
    assert {_answer(engine, "order_status") for _ in range(6)} == {"v2: shipped"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
