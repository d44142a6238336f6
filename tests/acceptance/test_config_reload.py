"""Tenant settings through the engine: PUT a new config, the worker follows without a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import (
    REPO,
    TOKEN,
    WORKER,
    Engine,
    _env,
    _request,
    job,
    serve_engine,
    wait_until,
)

pytestmark = pytest.mark.slow


def shop_config(folder: Path, template: str) -> dict[str, Any]:
    return {
        "tenant_id": "shop",
        "data_sources": [
            {
                "id": "db",
                "type": "sqlite",
                "connection": {"path": str(folder / "shop.db")},
                "queries": {"order_status": "SELECT status FROM orders WHERE order_id = $1"},
            }
        ],
        "lookups": {"order_status": {"args": ["order_id"], "template": template}},
    }


@pytest.fixture
def engine_configs(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    """A local engine serving tenant configs from a folder of its own."""
    configs = tmp_path / "engine-configs"
    configs.mkdir()
    (tmp_path / "shop.db").write_bytes((REPO / "config" / "demo" / "shop.db").read_bytes())
    (configs / "shop.json").write_text(json.dumps(shop_config(tmp_path, "v1: {{ row.status }}")))
    # an engine-served config reads files only below the operator's WORKER_DATA_DIR
    with serve_engine(tmp_path / "engine.db", configs, WORKER_DATA_DIR=str(tmp_path)) as served:
        yield served, tmp_path


def start_worker(
    engine: Engine, tmp_path: Path, *, poll_s: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``worker run --tenant shop`` on the engine's configs alone (no local ones),
    polling them every ``poll_s``; its JSON log goes to the file returned."""
    empty = tmp_path / "no-local-configs"
    empty.mkdir()
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*WORKER, "--log-json", "run", "--tenant", "shop", "--listen", ""],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=_env(
                WORKER_DATA_DIR=str(tmp_path),
                ENGINE_URL=engine.url,
                ENGINE_TOKEN=TOKEN,
                WORKER_CONFIG_DIR=str(empty),
                WORKER_CONFIG_POLL_S=poll_s,
            ),
        )
    return proc, log


def ask(engine: Engine, *, what: str) -> list[str]:
    """Order 12345's status, asked through the engine: the reply, once it came."""
    asked = engine.enqueue(job("order_status", order_id="12345"))
    wait_until(lambda: asked in engine.replies(), what=what)
    return engine.replies()[asked]


def test_put__invalid_config_is_refused_and_the_old_one_kept(
    engine_configs: tuple[Engine, Path],
) -> None:
    engine, folder = engine_configs
    bad = shop_config(folder, "{{ row.status")  # a template that does not compile
    bad["data_sources"][0]["queries"]["order_status"] = "DELETE FROM orders"
    status, answer = engine.put_config(bad)
    assert status == 422
    problems = " ".join(answer["problems"])
    assert "only reads are allowed" in problems
    served = _request(f"{engine.url}/routes/tenants/shop/data-sources", TOKEN)
    assert served["lookups"]["order_status"]["template"] == "v1: {{ row.status }}"
    assert engine.put_config({**bad, "tenant_id": "other"})[0] == 422


def test_worker__follows_a_new_config_without_restarting(
    engine_configs: tuple[Engine, Path], tmp_path: Path
) -> None:
    engine, folder = engine_configs
    proc, log = start_worker(engine, tmp_path, poll_s="0.3")
    try:
        assert ask(engine, what="the first reply") == ["v1: shipped"]

        status, _ = engine.put_config(shop_config(folder, "v2: your order is {{ row.status }}"))
        assert status == 200
        deadline = time.monotonic() + 10
        while ask(engine, what="a reply") != ["v2: your order is shipped"]:
            assert time.monotonic() < deadline, "the worker did not pick up the new config"
        assert proc.poll() is None  # no restart
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    text = log.read_text()
    assert text.count("config changed") == 1  # an unchanged config (same ETag) is not reloaded


def test_worker__a_background_task_that_dies_stops_it_with_exit_1_and_one_clear_line(
    engine_configs: tuple[Engine, Path], tmp_path: Path
) -> None:
    """The config poller dies (it cannot read its interval): the worker must not go on
    without it, quietly serving a config it no longer follows."""
    engine, _ = engine_configs
    answered = engine.enqueue(job("order_status", order_id="12345"))
    proc, log = start_worker(engine, tmp_path, poll_s="soon")
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    [died] = [line for line in lines if line["level"] == "critical"]
    assert died["msg"] == (
        "background task 'config-poller' died: ValueError: could not convert string to "
        "float: 'soon'; stopping so the container restarts"
    )
    assert died["tenant"] == "shop"
    assert "stopped;" in lines[-1]["msg"]  # a clean stop after it: jobs drained, handed back
    assert engine.job(answered)["status"] in {"done", "pending"}


def test_sighup__polls_the_engine_at_once(
    engine_configs: tuple[Engine, Path], tmp_path: Path
) -> None:
    """A poll interval far beyond the test: only the signal can bring the new config."""
    engine, folder = engine_configs
    proc, log = start_worker(engine, tmp_path, poll_s="600")
    try:
        assert ask(engine, what="the first reply") == ["v1: shipped"]
        assert engine.put_config(shop_config(folder, "v2: {{ row.status }}"))[0] == 200
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config changed" in log.read_text(), what="the reload")
        assert ask(engine, what="the second reply") == ["v2: shipped"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
