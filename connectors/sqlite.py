"""SQLite sources: a read-only file, a small pool of connections, stoppable reads.

The database is opened as ``file:…?mode=ro`` with ``PRAGMA query_only=1``, so
even a statement that slipped past `prepare_sql` cannot write. The ``sqlite3``
module blocks, so every statement runs in ``asyncio.to_thread`` on a pooled
connection; when the caller's deadline passes (or it is cancelled, or
``timeout_s`` runs out) the statement is interrupted, and the connection goes
back to the pool only once its thread has really finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
    PreparedQuery,
    ReadResult,
    SourceTimeout,
    SourceUnavailable,
    jsonable,
)
from connectors.sql import SQLSpec, prepare_sql

__all__ = ["SQLiteConnector", "SQLiteSettings"]

#: SQLite VM steps between two looks at the stop flag (about a millisecond of work).
#: Each look takes the GIL: looking much more often lets a few busy reads starve
#: the event loop (measured: 1,000 steps held other lookups up by a second).
_PROGRESS_STEPS = 200_000
_HEALTH_TIMEOUT_S = 10.0

_Rows = list[dict[str, Any]]


class SQLiteSettings(ConnectionSettings):
    """``connection`` of a ``sqlite`` source."""

    #: the database file, relative to the tenant config's folder
    path: str = Field(min_length=1)
    #: connections kept open; one read uses one at a time
    pool_size: int = Field(default=4, ge=1, le=64)


@dataclass(eq=False)
class _Read:
    """One statement in flight on one pooled connection."""

    conn: sqlite3.Connection
    stop: threading.Event = field(default_factory=threading.Event)

    def interrupt(self) -> None:
        # `interrupt()` stops a running statement at once; the flag covers the
        # moment before the thread has started it, which `interrupt()` misses.
        self.stop.set()
        self.conn.interrupt()


class _Pool:
    """Idle connections in a queue; reads in flight kept until their thread ends."""

    def __init__(self, source_id: str, conns: list[sqlite3.Connection]) -> None:
        self.source_id = source_id
        self.conns = conns
        self.idle: asyncio.Queue[sqlite3.Connection | None] = asyncio.Queue()
        for conn in conns:
            self.idle.put_nowait(conn)
        self.in_flight: dict[asyncio.Task[_Rows], _Read] = {}
        self.closed = False

    async def acquire(self) -> sqlite3.Connection:
        conn = await self.idle.get()
        if self.closed or conn is None:
            self.idle.put_nowait(conn)  # pass the news on to the next waiter
            raise SourceUnavailable(self.source_id, "the source was closed")
        return conn

    def start(
        self, read: _Read, sql: str, args: tuple[Any, ...], max_rows: int
    ) -> asyncio.Task[_Rows]:
        task = asyncio.create_task(
            asyncio.to_thread(_fetch, read, sql, args, max_rows),
            name=f"sqlite-read:{self.source_id}",
        )
        self.in_flight[task] = read
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[_Rows]) -> None:
        read = self.in_flight.pop(task)
        if task.cancelled():
            # Only the event loop shutting down cancels these; the thread may
            # still be using the connection, so it is not handed out again.
            read.interrupt()
            return
        task.exception()  # retrieved here: the caller may have left on its deadline
        if self.closed:
            read.conn.close()
        else:
            self.idle.put_nowait(read.conn)

    async def close(self) -> None:
        self.closed = True  # from here on `acquire` hands out nothing
        self.idle.put_nowait(None)  # wakes whoever waits for a connection
        busy = {read.conn for read in self.in_flight.values()}
        for conn in self.conns:
            if conn not in busy:
                conn.close()
        for read in self.in_flight.values():
            read.interrupt()
        if self.in_flight:
            # Each closes its connection as its thread returns (`_finished`).
            # `wait`, not `gather`: being cancelled here must not cancel the reads.
            await asyncio.wait(list(self.in_flight))


class SQLiteConnector(Connector):
    """A SQLite database file, opened read-only."""

    type_name: ClassVar[str] = "sqlite"
    Settings: ClassVar[type[ConnectionSettings]] = SQLiteSettings
    query_shape: ClassVar[str] = "SQL with $1…$n placeholders"
    sql_dialect = "sqlite"

    settings: SQLiteSettings

    def setup(self) -> None:
        self._pool: _Pool | None = None
        self._opening = asyncio.Lock()

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if isinstance(raw, Mapping):
            if set(raw) != {"sql"}:
                raise ConfigError('a sqlite query is SQL text, or {"sql": "SELECT …"}')
            raw = raw["sql"]
        if not isinstance(raw, str):
            raise ConfigError("a sqlite query must be SQL text")
        return prepare_sql(raw, style="qmark_numbered", dialect="sqlite")

    async def open(self) -> None:
        await self._ensure_open()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def health_check(self) -> None:
        await self._read("SELECT 1", (), timeout_s=_HEALTH_TIMEOUT_S)

    async def describe(self, query: PreparedQuery, *, timeout_s: float) -> tuple[str, ...]:
        """The names of the columns ``query`` returns. SQLite cannot describe without
        stepping, so this compiles ``SELECT * FROM (<query>) LIMIT 0`` with NULL for
        every ``$n`` on a read-only connection of its own: it ends before the first row."""
        if not isinstance(query.spec, SQLSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        # A checked single read (`prepare_sql`), on its own lines so a trailing comment stays one.
        sql = f"SELECT * FROM (\n{query.spec.text}\n) LIMIT 0"  # noqa: S608
        path = self.resolve_path(self.settings.path).resolve()
        deadline = time.monotonic() + timeout_s
        with self._translating():
            async with asyncio.timeout(timeout_s):
                args = (None,) * query.positional
                return await asyncio.to_thread(_columns, path, sql, args, deadline)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, SQLSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        if len(bound.args) < query.positional:
            raise self.fail(
                f"the query takes {query.positional} argument(s), {len(bound.args)} were bound"
            )
        args = tuple(_sql_value(v) for v in spec.arguments(bound.args))
        rows = await self._read(spec.text, args, timeout_s=timeout_s)
        return ReadResult.of_rows(self.cap_rows(rows))

    async def _ensure_open(self) -> _Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                with self._translating(opening=True):
                    conns = await asyncio.to_thread(self._connect_all)
                self._pool = _Pool(self.source_id, conns)
            return self._pool

    async def _read(self, sql: str, args: tuple[Any, ...], *, timeout_s: float) -> _Rows:
        pool = await self._ensure_open()
        with self._translating():
            async with asyncio.timeout(timeout_s):  # waiting for a connection counts too
                read = _Read(await pool.acquire())
                task = pool.start(read, sql, args, self.limits.max_rows)
                try:
                    return await asyncio.shield(task)
                except BaseException:
                    # Deadline, cancellation or error: whatever still runs must stop.
                    # The connection rejoins the pool when the thread returns.
                    if not task.done():
                        read.interrupt()
                    raise

    @contextlib.contextmanager
    def _translating(self, *, opening: bool = False) -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place."""
        try:
            yield
        except TimeoutError as exc:
            message = "the query passed its deadline and was stopped"
            raise SourceTimeout(self.source_id, message) from exc
        except sqlite3.Error as exc:
            if opening:
                raise SourceUnavailable(
                    self.source_id, f"cannot open the database file {self.settings.path!r}: {exc}"
                ) from exc
            raise self.fail(f"sqlite: {exc}") from exc

    def _connect_all(self) -> list[sqlite3.Connection]:
        path = self.resolve_path(self.settings.path).resolve()
        if not path.is_file():
            raise SourceUnavailable(
                self.source_id, f"the database file {self.settings.path!r} does not exist"
            )
        uri = f"{path.as_uri()}?mode=ro"
        conns: list[sqlite3.Connection] = []
        try:
            for _ in range(self.settings.pool_size):
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
                conns.append(conn)
                conn.execute("PRAGMA query_only = 1").close()
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        return conns


def _fetch(read: _Read, sql: str, args: tuple[Any, ...], max_rows: int) -> _Rows:
    """Run one statement on the calling thread; stops when ``read.stop`` is set."""
    conn = read.conn
    conn.set_progress_handler(read.stop.is_set, _PROGRESS_STEPS)
    try:
        if read.stop.is_set():
            raise sqlite3.OperationalError("interrupted")
        cursor = conn.execute(sql, args)
        try:
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchmany(max_rows)]
        finally:
            cursor.close()
    finally:
        conn.set_progress_handler(None, 0)


def _columns(path: Path, sql: str, args: tuple[None, ...], deadline: float) -> tuple[str, ...]:
    """The result columns of ``sql``, on a read-only connection that stops at ``deadline``."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = 1").close()
        conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
        cursor = conn.execute(sql, args)
        names = tuple(column[0] for column in cursor.description or ())
        cursor.close()
        return names
    finally:
        conn.close()


def _sql_value(value: Any) -> Any:
    """A parameter as a type sqlite3 binds; anything else is bound as its text."""
    if value is None or isinstance(value, str | int | float | bytes):
        return value
    return str(jsonable(value))
