"""The embedded default queue store: SQLite, with contract §4's tables.

Several processes may share the file (the local engine and direct-mode
workers): WAL mode, a busy timeout, and ``BEGIN IMMEDIATE`` around each claim
so two claimants never lease the same row. SQLite has no LISTEN/NOTIFY, so
`wait_for_jobs` watches ``PRAGMA data_version`` (which moves when another
connection commits) on a short tick, and an in-process event for our own
inserts.

The schema is versioned (``PRAGMA user_version``): `MIGRATIONS` run in order,
each once, under ``BEGIN IMMEDIATE`` so two processes opening one file never
migrate it twice.

SQLite's errors are translated in one place (`_unavailable`): a file that stays
locked past the busy timeout, a disk I/O error, a full disk or a file that cannot
be opened becomes `QueueUnavailable`, which the callers retry with back-off as
they do a PostgreSQL queue's; any other error (a constraint, a bug) is raised as
SQLite raised it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import sqlite3
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiosqlite

from worker.audit_table import AuditRow
from worker.errors import QueueUnavailable
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

__all__ = ["MIGRATIONS", "SQLiteStore"]

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempt INTEGER NOT NULL DEFAULT 0,
    run_at TEXT NOT NULL DEFAULT ({_NOW}),
    locked_by TEXT,
    locked_until TEXT,
    outcome TEXT,
    result TEXT,
    error TEXT,
    created_at TEXT NOT NULL DEFAULT ({_NOW}),
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (status, run_at);
CREATE TABLE IF NOT EXISTS outbound_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER UNIQUE,
    tenant_id TEXT NOT NULL,
    "to" TEXT NOT NULL,
    message TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at TEXT NOT NULL DEFAULT ({_NOW})
);
"""

# The tenant a job row belongs to, or NULL for a row that is not a JSON object.
_JOB_TENANT = (
    "CASE WHEN json_valid(j.payload) AND json_type(j.payload) = 'object'"
    " THEN json_extract(j.payload, '$.tenant_id') END"
)

MIGRATIONS: list[str] = [
    # 1: the contract's tables (databases from before versioning already have them).
    SCHEMA,
    # 2: idempotency keys are per tenant, and a row names a job only of its own tenant.
    # SQLite cannot drop a column's UNIQUE: the table is rebuilt, rows and ids kept.
    f"""
    CREATE TABLE outbound_messages_v2 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER UNIQUE,
        tenant_id TEXT NOT NULL,
        "to" TEXT NOT NULL,
        message TEXT NOT NULL,
        idempotency_key TEXT,
        created_at TEXT NOT NULL DEFAULT ({_NOW}),
        UNIQUE (tenant_id, idempotency_key)
    );
    INSERT INTO outbound_messages_v2
        (id, job_id, tenant_id, "to", message, idempotency_key, created_at)
    SELECT m.id,
           (SELECT j.id FROM jobs AS j WHERE j.id = m.job_id AND {_JOB_TENANT} = m.tenant_id),
           m.tenant_id, m."to", m.message, m.idempotency_key, m.created_at
      FROM outbound_messages AS m;
    DROP TABLE outbound_messages;
    ALTER TABLE outbound_messages_v2 RENAME TO outbound_messages;
    """,  # noqa: S608 - constant SQL
    # 3: tenant-scoped engine tokens; only a token's SHA-256 is kept.
    f"""
    CREATE TABLE IF NOT EXISTS engine_tokens (
        token_sha256 TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT ({_NOW})
    );
    """,
]


