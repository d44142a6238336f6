"""The PostgreSQL queue store on the running server: a fresh database per test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.databases import ADMIN, fresh_postgres
from worker.engine_client import EngineClient
from worker.errors import ConfigError
from worker.local_engine import LocalEngine, serve_engine
from worker.queues import StoreQueue
from worker.stores.base import MAX_ATTEMPTS, Claim, Reply
from worker.stores.postgres import MIGRATIONS, PostgresStore


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with fresh_postgres("lookup_queue") as target:
        yield target


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(dsn) as opened:
        yield opened


def payload(
    tenant: str = "acme", job_type: str = "data_lookup", **more: object
) -> dict[str, object]:
    return {"job_type": job_type, "tenant_id": tenant, "query_type": "order_status", **more}


def claim(n: int = 10, tenant: str = "acme", lease_s: float = 30, worker: str = "w1") -> Claim:
    return Claim(tenant, ["data_lookup"], n, lease_s, worker)


async def test_open__migrations_are_versioned_and_idempotent(dsn: str) -> None:
    async with PostgresStore(dsn), PostgresStore(dsn):
        pass
    conn = await asyncpg.connect(dsn)
    try:
        versions = await conn.fetch("SELECT version FROM worker_schema_migrations")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'"
        )
    finally:
        await conn.close()
    assert [v["version"] for v in versions] == list(range(1, len(MIGRATIONS) + 1))
    assert {c["column_name"] for c in columns} >= {
        "id", "payload", "status", "attempt", "run_at", "locked_by", "locked_until",
        "outcome", "result", "error", "created_at", "finished_at",
    }  # fmt: skip


async def test_claim__takes_the_seeds_insert_and_only_its_own_rows(
    store: PostgresStore, dsn: str
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO jobs (payload) VALUES ('{"job_type": "data_lookup", "tenant_id": "acme",
               "query_type": "order_status", "customer_context": {}}')"""
        )
        await conn.execute(
            "INSERT INTO jobs (payload) VALUES ($1::jsonb)", json.dumps(payload("other"))
        )
        await conn.execute(
            "INSERT INTO jobs (payload) VALUES ($1::jsonb)", json.dumps(payload(job_type="email"))
        )
        await conn.execute("""INSERT INTO jobs (payload) VALUES ('"just a string"')""")
        before = await conn.fetch("SELECT * FROM jobs WHERE id IN (2, 3) ORDER BY id")
        jobs = await store.claim(claim())
        after = await conn.fetch("SELECT * FROM jobs WHERE id IN (2, 3) ORDER BY id")
        odd = await conn.fetchrow("SELECT status, error FROM jobs WHERE id = 4")
    finally:
        await conn.close()
    assert [(j.id, j.attempt) for j in jobs] == [("1", 1)]
    assert before == after
    assert (odd["status"], odd["error"]) == ("failed", "the job payload is not a JSON object")


async def test_claim__concurrent_claimants_never_share_a_job(dsn: str) -> None:
    async with PostgresStore(dsn) as one, PostgresStore(dsn) as two:
        ids = [await one.enqueue(payload()) for _ in range(200)]
        rounds = await asyncio.gather(
            *(s.claim(claim(7, worker=f"w{i}")) for i in range(20) for s in (one, two))
        )
    taken = [j.id for batch in rounds for j in batch]
    assert len(taken) == len(set(taken)) == 200
    assert set(taken) == {str(i) for i in ids}


async def test_claim__the_replica_that_lost_a_race_waits_on_and_takes_the_next_job(
    dsn: str,
) -> None:
    """An insert wakes both replicas; one gets the row, the other's long poll goes on
    (not back to the run loop empty-handed, to claim again at once) and takes the
    next job after its pause."""
    async with PostgresStore(dsn) as one, PostgresStore(dsn) as two:
        replicas = [StoreQueue(store, "acme", f"w{i}") for i, store in enumerate((one, two))]
        polls = [asyncio.create_task(q.claim(max_jobs=5, wait_s=60)) for q in replicas]
        await asyncio.sleep(1.0)  # both listening, after their first (empty) claim
        first = await one.enqueue(payload())
        done, pending = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(1.0)  # the loser has woken, claimed nothing, and waits
        assert len(done) == 1 and len(pending) == 1
        [winner] = done
        [loser] = pending
        assert [j.id for j in winner.result()] == [str(first)]
        second = await one.enqueue(payload())
        jobs = await asyncio.wait_for(loser, 30)
        assert [j.id for j in jobs] == [str(second)]


