"""The circuit breaker: opens on repeated failures, lets one trial through, closes on success."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.circuit import Circuit, CircuitOpen
from worker.config import load_tenant
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.sources import Sources

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_circuit__opens_after_failures_in_a_row_and_half_opens_after_reset() -> None:
    clock = Clock()
    circuit = Circuit(failures=3, reset_s=10, clock=clock)
    for _ in range(2):
        circuit.before()
        circuit.failed()
    circuit.before()
    circuit.succeeded()  # a success resets the count
    for _ in range(3):
        circuit.before()
        circuit.failed()
    assert circuit.state == "open"
    with pytest.raises(CircuitOpen):
        circuit.before()
    clock.now = 10
    assert circuit.state == "half-open"
    circuit.before()  # the one trial
    with pytest.raises(CircuitOpen):
        circuit.before()  # nobody else while it runs
    circuit.failed()
    assert circuit.state == "open"
    clock.now = 20
    circuit.before()
    circuit.succeeded()
    assert circuit.state == "closed"


CONFIG = """
tenant_id: shop
data_sources:
  - id: db
    type: sqlite
    connection: {path: later.db}
    circuit: {failures: 3, reset_s: 0.3}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
lookups:
  order_status:
    args: [order_id]
    template: "{{ row.status }}"
    fallback: "Down."
"""


async def test_pipeline__open_circuit_answers_fallback_at_once_and_recovers(tmp_path: Path) -> None:
    import asyncio

    (tmp_path / "shop.yaml").write_text(CONFIG, encoding="utf-8")
    tenant = load_tenant(tmp_path / "shop.yaml")
    metrics = Metrics()
    sources = Sources(tenant, metrics)
    pipeline = Pipeline(tenant, sources, metrics)
    job = {
        "job_type": "data_lookup",
        "tenant_id": "shop",
        "query_type": "order_status",
        "parameters": {"order_id": "12345"},
        "reply_to": "+1555",
    }
    try:
        for _ in range(3):
            answer = await pipeline.answer(job)
            assert answer.outcome == "fallback" and "later.db" in answer.result
        skipped = await pipeline.answer(job)
        assert skipped.outcome == "fallback" and "circuit open" in skipped.result
        assert metrics.circuit_open.labels("db")._value.get() == 1
        shutil.copy(REPO / "config" / "demo" / "shop.db", tmp_path / "later.db")
        await asyncio.sleep(0.35)
        recovered = await pipeline.answer(job)
        assert (recovered.outcome, recovered.message) == ("ok", "shipped")
        assert metrics.circuit_open.labels("db")._value.get() == 0
    finally:
        await sources.close()


def test_circuit__undecided_reads_neither_count_nor_reset_and_free_the_trial() -> None:
    clock = Clock()
    circuit = Circuit(failures=2, reset_s=10, clock=clock)
    circuit.before()
    circuit.failed()
    for _ in range(10):  # a customer's refused values: no verdict on the source
        circuit.before()
        circuit.undecided()
    assert circuit.state == "closed"
    circuit.before()
    circuit.failed()  # the count was kept: the second real failure opens it
    assert circuit.state == "open"
    clock.now = 10
    circuit.before()  # the trial read…
    circuit.undecided()  # …ended for the customer's reasons: another trial may go
    circuit.before()
    circuit.succeeded()
    assert circuit.state == "closed"
