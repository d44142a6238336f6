"""The seed's config example answering as written: `config/tenants/whappstream.json`.

Only its connection values change: ``primary_crm`` points at a real PostgreSQL
database made for the test (the seed's ``orders`` table and its order 12345),
``inventory_api`` at a loopback REST API (`tests.servers.rest_app`, which checks
the bearer key). No lookup is added: the seed's ``order_status`` query binds
``$1`` to ``order_id`` (the column it is compared with), ``check_stock`` runs on
the one source that has it, and replies use the readable default template.
Then the seed's own job shapes, through ``worker lookup`` and a real ``worker run``
against ``worker engine serve``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import REPO, WORKER, Engine, WorkerProcs, _env
from tests.servers.hostile import Recorder, serve
from tests.servers.rest_app import API_KEY, rest_app
from tests.support.databases import postgres_with

pytestmark = pytest.mark.slow

SEED = REPO / "config" / "tenants" / "whappstream.json"
ORDER_REPLY = "Status: shipped\nTracking number: UPS123456"
STOCK_REPLY = "Sku: SKU-789\nName: Blue Mug\nQuantity: 42"

#: the seed's job, as its engine writes it (`query` free text, a data_source it does not have)
SEED_JOB: dict[str, Any] = {
    "job_type": "data_lookup",
    "tenant_id": "whappstream",
    "query": "order status",
    "parameters": {"order_id": "12345", "customer_phone": "+1234567890"},
    "data_source": "crm_api",
}


def seed_config(tmp_path: Path, dsn: str, api: str) -> Path:
    """The seed's example with only its connection values pointed at the test's servers."""
    document = json.loads(SEED.read_text(encoding="utf-8"))
    crm, inventory = document["data_sources"]
    database = dsn.rsplit("/", 1)[1]
    crm["connection"].update(
        host="127.0.0.1", port=5432, database=database, username="postgres", password="trust"
    )
    inventory["connection"].update(base_url=api, api_key=API_KEY)
    path = tmp_path / "whappstream.json"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


@pytest.fixture
async def crm() -> AsyncIterator[str]:
    async with postgres_with(
        "seed_crm",
        "CREATE TABLE orders (order_id text PRIMARY KEY, status text, "
        "tracking_number text, customer_phone text)",
        "INSERT INTO orders VALUES ('12345', 'shipped', 'UPS123456', '+1234567890'), "
        "('12346', 'processing', NULL, '+1234567890')",
    ) as dsn:
        yield dsn


@pytest.fixture
async def api() -> AsyncIterator[str]:
    async with serve(rest_app(Recorder())) as url:
        yield f"{url}/api"


@pytest.fixture
def config(tmp_path: Path, crm: str, api: str) -> Path:
    return seed_config(tmp_path, crm, api)


async def worker(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *WORKER,
        *args,
        cwd=REPO,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("lookup", "pair", "reply"),
    [
        pytest.param("order_status", "order_id=12345", ORDER_REPLY, id="order_status"),
        pytest.param("check_stock", "sku=SKU-789", STOCK_REPLY, id="check_stock"),
    ],
)
async def test_seed_config__worker_lookup_answers_as_written(
    config: Path, lookup: str, pair: str, reply: str
) -> None:
    code, out, err = await worker("lookup", "--config", str(config), lookup, pair, "--json")

    assert code == 0, err
    answer = json.loads(out)
    assert answer["outcome"] == "ok", answer
    assert answer["message"] == reply


async def test_seed_config__config_check_passes(config: Path) -> None:
    code, out, err = await worker("config", "check", "--config", str(config))

    assert code == 0, out + err
    assert "order_status" not in out + err  # its $1 binds order_id: nothing to warn about


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="data-source-not-configured"),
        pytest.param({"data_source": None}, id="no-data-source"),
        pytest.param({"data_source": "primary_crm"}, id="data-source-named"),
        pytest.param(
            {"query": None, "query_type": "order_status", "data_source": None}, id="query-type"
        ),
    ],
)
async def test_seed_config__worker_run_answers_the_seed_jobs(
    engine: Engine, config: Path, tmp_path: Path, changes: dict[str, Any]
) -> None:
    order_job = {k: v for k, v in {**SEED_JOB, **changes}.items() if v is not None}
    stock_job = {
        "job_type": "data_lookup",
        "tenant_id": "whappstream",
        "query_type": "check_stock",
        "parameters": {"sku": "SKU-789", "customer_phone": "+1234567890"},
    }
    ids = {"order": engine.enqueue(order_job), "stock": engine.enqueue(stock_job)}
    procs = WorkerProcs(engine, config, tmp_path)
    try:
        proc = procs.start("--once")
        code = await asyncio.to_thread(proc.wait, 60)
        assert code == 0, procs.log_of(proc)
    finally:
        _stop(procs)

    assert engine.replies() == {ids["order"]: [ORDER_REPLY], ids["stock"]: [STOCK_REPLY]}
    order = engine.job(ids["order"])
    assert (order["status"], order["outcome"]) == ("done", "ok")
    assert order["result"] == [{"status": "shipped", "tracking_number": "UPS123456"}]
    assert engine.job(ids["stock"])["outcome"] == "ok"
    if changes == {}:
        assert "'crm_api' is not a configured source" in procs.log_of(proc)


def _stop(procs: WorkerProcs) -> None:
    for proc in procs.started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_seed_config__the_example_is_the_seed_as_written() -> None:
    document = json.loads(SEED.read_text(encoding="utf-8"))

    assert [s["id"] for s in document["data_sources"]] == ["primary_crm", "inventory_api"]
    assert set(document) == {"data_sources"}
    assert document["data_sources"][0]["queries"]["order_status"] == (
        "SELECT status, tracking_number FROM orders WHERE order_id = $1"
    )
    assert document["data_sources"][1]["endpoints"]["check_stock"] == "/products/{sku}/stock"