def _statements(script: str) -> Iterator[str]:
    """A script's statements one by one (triggers' ``BEGIN … END`` kept whole)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending
            pending = ""
    if pending.strip():
        yield pending


_TICK_S = 0.05

# What the current task saw at its last claim: (store, change event, data_version).
# `wait_for_jobs` compares against it, so a job that arrives between an empty
# claim and the wait is not missed.
_SEEN: ContextVar[tuple[object, asyncio.Event, int] | None] = ContextVar("seen", default=None)

# Only the task's own tenant and job types; rows that are not JSON objects match nothing.
_MINE = """json_valid(payload) AND json_type(payload) = 'object'
           AND json_extract(payload, '$.tenant_id') = ?
           AND json_extract(payload, '$.job_type') IN ({marks})"""


def _stamp(offset_s: float = 0.0) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


#: SQLite's primary result codes for a file that cannot be used now (not a bad statement):
#: SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
_UNAVAILABLE_CODES = frozenset({5, 6, 10, 13, 14})

P = ParamSpec("P")
T = TypeVar("T")


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """SQLite's operational trouble inside becomes `QueueUnavailable` (``what`` failed, and
    SQLite's own words: a path at most, never a secret); other errors pass unchanged."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _UNAVAILABLE_CODES:
            raise
        raise QueueUnavailable(
            f"SQLite queue: {what} failed ({type(exc).__name__}: {exc})"
        ) from exc


