"""The circuit breaker: opens on repeated failures, lets one trial through, closes on success."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from worker.circuit import Circuit, CircuitOpen
from worker.config import load_tenant
from worker.errors import InputRefused, SourceUnavailable
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


GUARDED = """
tenant_id: shop
data_sources:
  - id: db
    type: sqlite
    connection: {path: shop.db}
    circuit: {failures: 2, reset_s: 10}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
"""


@pytest.fixture
def guarded_sources(tmp_path: Path) -> tuple[Sources, Clock]:
    (tmp_path / "shop.yaml").write_text(GUARDED, encoding="utf-8")
    sources = Sources(load_tenant(tmp_path / "shop.yaml"), Metrics())
    clock = Clock()
    sources.circuit("db").clock = clock
    return sources, clock


async def _read_raising(sources: Sources, exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        async with sources.guarded("db"):
            raise exc


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(RuntimeError("driver blew up"), id="driver-error"),
        pytest.param(KeyError("row"), id="connector-bug"),
        pytest.param(SourceUnavailable("db", "down"), id="source-error"),
        pytest.param(TimeoutError(), id="deadline"),
    ],
)
async def test_guarded__any_error_of_the_read_counts_and_a_failed_trial_opens_it_again(
    guarded_sources: tuple[Sources, Clock], exc: BaseException
) -> None:
    sources, clock = guarded_sources
    circuit = sources.circuit("db")
    for _ in range(2):
        await _read_raising(sources, exc)
    assert circuit.state == "open"
    clock.now = 10
    await _read_raising(sources, exc)  # the half-open trial fails the same way…
    assert circuit.state == "open"  # …open again, for another reset_s
    clock.now = 20
    async with sources.guarded("db"):  # …and the next trial is let through: not wedged
        pass
    assert circuit.state == "closed"


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(InputRefused("db", "not a number"), id="refused-value"),
        pytest.param(asyncio.CancelledError(), id="cancelled"),
    ],
)
async def test_guarded__refused_values_and_cancelled_reads_free_the_trial_without_counting(
    guarded_sources: tuple[Sources, Clock], exc: BaseException
) -> None:
    sources, clock = guarded_sources
    circuit = sources.circuit("db")
    for _ in range(5):
        await _read_raising(sources, exc)
    assert circuit.state == "closed"
    for _ in range(2):
        await _read_raising(sources, RuntimeError("down"))
    clock.now = 10
    await _read_raising(sources, exc)  # the trial ended for the customer's or worker's reason
    assert circuit.state == "half-open"
    async with sources.guarded("db"):  # another trial may go at once
        pass
    assert circuit.state == "closed"
