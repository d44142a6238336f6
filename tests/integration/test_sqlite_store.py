"""The SQLite queue store (contract §4) on real files: claims, leases, replies, wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.errors import QueueUnavailable, RetriableError
from worker.stores.base import MAX_ATTEMPTS, Claim, Reply
from worker.stores.sqlite import MIGRATIONS, SQLiteStore, _unavailable

TENANT = "acme"
SEED_PAYLOAD = json.dumps(
    {
        "job_type": "data_lookup",
        "tenant_id": TENANT,
        "query_type": "order_status",
        "parameters": {"order_id": "12345", "customer_phone": "+1234567890"},
        "data_source": "primary_crm",
        "customer_context": {"phone": "+1234567890", "name": "Ana", "locale": "en"},
    }
)


def payload(tenant_id: str = TENANT, job_type: str = "data_lookup", **extra: Any) -> dict[str, Any]:
    return {"job_type": job_type, "tenant_id": tenant_id, "query_type": "order_status", **extra}


def claim(
    tenant_id: str = TENANT, *, max_jobs: int = 10, lease_s: float = 30, worker_id: str = "w1"
) -> Claim:
    return Claim(tenant_id, ["data_lookup"], max_jobs, lease_s, worker_id)


@contextlib.contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as another process (or the seed) would open one."""
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def insert_raw(path: Path, text: str) -> int:
    with raw(path) as conn:
        cursor = conn.execute("INSERT INTO jobs (payload) VALUES (?)", (text,))
        return int(cursor.lastrowid or 0)


def all_rows(path: Path) -> dict[int, dict[str, Any]]:
    with raw(path) as conn:
        return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")}


def outbound(path: Path) -> list[dict[str, Any]]:
    with raw(path) as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM outbound_messages ORDER BY id")]


def now_stamp() -> str:
    moment = dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.fixture
async def second_store(queue_path: Path, sqlite_store: SQLiteStore) -> AsyncIterator[SQLiteStore]:
    """Another connection on the same file, as a second process would have."""
    async with SQLiteStore(queue_path) as store:
        yield store


# --- inserting and claiming -------------------------------------------------------------------


