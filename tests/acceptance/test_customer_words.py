"""`worker run` at DEBUG, library lines on too: nothing the customer sent reaches a log.

Jobs carry canaries (a phone, an email, an order id that ends up in a REST URL
path and in PostgreSQL parameters); afterwards the worker's stderr, the
engine's job rows (outcome, result, error), /metrics and the audit table are
grepped for them. A value PostgreSQL refuses and a lone surrogate get
`invalid_input`, once, and the worker goes on answering.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import REPO, WORKER, Engine, WorkerProcs, _env, wait_until
from tests.servers.hostile import Recorder, serve
from tests.servers.rest_app import API_KEY, rest_app

pytestmark = pytest.mark.slow

PHONE = "+19995550123"
EMAIL = "canary-4c1f9e@example.com"
ORDER = "CANARY-8d2b7a"

SOURCES = """data_sources:
  - id: inventory
    type: rest_api
    connection: {{base_url: "{api}", api_key: "{api_key}",
                 headers: {{Authorization: "Bearer {{api_key}}"}}}}
    queries:
      stock: /products/{{sku}}/stock
      orders: {{path: /orders, params: {{customer_phone: "{{phone}}", email: "{{email}}"}},
               result: data.items}}
  - id: crm
    type: postgresql
    connection: {{host: 127.0.0.1, port: 5432, username: postgres, database: postgres}}
    queries:
      by_order: >-
        SELECT status FROM (VALUES ('CANARY-0', 'shipped')) AS o(order_id, status)
        WHERE order_id = $1
      by_number: SELECT 'shipped' AS status WHERE 1 = $1
"""
LOOKUPS = """  stock: {source: inventory, query: stock, template: "{{ row.quantity }} left"}
  my_orders: {source: inventory, query: orders, template: "{{ rows | length }} orders"}
  crm_order: {source: crm, query: by_order, args: [order_id], template: "{{ row.status }}"}
  crm_number: {source: crm, query: by_number, args: [n], template: "{{ row.status }}"}
"""


@pytest.fixture
def rest_api() -> Iterator[str]:
    """The loopback REST app on its own event loop in a thread; yields its ``…/api`` URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    found: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        found["stop"] = stop
        async with serve(rest_app(Recorder())) as url:
            found["url"] = f"{url}/api"
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the REST app did not start"
        yield str(found["url"])
    finally:
        loop.call_soon_threadsafe(found["stop"].set)
        thread.join(10)
        loop.close()


def _job(query_type: str, **params: str) -> dict[str, Any]:
    return {
        "job_type": "data_lookup",
        "tenant_id": "shop",
        "query_type": query_type,
        "parameters": params,
        "customer_context": {"phone": PHONE, "name": "Ana", "email": EMAIL},
    }


def test_run__no_customer_value_in_logs_rows_metrics_or_audit(
    engine: Engine, workers: WorkerProcs, rest_api: str
) -> None:
    config = workers.config
    text = config.read_text(encoding="utf-8")
    text = text.replace("data_sources:\n", SOURCES.format(api=rest_api, api_key=API_KEY), 1)
    config.write_text(text + LOOKUPS, encoding="utf-8")
    ids = {
        "stock": engine.enqueue(_job("stock", sku=ORDER)),  # in the URL path: a 404
        "my_orders": engine.enqueue(_job("my_orders", phone=PHONE, email=EMAIL)),  # query string
        "crm_order": engine.enqueue(_job("crm_order", order_id=ORDER)),
        "crm_number": engine.enqueue(_job("crm_number", n=ORDER)),  # refused by PostgreSQL
        "surrogate": engine.insert(json.dumps(_job("crm_order", order_id=ORDER + "\ud800"))),
        "good": engine.enqueue(_job("stock", sku="SKU-789")),
    }
    proc = workers.start(WORKER_LOG_LEVEL="DEBUG", WORKER_LOG_LIBRARIES="debug")
    wait_until(
        lambda: all(engine.job(i)["status"] in ("done", "failed") for i in ids.values()),
        timeout_s=60,
        what="every job answered",
    )
    with urllib.request.urlopen(f"{proc.http}/metrics", timeout=10) as resp:  # type: ignore[attr-defined]  # noqa: S310
        metrics = resp.read().decode()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, workers.log_of(proc)

    rows = {name: engine.job(i) for name, i in ids.items()}
    outcomes = {name: (row["status"], row["outcome"]) for name, row in rows.items()}
    assert outcomes == {
        "stock": ("done", "not_found"),
        "my_orders": ("done", "not_found"),
        "crm_order": ("done", "not_found"),
        "crm_number": ("done", "invalid_input"),
        "surrogate": ("done", "invalid_input"),
        "good": ("done", "ok"),
    }, rows
    assert rows["surrogate"]["attempt"] == 1  # answered once, not retried
    replies = engine.replies()
    assert len(replies[ids["surrogate"]]) == 1
    assert replies[ids["good"]] == ["42 left"]

    log = workers.log_of(proc)
    # The library lines were on, and masked: httpx wrote its request lines with *** in them.
    assert '"logger": "httpx"' in log and "/products/***/stock" in log
    audit = (config.parent / "shop.audit.db").read_bytes().decode("latin-1")
    places = {
        "worker log": log,
        "engine job rows": str(
            [{k: row.get(k) for k in ("outcome", "result", "error")} for row in rows.values()]
        ),
        "metrics": metrics,
        "audit table": audit,
    }
    for canary in (PHONE, "19995550123", "9995550123", EMAIL, "canary-4c1f9e%40", ORDER):
        for place, found in places.items():
            assert canary not in found, f"{canary!r} reached the {place}"


def test_config_check__a_pattern_re2_cannot_run_names_its_path(tenant_config: Path) -> None:
    text = tenant_config.read_text(encoding="utf-8")
    tenant_config.write_text(
        text.replace("pattern: '[0-9]{1,12}'", r"pattern: '([0-9])\1'", 1),
        encoding="utf-8",
    )
    done = subprocess.run(
        [*WORKER, "config", "check", "--config", str(tenant_config)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, done.stderr
    output = done.stdout + done.stderr
    assert "lookups.order_status.params.order_id.pattern" in output
    assert "RE2" in output and "invalid escape sequence" in output
    assert "Traceback" not in output