async def test_claim__expired_lease_is_handed_out_again_then_given_up(store: PostgresStore) -> None:
    job_id = await store.enqueue(payload())
    for attempt in range(1, MAX_ATTEMPTS + 1):
        (job,) = await store.claim(claim(lease_s=0.05))
        assert (job.id, job.attempt) == (str(job_id), attempt)
        await asyncio.sleep(0.1)
    assert await store.claim(claim()) == []  # the claim itself gives up
    row = await store.job(job_id)
    assert row is not None and row.status == "failed" and "5 times" in (row.error or "")


async def test_complete__writes_the_reply_once_in_the_same_transaction(
    store: PostgresStore,
) -> None:
    job_id = await store.enqueue(payload())
    await store.claim(claim())
    reply = Reply("acme", "+1555", "Your order has shipped")
    assert await store.complete(job_id, outcome="ok", result=[{"a": 1}], attempt=1, reply=reply)
    assert not await store.complete(job_id, outcome="ok", result=[], attempt=1, reply=reply)
    messages = await store.messages("acme")
    assert [(m["job_id"], m["message"]) for m in messages] == [(job_id, "Your order has shipped")]
    row = await store.job(job_id)
    assert row is not None and (row.status, row.outcome, row.result) == ("done", "ok", [{"a": 1}])


async def test_complete__an_older_attempt_has_lost_its_lease(store: PostgresStore) -> None:
    job_id = await store.enqueue(payload())
    await store.claim(claim(lease_s=0.05))
    await asyncio.sleep(0.1)
    await store.claim(claim())
    assert not await store.heartbeat(job_id, lease_s=30, attempt=1)
    assert not await store.complete(job_id, outcome="ok", result=None, attempt=1)
    assert await store.heartbeat(job_id, lease_s=30, attempt=2)


async def test_fail__retry_later_or_for_good(store: PostgresStore) -> None:
    later = await store.enqueue(payload())
    never = await store.enqueue(payload())
    await store.claim(claim())
    assert await store.fail(later, error="busy", retry=True, retry_after_s=60, attempt=1)
    assert await store.fail(never, error="not ours", retry=False, retry_after_s=0, attempt=1)
    assert await store.claim(claim()) == []
    rows = [await store.job(i) for i in (later, never)]
    assert [(r.status, r.error) for r in rows if r] == [("pending", "busy"), ("failed", "not ours")]


async def test_release__puts_a_claim_back_untouched(store: PostgresStore) -> None:
    await store.enqueue(payload())
    jobs = await store.claim(claim())
    await store.release(jobs)
    (again,) = await store.claim(claim())
    assert again.attempt == 1


async def test_send_message__is_idempotent_per_key(store: PostgresStore) -> None:
    reply = Reply("acme", "+1555", "hello")
    assert await store.send_message(key="push-1", reply=reply)
    assert not await store.send_message(key="push-1", reply=reply)
    assert len(await store.messages()) == 1


async def test_wait_for_jobs__an_insert_wakes_an_idle_claimant(
    store: PostgresStore, dsn: str
) -> None:
    assert await store.claim(claim()) == []  # LISTEN is up from here on

    async def insert_later() -> None:
        await asyncio.sleep(0.2)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO jobs (payload) VALUES ($1::jsonb)", json.dumps(payload())
            )
        finally:
            await conn.close()

    inserter = asyncio.create_task(insert_later())
    assert await store.wait_for_jobs(30, "acme")  # True: woken, not timed out
    await inserter
    assert len(await store.claim(claim())) == 1


async def insert_quietly(dsn: str, sql: str, *args: object) -> None:
    """Rows as a crashed worker or the clock leaves them: no trigger fires, nobody is told."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def admin_count(dsn: str, sql: str) -> int:
    """A count about ``dsn``'s database, from another database (so it is not counted)."""
    admin = await asyncpg.connect(ADMIN)
    try:
        return int(await admin.fetchval(sql, dsn.rpartition("/")[2]))
    finally:
        await admin.close()