async def test_seed_insert__plain_sqlite_row_is_claimable(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    with raw(queue_path) as conn:
        conn.execute(f"INSERT INTO jobs (payload) VALUES ('{SEED_PAYLOAD}')")
    [row] = all_rows(queue_path).values()
    assert row["status"] == "pending"
    assert row["attempt"] == 0
    assert row["run_at"]
    assert row["created_at"]
    assert row["locked_by"] is None
    assert row["finished_at"] is None

    [job] = await sqlite_store.claim(claim())

    assert job.id == str(row["id"])
    assert job.payload == json.loads(SEED_PAYLOAD)
    assert job.attempt == 1
    assert job.lease_s == 30
    after = all_rows(queue_path)[row["id"]]
    assert after["status"] == "running"
    assert after["locked_by"] == "w1"
    assert after["locked_until"] > now_stamp()


async def test_claim__skips_other_tenants_rows(sqlite_store: SQLiteStore, queue_path: Path) -> None:
    ours = await sqlite_store.enqueue(payload())
    others = [
        await sqlite_store.enqueue(payload("globex")),
        await sqlite_store.enqueue(payload("acme2")),
        await sqlite_store.enqueue(payload("ACME")),
        await sqlite_store.enqueue(payload(job_type="send_email")),
        await sqlite_store.enqueue(payload("globex", job_type="send_email")),
        await sqlite_store.enqueue({"job_type": "data_lookup"}),
        await sqlite_store.enqueue({"tenant_id": TENANT}),
        insert_raw(queue_path, json.dumps(payload("globex"))),
    ]
    before = all_rows(queue_path)

    jobs = await sqlite_store.claim(claim())

    assert [j.id for j in jobs] == [str(ours)]
    after = all_rows(queue_path)
    assert {i: after[i] for i in others} == {i: before[i] for i in others}


async def test_claim__leaves_other_tenants_running_rows_alone(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    """Rows another tenant's worker holds (or is about to redeliver) are not ours to touch."""
    theirs = await sqlite_store.enqueue(payload("globex"))
    [job] = await sqlite_store.claim(claim("globex", lease_s=0.05))
    await asyncio.sleep(0.1)  # globex's lease ran out: globex's workers will take it again
    before = all_rows(queue_path)

    assert await sqlite_store.claim(claim()) == []

    assert all_rows(queue_path)[theirs] == before[theirs]
    [again] = await sqlite_store.claim(claim("globex"))
    assert (again.id, again.attempt) == (job.id, 2)


async def test_claim__leaves_other_tenants_exhausted_rows_alone(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    theirs = await sqlite_store.enqueue(payload("globex"))
    with raw(queue_path) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'running', attempt = ?, locked_by = 'globex-w',"
            " locked_until = '2000-01-01T00:00:00.000Z' WHERE id = ?",
            (MAX_ATTEMPTS, theirs),
        )
    before = all_rows(queue_path)

    assert await sqlite_store.claim(claim()) == []

    assert all_rows(queue_path)[theirs] == before[theirs]


@pytest.mark.parametrize(
    ("max_jobs", "batches"),
    [
        pytest.param(1, [1, 1, 1, 1, 1, 0], id="one-at-a-time"),
        pytest.param(2, [2, 2, 1, 0], id="two"),
        pytest.param(5, [5, 0], id="exactly-all"),
        pytest.param(50, [5, 0], id="more-than-there-are"),
    ],
)
async def test_claim__batches_respect_max_jobs(
    sqlite_store: SQLiteStore, max_jobs: int, batches: list[int]
) -> None:
    ids = [str(await sqlite_store.enqueue(payload(n=n))) for n in range(5)]

    got = [await sqlite_store.claim(claim(max_jobs=max_jobs)) for _ in batches]

    assert [len(batch) for batch in got] == batches
    assert [job.id for batch in got for job in batch] == ids  # oldest first


async def test_claim__attempt_goes_up_on_redelivery_after_lease_expiry(
    sqlite_store: SQLiteStore,
) -> None:
    job_id = str(await sqlite_store.enqueue(payload()))

    [first] = await sqlite_store.claim(claim(lease_s=0.2, worker_id="w1"))
    assert await sqlite_store.claim(claim(lease_s=0.2, worker_id="w2")) == []  # still leased
    await asyncio.sleep(0.25)
    [second] = await sqlite_store.claim(claim(lease_s=0.2, worker_id="w2"))

    assert (first.id, first.attempt) == (job_id, 1)
    assert (second.id, second.attempt) == (job_id, 2)


async def test_claim__job_out_of_attempts_ends_failed(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    attempts = []
    for _ in range(MAX_ATTEMPTS):
        [job] = await sqlite_store.claim(claim(lease_s=0.05))
        attempts.append(job.attempt)
        await asyncio.sleep(0.08)

    assert await sqlite_store.claim(claim(lease_s=0.05)) == []

    assert attempts == list(range(1, MAX_ATTEMPTS + 1))
    row = await sqlite_store.job(job_id)
    assert row is not None
    assert (row.status, row.attempt) == ("failed", MAX_ATTEMPTS)
    assert row.error
    assert "lease" in row.error
    assert all_rows(queue_path)[job_id]["finished_at"] is not None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("", id="empty"),
        pytest.param('{"tenant_id": "acme", "job_type": ', id="truncated"),
        pytest.param("{tenant_id: 'acme', job_type: 'data_lookup'}", id="json5"),
        pytest.param("[1, 2]", id="array"),
        pytest.param('"data_lookup"', id="string"),
        pytest.param("null", id="null"),
        pytest.param("42", id="number"),
    ],
)
async def test_claim__bad_payload_is_failed_and_does_not_block(
    sqlite_store: SQLiteStore, queue_path: Path, text: str
) -> None:
    bad = insert_raw(queue_path, text)
    good = insert_raw(queue_path, json.dumps(payload()))

    [job] = await sqlite_store.claim(claim(max_jobs=1))

    assert job.id == str(good)
    row = all_rows(queue_path)[bad]
    assert row["status"] == "failed"
    assert row["attempt"] == 0
    assert row["error"]
    assert "not a JSON object" in row["error"]
    assert row["finished_at"] is not None
    later = insert_raw(queue_path, json.dumps(payload()))
    assert [j.id for j in await sqlite_store.claim(claim())] == [str(later)]  # still not blocked


# --- leases: heartbeat, complete, fail -----------------------------------------------------------


async def test_heartbeat__extends_the_lease(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim(lease_s=0.2))

    await asyncio.sleep(0.1)
    assert await sqlite_store.heartbeat(int(job.id), lease_s=5, attempt=job.attempt)
    await asyncio.sleep(0.2)  # past the first lease, inside the extended one

    assert await sqlite_store.claim(claim(worker_id="w2")) == []


async def test_heartbeat__wrong_attempt_is_lease_lost(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.enqueue(payload())
    [first] = await sqlite_store.claim(claim(lease_s=0.1))
    await asyncio.sleep(0.15)
    [second] = await sqlite_store.claim(claim(lease_s=30, worker_id="w2"))

    assert not await sqlite_store.heartbeat(int(first.id), lease_s=30, attempt=first.attempt)
    assert await sqlite_store.heartbeat(int(second.id), lease_s=30, attempt=second.attempt)


async def test_complete__wrong_attempt_is_lease_lost(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())
    before = all_rows(queue_path)[job_id]

    done = await sqlite_store.complete(
        job_id,
        outcome="ok",
        result={"rows": []},
        attempt=job.attempt + 1,
        reply=Reply(TENANT, "+1234567890", "hello"),
    )

    assert not done
    assert all_rows(queue_path)[job_id] == before
    assert outbound(queue_path) == []


async def test_complete__a_completed_job_cannot_be_completed_twice(
    sqlite_store: SQLiteStore,
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())

    first = await sqlite_store.complete(job_id, outcome="ok", result=[1], attempt=job.attempt)
    second = await sqlite_store.complete(
        job_id, outcome="fallback", result="boom", attempt=job.attempt
    )
    third = await sqlite_store.complete(job_id, outcome="fallback", result="boom", attempt=None)

    assert (first, second, third) == (True, False, False)
    row = await sqlite_store.job(job_id)
    assert row is not None
    assert (row.status, row.outcome, row.result) == ("done", "ok", [1])


async def test_complete__writes_one_reply_row_and_none_when_repeated(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())
    reply = Reply(TENANT, "+1234567890", "Your order #12345 has been shipped!")

    first = await sqlite_store.complete(
        job_id, outcome="ok", result={"status": "shipped"}, attempt=job.attempt, reply=reply
    )
    again = await sqlite_store.complete(
        job_id, outcome="ok", result={"status": "shipped"}, attempt=job.attempt, reply=reply
    )

    assert (first, again) == (True, False)
    [message] = outbound(queue_path)
    assert message["job_id"] == job_id
    assert (message["tenant_id"], message["to"], message["message"]) == (
        reply.tenant_id,
        reply.to,
        reply.message,
    )
    row = all_rows(queue_path)[job_id]
    assert (row["status"], row["outcome"]) == ("done", "ok")
    assert json.loads(row["result"]) == {"status": "shipped"}
    assert row["locked_by"] is None
    assert row["locked_until"] is None
    assert row["finished_at"] is not None


async def test_complete__reply_and_status_share_one_transaction(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    """If the reply cannot be written, the job is not marked done either."""
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())
    before = all_rows(queue_path)[job_id]
    with raw(queue_path) as conn:
        conn.execute(
            "CREATE TRIGGER no_replies BEFORE INSERT ON outbound_messages"
            " BEGIN SELECT RAISE(ABORT, 'outbox is down'); END"
        )

    with pytest.raises(sqlite3.IntegrityError, match="outbox is down"):
        await sqlite_store.complete(
            job_id,
            outcome="ok",
            result={},
            attempt=job.attempt,
            reply=Reply(TENANT, "+1234567890", "hi"),
        )

    assert all_rows(queue_path)[job_id] == before
    with raw(queue_path) as conn:
        conn.execute("DROP TRIGGER no_replies")
    assert await sqlite_store.complete(
        job_id, outcome="ok", result={}, attempt=job.attempt, reply=Reply(TENANT, "+1", "hi")
    )
    assert len(outbound(queue_path)) == 1


async def test_fail__retry_puts_it_back_pending_until_retry_after(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())

    assert await sqlite_store.fail(
        job_id, error="engine hiccup", retry=True, retry_after_s=0.3, attempt=job.attempt
    )

    row = all_rows(queue_path)[job_id]
    assert (row["status"], row["error"]) == ("pending", "engine hiccup")
    assert row["locked_by"] is None
    assert row["locked_until"] is None
    assert row["run_at"] > now_stamp()
    assert await sqlite_store.claim(claim()) == []
    await asyncio.sleep(0.35)
    [again] = await sqlite_store.claim(claim())
    assert (again.id, again.attempt) == (job.id, 2)


async def test_fail__without_retry_ends_failed(sqlite_store: SQLiteStore, queue_path: Path) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())

    assert await sqlite_store.fail(
        job_id, error="not this worker's job", retry=False, retry_after_s=0, attempt=job.attempt
    )

    row = all_rows(queue_path)[job_id]
    assert (row["status"], row["error"]) == ("failed", "not this worker's job")
    assert row["finished_at"] is not None
    assert await sqlite_store.claim(claim()) == []
    assert not await sqlite_store.complete(job_id, outcome="ok", result=None, attempt=job.attempt)


async def test_fail__wrong_attempt_is_lease_lost(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())
    before = all_rows(queue_path)[job_id]

    assert not await sqlite_store.fail(
        job_id, error="x", retry=False, retry_after_s=0, attempt=job.attempt + 1
    )
    assert all_rows(queue_path)[job_id] == before


# --- messages --------------------------------------------------------------------------------


async def test_send_message__idempotent_per_key(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    reply = Reply(TENANT, "+1234567890", "hello")

    first = await sqlite_store.send_message(key="17", reply=reply)
    again = await sqlite_store.send_message(key="17", reply=Reply(TENANT, "+1234567890", "other"))
    other = await sqlite_store.send_message(key="webhook-abc", reply=reply)

    assert (first, again, other) == (True, False, True)
    messages = await sqlite_store.messages(TENANT)
    # there is no job 17: the key names none
    assert [(m["job_id"], m["message"]) for m in messages] == [(None, "hello"), (None, "hello")]
    assert len(outbound(queue_path)) == 2


async def test_send_message__then_complete_with_reply_does_not_double(
    sqlite_store: SQLiteStore,
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())
    reply = Reply(TENANT, "+1234567890", "hello")

    assert await sqlite_store.send_message(key=job.id, reply=reply)
    assert await sqlite_store.complete(
        job_id, outcome="ok", result=None, attempt=job.attempt, reply=reply
    )

    assert len(await sqlite_store.messages()) == 1


# --- many claimants ------------------------------------------------------------------------------


async def test_claim__two_connections_never_lease_the_same_job(
    sqlite_store: SQLiteStore, second_store: SQLiteStore
) -> None:
    total = 300
    for n in range(total):
        await sqlite_store.enqueue(payload(n=n))
    stores = {"a": sqlite_store, "b": second_store}
    seen: dict[str, list[str]] = {"a": [], "b": []}

    for _round in range(100):
        claimants = [(name, i) for i in range(8) for name in stores]
        batches = await asyncio.gather(
            *(
                stores[name].claim(claim(max_jobs=2, worker_id=f"{name}-{i}"))
                for name, i in claimants
            )
        )
        for (name, _i), batch in zip(claimants, batches, strict=True):
            seen[name].extend(job.id for job in batch)
        if not any(batches):
            break

    ids = seen["a"] + seen["b"]
    assert len(ids) == len(set(ids)), "a job was leased twice"
    assert len(ids) == total
    assert seen["a"], "the first connection claimed nothing"
    assert seen["b"], "the second connection claimed nothing"


# --- waking idle claimants -----------------------------------------------------------------------


async def _insert_later(delay_s: float, insert: Any) -> None:
    await asyncio.sleep(delay_s)
    await insert()


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("store", id="other-store"),
        pytest.param("sqlite3", id="plain-sqlite3-insert"),
    ],
)
async def test_wait_for_jobs__wakes_when_another_connection_inserts(
    sqlite_store: SQLiteStore, second_store: SQLiteStore, queue_path: Path, how: str
) -> None:
    async def insert() -> None:
        if how == "store":
            await second_store.enqueue(payload())
        else:
            await asyncio.to_thread(insert_raw, queue_path, json.dumps(payload()))

    start = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_insert_later(0.2, insert))
        await sqlite_store.wait_for_jobs(30, TENANT)
    elapsed = time.monotonic() - start

    assert 0.15 < elapsed < 0.2 + 4  # woken by the job, not at the end of the 30 s
    assert len(await sqlite_store.claim(claim())) == 1


