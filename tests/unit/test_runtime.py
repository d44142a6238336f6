"""The run loop against an in-memory queue: what it does with whatever an engine hands out."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from worker.answers import Answer
from worker.config import load_tenant
from worker.errors import EngineAuthError, EngineUnavailable, LeaseLost, SourceTimeout
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.queues import JobQueue
from worker.runtime import RunSettings, Runtime
from worker.sources import Gate, Sources
from worker.stores.base import ClaimedJob

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
tenant_id: shop
data_sources:
  - id: db
    type: sqlite
    connection: {path: shop.db}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
      slow: >-
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1)
        SELECT max(x) AS n FROM c
lookups:
  order_status:
    args: [order_id]
    template: "{{ row.status }}"
  slow:
    query: slow
    args: [loops]
    params: {loops: {type: integer}}
    template: "{{ row.n }}"
    timeout_s: 30
"""


class ListQueue(JobQueue):
    """An in-memory queue that records what the run loop did with each job."""

    def __init__(self, payloads: list[Any], *, lease_s: float = 30) -> None:
        super().__init__("shop", "test")
        self.ready = deque(
            ClaimedJob(str(i), p, 1, lease_s) for i, p in enumerate(payloads, start=1)
        )
        self.finished: dict[str, Answer] = {}
        self.rejected: dict[str, tuple[str, bool]] = {}
        self.heartbeats: list[str] = []
        self.claims: list[tuple[int, int]] = []
        self.claim_errors: list[Exception] = []
        self.finish_error: Exception | None = None
        self.runtime: Runtime | None = None

    async def _claim(self, max_jobs: int, wait_s: float) -> list[ClaimedJob]:
        if self.claim_errors:
            raise self.claim_errors.pop(0)
        in_flight = self.runtime.in_flight if self.runtime else 0
        self.claims.append((max_jobs, in_flight))
        if not self.ready:
            await asyncio.sleep(min(wait_s, 0.05))
        taken = [self.ready.popleft() for _ in range(min(max_jobs, len(self.ready)))]
        return taken

    async def heartbeat(self, job: ClaimedJob) -> None:
        self.heartbeats.append(job.id)

    async def finish(self, job: ClaimedJob, answer: Answer) -> None:
        if self.finish_error is not None:
            raise self.finish_error
        self.finished[job.id] = answer

    async def reject(
        self, job: ClaimedJob, error: str, *, retry: bool, retry_after_s: float = 0
    ) -> None:
        self.rejected[job.id] = (error, retry)

    async def send(self, key: str, to: str, message: str) -> None:
        raise AssertionError("the run loop never sends outside finish")

    async def ping(self) -> None:
        return None


@contextlib.asynccontextmanager
async def shop_pipeline(folder: Path, config: str) -> AsyncIterator[Pipeline]:
    """The shop tenant of ``config`` on a copy of the demo database in ``folder``."""
    shutil.copy(REPO / "config" / "demo" / "shop.db", folder / "shop.db")
    (folder / "shop.yaml").write_text(config, encoding="utf-8")
    tenant = load_tenant(folder / "shop.yaml")
    sources = Sources(tenant)
    try:
        yield Pipeline(tenant, sources, Metrics())
    finally:
        await sources.close()


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    async with shop_pipeline(tmp_path, CONFIG) as shop:
        yield shop


def job(query_type: str = "order_status", **overrides: Any) -> dict[str, Any]:
    payload = {
        "job_type": "data_lookup",
        "tenant_id": "shop",
        "query_type": query_type,
        "parameters": {"order_id": "12345"},
        "reply_to": "+15550001",
    }
    payload.update(overrides)
    return payload


async def drain(queue: ListQueue, pipeline: Pipeline, **settings: Any) -> Runtime:
    runtime = Runtime(queue, pipeline, RunSettings(once=True, **settings))
    queue.runtime = runtime
    async with asyncio.timeout(30):
        await runtime.run(asyncio.Event())
    return runtime


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        pytest.param(job(tenant_id="other"), "tenant 'other'", id="other-tenant"),
        pytest.param(job(job_type="send_email"), "job_type 'send_email'", id="other-job-type"),
        pytest.param("{broken", "not valid JSON", id="malformed-json-text"),
        pytest.param(["a", "list"], "not a JSON object", id="not-an-object"),
        pytest.param(None, "not a JSON object", id="null"),
        pytest.param(job("teleport"), "no lookup named 'teleport'", id="unknown-lookup"),
        pytest.param(
            job(data_source_config={"id": "db", "password": "hunter2"}),
            "connection settings in a job are refused",
            id="credentials-in-job",
        ),
    ],
)
async def test_run__jobs_that_are_not_ours_are_failed_without_retry(
    pipeline: Pipeline, payload: Any, error: str
) -> None:
    queue = ListQueue([payload, job()])
    await drain(queue, pipeline)
    message, retry = queue.rejected["1"]
    assert error in message and retry is False
    assert "hunter2" not in message
    assert "1" not in queue.finished
    assert queue.finished["2"].outcome == "ok"  # and the worker kept serving
    reads = [
        s.value
        for m in pipeline.metrics.latency.collect()
        for s in m.samples
        if s.name.endswith("_count") and s.labels.get("source") == "db"
    ]
    assert reads == [1.0]  # only the good job touched the source