async def listen_sessions(dsn: str) -> int:
    """The store's ``LISTEN`` sessions on ``dsn``'s database."""
    return await admin_count(
        dsn,
        """SELECT count(*) FROM pg_stat_activity
            WHERE datname = $1 AND application_name = 'data-lookup-worker listen'""",
    )


async def test_wait_for_jobs__another_tenants_insert_does_not_wake(
    store: PostgresStore, dsn: str
) -> None:
    assert await store.claim(claim()) == []
    assert await store.claim(claim(tenant="other")) == []
    woken = asyncio.create_task(store.wait_for_jobs(30, "other"))

    await store.enqueue(payload("other"))

    assert await woken
    assert not await store.wait_for_jobs(1, "acme")  # False: the time ran out
    assert await listen_sessions(dsn) == 1  # one session LISTENs for both tenants


async def test_wait_for_jobs__wakes_when_a_delayed_job_or_a_lease_falls_due(
    store: PostgresStore, dsn: str
) -> None:
    await insert_quietly(
        dsn,
        """INSERT INTO jobs (payload, run_at) VALUES ($1::jsonb, now() + interval '1 second')""",
        json.dumps(payload(n=1)),
    )
    await insert_quietly(
        dsn,
        """INSERT INTO jobs (payload, status, attempt, locked_by, locked_until)
           VALUES ($1::jsonb, 'running', 1, 'gone', now() + interval '2 seconds')""",
        json.dumps(payload(n=2)),
    )
    assert await store.claim(claim()) == []  # neither is due yet; the claim says when

    due = []
    for _ in range(2):
        # True: woken by the due time, not by a notification (none was sent)
        assert await store.wait_for_jobs(30, "acme")
        due += await store.claim(claim())

    assert [(j.payload["n"], j.attempt) for j in due] == [(1, 1), (2, 2)]


async def test_wait_for_jobs__a_lost_listen_session_wakes_waiters_and_listens_again(
    store: PostgresStore, dsn: str
) -> None:
    assert await store.claim(claim()) == []
    waiter = asyncio.create_task(store.wait_for_jobs(30, "acme"))
    await asyncio.sleep(0.1)

    await admin_count(
        dsn,
        """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE datname = $1 AND application_name = 'data-lookup-worker listen'""",
    )

    assert await waiter  # a job may have come while nobody listened
    assert await store.claim(claim()) == []  # listens again first
    waiter = asyncio.create_task(store.wait_for_jobs(30, "acme"))
    await insert_quietly(dsn, "SELECT 1")  # (a connection that comes and goes)
    await store.enqueue(payload())
    assert await waiter
    assert len(await store.claim(claim())) == 1


async def test_open__an_idle_store_keeps_one_pooled_connection_and_its_listen_session(
    dsn: str,
) -> None:
    count = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
    async with PostgresStore(dsn) as store:
        assert await admin_count(dsn, count) == 1  # the migration's, now idle
        for _ in range(5):
            assert await store.claim(claim()) == []
        await store.heartbeat(1, lease_s=30, attempt=None)
        assert await admin_count(dsn, count) == 2


async def test_open__transaction_pool_mode_claims_and_completes(dsn: str) -> None:
    async with PostgresStore(dsn, pool_mode="transaction") as store:
        job_id = await store.enqueue(payload())
        [job] = await store.claim(claim())
        assert await store.heartbeat(job_id, lease_s=30, attempt=job.attempt)
        assert await store.complete(job_id, outcome="ok", result=None, attempt=job.attempt)


def test_open__an_unknown_pool_mode_is_a_config_error(dsn: str) -> None:
    with pytest.raises(ConfigError, match="'session' or 'transaction'"):
        PostgresStore(dsn, pool_mode="statement")