async def test_wait_for_jobs__wakes_on_own_enqueue(sqlite_store: SQLiteStore) -> None:
    start = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(_insert_later(0.2, lambda: sqlite_store.enqueue(payload())))
        await sqlite_store.wait_for_jobs(30, TENANT)

    assert time.monotonic() - start < 0.2 + 4  # woken by the job, not at the end of the 30 s


async def test_wait_for_jobs__returns_after_timeout_when_nothing_comes(
    sqlite_store: SQLiteStore,
) -> None:
    start = time.monotonic()
    await sqlite_store.wait_for_jobs(0.3, TENANT)
    elapsed = time.monotonic() - start

    assert 0.29 <= elapsed < 0.3 + 4


@pytest.mark.parametrize(
    "how",
    [pytest.param("other-store", id="other-store"), pytest.param("same-store", id="same-store")],
)
async def test_wait_for_jobs__sees_a_job_inserted_after_an_empty_claim(
    sqlite_store: SQLiteStore, second_store: SQLiteStore, how: str
) -> None:
    assert await sqlite_store.claim(claim()) == []
    await (second_store if how == "other-store" else sqlite_store).enqueue(payload())

    start = time.monotonic()
    await sqlite_store.wait_for_jobs(30, TENANT)

    assert time.monotonic() - start < 4  # at once, not at the end of the 30 s