async def test_run__never_claims_more_than_free_slots(pipeline: Pipeline) -> None:
    queue = ListQueue([job("slow", parameters={"loops": "300000"}) for _ in range(7)])
    await drain(queue, pipeline, max_in_flight=2, claim_batch=10)
    assert len(queue.finished) == 7
    assert all(asked + in_flight <= 2 for asked, in_flight in queue.claims)


async def test_run__stop_hands_back_what_outlasts_the_grace_period(pipeline: Pipeline) -> None:
    queue = ListQueue([job("slow", parameters={"loops": "1000000000000"})])
    runtime = Runtime(queue, pipeline, RunSettings(grace_s=0.2))
    queue.runtime = runtime
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    while runtime.in_flight == 0:
        await asyncio.sleep(0.01)
    stop.set()
    async with asyncio.timeout(5):
        await task
    assert queue.rejected == {"1": ("the worker stopped before answering", True)}
    assert queue.finished == {}


async def test_run__heartbeats_long_jobs(pipeline: Pipeline) -> None:
    queue = ListQueue([job("slow", parameters={"loops": "4000000"})], lease_s=0.9)
    await drain(queue, pipeline)
    assert queue.finished["1"].outcome == "ok"
    assert queue.heartbeats and set(queue.heartbeats) == {"1"}


async def test_run__quick_jobs_send_no_heartbeat(pipeline: Pipeline) -> None:
    queue = ListQueue([job() for _ in range(20)], lease_s=30)
    await drain(queue, pipeline)
    assert len(queue.finished) == 20
    assert queue.heartbeats == []


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(EngineAuthError("refused the token (401)"), id="auth"),
        pytest.param(EngineUnavailable("the engine answered 503"), id="unavailable"),
        pytest.param(RuntimeError("a driver in a bad state"), id="unexpected"),
    ],
)
async def test_run__engine_errors_back_off_and_recover(
    pipeline: Pipeline, error: Exception
) -> None:
    queue = ListQueue([job()])
    queue.claim_errors = [error, error]
    runtime = await drain(queue, pipeline)
    assert queue.finished["1"].outcome == "ok"
    assert runtime.engine_ok


async def test_run__lost_lease_on_finish_is_not_a_crash(pipeline: Pipeline) -> None:
    queue = ListQueue([job(), job()])
    queue.finish_error = LeaseLost("gone")
    runtime = await drain(queue, pipeline)
    assert runtime.answered == 0
    assert queue.rejected == {}


# -- the per-source gate and admission -------------------------------------------------

ONE_AT_A_TIME = "    connection: {path: shop.db}\n    max_concurrency: 1\n"
ONE_SECOND = '    template: "{{ row.status }}"\n    timeout_s: 1\n'
GATED = CONFIG.replace("    connection: {path: shop.db}\n", ONE_AT_A_TIME).replace(
    '    template: "{{ row.status }}"\n', ONE_SECOND
)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Pipeline]:
    """The shop tenant with one read at a time on its source."""
    async with shop_pipeline(tmp_path, GATED) as shop:
        yield shop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def acquire(gate: Gate) -> None:
    """Take a slot, waiting in line if none is free."""
    if not gate.take():
        await gate.wait()