async def test_complete__one_job_the_server_refuses_fails_alone(
    store: PostgresStore, dsn: str
) -> None:
    for _ in range(3):
        await store.enqueue(payload())
    jobs = await store.claim(claim())
    messages = ["Your order has shipped.", "bad\x00byte", "Your order is processing."]

    results = await asyncio.gather(
        *(
            store.complete(
                int(j.id),
                outcome="ok",
                result={"n": n},
                attempt=j.attempt,
                reply=Reply("acme", "+1555", text),
            )
            for n, (j, text) in enumerate(zip(jobs, messages, strict=True))
        ),
        return_exceptions=True,
    )

    assert results[0] is True and results[2] is True
    assert isinstance(results[1], asyncpg.PostgresError)  # text cannot hold a NUL byte
    sent = {m["message"] for m in await store.messages("acme")}
    assert sent == {messages[0], messages[2]}
    assert (await store.job(int(jobs[1].id))).status == "running"  # its lease runs out: retried


async def test_complete__a_result_that_is_not_json_is_stored_with_nulls(
    store: PostgresStore,
) -> None:
    await store.enqueue(payload())
    (job,) = await store.claim(claim())

    done = await store.complete(
        int(job.id),
        outcome="ok",
        result={"rows": [{"score": float("nan"), "cap": float("inf"), "n": 1.5}]},
        attempt=job.attempt,
    )

    row = await store.job(int(job.id))
    assert done and row is not None and row.status == "done"
    assert row.result == {"rows": [{"score": None, "cap": None, "n": 1.5}]}


async def test_send_message__one_the_server_refuses_fails_alone(store: PostgresStore) -> None:
    texts = ["first", "bad\x00byte", "third"]
    results = await asyncio.gather(
        *(
            store.send_message(key=f"k{n}", reply=Reply("acme", "+1555", text))
            for n, text in enumerate(texts)
        ),
        return_exceptions=True,
    )

    assert results[0] is True and results[2] is True
    assert isinstance(results[1], asyncpg.PostgresError)
    assert [m["message"] for m in await store.messages("acme")] == ["first", "third"]


# --- idempotency keys are per tenant (issue 10) --------------------------------------------------


async def test_send_message__another_tenants_key_never_suppresses_a_jobs_reply(
    store: PostgresStore,
) -> None:
    job_id = await store.enqueue(payload())
    [job] = await store.claim(claim())

    # Tenant "intruder" pushes the job's id as its key before the job is answered.
    assert await store.send_message(key=job.id, reply=Reply("intruder", "+1999", "gotcha"))
    assert await store.complete(
        job_id, outcome="ok", result=None, attempt=job.attempt, reply=Reply("acme", "+1", "yours")
    )

    [mine] = await store.messages("acme")
    assert (mine["job_id"], mine["message"]) == (job_id, "yours")
    [theirs] = await store.messages("intruder")
    assert theirs["job_id"] is None  # the job is not the intruder's


async def test_send_message__same_key_twice_for_one_tenant_delivers_once(
    store: PostgresStore,
) -> None:
    job_id = await store.enqueue(payload())
    results = await asyncio.gather(  # one batch: both tenants, the same key, twice each
        store.send_message(key=str(job_id), reply=Reply("acme", "+1", "first")),
        store.send_message(key=str(job_id), reply=Reply("acme", "+1", "again")),
        store.send_message(key=str(job_id), reply=Reply("other", "+1", "theirs")),
        store.send_message(key=str(job_id), reply=Reply("other", "+1", "theirs again")),
    )

    assert results == [True, False, True, False]
    messages = await store.messages()
    assert [(m["tenant_id"], m["job_id"], m["message"]) for m in messages] == [
        ("acme", job_id, "first"),
        ("other", None, "theirs"),
    ]


async def test_complete__the_direct_queue_path_writes_exactly_one_reply(
    store: PostgresStore,
) -> None:
    job_id = await store.enqueue(payload())
    [job] = await store.claim(claim())
    assert await store.send_message(key=job.id, reply=Reply("acme", "+1", "sent first"))

    assert await store.complete(
        job_id, outcome="ok", result=None, attempt=job.attempt, reply=Reply("acme", "+1", "hi")
    )

    assert [(m["job_id"], m["message"]) for m in await store.messages("acme")] == [
        (job_id, "sent first")
    ]