# --- idempotency keys are per tenant (issue 10) --------------------------------------------------


async def test_send_message__another_tenants_key_never_suppresses_a_jobs_reply(
    sqlite_store: SQLiteStore,
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())

    # Tenant "intruder" pushes the job's id as its key before the job is answered.
    assert await sqlite_store.send_message(key=job.id, reply=Reply("intruder", "+1999", "gotcha"))
    assert await sqlite_store.complete(
        job_id, outcome="ok", result=None, attempt=job.attempt, reply=Reply(TENANT, "+1", "yours")
    )

    [mine] = await sqlite_store.messages(TENANT)
    assert (mine["job_id"], mine["message"]) == (job_id, "yours")
    [theirs] = await sqlite_store.messages("intruder")
    assert theirs["job_id"] is None  # the job is not the intruder's


async def test_send_message__same_key_twice_for_one_tenant_delivers_once(
    sqlite_store: SQLiteStore,
) -> None:
    assert await sqlite_store.send_message(key="5", reply=Reply(TENANT, "+1", "first"))
    assert not await sqlite_store.send_message(key="5", reply=Reply(TENANT, "+1", "again"))
    assert await sqlite_store.send_message(key="5", reply=Reply("other", "+1", "theirs"))

    assert [m["message"] for m in await sqlite_store.messages()] == ["first", "theirs"]


