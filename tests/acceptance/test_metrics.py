"""``GET /metrics`` and ``GET /readyz`` of a real ``worker run``, after real jobs on a
working and a broken source: per-lookup counts under the config's names only, source
errors by kind, process metrics, and readiness that follows open circuits if asked to."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import REPO, Engine, WorkerProcs, answers, job, wait_until

pytestmark = pytest.mark.slow

CONFIG = """\
tenant_id: shop
defaults:
  fallback: "We'll get back to you."
data_sources:
  - id: db
    type: sqlite
    connection: {path: shop.db}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
  - id: broken
    type: sqlite
    connection: {path: missing/nowhere.db}
    circuit: {failures: 2, reset_s: 600}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
lookups:
  order_status:
    source: db
    args: [order_id]
    template: "{{ row.status }}"
  broken_order:
    source: broken
    query: order_status
    args: [order_id]
"""
#: a lookup name a customer typed: answered with the tenant's fallback, never a label
TYPED = "tell_me_about_ana_9931"


@pytest.fixture
def local(engine: Engine, tmp_path: Path) -> Iterator[WorkerProcs]:
    folder = tmp_path / "tenant"
    folder.mkdir()
    shutil.copy(REPO / "config" / "demo" / "shop.db", folder / "shop.db")
    config = folder / "shop.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    with WorkerProcs(engine, config, tmp_path) as procs:
        yield procs


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def _readyz(proc: subprocess.Popen[bytes]) -> tuple[int, dict[str, Any]]:
    status, body = _get(f"{proc.http}/readyz")  # type: ignore[attr-defined]
    return status, json.loads(body)


def _run_jobs(engine: Engine) -> None:
    """One ok, one unknown lookup (the fallback), three on the broken source (two failures
    open its circuit; the third is skipped)."""
    ids = [engine.enqueue(job("order_status", order_id="12345"))]
    ids.append(engine.enqueue(job(TYPED, order_id="12345")))
    for _ in range(3):
        ids.append(engine.enqueue(job("broken_order", order_id="12345")))
        wait_until(lambda: ids[-1] in engine.replies(), what="a reply")
    wait_until(lambda: all(i in engine.replies() for i in ids), what="the replies")


def _sample(text: str, name: str, **labels: str) -> float | None:
    inside = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as exposed
    series = f"{name}{{{inside}}}" if labels else name
    found = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_metrics__lookups_source_errors_and_process_by_convention(
    engine: Engine, local: WorkerProcs
) -> None:
    proc = local.start()
    wait_until(lambda: answers(f"{proc.http}/healthz"), what="the worker to listen")  # type: ignore[attr-defined]
    _run_jobs(engine)
    status, body = _get(f"{proc.http}/metrics")  # type: ignore[attr-defined]
    assert status == 200
    text = body.decode()

    assert _sample(text, "worker_jobs_total", outcome="ok") == 1  # the names that were there
    assert _sample(text, "worker_jobs_total", outcome="fallback") == 4
    assert _sample(text, "worker_lookups_total", lookup="order_status", outcome="ok") == 1
    assert _sample(text, "worker_lookups_total", lookup="broken_order", outcome="fallback") == 3
    assert _sample(text, "worker_lookups_total", lookup="(other)", outcome="fallback") == 1
    assert TYPED not in text  # a customer's words are never a label
    assert _sample(text, "worker_source_errors_total", source="broken", kind="unavailable") == 2
    assert _sample(text, "worker_source_errors_total", source="broken", kind="circuit_open") == 1
    assert 'source="db"' not in text.split("worker_source_errors_total", 1)[1]
    assert _sample(text, "worker_send_retries_total") == 0
    assert _sample(text, "worker_source_circuit_open", source="broken") == 1
    assert (_sample(text, "process_cpu_seconds_total") or 0) > 0
    assert (_sample(text, "process_resident_memory_bytes") or 0) > 0
    assert re.search(r'^python_info\{implementation="CPython",.*\} 1\.0$', text, re.MULTILINE)
    assert "# TYPE worker_lookups_total counter" in text

    status, ready = _readyz(proc)  # WORKER_READY_SOURCES unset: the sources are listed only
    assert (status, ready["status"], ready["sources_down"]) == (200, "ready", ["broken"])
    assert "sources" not in ready
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        pytest.param("any", 503, id="any-source-down-is-not-ready"),
        pytest.param("all", 200, id="all-one-of-two-down-is-still-ready"),
        pytest.param("ignore", 200, id="ignore"),
    ],
)
def test_readyz__follows_open_circuits_as_configured(
    engine: Engine, local: WorkerProcs, mode: str, status: int
) -> None:
    proc = local.start(WORKER_READY_SOURCES=mode)
    wait_until(lambda: answers(f"{proc.http}/healthz"), what="the worker to listen")  # type: ignore[attr-defined]
    wait_until(lambda: _readyz(proc)[0] == 200, what="ready")
    assert _readyz(proc)[1]["sources_down"] == []
    _run_jobs(engine)
    code, body = _readyz(proc)
    assert code == status
    assert body["status"] == ("ready" if status == 200 else "not ready")
    assert body["sources_down"] == ["broken"]
    assert body["engine"] is True
    if mode != "ignore":
        assert body["sources"] is (status == 200)


def test_readyz__a_mode_it_does_not_know_is_a_clear_error(local: WorkerProcs) -> None:
    proc = local.start(WORKER_READY_SOURCES="sometimes")
    assert proc.wait(timeout=30) in (2, 3)  # an invalid setting (§7)
    log = local.log_of(proc)
    assert "WORKER_READY_SOURCES must be ignore, any or all, not 'sometimes'" in log
    assert "Traceback" not in log
