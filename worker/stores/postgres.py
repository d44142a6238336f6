"""The PostgreSQL queue store (contract §4): SKIP LOCKED claims, leases, LISTEN/NOTIFY.

Many worker processes — of one tenant or many, hundreds of tenants on one
server — share one queue, so an idle worker must cost the server next to
nothing. It holds two connections: the LISTEN session and at most one idle
pooled connection (the pool opens lazily, grows under load and closes
connections idle for `_IDLE_S`). It runs one claim every long poll (20 s by
default) and nothing else:

- **Claims are one statement** (``FOR UPDATE SKIP LOCKED`` inside an
  ``UPDATE … RETURNING``), so two claimants never lease the same row and never
  wait on each other. The same statement does the housekeeping, as CTEs rather
  than extra transactions: it fails the tenant's out-of-attempts leases, fails
  anyone's non-object rows (a partial index keeps that a probe of an empty
  index, so every claim may do it, and no sweeper needs electing), and answers
  when the tenant's next delayed job or lease falls due, which no insert
  announces. `wait_for_jobs` sleeps until then at the latest.
- **A wake-up per tenant.** An insert (or a job handed back) NOTIFYs its
  tenant's channel, ``wj_`` + md5(tenant id); a worker LISTENs only on its
  own, so a job of tenant B never wakes tenant A. The local engine, serving
  many tenants, LISTENs on each tenant it is asked about, on one session. The
  session is set up before the claim whose emptiness a wait relies on, and a
  lost session wakes every waiter: nothing that arrived meanwhile is missed.
- **Lease writes commit lazily.** Claims, heartbeats and hand-backs set
  ``synchronous_commit`` off for their own transaction (``set_config(…, true)``
  in the statement): a lease lost in a crash of the queue database only means
  the job is handed out again, while every completion — the job done and its
  reply — stays a durable commit, which also makes the leases before it durable.
- **PgBouncer.** Nothing needs a session but LISTEN: with
  ``pool_mode="transaction"`` the pool keeps no prepared statements and sets
  nothing on a session (in ``session`` mode it asks each session for generic
  plans, see `_generic_plans`), and ``listen_dsn`` may name a session-pooled
  (or direct) route for LISTEN.

Completing a job and writing its reply share one transaction. The schema is
versioned (``worker_schema_migrations``) and migrated under an advisory lock,
so concurrent ``queue init`` calls are safe. Connection trouble surfaces as
`QueueUnavailable`, which the run loop retries with back-off: a restarted
database is reconnected to, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from connectors.network import plain_on_loopback
from worker.audit_table import AuditRow, AuditTable
from worker.batching import GroupCommit
from worker.errors import ConfigError, QueueUnavailable
from worker.stores.base import (
    MAX_ATTEMPTS,
    Claim,
    ClaimedJob,
    JobRow,
    Reply,
    Store,
    TokenRow,
    job_number,
)

__all__ = ["MIGRATIONS", "PostgresStore", "channel", "pool_options"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A pooled connection idle this long is closed. Longer than the default long poll
# (`RunSettings.wait_s`, 20 s), so an idle worker's one claim connection stays open
# between polls instead of being reconnected for each (a backend fork, the
# authentication, maybe TLS); short enough that what a burst opened goes back soon.
_IDLE_S = 30.0
# Wake this long after a delayed job or a lease falls due: the server's clock is the
# judge, and a claim a hair early finds nothing and costs a transaction.
_LATE_S = 0.05
MIGRATIONS: list[str] = [
    # 1: the contract's tables, the indexes claims use, and the insert notification.
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id bigserial PRIMARY KEY,
        payload jsonb NOT NULL,
        status text NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'done', 'failed')),
        attempt int NOT NULL DEFAULT 0,
        run_at timestamptz NOT NULL DEFAULT now(),
        locked_by text,
        locked_until timestamptz,
        outcome text,
        result jsonb,
        error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    );
    CREATE INDEX IF NOT EXISTS jobs_pending
        ON jobs ((payload->>'tenant_id'), (payload->>'job_type'), run_at, id)
        WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS jobs_leased
        ON jobs (locked_until) WHERE status = 'running';
    CREATE TABLE IF NOT EXISTS outbound_messages (
        id bigserial PRIMARY KEY,
        job_id bigint UNIQUE,
        tenant_id text NOT NULL,
        "to" text NOT NULL,
        message text NOT NULL,
        idempotency_key text UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE OR REPLACE FUNCTION worker_jobs_notify() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('worker_jobs', coalesce(NEW.payload->>'tenant_id', ''));
            RETURN NULL;
        END $$;
    DROP TRIGGER IF EXISTS worker_jobs_notify ON jobs;
    CREATE TRIGGER worker_jobs_notify AFTER INSERT OR UPDATE OF status ON jobs
        FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION worker_jobs_notify();
    """,
    # 2: idempotency keys are per tenant (one tenant's key never suppresses another's
    # message), and a row names a job only of its own tenant.
    """
    ALTER TABLE outbound_messages DROP CONSTRAINT IF EXISTS outbound_messages_idempotency_key_key;
    UPDATE outbound_messages AS m SET job_id = NULL
     WHERE job_id IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM jobs AS j WHERE j.id = m.job_id AND j.payload->>'tenant_id' = m.tenant_id);
    CREATE UNIQUE INDEX IF NOT EXISTS outbound_messages_tenant_key
        ON outbound_messages (tenant_id, idempotency_key);
    """,
    # 3: tenant-scoped engine tokens; only a token's SHA-256 is kept.
    """
    CREATE TABLE IF NOT EXISTS engine_tokens (
        token_sha256 text PRIMARY KEY,
        tenant_id text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 4: frugal idle claimants. An insert wakes only its own tenant's workers; the
    # claim statement finds the tenant's next lease to expire through an index of
    # its own, and anyone's non-object rows through an index that is almost always
    # empty (so every claim may look, and no sweep is needed).
    """
    CREATE OR REPLACE FUNCTION worker_jobs_notify() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('wj_' || md5(coalesce(NEW.payload->>'tenant_id', '')), '');
            RETURN NULL;
        END $$;
    CREATE INDEX IF NOT EXISTS jobs_leased_by_tenant
        ON jobs ((payload->>'tenant_id'), (payload->>'job_type'), locked_until)
        WHERE status = 'running';
    DROP INDEX IF EXISTS jobs_leased;
    CREATE INDEX IF NOT EXISTS jobs_not_objects
        ON jobs (id) WHERE status = 'pending' AND jsonb_typeof(payload) <> 'object';
    """,
]

# The claimant's own rows: its tenant and job types; anything not an object matches nothing.
_MINE = """jsonb_typeof(payload) = 'object' AND payload->>'tenant_id' = $1
           AND payload->>'job_type' = ANY($2::text[])"""

# In a lease statement: its transaction commits without waiting for the WAL flush.
_LAZY = "lazy AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))"

# One statement, one transaction: give up the tenant's leases that ran out too often,
# fail anyone's rows that are not objects, lease what is ready, and say in how many
# seconds the tenant's next delayed job or lease falls due (a row with a NULL id).
_CLAIM = f"""
WITH {_LAZY},
not_objects AS (
    UPDATE jobs SET status = 'failed', error = 'the job payload is not a JSON object',
           finished_at = now()
     WHERE id IN (SELECT id FROM jobs
                   WHERE status = 'pending' AND jsonb_typeof(payload) <> 'object'
                   LIMIT 100 FOR UPDATE SKIP LOCKED)
), given_up AS (
    UPDATE jobs SET status = 'failed', locked_by = NULL, locked_until = NULL,
           finished_at = now(), error = 'the lease ran out ' || attempt || ' times; giving up'
     WHERE id IN (SELECT id FROM jobs
                   WHERE {_MINE} AND status = 'running' AND locked_until < now()
                     AND attempt >= $6
                   FOR UPDATE SKIP LOCKED)
), ready AS (
    SELECT id FROM jobs
    WHERE {_MINE}
      AND ((status = 'pending' AND run_at <= now())
           OR (status = 'running' AND locked_until < now() AND attempt < $6))
    ORDER BY run_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs AS j
       SET status = 'running', attempt = j.attempt + 1, locked_by = $4,
           locked_until = now() + make_interval(secs => $5)
      FROM ready WHERE j.id = ready.id
    RETURNING j.id, j.payload::text AS payload, j.attempt,
              extract(epoch FROM now() - j.run_at)::float8 AS queued_s
)
SELECT id, payload, attempt, queued_s AS s FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, extract(epoch FROM least(
           (SELECT min(run_at) FROM jobs
             WHERE {_MINE} AND status = 'pending' AND run_at > now()),
           (SELECT min(locked_until) FROM jobs
             WHERE {_MINE} AND status = 'running' AND locked_until >= now())
       ) - now())::float8
  FROM lazy