async def test_open__migrates_a_database_from_before_per_tenant_keys(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(MIGRATIONS[0])  # the schema as every earlier release created it
        await conn.execute(
            """CREATE TABLE worker_schema_migrations (
                   version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
               INSERT INTO worker_schema_migrations VALUES (1)"""
        )
        await conn.execute(
            "INSERT INTO jobs (id, payload) VALUES (5, $1::jsonb), (6, $2::jsonb), (7, '[1]')",
            json.dumps(payload()),
            json.dumps(payload("b")),
        )
        await conn.executemany(
            """INSERT INTO outbound_messages (job_id, tenant_id, "to", message, idempotency_key)
               VALUES ($1, $2, '+1', 'old', $3)""",
            [(5, "b", "5"), (6, "b", "6"), (7, "b", "7"), (None, "b", "hook")],
        )
    finally:
        await conn.close()

    async with PostgresStore(dsn) as store:
        [job] = await store.claim(claim())
        assert job.id == "5"
        assert await store.complete(
            5, outcome="ok", result=None, attempt=1, reply=Reply("acme", "+1", "yours")
        )
        assert not await store.send_message(key="hook", reply=Reply("b", "+1", "again"))
        messages = await store.messages()

    assert [(m["job_id"], m["tenant_id"], m["message"]) for m in messages] == [
        (None, "b", "old"),  # job 5 is acme's: tenant b's row no longer holds its slot
        (6, "b", "old"),
        (None, "b", "old"),
        (None, "b", "old"),
        (5, "acme", "yours"),
    ]


async def test_tokens__stored_by_hash_listed_and_revoked(store: PostgresStore) -> None:
    await store.add_token("ab" * 32, "acme")
    await store.add_token("cd" * 32, "other")

    assert await store.token_tenant("ab" * 32) == "acme"
    assert await store.token_tenant("ef" * 32) is None
    assert {(t.token_sha256, t.tenant_id) for t in await store.tokens()} == {
        ("ab" * 32, "acme"),
        ("cd" * 32, "other"),
    }
    assert await store.revoke_tokens("abababab") == 1
    assert await store.token_tenant("ab" * 32) is None


async def test_local_engine__each_tenants_long_poll_wakes_for_its_own_jobs(
    store: PostgresStore, dsn: str
) -> None:
    engine = LocalEngine(store, token="t0ken", lease_s=30)
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve_engine(engine, "127.0.0.1", 0, stop, ready=bound.set_result))
    try:
        async with EngineClient(f"http://127.0.0.1:{await bound}", "t0ken") as client:
            polls = {
                tenant: asyncio.create_task(
                    client.next_jobs(tenant, ["data_lookup"], max_jobs=5, wait_s=30)
                )
                for tenant in ("a", "b", "c")
            }
            await asyncio.sleep(0.5)  # every poll has claimed nothing and waits
            ids = {tenant: await store.enqueue(payload(tenant)) for tenant in ("a", "b")}

            # Each answered before its 30 s were up: woken by its own tenant's insert.
            for tenant in ("a", "b"):
                assert [j.id for j in await polls[tenant]] == [str(ids[tenant])]
            assert not polls["c"].done()  # nothing of c's came
            late = await store.enqueue(payload("c"))
            assert [j.id for j in await polls["c"]] == [str(late)]
    finally:
        stop.set()
        await server
    assert await listen_sessions(dsn) == 1  # one session LISTENs for every tenant


async def test_too_many_connections__is_the_queue_unavailable_not_a_crash(
    store: PostgresStore, dsn: str
) -> None:
    """A server (or role) at its connection limit is a wait the run loop backs off from
    and the final writes retry, not an error that kills the job holding the answer."""
    from worker.errors import QueueUnavailable

    role = f"lim_{dsn.rsplit('_', 1)[1]}"
    admin = await asyncpg.connect(ADMIN)
    held = None
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
        limited = dsn.replace("postgres@", f"{role}@", 1)
        held = await asyncpg.connect(limited)  # the role's one connection, taken
        crowded = PostgresStore(limited)
        with pytest.raises(QueueUnavailable, match="TooManyConnectionsError"):
            await crowded.open()
        await crowded.close()
    finally:
        if held is not None:
            await held.close()
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_claim__says_how_long_each_job_waited_since_it_was_due(
    store: PostgresStore,
) -> None:
    """``queued_s``, what ``worker_queue_lag_seconds`` observes: from ``run_at`` to the claim."""
    await store.enqueue(payload())
    await asyncio.sleep(1.0)
    [job] = await store.claim(claim())
    assert job.queued_s is not None and job.queued_s >= 0.9
