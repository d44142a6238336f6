"""The audit log (contract §8): one ``data_access_logs`` row per data access.

Rows are buffered in memory and written off the hot path, in batches, by one
background task. A row leaves the buffer only once it is stored, and
`AuditLog.close` writes what is left, so a clean stop (or SIGTERM) loses
nothing; a kill -9 loses at most the rows of the last flush window (``flush_s``,
0.5 s) and of the write in flight. On the direct PostgreSQL queue with the table
in the queue's database, a job's row is written in the statement that marks the
job done instead, so a kill -9 loses none (`PostgresStore.carry_audit`).

The customer is recorded masked (``+*******7890``) or as a keyed hash
(``hmac:…``), never as the raw phone number. The table lives in the database
named by ``audit: {dsn: …}`` or ``AUDIT_DSN``, else in the queue's database,
else in a SQLite file beside the tenant config. A table that already exists is
written as it is (`AuditTable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.audit_table import (
    COLUMNS,
    SCHEMA_POSTGRES,
    SCHEMA_SQLITE_TABLE,
    SQLITE_INDEX,
    AuditRow,
    AuditTable,
    give_ids,
    iso_utc,
    mask_identifier,
    postgres_columns,
    tenant_uuid,
)
from worker.retry import backoff_s
from worker.settings import Settings
from worker.supervisor import watch

__all__ = [
    "COLUMNS",
    "AuditLog",
    "AuditRow",
    "AuditTable",
    "hourly_stats",
    "lookup_stats",
    "mask_identifier",
    "postgres_columns",
    "tenant_uuid",
]

log = logging.getLogger(__name__)

_BATCH = 1000
_FLUSH_S = 0.5
#: How long a row may wait for its job's completion to carry it before the buffer takes it.
_HOLD_S = 5.0
#: How long `AuditLog.close` keeps trying a store that refuses rows.
_CLOSE_S = 10.0
#: Retries of a refusing store: capped exponential back-off.
_RETRY_FIRST_S = 0.5
_RETRY_CAP_S = 10.0
#: After the store refused rows carried by completions, they go through the buffer this long.
_CARRY_COOLDOWN_S = 60.0
#: The same error is logged again at most this often while the store keeps refusing.
_RELOG_S = 60.0


class AuditLog:
    """Buffers rows and writes them in batches to PostgreSQL or SQLite.

    A row is taken off the buffer only once a write has stored it, so a stop
    during a write or a back-off loses nothing: `close` writes what is left
    (trying a refusing store for ``close_s``). A store that refuses rows (down,
    a constraint) is logged once and retried with back-off; rows wait in memory.

    ``with_completion``: the table lives in the direct queue's PostgreSQL
    database, so the row of a job the store completes travels in the statement
    that marks the job done (see `PostgresStore.carry_audit`). `record` then
    holds the row for the completion; `settle` drops it when the completion
    stored it and buffers it otherwise. A held row nobody settles (a push
    webhook's) is buffered after ``hold_s``: the write skips a row already
    stored, by its id.
    """

    def __init__(
        self,
        target: str,
        *,
        batch: int = _BATCH,
        flush_s: float = _FLUSH_S,
        with_completion: bool = False,
        hold_s: float = _HOLD_S,
        close_s: float = _CLOSE_S,
        pool_mode: str | None = None,
    ) -> None:
        self.target = target
        #: a PostgreSQL pool's ``QUEUE_POOL_MODE`` (`Settings.pool_mode`; None: load it)
        self.pool_mode = pool_mode
        self.batch = batch
        self.flush_s = flush_s
        self.with_completion = with_completion
        self.hold_s = hold_s
        self.close_s = close_s
        self.table: AuditTable | None = None
        self._pending: list[AuditRow] = []
        self._held: dict[str, tuple[AuditRow, float]] = {}
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pg: Any = None
        self._insert = ""
        self._carry_off_until = 0.0
        self._failing: _Failing | None = None

    @property
    def is_postgres(self) -> bool:
        return self.target.startswith(("postgres://", "postgresql://"))

    @property
    def pending(self) -> int:
        """Rows recorded and not yet written (held ones included)."""
        return len(self._pending) + len(self._held)

    def __repr__(self) -> str:
        return "<AuditLog postgres>" if self.is_postgres else f"<AuditLog {self.target}>"

    async def open(self) -> None:
        """Find (or create) the table and start the flusher.

        A store that does not answer is logged, not raised: rows wait in memory
        and the flusher keeps trying, so an audit outage never stops answers.
        """
        if self._task is not None:
            return
        self._closing = asyncio.Event()
        try:
            await self._prepare()
        except Exception as exc:
            self._note_failure(exc, 0)
        # It ends only when close() asks it to: an exception from it stops the worker.
        self._task = watch(asyncio.create_task(self._flusher(), name="audit-flusher"), may_end=True)

    def record(self, row: AuditRow) -> None:
        """Queue one row (or hold it for its job's completion); never blocks, never raises."""
        if self._carrying():
            if not row.id:
                row.id = str(uuid.uuid4())
            self._held[row.id] = (row, time.monotonic() + self.hold_s)
        else:
            self._pending.append(row)
        self._wake.set()

    def holding(self, row: AuditRow | None) -> bool:
        """True when ``row`` waits for its job's completion to carry it."""
        return row is not None and row.id in self._held

    def settle(self, row: AuditRow) -> None:
        """After the completion: forget the row if it was stored with it, else buffer it."""
        if self._held.pop(row.id, None) is not None and not row.stored:
            self._pending.append(row)
            self._wake.set()

    def refused(self, exc: BaseException) -> None:
        """The store refused rows carried by completions: buffer rows for a while, say so once."""
        first = time.monotonic() >= self._carry_off_until
        self._carry_off_until = time.monotonic() + _CARRY_COOLDOWN_S
        if first:
            log.warning(
                "the audit table refused rows written with job completions (%s: %s); "
                "completing the jobs without them, their rows go through the audit buffer",
                type(exc).__name__,
                exc,
                extra={"action": "audit"},
            )

    def _carrying(self) -> bool:
        return (
            self.with_completion
            and self.table is not None
            and time.monotonic() >= self._carry_off_until
        )

    async def close(self) -> None:
        """Write everything recorded, trying a refusing store for ``close_s``; stop the flusher."""
        task, self._task = self._task, None
        if task is not None:
            self._closing.set()
            self._wake.set()
            done, _ = await asyncio.wait([task], timeout=self.close_s)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled() and task.exception() is not None:
                log.error("the audit flusher died: %r", task.exception(), extra={"action": "audit"})
        if self.pending:
            log.error(
                "%d audit row(s) could not be written before the worker stopped: %s",
                self.pending,
                self._failing.error if self._failing else "the audit store did not answer",
                extra={"action": "audit", "rows": self.pending},
            )
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pg.close(), timeout=5)
            self._pg = None

    async def _flusher(self) -> None:
        """Write what came in the last ``flush_s`` (in statements of ``batch`` rows), repeat.

        Everything buffered is written each round, so the buffer cannot grow
        without bound however many lookups a second the worker answers. On
        close, the wait is skipped and the loop ends once nothing is left.
        """
        attempt = 0
        while True:
            await self._wait_for_rows()
            if not self._closing.is_set():
                await self._pause(self.flush_s)
            self._release_held(everything=self._closing.is_set())
            try:
                await self._write_pending()
            except Exception as exc:  # the store refused: keep the rows, try again
                attempt += 1
                self._note_failure(exc, len(self._pending))
                delay = backoff_s(attempt - 1, first_s=_RETRY_FIRST_S, cap_s=_RETRY_CAP_S)
                if self._closing.is_set():  # closing: keep trying for close_s, without spinning
                    await asyncio.sleep(min(delay, _RETRY_FIRST_S))
                else:
                    await self._pause(delay)
                continue
            attempt = 0
            self._note_recovery()
            if self._closing.is_set() and not self.pending:
                return

    async def _wait_for_rows(self) -> None:
        """Until rows are buffered, a held row is due, or close() is called."""
        while not self._pending and not self._closing.is_set():
            self._wake.clear()
            due = next(iter(self._held.values()), None)
            if due is not None and due[1] <= time.monotonic():
                return
            timeout = None if due is None else due[1] - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless close() is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    def _release_held(self, *, everything: bool) -> None:
        now = time.monotonic()
        for key, (row, due) in list(self._held.items()):
            if not everything and due > now:
                break  # held in order: the rest are later still
            del self._held[key]
            self._pending.append(row)

    async def _write_pending(self) -> None:
        """Write the rows buffered when the round began, front to back; a row leaves the
        buffer only once it is stored.

        Rows recorded while a write is in flight wait for the next round: a busy worker
        that wrote until the buffer was empty never paused, and wrote a few rows at a
        time (a connection, a commit and its fsync each) instead of one batch every
        ``flush_s`` — a tenth of a millisecond of CPU per lookup on the SQLite log.
        """
        left = len(self._pending)
        while left > 0:
            rows = self._pending[: min(self.batch, left)]
            give_ids(rows)
            await self._write(rows)
            del self._pending[: len(rows)]
            left -= len(rows)

    def _note_failure(self, exc: BaseException, rows: int) -> None:
        error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        failing = self._failing
        if failing is None:
            self._failing = failing = _Failing(error, now, now)
        elif failing.error == error and now - failing.logged < _RELOG_S:
            return
        failing.error, failing.logged = error, now
        log.warning(
            "the audit store refused %d row(s) (%s); keeping them and retrying",
            rows,
            error,
            extra={"action": "audit", "rows": rows},
        )

    def _note_recovery(self) -> None:
        if self._failing is not None:
            log.info(
                "the audit store takes rows again after %.1f s",
                time.monotonic() - self._failing.since,
                extra={"action": "audit"},
            )
            self._failing = None

    async def _prepare(self) -> None:
        """Connect, create the table if there is none, and learn the shape of the one there is."""
        if self.table is not None:
            return
        if self.is_postgres:
            import asyncpg

            from connectors.network import plain_on_loopback
            from worker.stores.postgres import pool_options

            if self._pg is None:
                # Opened lazily and closed when idle, like the queue's pool: an idle
                # worker keeps no connection for an audit log it is not writing.
                mode = self.pool_mode or Settings.load().pool_mode()
                self._pg = await asyncpg.create_pool(
                    self.target,
                    ssl=plain_on_loopback(self.target),
                    max_size=2,
                    command_timeout=30,
                    **pool_options(mode),
                )
            async with self._pg.acquire() as conn:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('data_access_logs'))")
                    if not await postgres_columns(conn):
                        await conn.execute(SCHEMA_POSTGRES)
                declared = await postgres_columns(conn)
            table = AuditTable.postgres(declared)
            self._insert = table.insert_postgres()
        else:
            declared = await asyncio.to_thread(self._sqlite_prepare)
            table = AuditTable.sqlite(declared)
            self._insert = table.insert_sqlite()
        self.table = table

    async def _write(self, rows: list[AuditRow]) -> None:
        if not rows:
            return
        await self._prepare()
        table = self.table
        if table is None:  # _prepare sets it or raises
            raise RuntimeError("the audit table is not known")
        if self._pg is not None:
            async with self._pg.acquire() as conn:
                await conn.execute(self._insert, *table.arrays(rows))
        else:
            await asyncio.to_thread(self._sqlite_many, self._insert, table.tuples(rows))

    def _sqlite_prepare(self) -> dict[str, str]:
        import sqlite3  # only an audit log in SQLite loads it (a PostgreSQL one never does)

        Path(self.target).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.target, timeout=30)) as db, db:
            db.executescript(SCHEMA_SQLITE_TABLE)
            declared = {
                str(r[1]): str(r[2]) for r in db.execute("PRAGMA table_info(data_access_logs)")
            }
            if {"tenant_id", "accessed_at"} <= set(declared):
                db.execute(SQLITE_INDEX)
        return declared

    def _sqlite_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        import sqlite3

        batch = json.dumps(rows)
        with contextlib.closing(sqlite3.connect(self.target, timeout=30)) as db, db:
            db.execute(sql, (batch,))