"""  # noqa: S608 - constant SQL, parameters are $n

_OWNED = "id = $1 AND status = 'running' AND ($2::int IS NULL OR attempt = $2)"

# Completions of many jobs in one statement (group commit): each job is marked done
# and its reply written together, so one is never without the other. With the audit
# table in this database, the job's audit row goes in the same statement ($8 on).
_COMPLETE_INPUT = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[],
                         $5::text[], $6::text[], $7::text[]{audit_arrays})
        AS t(id, attempt, outcome, result, tenant_id, "to", message{audit_names})
), done AS (
    UPDATE jobs AS j
       SET status = 'done', outcome = i.outcome, result = i.result::jsonb, error = NULL,
           locked_by = NULL, locked_until = NULL, finished_at = now()
      FROM input AS i
     WHERE j.id = i.id AND j.status = 'running' AND (i.attempt IS NULL OR j.attempt = i.attempt)
    RETURNING j.id, j.payload->>'tenant_id' AS tenant_id
), reply AS (
    INSERT INTO outbound_messages (job_id, tenant_id, "to", message, idempotency_key)
    SELECT CASE WHEN d.tenant_id = i.tenant_id THEN i.id END,
           i.tenant_id, i."to", i.message, i.id::text
      FROM input AS i JOIN done AS d ON d.id = i.id
     WHERE i."to" IS NOT NULL
    ON CONFLICT DO NOTHING
){audit_insert}
SELECT id FROM done
"""
_COMPLETE = _COMPLETE_INPUT.format(audit_arrays="", audit_names="", audit_insert="")

