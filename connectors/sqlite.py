"""SQLite sources: a read-only file, a small pool of connections, stoppable reads.

The database is opened as ``file:…?mode=ro`` with ``PRAGMA query_only=1``, so
even a statement that slipped past `prepare_sql` cannot write. The ``sqlite3``
module blocks, so every statement runs on a pooled connection, on one of the
pool's threads (`connectors.thread_pool`); when the caller's deadline passes
(or it is cancelled, or ``timeout_s`` runs out) the statement is interrupted,
and the connection goes back to the pool only once its thread has really
finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
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
from connectors.thread_pool import Lease, ThreadBackedPool

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


_Pool = ThreadBackedPool[sqlite3.Connection]
_Read = Lease[sqlite3.Connection]


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
                self._pool = ThreadBackedPool(
                    self.source_id,
                    len(conns),
                    kind="sqlite",
                    close_conn=sqlite3.Connection.close,
                    interrupt=sqlite3.Connection.interrupt,
                    conns=conns,
                )
            return self._pool

    async def _read(self, sql: str, args: tuple[Any, ...], *, timeout_s: float) -> _Rows:
        pool = await self._ensure_open()
        uri, max_rows = self._uri(), self.limits.max_rows

        def work(read: _Read) -> _Rows:
            if read.conn is None:  # a slot left empty by a read cut off at loop shutdown
                read.conn = _connect(uri)
            return _fetch(read.conn, read.stop, sql, args, max_rows)

        with self._translating():
            async with asyncio.timeout(timeout_s):  # waiting for a connection counts too
                # On a deadline, cancellation or error the statement is interrupted;
                # the connection rejoins the pool when the thread returns.
                return await pool.run(work)

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

    def _uri(self) -> str:
        path = self.resolve_path(self.settings.path).resolve()
        return f"{path.as_uri()}?mode=ro"

    def _connect_all(self) -> list[sqlite3.Connection]:
        path = self.resolve_path(self.settings.path).resolve()
        if not path.is_file():
            raise SourceUnavailable(
                self.source_id, f"the database file {self.settings.path!r} does not exist"
            )
        conns: list[sqlite3.Connection] = []
        try:
            for _ in range(self.settings.pool_size):
                conns.append(_connect(self._uri()))
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        return conns


def _connect(uri: str) -> sqlite3.Connection:
    """A read-only connection any thread may use."""
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = 1").close()
    except BaseException:
        conn.close()
        raise
    return conn


def _fetch(
    conn: sqlite3.Connection, stop: threading.Event, sql: str, args: tuple[Any, ...], max_rows: int
) -> _Rows:
    """Run one statement on the calling thread; stops when ``stop`` is set."""
    conn.set_progress_handler(stop.is_set, _PROGRESS_STEPS)
    try:
        if stop.is_set():
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