async def _settle() -> None:
    """Let every task that can run do so (no timing involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_gate__waiters_get_the_slot_in_arrival_order() -> None:
    gate = Gate(1, 10)
    await acquire(gate)
    order: list[int] = []

    async def wait(n: int) -> None:
        await acquire(gate)
        order.append(n)

    tasks = [asyncio.create_task(wait(n)) for n in range(4)]
    await _settle()
    assert (gate.in_use, gate.waiting) == (1, 4)
    for _ in range(4):
        gate.release(0.1)
        await _settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert (gate.in_use, gate.waiting) == (1, 0)  # the last one still holds its slot


async def test_gate__a_waiter_cancelled_frees_nothing_it_did_not_take() -> None:
    gate = Gate(1, 10)
    await acquire(gate)
    waiter = asyncio.create_task(acquire(gate))
    await _settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (gate.in_use, gate.waiting) == (1, 0)  # the holder's slot is still the holder's
    gate.release(0.1)
    assert (gate.in_use, gate.waiting) == (0, 0)
    await acquire(gate)  # free again: taken at once
    assert gate.in_use == 1


async def test_gate__a_waiter_cancelled_as_the_slot_reached_it_passes_it_on() -> None:
    gate = Gate(1, 10)
    await acquire(gate)
    first = asyncio.create_task(acquire(gate))
    second = asyncio.create_task(acquire(gate))
    await _settle()
    gate.release(0.1)  # the slot goes to `first`…
    first.cancel()  # …which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot was passed on, not lost
    assert (gate.in_use, gate.waiting) == (1, 0)


def test_gate__room_is_what_the_slots_can_serve_within_the_deadline() -> None:
    gate = Gate(2, 10)
    assert gate.room() == 2  # no read has ended: only what starts at once
    gate.in_use = 2
    gate.release(1.0)  # a read holds a slot 1 s: 2 slots serve 2 × 0.75 × 10 in a deadline
    assert gate.room() == 15 - 1
    gate.release(100.0)  # slower than the deadline: still what starts at once
    assert gate.room() == 2


def test_gate__a_busy_gate_stalls_when_no_read_ends_for_twice_the_usual_time() -> None:
    clock = Clock()
    gate = Gate(1, 10, clock=clock)
    assert gate.stall_in() is None  # idle
    gate.in_use = 1
    gate.release(1.0)
    gate.in_use = 1
    assert gate.stall_in() == 2.0
    clock.now += 2.5
    assert gate.stall_in() == -0.5


async def test_reading__the_wait_for_a_slot_counts_against_the_deadline(
    gated: Pipeline,
) -> None:
    gate = gated.sources.gate("db")
    await acquire(gate)  # another read holds the one slot, past this job's deadline
    loop = asyncio.get_running_loop()
    with pytest.raises(SourceTimeout, match="slots stayed busy"):
        async with gated.sources.reading("db", loop.time() + 0.2):
            raise AssertionError("no slot was free")
    assert gated.sources.circuit("db").state == "closed"  # the source did nothing wrong
    assert (gate.in_use, gate.waiting) == (1, 0)


async def test_answer__a_job_that_waited_past_its_deadline_for_a_slot_falls_back(
    gated: Pipeline,
) -> None:
    await acquire(gated.sources.gate("db"))
    answer = await gated.answer(job())  # order_status: 1 s deadline, no slot frees
    assert answer.outcome == "fallback"
    assert "slots stayed busy" in str(answer.result)


async def test_run__claims_only_what_the_source_can_start_in_time(gated: Pipeline) -> None:
    queue = ListQueue([job() for _ in range(30)])
    await drain(queue, gated, max_in_flight=50, claim_batch=50)
    assert {a.outcome for a in queue.finished.values()} == {"ok"}
    assert len(queue.finished) == 30
    assert queue.claims[0] == (1, 0)  # before a read has ended: one slot, one job


async def test_sources_room__an_idle_source_does_not_hold_back_a_busy_one(
    gated: Pipeline,
) -> None:
    sources = gated.sources
    assert sources.room(0) == 1  # nothing known: what the one slot starts at once
    await acquire(sources.gate("db"))
    assert sources.room(1) == 0  # the job in flight holds it
    assert sources.room(3) == 0  # and two more claimed, not yet there, may land there too


async def test_sources_room__a_stalled_source_no_longer_holds_back_the_queue(
    gated: Pipeline,
) -> None:
    sources = gated.sources
    gate = sources.gate("db")
    clock = Clock()
    gate.clock = clock
    assert gate.take()  # a read that never ends
    assert sources.room(1) == 0
    assert sources.stall_in() == pytest.approx(0.75)  # its shortest deadline is 1 s
    clock.now += 1
    assert sources.room(1) > 0  # other sources' jobs behind it may be claimed
    assert sources.stall_in() is None  # nothing left to wait for


def test_gate__a_full_source_lowers_the_limit_to_the_reads_that_hold_a_connection() -> None:
    clock = Clock()
    gate = Gate(5, 10, clock=clock)
    for _ in range(4):
        assert gate.take()
    gate.full()  # one of the four was refused a connection: three hold one
    gate.release(0.1)  # the refused read leaves
    assert (gate.limit, gate.in_use) == (3, 3)
    assert not gate.take()  # a fourth waits for one of the three
    clock.now += 6  # a while later one more connection is tried
    gate.release(0.1)
    assert (gate.limit, gate.in_use) == (4, 2)
