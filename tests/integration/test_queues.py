"""The run loop's queues: over HTTP (`EngineQueue`) and on the tables (`StoreQueue`).

Both must leave the customer exactly one message per job, whatever redelivery does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.answers import Answer, Outcome
from worker.engine_client import EngineClient
from worker.engine_queue import EngineQueue
from worker.errors import LeaseLost
from worker.queues import JobQueue, StoreQueue
from worker.stores.base import ClaimedJob
from worker.stores.sqlite import SQLiteStore

TENANT = "acme"
PHONE = "+1234567890"
PAYLOAD = {
    "job_type": "data_lookup",
    "tenant_id": TENANT,
    "query_type": "order_status",
    "parameters": {"order_id": "12345"},
    "customer_context": {"phone": PHONE},
}
ANSWER = Answer(
    outcome=Outcome.OK,
    message="Your order #12345 has been shipped! 📦",
    reply_to=PHONE,
    result={"status": "shipped"},
    response_time_ms=7,
)


@pytest.fixture
async def store_queue(queue_path: Path, engine_lease_s: float) -> AsyncIterator[StoreQueue]:
    """A direct-mode queue with its own connection to the file, as another process has."""
    store_queue = StoreQueue(SQLiteStore(queue_path), TENANT, "w1", lease_s=engine_lease_s)
    await store_queue.store.open()
    try:
        yield store_queue
    finally:
        await store_queue.close()


@pytest.fixture
async def engine_queue(local_engine: tuple[str, str, SQLiteStore]) -> AsyncIterator[EngineQueue]:
    base_url, token, _store = local_engine
    engine_queue = EngineQueue(EngineClient(base_url, token), TENANT, "w1")
    try:
        yield engine_queue
    finally:
        await engine_queue.close()


@pytest.fixture(params=["store_queue", "engine_queue"])
def queue(
    request: pytest.FixtureRequest, sqlite_store: SQLiteStore, engine_lease_s: float
) -> JobQueue:
    """Each kind of queue for tenant ``acme``, leasing for ``engine_lease_s``.

    Its jobs live in `sqlite_store`'s file (the local engine serves that store).
    """
    job_queue: JobQueue = request.getfixturevalue(request.param)
    return job_queue


async def claim_one(queue: JobQueue) -> ClaimedJob:
    [job] = await queue.claim(max_jobs=1, wait_s=0)
    return job


async def test_finish__writes_one_message_and_marks_the_job_done(
    queue: JobQueue, sqlite_store: SQLiteStore
) -> None:
    job_id = await sqlite_store.enqueue(PAYLOAD)
    job = await claim_one(queue)

    await queue.finish(job, ANSWER)

    messages = await sqlite_store.messages(TENANT)
    assert [(m["job_id"], m["to"], m["message"]) for m in messages] == [
        (job_id, PHONE, ANSWER.message)
    ]
    row = await sqlite_store.job(job_id)
    assert row is not None
    assert (row.status, row.outcome, row.result) == ("done", "ok", {"status": "shipped"})


async def test_finish__twice_for_the_same_job_sends_one_message(
    queue: JobQueue, sqlite_store: SQLiteStore
) -> None:
    job_id = await sqlite_store.enqueue(PAYLOAD)
    job = await claim_one(queue)

    await queue.finish(job, ANSWER)
    with contextlib.suppress(LeaseLost):  # the run loop drops a LeaseLost quietly
        await queue.finish(job, ANSWER)

    assert len(await sqlite_store.messages()) == 1
    row = await sqlite_store.job(job_id)
    assert row is not None
    assert row.status == "done"


@pytest.mark.parametrize("engine_lease_s", [0.2])
@pytest.mark.parametrize(
    "stale_first",
    [pytest.param(True, id="stale-worker-first"), pytest.param(False, id="new-worker-first")],
)
async def test_finish__redelivered_job_sends_one_message(
    queue: JobQueue, sqlite_store: SQLiteStore, stale_first: bool
) -> None:
    job_id = await sqlite_store.enqueue(PAYLOAD)
    first = await claim_one(queue)
    await asyncio.sleep(0.3)  # the lease runs out: the job is handed out again
    second = await claim_one(queue)
    assert (second.id, second.attempt) == (first.id, 2)

    for job in (first, second) if stale_first else (second, first):
        with contextlib.suppress(LeaseLost):  # the stale worker's finish may raise it
            await queue.finish(job, ANSWER)

    messages = await sqlite_store.messages()
    assert [(m["job_id"], m["message"]) for m in messages] == [(job_id, ANSWER.message)]
    row = await sqlite_store.job(job_id)
    assert row is not None
    assert (row.status, row.attempt) == ("done", 2)


async def test_finish__without_a_reply_address_sends_nothing(
    queue: JobQueue, sqlite_store: SQLiteStore
) -> None:
    job_id = await sqlite_store.enqueue(PAYLOAD)
    job = await claim_one(queue)
    answer = Answer(
        outcome=Outcome.INVALID_INPUT,
        message="Please send a valid order number.",
        reply_to=None,
        result={"errors": ["no reply address"]},
    )

    await queue.finish(job, answer)

    assert await sqlite_store.messages() == []
    row = await sqlite_store.job(job_id)
    assert row is not None
    assert (row.status, row.outcome) == ("done", "invalid_input")


async def test_reject__without_retry_fails_the_job(
    queue: JobQueue, sqlite_store: SQLiteStore
) -> None:
    job_id = await sqlite_store.enqueue(PAYLOAD)
    job = await claim_one(queue)

    await queue.reject(job, "job is for tenant 'globex', not 'acme'", retry=False)

    row = await sqlite_store.job(job_id)
    assert row is not None
    assert (row.status, row.error) == ("failed", "job is for tenant 'globex', not 'acme'")
    assert await queue.claim(max_jobs=1, wait_s=0) == []
    assert await sqlite_store.messages() == []


async def test_reject__with_retry_hands_the_job_out_again(
    queue: JobQueue, sqlite_store: SQLiteStore
) -> None:
    job_id = await sqlite_store.enqueue(PAYLOAD)
    job = await claim_one(queue)

    await queue.reject(job, "source busy", retry=True, retry_after_s=0)

    again = await claim_one(queue)
    assert (again.id, again.attempt) == (str(job_id), 2)
