"""The audit log (contract §8): one ``data_access_logs`` row per data access.

Rows are buffered in memory and written off the hot path, in batches, by one
background task; `AuditLog.close` writes what is left, so a clean shutdown
loses nothing. The customer is recorded masked (``+*******7890``) or as a keyed
hash (``hmac:…``), never as the raw phone number. The table lives in the
database named by ``audit: {dsn: …}`` or ``AUDIT_DSN``, else in the queue's
database, else in a SQLite file beside the tenant config.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["AuditLog", "AuditRow", "hourly_stats", "mask_identifier"]

log = logging.getLogger(__name__)

SCHEMA_POSTGRES = """
CREATE TABLE IF NOT EXISTS data_access_logs (
    id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    data_source_id VARCHAR(255),
    query_type VARCHAR(100),
    customer_identifier VARCHAR(255),
    accessed_at TIMESTAMPTZ DEFAULT NOW(),
    response_time_ms INTEGER,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS data_access_logs_recent ON data_access_logs (tenant_id, accessed_at);
"""

SCHEMA_SQLITE = """
CREATE TABLE IF NOT EXISTS data_access_logs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    data_source_id VARCHAR(255),
    query_type VARCHAR(100),
    customer_identifier VARCHAR(255),
    accessed_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    response_time_ms INTEGER,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS data_access_logs_recent ON data_access_logs (tenant_id, accessed_at);
"""

_COLUMNS = """data_access_logs (id, tenant_id, data_source_id, query_type,
                 customer_identifier, accessed_at, response_time_ms, outcome)"""
# One statement for a whole batch; a retried batch skips the rows it had written.
_INSERT_POSTGRES = f"""
INSERT INTO {_COLUMNS}
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::int[], $8::text[])
ON CONFLICT (id) DO NOTHING
"""  # noqa: S608 - constant SQL
_INSERT_SQLITE = f"INSERT INTO {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"  # noqa: S608

_BATCH = 1000
_FLUSH_S = 0.5


@dataclass(slots=True)
class AuditRow:
    tenant_id: str
    data_source_id: str | None
    query_type: str | None
    customer_identifier: str | None
    accessed_at: dt.datetime
    response_time_ms: int
    outcome: str
    #: given when the row is first written, so a retried batch cannot write it twice
    id: str = ""


def _give_ids(rows: list[AuditRow]) -> None:
    """Random (version 4) UUIDs for the rows that have none, from one read of the OS's RNG."""
    fresh = [r for r in rows if not r.id]
    pool = os.urandom(16 * len(fresh))
    for n, row in enumerate(fresh):
        row.id = str(uuid.UUID(bytes=pool[16 * n : 16 * n + 16], version=4))


def mask_identifier(
    raw: str | None, *, mode: Literal["masked", "hashed"] = "masked", key: bytes = b""
) -> str | None:
    """``+1234567890`` → ``+******7890`` (masked) or ``hmac:1f2e…`` (a keyed hash)."""
    if not raw:
        return None
    if mode == "hashed":
        digest = hmac.new(key or b"data-lookup-worker", raw.encode(), hashlib.sha256)
        return "hmac:" + digest.hexdigest()[:32]
    keep = 4 if len(raw) > 6 else 1
    prefix = "+" if raw.startswith("+") else ""
    body = raw.removeprefix("+")
    return prefix + re.sub(r"\S", "*", body[:-keep]) + body[-keep:]