_AUDIT_INSERT = """, audit AS (
    INSERT INTO data_access_logs ({columns})
    SELECT {values} FROM input AS i JOIN done AS d ON d.id = i.id WHERE i.audited
    ON CONFLICT DO NOTHING
)"""


def _complete_with_audit(table: AuditTable) -> str:
    """`_COMPLETE` that also inserts each done job's audit row, in ``table``'s shape."""
    casts = ["bool[]", *table.casts]
    names = [f"a{n}" for n in range(len(table.columns))]
    return _COMPLETE_INPUT.format(
        audit_arrays="".join(f", ${n}::{cast}" for n, cast in enumerate(casts, start=8)),
        audit_names=", audited" + "".join(f", {name}" for name in names),
        audit_insert=_AUDIT_INSERT.format(
            columns=table.names, values=", ".join(f"i.{name}" for name in names)
        ),
    )


# Messages sent outside a job's completion (the engine's /messages/send), many at once.
# A row names its job only when the job is the sending tenant's.
_SEND = """
INSERT INTO outbound_messages (job_id, tenant_id, "to", message, idempotency_key)
SELECT j.id, i.tenant_id, i."to", i.message, i.key
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
       WITH ORDINALITY AS i(job, tenant_id, "to", message, key, n)
  LEFT JOIN jobs AS j ON j.id = i.job AND j.payload->>'tenant_id' = i.tenant_id
 ORDER BY i.n
ON CONFLICT DO NOTHING
RETURNING tenant_id, idempotency_key
"""