async def test_complete__the_direct_queue_path_writes_exactly_one_reply(
    sqlite_store: SQLiteStore,
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())
    await sqlite_store.send_message(key="unrelated", reply=Reply(TENANT, "+1", "other"))

    assert await sqlite_store.complete(
        job_id, outcome="ok", result=None, attempt=job.attempt, reply=Reply(TENANT, "+1", "hi")
    )

    assert [(m["job_id"], m["message"]) for m in await sqlite_store.messages(TENANT)] == [
        (None, "other"),
        (job_id, "hi"),
    ]


async def test_open__migrates_a_database_from_before_per_tenant_keys(queue_path: Path) -> None:
    with raw(queue_path) as conn:
        conn.executescript(MIGRATIONS[0])  # the schema as every earlier release created it
        conn.execute("INSERT INTO jobs (id, payload) VALUES (5, ?)", (json.dumps(payload()),))
        conn.execute("INSERT INTO jobs (id, payload) VALUES (6, ?)", (json.dumps(payload("b")),))
        conn.execute("INSERT INTO jobs (id, payload) VALUES (7, 'not json')")
        rows = [(5, "b", "5"), (6, "b", "6"), (7, "b", "7"), (None, "b", "hook")]
        conn.executemany(
            'INSERT INTO outbound_messages (job_id, tenant_id, "to", message, idempotency_key)'
            " VALUES (?, ?, '+1', 'old', ?)",
            rows,
        )
    assert user_version(queue_path) == 0

    async with SQLiteStore(queue_path) as store:
        [job] = await store.claim(claim())
        assert job.id == "5"
        assert await store.complete(
            5, outcome="ok", result=None, attempt=1, reply=Reply(TENANT, "+1", "yours")
        )
        assert not await store.send_message(key="hook", reply=Reply("b", "+1", "again"))
        messages = await store.messages()

    assert [(m["job_id"], m["tenant_id"], m["message"]) for m in messages] == [
        (None, "b", "old"),  # job 5 is acme's: tenant b's row no longer holds its slot
        (6, "b", "old"),
        (None, "b", "old"),
        (None, "b", "old"),
        (5, TENANT, "yours"),
    ]
    assert user_version(queue_path) == len(MIGRATIONS)
    async with SQLiteStore(queue_path) as again:  # opening again migrates nothing
        assert len(await again.messages()) == 5