def _translated(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``method``'s statements under `_unavailable`, named by the method."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with _unavailable(method.__name__.replace("_", " ")):
            return await method(*args, **kwargs)

    return call


class SQLiteStore(Store):
    """Contract §4 on one SQLite file."""

    kind = "SQLite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    @_translated
    async def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA busy_timeout=30000")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._migrate(self._db)

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")
        try:
            cursor = await db.execute("PRAGMA user_version")
            row = await cursor.fetchone()
            await cursor.close()
            done = int(row[0]) if row else 0
            for sql in MIGRATIONS[done:]:
                for statement in _statements(sql):
                    await db.execute(statement)
            if done < len(MIGRATIONS):
                await db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def _write(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        async with self._lock:
            cursor = await self.db.execute(sql, params)
            count = cursor.rowcount
            await cursor.close()
            return count

    @_translated
    async def enqueue(self, payload: Any, *, delay_s: float = 0) -> int:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        async with self._lock:
            cursor = await self.db.execute(
                "INSERT INTO jobs (payload, run_at) VALUES (?, ?) RETURNING id",
                (text, _stamp(delay_s)),
            )
            row = await cursor.fetchone()
            await cursor.close()
        self._notify()
        if row is None:
            raise RuntimeError("INSERT … RETURNING gave no row")
        return int(row[0])

    @_translated
    async def claim(self, claim: Claim) -> list[ClaimedJob]:
        now, until = _stamp(), _stamp(claim.lease_s)
        types = list(claim.job_types)
        mine = _MINE.format(marks=",".join("?" for _ in types))
        params = (claim.worker_id, until, now, now, claim.tenant_id, *types, claim.max_jobs, now)
        await self.mark_seen(claim.tenant_id)
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self._fail_unclaimable(now, mine, (claim.tenant_id, *types))
                cursor = await self.db.execute(
                    f"""
                    UPDATE jobs SET status = 'running', attempt = attempt + 1,
                        locked_by = ?, locked_until = ?
                    WHERE id IN (
                        SELECT id FROM jobs
                        WHERE ((status = 'pending' AND run_at <= ?)
                               OR (status = 'running' AND locked_until < ?))
                          AND {mine}
                        ORDER BY run_at, id LIMIT ?)
                    RETURNING id, payload, attempt, (julianday(?) - julianday(run_at)) * 86400
                    """,  # noqa: S608 - only "?" marks are formatted in
                    params,
                )
                rows = await cursor.fetchall()
                await cursor.close()
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        jobs = [
            ClaimedJob(str(r[0]), _loads(r[1]), int(r[2]), claim.lease_s, max(0.0, float(r[3])))
            for r in rows
        ]
        return sorted(jobs, key=lambda j: int(j.id))

    @_translated
    async def release(self, jobs: Sequence[ClaimedJob]) -> None:
        for job in jobs:
            await self._write(
                """UPDATE jobs SET status = 'pending', attempt = attempt - 1,
                       locked_by = NULL, locked_until = NULL
                   WHERE id = ? AND status = 'running' AND attempt = ?""",
                (int(job.id), job.attempt),
            )
        if jobs:
            self._notify()

    @_translated
    async def mark_seen(self, tenant_id: str) -> None:
        _SEEN.set((self, self._changed, await self._data_version()))

    def _notify(self) -> None:
        """Wake every waiter of this process; later waiters get a fresh event."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _fail_unclaimable(self, now: str, mine: str, params: tuple[Any, ...]) -> None:
        """Rows no claimant can take: not JSON objects (anyone's), or our own out of attempts."""
        await self.db.execute(
            f"""UPDATE jobs SET status = 'failed', error = 'the job payload is not a JSON object',
                   finished_at = {_NOW}
               WHERE status = 'pending' AND
                     (NOT json_valid(payload) OR json_type(payload) != 'object')"""  # noqa: S608
        )
        await self.db.execute(
            f"""UPDATE jobs SET status = 'failed', locked_by = NULL, locked_until = NULL,
                   error = 'the lease ran out ' || attempt || ' times; giving up',
                   finished_at = {_NOW}
               WHERE status = 'running' AND locked_until < ? AND attempt >= ?
                     AND {mine}""",  # noqa: S608
            (now, MAX_ATTEMPTS, *params),
        )

    @_translated
    async def wait_for_jobs(self, timeout_s: float, tenant_id: str) -> bool:
        """Wakes for any tenant's jobs: SQLite cannot tell whose a change was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        seen = _SEEN.get()
        if seen is not None and seen[0] is self:
            _, changed, version = seen
        else:
            changed, version = self._changed, await self._data_version()
        while True:
            if changed.is_set() or await self._data_version() != version:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_TICK_S, left)):
                    await changed.wait()

    async def _data_version(self) -> int:
        cursor = await self.db.execute("PRAGMA data_version")
        row = await cursor.fetchone()
        await cursor.close()
        return int(row[0]) if row else 0

    def _owned(self, attempt: int | None) -> tuple[str, tuple[Any, ...]]:
        if attempt is None:
            return "id = ? AND status = 'running'", ()
        return "id = ? AND status = 'running' AND attempt = ?", (attempt,)

    @_translated
    async def heartbeat(self, job_id: int, *, lease_s: float, attempt: int | None) -> bool:
        where, extra = self._owned(attempt)
        count = await self._write(
            f"UPDATE jobs SET locked_until = ? WHERE {where}",  # noqa: S608
            (_stamp(lease_s), job_id, *extra),
        )
        return count == 1

    @_translated
    async def complete(
        self,
        job_id: int,
        *,
        outcome: str,
        result: Any,
        attempt: int | None,
        reply: Reply | None = None,
        audit: AuditRow | None = None,  # the audit log's buffer writes it
    ) -> bool:
        where, extra = self._owned(attempt)
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                cursor = await self.db.execute(
                    f"""UPDATE jobs SET status = 'done', outcome = ?, result = ?, error = NULL,
                           locked_by = NULL, locked_until = NULL, finished_at = {_NOW}
                       WHERE {where}""",  # noqa: S608
                    (outcome, json.dumps(result), job_id, *extra),
                )
                done = cursor.rowcount == 1
                await cursor.close()
                if done and reply is not None:
                    await self._insert_message(str(job_id), reply, job_id)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return done

    @_translated
    async def fail(
        self, job_id: int, *, error: str, retry: bool, retry_after_s: float, attempt: int | None
    ) -> bool:
        where, extra = self._owned(attempt)
        if retry:
            sql = f"""UPDATE jobs
                      SET status = CASE WHEN attempt >= ? THEN 'failed' ELSE 'pending' END,
                          error = ?, run_at = ?, locked_by = NULL, locked_until = NULL,
                          finished_at = CASE WHEN attempt >= ? THEN {_NOW} END
                      WHERE {where}"""  # noqa: S608
            params: tuple[Any, ...] = (MAX_ATTEMPTS, error, _stamp(retry_after_s), MAX_ATTEMPTS)
        else:
            sql = f"""UPDATE jobs SET status = 'failed', error = ?, locked_by = NULL,
                          locked_until = NULL, finished_at = {_NOW}
                      WHERE {where}"""  # noqa: S608
            params = (error,)
        count = await self._write(sql, (*params, job_id, *extra))
        if retry and count:
            self._notify()
        return count == 1

    async def _insert_message(self, key: str, reply: Reply, job_id: int | None) -> bool:
        # The job is named only when it is the sending tenant's (see `Store.send_message`).
        cursor = await self.db.execute(
            f"""INSERT INTO outbound_messages (job_id, tenant_id, "to", message, idempotency_key)
                VALUES ((SELECT j.id FROM jobs AS j WHERE j.id = ? AND {_JOB_TENANT} = ?),
                        ?, ?, ?, ?)
                ON CONFLICT DO NOTHING""",  # noqa: S608 - constant SQL
            (job_id, reply.tenant_id, reply.tenant_id, reply.to, reply.message, key),
        )
        inserted = cursor.rowcount == 1
        await cursor.close()
        return inserted

    @_translated
    async def send_message(self, *, key: str, reply: Reply, job_id: int | None = None) -> bool:
        async with self._lock:
            return await self._insert_message(
                key, reply, job_id if job_id is not None else job_number(key)
            )

    @_translated
    async def job(self, job_id: int) -> JobRow | None:
        cursor = await self.db.execute(
            "SELECT id, payload, status, attempt, outcome, result, error FROM jobs WHERE id = ?",
            (job_id,),
        )
        row = await cursor.fetchone()
        await cursor.close()
        if row is None:
            return None
        return JobRow(
            int(row[0]), _loads(row[1]), row[2], int(row[3]), row[4], _loads(row[5]), row[6]
        )

    @_translated
    async def messages(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        sql = 'SELECT id, job_id, tenant_id, "to", message, created_at FROM outbound_messages'
        params: tuple[Any, ...] = ()
        if tenant_id is not None:
            sql += " WHERE tenant_id = ?"
            params = (tenant_id,)
        cursor = await self.db.execute(sql + " ORDER BY id", params)
        rows = await cursor.fetchall()
        await cursor.close()
        keys = ("id", "job_id", "tenant_id", "to", "message", "created_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- tenant-scoped engine tokens ---------------------------------------------------

    @_translated
    async def add_token(self, token_sha256: str, tenant_id: str) -> None:
        await self._write(
            "INSERT INTO engine_tokens (token_sha256, tenant_id) VALUES (?, ?)",
            (token_sha256, tenant_id),
        )

    @_translated
    async def token_tenant(self, token_sha256: str) -> str | None:
        cursor = await self.db.execute(
            "SELECT tenant_id FROM engine_tokens WHERE token_sha256 = ?", (token_sha256,)
        )
        row = await cursor.fetchone()
        await cursor.close()
        return str(row[0]) if row else None

    @_translated
    async def revoke_tokens(self, sha256_prefix: str) -> int:
        return await self._write(
            "DELETE FROM engine_tokens WHERE substr(token_sha256, 1, ?) = ?",
            (len(sha256_prefix), sha256_prefix),
        )

    @_translated
    async def tokens(self) -> list[TokenRow]:
        cursor = await self.db.execute(
            "SELECT token_sha256, tenant_id, created_at FROM engine_tokens"
            " ORDER BY created_at, token_sha256"
        )
        rows = await cursor.fetchall()
        await cursor.close()
        return [TokenRow(str(r[0]), str(r[1]), str(r[2])) for r in rows]