_CONNECTION_TROUBLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    # the server's max_connections reached (other clients may leave): a wait, not a refusal
    asyncpg.TooManyConnectionsError,
    # a pooled connection left mid-operation by a dropped server: discard and retry
    asyncpg.InternalClientError,
)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Connection trouble inside becomes `QueueUnavailable`: ``what``, and the error's kind
    (never its text, which may quote the DSN)."""
    try:
        yield
    except _CONNECTION_TROUBLE as exc:
        raise QueueUnavailable(f"{what} ({type(exc).__name__})") from exc


@dataclass(frozen=True)
class _Send:
    key: str
    reply: Reply
    job_id: int | None


@dataclass(frozen=True)
class _Completion:
    job_id: int
    attempt: int | None
    outcome: str
    result: str  # JSON text
    reply: Reply | None
    audit: AuditRow | None = None


async def _one_by_one_if_refused(
    write: Callable[[Sequence[T]], Awaitable[list[bool]]], items: Sequence[T]
) -> list[bool | BaseException]:
    """``write(items)``; if the server refuses the batch for what is in it (a text it
    cannot store, say), each item is written on its own, so only the culprit fails.
    Connection trouble (`QueueUnavailable`) fails the batch: every caller retries."""
    try:
        return list(await write(items))
    except asyncpg.PostgresError:
        if len(items) == 1:
            raise
    answers: list[bool | BaseException] = []
    for item in items:
        try:
            answers.extend(await write([item]))
        except asyncpg.PostgresError as exc:
            answers.append(exc)
    return answers


def _json_text(value: Any) -> str:
    """``value`` as JSON that ``jsonb`` takes: NaN and ±Infinity (not JSON) become null."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def channel(tenant_id: str) -> str:
    """The channel an insert for ``tenant_id`` NOTIFYs (migration 4's trigger, in Python).

    md5 of the tenant id's UTF-8 bytes, as the server computes it in a UTF8 database:
    any tenant id fits a channel name (an identifier, at most 63 bytes).
    """
    return "wj_" + hashlib.md5(tenant_id.encode(), usedforsecurity=False).hexdigest()


def pool_options(mode: str) -> dict[str, Any]:
    """`asyncpg.create_pool` settings for a pool that opens lazily and shrinks when idle.

    ``mode``: ``session`` when a connection is ours for as long as we hold it
    (PostgreSQL itself, PgBouncer's session pooling); ``transaction`` when only
    for a transaction (PgBouncer's transaction pooling): then no prepared
    statement may outlive one. Pooled connections keep no session state here
    (no ``SET``, no LISTEN, no session advisory lock), so giving one back needs
    no reset query (asyncpg's default costs a transaction each time).
    """
    if mode not in ("session", "transaction"):
        raise ConfigError(f"the queue's pool mode is 'session' or 'transaction', not {mode!r}")
    options: dict[str, Any] = {
        "min_size": 0,
        "max_inactive_connection_lifetime": _IDLE_S,
        "reset": _keep_as_is,
    }
    if mode == "transaction":
        options["statement_cache_size"] = 0
    return options


async def _probe(dsn: str) -> asyncpg.Connection:
    """A short-lived connection that prepares nothing by name (see `_check_routes`)."""
    return await asyncpg.connect(
        dsn,
        statement_cache_size=0,
        server_settings={"application_name": "data-lookup-worker check"},
    )


async def _backend_pid(dsn: str) -> int:
    conn = await _probe(dsn)
    try:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close(timeout=5)


async def _keep_as_is(_conn: asyncpg.Connection) -> None:
    """A pool's reset hook for connections that keep no session state (see `pool_options`)."""


async def _generic_plans(conn: asyncpg.Connection) -> None:
    """Plan each cached statement once per session, not on every run.

    Left to choose, the server re-plans the claim statement on every run (its
    generic plan looks a little costlier than a custom one): 1.1-1.5 ms a claim
    against 0.2 ms with its generic plan, whose index scans are the same for
    every tenant. Only a session keeps statements, so only a session pool sets it.
    """
    await conn.execute("SET plan_cache_mode = force_generic_plan")