def user_version(path: Path) -> int:
    with raw(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_tokens__stored_by_hash_listed_and_revoked(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.add_token("ab" * 32, TENANT)
    await sqlite_store.add_token("cd" * 32, "other")

    assert await sqlite_store.token_tenant("ab" * 32) == TENANT
    assert await sqlite_store.token_tenant("ef" * 32) is None
    assert {(t.token_sha256, t.tenant_id) for t in await sqlite_store.tokens()} == {
        ("ab" * 32, TENANT),
        ("cd" * 32, "other"),
    }
    assert await sqlite_store.revoke_tokens("abababab") == 1
    assert await sqlite_store.token_tenant("ab" * 32) is None


async def test_claim__says_how_long_each_job_waited_since_it_was_due(
    sqlite_store: SQLiteStore,
) -> None:
    """``queued_s``, what ``worker_queue_lag_seconds`` observes: from ``run_at`` to the claim."""
    await sqlite_store.enqueue(payload())
    await asyncio.sleep(1.0)
    [job] = await sqlite_store.claim(claim())
    assert job.queued_s is not None and job.queued_s >= 0.9


# --- SQLite's errors, translated in one place ----------------------------------------------


async def test_errors__a_file_locked_past_the_busy_timeout_is_queue_unavailable(
    sqlite_store: SQLiteStore, queue_path: Path
) -> None:
    job_id = await sqlite_store.enqueue(payload())
    [job] = await sqlite_store.claim(claim())
    await sqlite_store.db.execute("PRAGMA busy_timeout=0")  # fail at once, not after 30 s
    blocker = sqlite3.connect(queue_path, isolation_level=None, timeout=0)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(QueueUnavailable, match="OperationalError: database is locked") as info:
            await sqlite_store.heartbeat(job_id, lease_s=30, attempt=job.attempt)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert isinstance(info.value, RetriableError)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await sqlite_store.heartbeat(job_id, lease_s=30, attempt=job.attempt)


def test_errors__a_file_that_cannot_be_opened_is_queue_unavailable(tmp_path: Path) -> None:
    # a directory: SQLite cannot open it as a database (as `SQLiteStore.open` meets it)
    with (
        pytest.raises(QueueUnavailable, match=r"open failed \(.*unable to open database file"),
        _unavailable("open"),
    ):
        sqlite3.connect(tmp_path)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(sqlite3.OperationalError("database is locked"), id="no-sqlite-code"),
        pytest.param(sqlite3.IntegrityError("UNIQUE constraint failed"), id="integrity"),
    ],
)
def test_errors__other_errors_pass_unchanged(error: sqlite3.Error) -> None:
    with pytest.raises(type(error)) as info, _unavailable("claim"):
        raise error
    assert info.value is error


def test_errors__a_bad_statement_passes_unchanged() -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table") as info:
        with _unavailable("job"), contextlib.closing(sqlite3.connect(":memory:")) as conn:
            conn.execute("SELECT * FROM no_such_table")
    assert not isinstance(info.value, QueueUnavailable)