class AuditLog:
    """Buffers rows and writes them in batches to PostgreSQL or SQLite."""

    def __init__(self, target: str, *, batch: int = _BATCH, flush_s: float = _FLUSH_S) -> None:
        self.target = target
        self.batch = batch
        self.flush_s = flush_s
        self._rows: asyncio.Queue[AuditRow] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._pg: Any = None
        self._ready = False

    @property
    def is_postgres(self) -> bool:
        return self.target.startswith(("postgres://", "postgresql://"))

    def __repr__(self) -> str:
        return "<AuditLog postgres>" if self.is_postgres else f"<AuditLog {self.target}>"

    async def open(self) -> None:
        if self._ready:
            return
        if self.is_postgres:
            import asyncpg

            self._pg = await asyncpg.create_pool(self.target, min_size=1, max_size=2)
            async with self._pg.acquire() as conn:
                await conn.execute(SCHEMA_POSTGRES)
        else:
            await asyncio.to_thread(self._sqlite_script, SCHEMA_SQLITE)
        self._ready = True
        self._task = asyncio.create_task(self._flusher(), name="audit-flusher")

    def record(self, row: AuditRow) -> None:
        """Queue one row; never blocks, never raises."""
        self._rows.put_nowait(row)

    async def close(self) -> None:
        """Stop the flusher and write everything still buffered."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        rows = self._take()
        for start in range(0, len(rows), self.batch):
            await self._write(rows[start : start + self.batch])
        if self._pg is not None:
            await self._pg.close()
            self._pg = None
        self._ready = False

    def _take(self, *first: AuditRow) -> list[AuditRow]:
        """Everything queued (after ``first``), each row with its id from now on.

        The id is what makes a row written twice (a retried or an interrupted
        write) be written once.
        """
        rows = list(first)
        while not self._rows.empty():
            rows.append(self._rows.get_nowait())
        _give_ids(rows)
        return rows

    async def _flusher(self) -> None:
        """Write what came in the last ``flush_s`` (in statements of ``batch`` rows), repeat.

        Everything queued is written each round, so the buffer cannot grow
        without bound however many lookups a second the worker answers.
        """
        while True:
            first = await self._rows.get()
            await asyncio.sleep(self.flush_s)
            pending = self._take(first)
            for start in range(0, len(pending), self.batch):
                rows = pending[start : start + self.batch]
                try:
                    await asyncio.shield(self._write(rows))
                except asyncio.CancelledError:
                    # close() writes what is queued: give back what this round has not
                    # written. The statement in flight goes on; its rows keep their ids,
                    # so whichever of the two writes comes second skips them.
                    for row in pending[start:]:
                        self._rows.put_nowait(row)
                    raise
                except Exception:  # the audit store is down: keep the rows, try again
                    log.exception("writing %d audit row(s) failed; retrying", len(rows),
                                  extra={"action": "audit"})  # fmt: skip
                    for row in pending[start:]:
                        self._rows.put_nowait(row)
                    await asyncio.sleep(1)
                    break

    async def _write(self, rows: list[AuditRow]) -> None:
        if not rows:
            return
        values = [
            (r.id, r.tenant_id, r.data_source_id, r.query_type, r.customer_identifier,
             r.accessed_at, r.response_time_ms, r.outcome)
            for r in rows
        ]  # fmt: skip
        if self._pg is not None:
            columns = [list(c) for c in zip(*values, strict=True)]
            async with self._pg.acquire() as conn:
                await conn.execute(_INSERT_POSTGRES, *columns)
        else:
            stamped = [(*v[:5], _iso(v[5]), *v[6:]) for v in values]
            await asyncio.to_thread(self._sqlite_many, _INSERT_SQLITE, stamped)

    def _sqlite_script(self, script: str) -> None:
        Path(self.target).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.target, timeout=30)) as db, db:
            db.executescript(script)

    def _sqlite_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with contextlib.closing(sqlite3.connect(self.target, timeout=30)) as db, db:
            db.executemany(sql, rows)


def _iso(moment: dt.datetime) -> str:
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


async def hourly_stats(target: str, tenant_id: str, since: dt.timedelta) -> list[dict[str, Any]]:
    """The seed's monitoring query: average response time and count per source per hour."""
    if target.startswith(("postgres://", "postgresql://")):
        import asyncpg

        conn = await asyncpg.connect(target)
        try:
            rows = await conn.fetch(
                """SELECT data_source_id, date_trunc('hour', accessed_at) AS hour,
                          avg(response_time_ms)::float AS avg_response_time,
                          count(*) AS query_count
                   FROM data_access_logs
                   WHERE tenant_id = $1 AND accessed_at >= now() - $2::interval
                   GROUP BY data_source_id, hour ORDER BY hour, data_source_id""",
                tenant_id,
                since,
            )
        finally:
            await conn.close()
        return [
            {**dict(r), "hour": r["hour"].isoformat(), "query_count": int(r["query_count"])}
            for r in rows
        ]
    return await asyncio.to_thread(_sqlite_stats, target, tenant_id, since)


def _sqlite_stats(path: str, tenant_id: str, since: dt.timedelta) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    cutoff = _iso(dt.datetime.now(dt.UTC) - since)
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        rows = db.execute(
            """SELECT data_source_id, strftime('%Y-%m-%dT%H:00:00+00:00', accessed_at) AS hour,
                      avg(response_time_ms), count(*)
               FROM data_access_logs WHERE tenant_id = ? AND accessed_at >= ?
               GROUP BY data_source_id, hour ORDER BY hour, data_source_id""",
            (tenant_id, cutoff),
        ).fetchall()
    keys = ("data_source_id", "hour", "avg_response_time", "query_count")
    return [dict(zip(keys, r, strict=True)) for r in rows]