# What the current task's last claim saw of its tenant (store, tenant, wake-up event):
# a job that arrives between an empty claim and the wait that follows sets that event.
_SEEN: ContextVar[tuple[object, str, asyncio.Event] | None] = ContextVar("seen", default=None)


class PostgresStore(Store):
    """Contract §4 on PostgreSQL.

    ``listen_dsn``: where the LISTEN session connects (default ``dsn``); it needs a
    session, so behind PgBouncer's transaction pooling it names a session-pooled
    route or the server itself. ``pool_mode``: see `pool_options`.
    """

    kind = "PostgreSQL"

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        listen_dsn: str | None = None,
        pool_mode: str = "session",
    ) -> None:
        self.dsn = dsn
        self.listen_dsn = listen_dsn or dsn
        self.pool_size = pool_size
        self.pool_mode = pool_mode
        self._pool_options = pool_options(pool_mode)
        if pool_mode == "session":
            self._pool_options["init"] = _generic_plans
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listen_lock = asyncio.Lock()
        # Per channel: the tenant's current wake-up event (replaced each time it fires).
        self._wake: dict[str, asyncio.Event] = {}
        # Per tenant: when (loop time) its next delayed job or lease falls due.
        self._due: dict[str, float] = {}
        self._completions: GroupCommit[_Completion, bool] = GroupCommit(self._complete_many)
        self._sends: GroupCommit[_Send, bool] = GroupCommit(self._send_many)
        self._audit_table: AuditTable | None = None
        self._audit_sql = ""
        self._audit_refused: Callable[[BaseException], None] = lambda _exc: None

    def __repr__(self) -> str:
        return "<PostgresStore>"  # the DSN may hold a password

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; connection trouble becomes `QueueUnavailable`."""
        with _unavailable("the queue database did not answer"):
            if self._pool is None:
                await self.open()
            if self._pool is None:  # open() sets it or raises
                raise QueueUnavailable("the queue database is not open")
            async with self._pool.acquire() as conn:
                yield conn

    async def open(self) -> None:
        """Create the pool (no connection yet) and migrate through it: one stays, idle."""
        if self._pool is not None:
            return
        with _unavailable("cannot reach the queue database"):
            pool = await asyncpg.create_pool(
                self.dsn,
                ssl=plain_on_loopback(self.dsn),
                max_size=self.pool_size,
                command_timeout=30,
                server_settings={"application_name": "data-lookup-worker queue"},
                **self._pool_options,
            )
            try:
                await self._check_routes()
                await self._migrate(pool)
            except BaseException:
                await pool.close()
                raise
        self._pool = pool

    async def _check_routes(self) -> None:
        """Refuse a transaction-pooled route where the worker needs a session.

        Behind PgBouncer's transaction pooling a client has no server session of
        its own: between transactions its server serves others, the one idle
        last lent first. So while one connection is open, another that lands on
        the same server backend proves the route pools by transaction; a session,
        direct or pooled, is never shared. Busy pools may hide it, but it never
        accuses a session. Unchecked, LISTEN there never hears a NOTIFY, and
        cached statements meet other clients' of the same name.
        """
        held = await _probe(self.dsn)
        try:
            pid = await held.fetchval("SELECT pg_backend_pid()")
            shared = {dsn: await _backend_pid(dsn) == pid for dsn in {self.dsn, self.listen_dsn}}
        finally:
            await held.close(timeout=5)
        wrong = []
        if self.pool_mode == "session" and shared[self.dsn]:
            wrong.append("QUEUE_POOL_MODE=transaction")
        if shared[self.listen_dsn]:
            wrong.append("QUEUE_LISTEN_DSN to PostgreSQL itself or a session-pooled route")
        if wrong:
            raise ConfigError(
                "the queue database is reached through a transaction pool (PgBouncer?): "
                f"set {' and '.join(wrong)}"
            )

    @staticmethod
    async def _migrate(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('worker_schema_migrations'))")
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS worker_schema_migrations (
                       version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM worker_schema_migrations"
            )
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version > done:
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO worker_schema_migrations (version) VALUES ($1)", version
                    )

    async def close(self) -> None:
        await self._completions.close()
        await self._sends.close()
        async with self._listen_lock:
            listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(*_CONNECTION_TROUBLE):
                await listener.close(timeout=5)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def carry_audit(
        self, table: AuditTable | None, refused: Callable[[BaseException], None]
    ) -> bool:
        """Write jobs' audit rows in their completion statements, into ``table``.

        For an audit table in this database: a done job and its row commit
        together, so no crash can leave one without the other. If the table
        refuses a batch's rows, the jobs are completed without them and
        ``refused`` is told (the rows then go through the audit log's buffer).
        """
        self._audit_table = table
        self._audit_sql = _complete_with_audit(table) if table is not None else ""
        self._audit_refused = refused
        return table is not None

    async def enqueue(self, payload: Any, *, delay_s: float = 0) -> int:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        async with self._conn() as conn:
            job_id = await conn.fetchval(
                """INSERT INTO jobs (payload, run_at)
                   VALUES ($1::jsonb, now() + make_interval(secs => $2)) RETURNING id""",
                text,
                float(delay_s),
            )
        return int(job_id)

    async def claim(self, claim: Claim) -> list[ClaimedJob]:
        await self.mark_seen(claim.tenant_id)
        async with self._conn() as conn:
            rows = await conn.fetch(
                _CLAIM,
                claim.tenant_id,
                list(claim.job_types),
                claim.max_jobs,
                claim.worker_id,
                float(claim.lease_s),
                MAX_ATTEMPTS,
            )
        jobs = []
        # a claimed row's seconds are its wait in the queue; the last row's (no id), when
        # the tenant's next delayed job or lease falls due
        for job_id, payload, attempt, seconds in rows:
            if job_id is None:
                self._note_due(claim.tenant_id, seconds)
            else:
                job = ClaimedJob(str(job_id), json.loads(payload), attempt, claim.lease_s, seconds)
                jobs.append(job)
        return sorted(jobs, key=lambda j: int(j.id))

    def _note_due(self, tenant_id: str, due_s: float | None) -> None:
        if due_s is None:
            self._due.pop(tenant_id, None)
        else:
            loop = asyncio.get_running_loop()
            self._due[tenant_id] = loop.time() + max(due_s, 0.0) + _LATE_S

    async def release(self, jobs: Sequence[ClaimedJob]) -> None:
        if not jobs:
            return
        async with self._conn() as conn:
            await conn.executemany(
                f"""WITH {_LAZY}
                    UPDATE jobs SET status = 'pending', attempt = attempt - 1,
                           locked_by = NULL, locked_until = NULL
                      FROM lazy WHERE id = $1 AND status = 'running' AND attempt = $2""",  # noqa: S608
                [(int(j.id), j.attempt) for j in jobs],
            )

    # -- waking up -----------------------------------------------------------

    async def mark_seen(self, tenant_id: str) -> None:
        _SEEN.set((self, tenant_id, await self._listening(tenant_id)))

    async def wait_for_jobs(self, timeout_s: float, tenant_id: str) -> bool:
        """Until the tenant's channel fires, its next delayed job or lease falls due,
        or ``timeout_s`` passes (False)."""
        seen = _SEEN.get()
        if seen is not None and seen[0] is self and seen[1] == tenant_id:
            woken = seen[2]
        else:
            woken = await self._listening(tenant_id)
        loop = asyncio.get_running_loop()
        due = self._due.get(tenant_id, math.inf)
        try:
            async with asyncio.timeout(min(timeout_s, due - loop.time())):
                await woken.wait()
        except TimeoutError:
            return loop.time() >= due
        return True

    async def _listening(self, tenant_id: str) -> asyncio.Event:
        """The event the tenant's next notification sets, once LISTEN is up for it."""
        name = channel(tenant_id)
        async with self._listen_lock:
            listener = self._listener
            if listener is None or listener.is_closed():
                listener = await self._connect_listener()
            if name not in self._wake:
                with _unavailable("cannot LISTEN on the queue database"):
                    await listener.add_listener(name, self._notified)
                self._wake[name] = asyncio.Event()
            return self._wake[name]

    async def _connect_listener(self) -> asyncpg.Connection:
        """A new LISTEN session, on every channel the old one had; their waiters wake
        (a job may have come while no session listened)."""
        with _unavailable("cannot LISTEN on the queue database"):
            listener = await asyncpg.connect(
                self.listen_dsn,
                ssl=plain_on_loopback(self.listen_dsn),
                statement_cache_size=0,
                server_settings={"application_name": "data-lookup-worker listen"},
            )
            try:
                for name in self._wake:
                    await listener.add_listener(name, self._notified)
            except BaseException:
                listener.terminate()
                raise
        listener.add_termination_listener(self._lost)
        self._listener = listener
        for name in list(self._wake):
            self._fire(name)
        return listener

    def _notified(self, _conn: object, _pid: int, name: str, _payload: object) -> None:
        self._fire(name)

    def _lost(self, conn: object) -> None:
        """The LISTEN session ended: wake every waiter; the next claim listens again."""
        if conn is self._listener:
            self._listener = None
        for name in list(self._wake):
            self._fire(name)

    def _fire(self, name: str) -> None:
        """Wake the channel's waiters; later waiters get a fresh event."""
        event = self._wake.get(name)
        if event is not None:
            event.set()
            self._wake[name] = asyncio.Event()

    # -- settling jobs -------------------------------------------------------

    async def heartbeat(self, job_id: int, *, lease_s: float, attempt: int | None) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                f"""WITH {_LAZY}
                    UPDATE jobs SET locked_until = now() + make_interval(secs => $3)
                      FROM lazy WHERE {_OWNED}""",  # noqa: S608
                job_id,
                attempt,
                float(lease_s),
            )
        return bool(status.endswith(" 1"))

    async def complete(
        self,
        job_id: int,
        *,
        outcome: str,
        result: Any,
        attempt: int | None,
        reply: Reply | None = None,
        audit: AuditRow | None = None,
    ) -> bool:
        carried = audit if self._audit_table is not None else None
        return await self._completions.submit(
            _Completion(job_id, attempt, outcome, _json_text(result), reply, carried)
        )

    async def _complete_many(self, items: Sequence[_Completion]) -> list[bool | BaseException]:
        """One statement for many completions: atomic per job, one round trip for all."""
        if not any(c.audit is not None for c in items):
            return await _one_by_one_if_refused(self._complete_batch, items)
        try:
            return list(await self._complete_batch(items, with_audit=True))
        except asyncpg.PostgresError as exc:
            refusal = exc
        # Complete the jobs without their rows (which then go through the audit log's
        # buffer); if that goes through whole, it was the audit table that refused.
        answers = await _one_by_one_if_refused(self._complete_batch, items)
        if not any(isinstance(a, BaseException) for a in answers):
            self._audit_refused(refusal)
        return answers

    async def _complete_batch(
        self, items: Sequence[_Completion], *, with_audit: bool = False
    ) -> list[bool]:
        args: list[list[Any]] = [
            [c.job_id for c in items],
            [c.attempt for c in items],
            [c.outcome for c in items],
            [c.result for c in items],
            [c.reply.tenant_id if c.reply else None for c in items],
            [c.reply.to if c.reply else None for c in items],
            [c.reply.message if c.reply else None for c in items],
        ]
        table = self._audit_table if with_audit else None
        if table is not None:
            audits = [c.audit for c in items]
            args += [[a is not None for a in audits], *table.arrays(audits)]
        async with self._conn() as conn:
            rows = await conn.fetch(self._audit_sql if table is not None else _COMPLETE, *args)
        done = {int(r[0]) for r in rows}
        if table is not None:
            for c in items:
                if c.audit is not None and c.job_id in done:
                    c.audit.stored = True
        return [c.job_id in done for c in items]

    async def fail(
        self, job_id: int, *, error: str, retry: bool, retry_after_s: float, attempt: int | None
    ) -> bool:
        if retry:
            sql = f"""UPDATE jobs
                      SET status = CASE WHEN attempt >= $5 THEN 'failed' ELSE 'pending' END,
                          finished_at = CASE WHEN attempt >= $5 THEN now() END,
                          error = $3, run_at = now() + make_interval(secs => $4),
                          locked_by = NULL, locked_until = NULL
                      WHERE {_OWNED}"""  # noqa: S608
            args: tuple[Any, ...] = (error, float(retry_after_s), MAX_ATTEMPTS)
        else:
            sql = f"""UPDATE jobs SET status = 'failed', error = $3, finished_at = now(),
                          locked_by = NULL, locked_until = NULL
                      WHERE {_OWNED}"""  # noqa: S608
            args = (error,)
        async with self._conn() as conn:
            status = await conn.execute(sql, job_id, attempt, *args)
        return bool(status.endswith(" 1"))

    async def send_message(self, *, key: str, reply: Reply, job_id: int | None = None) -> bool:
        job = job_id if job_id is not None else job_number(key)
        if job is not None and not 0 <= job < 2**63:
            job = None  # not a bigint: not a job
        return await self._sends.submit(_Send(key, reply, job))

    async def _send_many(self, items: Sequence[_Send]) -> list[bool | BaseException]:
        return await _one_by_one_if_refused(self._send_batch, items)

    async def _send_batch(self, items: Sequence[_Send]) -> list[bool]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                _SEND,
                [s.job_id for s in items],
                [s.reply.tenant_id for s in items],
                [s.reply.to for s in items],
                [s.reply.message for s in items],
                [s.key for s in items],
            )
        fresh = {(r[0], r[1]) for r in rows}
        # The same tenant and key twice in one batch: the first is the one sent.
        answers = []
        for s in items:
            answers.append((s.reply.tenant_id, s.key) in fresh)
            fresh.discard((s.reply.tenant_id, s.key))
        return answers

    async def job(self, job_id: int) -> JobRow | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                """SELECT id, payload::text, status, attempt, outcome, result::text, error
                   FROM jobs WHERE id = $1""",
                job_id,
            )
        if row is None:
            return None
        result = json.loads(row[5]) if row[5] is not None else None
        return JobRow(int(row[0]), json.loads(row[1]), row[2], int(row[3]), row[4], result, row[6])

    async def messages(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                """SELECT id, job_id, tenant_id, "to", message, created_at FROM outbound_messages
                   WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY id""",
                tenant_id,
            )
        return [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]

    # -- tenant-scoped engine tokens ---------------------------------------------------

    async def add_token(self, token_sha256: str, tenant_id: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO engine_tokens (token_sha256, tenant_id) VALUES ($1, $2)",
                token_sha256,
                tenant_id,
            )

    async def token_tenant(self, token_sha256: str) -> str | None:
        async with self._conn() as conn:
            tenant = await conn.fetchval(
                "SELECT tenant_id FROM engine_tokens WHERE token_sha256 = $1", token_sha256
            )
        return str(tenant) if tenant is not None else None

    async def revoke_tokens(self, sha256_prefix: str) -> int:
        async with self._conn() as conn:
            status = await conn.execute(
                "DELETE FROM engine_tokens WHERE left(token_sha256, length($1)) = $1",
                sha256_prefix,
            )
        return int(status.rpartition(" ")[2] or 0)

    async def tokens(self) -> list[TokenRow]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT token_sha256, tenant_id, created_at FROM engine_tokens"
                " ORDER BY created_at, token_sha256"
            )
        return [TokenRow(r[0], r[1], r[2].isoformat()) for r in rows]