@dataclass
class _Failing:
    """The audit store's current refusal: what it says, since when, when it was last logged."""

    error: str
    since: float
    logged: float


async def hourly_stats(
    target: str, tenant_id: str, since: dt.timedelta, *, tenant: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    """The seed's monitoring query: average response time and count per source per hour.

    ``tenant``: the config's ``tenant_uuid``, for a table whose ``tenant_id`` is a UUID.
    """
    if target.startswith(("postgres://", "postgresql://")):
        return await _postgres_stats(target, tenant_id, since, tenant)
    return await asyncio.to_thread(_sqlite_stats, target, tenant_id, since, tenant)


async def _postgres_stats(
    target: str, tenant_id: str, since: dt.timedelta, tenant: uuid.UUID | None
) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(target)
    try:
        declared = await postgres_columns(conn)
        if "tenant_id" not in declared:
            return []
        key: Any = tenant_id
        if declared["tenant_id"] == "uuid":
            key = tenant_uuid(tenant_id, tenant)
        rows = await conn.fetch(
            f"""SELECT data_source_id, date_trunc('hour', accessed_at) AS hour,
                       avg(response_time_ms)::float AS avg_response_time,
                       count(*) AS query_count
                FROM data_access_logs
                WHERE tenant_id = $1::{"uuid" if isinstance(key, uuid.UUID) else "text"}
                  AND accessed_at >= now() - $2::interval
                GROUP BY data_source_id, hour ORDER BY hour, data_source_id""",  # noqa: S608
            key,
            since,
        )
    finally:
        await conn.close()
    return [
        {**dict(r), "hour": r["hour"].isoformat(), "query_count": int(r["query_count"])}
        for r in rows
    ]


def _sqlite_stats(
    path: str, tenant_id: str, since: dt.timedelta, tenant: uuid.UUID | None
) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    import sqlite3

    cutoff = iso_utc(dt.datetime.now(dt.UTC) - since)
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        if not db.execute("PRAGMA table_info(data_access_logs)").fetchall():
            return []
        rows = db.execute(
            """SELECT data_source_id, strftime('%Y-%m-%dT%H:00:00+00:00', accessed_at) AS hour,
                      avg(response_time_ms), count(*)
               FROM data_access_logs WHERE tenant_id IN (?, ?) AND accessed_at >= ?
               GROUP BY data_source_id, hour ORDER BY hour, data_source_id""",
            (tenant_id, str(tenant_uuid(tenant_id, tenant)), cutoff),
        ).fetchall()
    keys = ("data_source_id", "hour", "avg_response_time", "query_count")
    return [dict(zip(keys, r, strict=True)) for r in rows]


# -- per lookup: outcomes and p95 (`worker stats`) --------------------------

#: The 95th percentile by nearest rank (PostgreSQL's ``percentile_disc(0.95)``), in SQL
#: that PostgreSQL and SQLite both run: the ⌈0.95·n⌉-th fastest time of each lookup.
_P95 = """
SELECT query_type, response_time_ms FROM (
    SELECT query_type, response_time_ms,
           row_number() OVER (PARTITION BY query_type ORDER BY response_time_ms) AS rank,
           count(*) OVER (PARTITION BY query_type) AS n
    FROM data_access_logs WHERE {where} AND response_time_ms IS NOT NULL
) ranked WHERE rank = (95 * n + 99) / 100
"""
_TOTALS = """
SELECT query_type, count(*), avg(response_time_ms) FROM data_access_logs
WHERE {where} GROUP BY query_type
"""
_OUTCOMES = """
SELECT query_type, outcome, count(*) FROM data_access_logs
WHERE {where} GROUP BY query_type, outcome
"""


async def lookup_stats(
    target: str, tenant_id: str, since: dt.timedelta, *, tenant: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    """Per lookup (``query_type``): how many, their outcomes, average and p95 time.

    ``outcomes`` is None for a table in the seed's shape, which has no ``outcome``.
    """
    if target.startswith(("postgres://", "postgresql://")):
        found = await _postgres_lookup_rows(target, tenant_id, since, tenant)
    else:
        found = await asyncio.to_thread(_sqlite_lookup_rows, target, tenant_id, since, tenant)
    return _lookup_summaries(*found)


_Rows = Sequence[Sequence[Any]]


def _lookup_summaries(totals: _Rows, outcomes: _Rows | None, p95: _Rows) -> list[dict[str, Any]]:
    slowest = {r[0]: r[1] for r in p95}
    by_lookup: dict[Any, dict[str, int]] = {}
    for query_type, outcome, count in outcomes or ():
        by_lookup.setdefault(query_type, {})[outcome or "unknown"] = int(count)
    rows = [
        {
            "query_type": query_type,
            "query_count": int(count),
            "outcomes": by_lookup.get(query_type, {}) if outcomes is not None else None,
            "avg_response_time": None if avg is None else float(avg),
            "p95_response_time": slowest.get(query_type),
        }
        for query_type, count, avg in totals
    ]
    return sorted(rows, key=lambda r: (r["query_type"] is None, r["query_type"] or ""))


async def _postgres_lookup_rows(
    target: str, tenant_id: str, since: dt.timedelta, tenant: uuid.UUID | None
) -> tuple[_Rows, _Rows | None, _Rows]:
    import asyncpg

    conn = await asyncpg.connect(target)
    try:
        declared = await postgres_columns(conn)
        if "tenant_id" not in declared:
            return [], None, []
        key: Any = tenant_id
        if declared["tenant_id"] == "uuid":
            key = tenant_uuid(tenant_id, tenant)
        cast = "uuid" if isinstance(key, uuid.UUID) else "text"
        where = f"tenant_id = $1::{cast} AND accessed_at >= now() - $2::interval"
        totals = await conn.fetch(_TOTALS.format(where=where), key, since)
        outcomes = None
        if "outcome" in declared:
            outcomes = await conn.fetch(_OUTCOMES.format(where=where), key, since)
        p95 = await conn.fetch(_P95.format(where=where), key, since)
    finally:
        await conn.close()
    return totals, outcomes, p95


def _sqlite_lookup_rows(
    path: str, tenant_id: str, since: dt.timedelta, tenant: uuid.UUID | None
) -> tuple[_Rows, _Rows | None, _Rows]:
    if not Path(path).exists():
        return [], None, []
    import sqlite3

    where = "tenant_id IN (?, ?) AND accessed_at >= ?"
    args = (
        tenant_id,
        str(tenant_uuid(tenant_id, tenant)),
        iso_utc(dt.datetime.now(dt.UTC) - since),
    )
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(data_access_logs)")}
        if "tenant_id" not in columns:
            return [], None, []
        totals = db.execute(_TOTALS.format(where=where), args).fetchall()
        outcomes = None
        if "outcome" in columns:
            outcomes = db.execute(_OUTCOMES.format(where=where), args).fetchall()
        p95 = db.execute(_P95.format(where=where), args).fetchall()
    return totals, outcomes, p95
