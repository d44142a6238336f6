"""SQL Server sources through pymssql (FreeTDS's db-lib), run off the event loop.

Queries are SQL with ``$1…$n`` placeholders, as for every SQL source. pymssql
blocks, so each statement runs on one of the source's own ``pool_size``
threads, on a connection from a small pool (a stack of ``pool_size`` slots,
each an open connection or an empty slot that connects when it is used).

What is enforced, and what is not — SQL Server has no session-wide
read-only flag like PostgreSQL's ``default_transaction_read_only``:

- `prepare` accepts one read statement only (`prepare_sql`: SELECT/WITH…, no
  INSERT/UPDATE/DELETE/MERGE/EXEC/…; `NotARead` at load time).
- Every read runs inside a transaction that is always rolled back
  (``autocommit`` off, ``ROLLBACK`` after the rows are fetched), at ``READ
  COMMITTED``, so a data change that slipped past `prepare` is undone. Side
  effects outside a transaction (some DDL, ``xp_`` procedures) are not: the
  login must be read-only too (``db_datareader`` only, no ``db_owner``) —
  that is the real guarantee, and the config example says so.
- The login asks for ``ApplicationIntent=ReadOnly`` (``read_only_intent``):
  behind an availability-group listener with read-only routing that sends
  the session to a readable secondary, which refuses writes; on a single
  server it changes nothing.

Parameters: pymssql has no server-side parameters for plain statements; it
quotes each value into the statement (``N'…'`` with quotes doubled, numbers as
numbers). `render_sql` does the same with the driver's own quoting
(``_mssql.quote_data``), placing values only where `prepare_sql` put a
placeholder — pymssql's own substitution would also replace a ``%s`` or
``%d`` written inside a string literal, and keeps ``%%`` doubled.

Deadline: pymssql's query ``timeout`` (whole seconds, rounded up from
``timeout_s``) makes FreeTDS cancel the statement on the server when it
passes; the connection is then closed, never reused. FreeTDS keeps that
timeout (and the login timeout) for the whole process, not per connection:
each read sets it before it runs, so two reads with different deadlines at
the same moment share the last one set. The caller's own deadline
(`asyncio.timeout`) is exact either way. An unreachable server fails within
``login_timeout_s`` (at most ``timeout_s``) as `SourceUnavailable`.

A pooled connection found dead (the server restarted) is replaced and the
read tried once more on a fresh one; reads are rolled back, so a retry is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import pymssql
from pydantic import ConfigDict, Field, model_validator
from pymssql import _mssql

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
    PreparedQuery,
    ReadResult,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    jsonable,
)
from connectors.network import NetworkAccess, SSHSettings
from connectors.sql import SQLConnectionSettings, SQLSpec, prepare_sql
from connectors.thread_pool import Lease, ThreadBackedPool
from worker.errors import InputRefused

__all__ = [
    "SQLServerConnector",
    "SQLServerSettings",
    "SQLServerTarget",
    "error_numbers",
    "render_sql",
    "translate_error",
]

_HEALTH_TIMEOUT_S = 10.0
_APP_NAME = "data-lookup-worker"
#: connections a quiet pool keeps open (the others close after ``pool_idle_s`` unused)
_KEEP_IDLE = 1
_DSN_SCHEMES = ("mssql", "sqlserver", "mssql+pymssql")

# pymssql's defaults, plus the isolation level every read runs at.
_SESSION_SETTINGS = (
    "SET ARITHABORT ON;"
    "SET CONCAT_NULL_YIELDS_NULL ON;"
    "SET ANSI_NULLS ON;"
    "SET ANSI_NULL_DFLT_ON ON;"
    "SET ANSI_PADDING ON;"
    "SET ANSI_WARNINGS ON;"
    "SET CURSOR_CLOSE_ON_COMMIT ON;"
    "SET QUOTED_IDENTIFIER ON;"
    "SET TEXTSIZE 2147483647;"
    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED;"
)

# SQL Server and FreeTDS message numbers.
_AUTH_FAILED = frozenset({18456, 18452, 18486, 18487, 18488})
_CANNOT_OPEN_DATABASE = 4060
_TIMED_OUT = 20003
# a value the server cannot convert (the customer's): conversion failed, out of range,
# overflow, no such date. The source is fine: `InputRefused`.
_VALUE_REFUSED = frozenset({220, 232, 241, 242, 245, 248, 517, 8114, 8115, 8134})
# connection refused / lost / unknown host, from FreeTDS's db-lib
_CONNECTION_FAILED = frozenset({20002, 20004, 20006, 20008, 20009, 20012, 20017, 20047})
# a connection that was fine once and is gone now (the server restarted)
_CONNECTION_LOST = frozenset({20004, 20006, 20017, 20047})
_MESSAGE_NUMBERS = re.compile(rb"message (\d+)")

_Rows = list[dict[str, Any]]


class _LoginError(Exception):
    """pymssql.connect failed: whatever the number, the source is not there for us."""

    def __init__(self, error: pymssql.Error) -> None:
        super().__init__(type(error).__name__)
        self.error = error


# -- settings -------------------------------------------------------------------


@dataclass(frozen=True)
class SQLServerTarget:
    """Where and as whom to log in, from the fields or the dsn."""

    host: str
    port: int
    database: str | None
    username: str | None
    password: str | None = field(repr=False)


class SQLServerSettings(SQLConnectionSettings):
    """``connection`` of a ``sqlserver`` source: host/port/… or one ``dsn``."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    # A dsn is mssql://user:password@host:1433/database.
    port: int = Field(default=1433, ge=1, le=65535)
    #: connections, and threads: each connection has its own
    pool_size: int = Field(default=25, ge=1, le=64)
    #: the TDS protocol version: 7.4 for SQL Server 2012 and later and Azure SQL,
    #: 7.3 for 2008, 7.2 for 2005; None lets FreeTDS try versions in turn, which
    #: makes a login to a silent host take several login timeouts
    tds_version: Literal["7.0", "7.1", "7.2", "7.3", "7.4"] | None = "7.4"
    #: how long to wait for the login (never longer than the read's deadline)
    login_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: log in with ApplicationIntent=ReadOnly (see the module docstring)
    read_only_intent: bool = True
    #: an SSH bastion in front of the server (connectors.network); TLS to SQL Server is
    #: FreeTDS's own (its ``encryption`` setting in freetds.conf), not an ``ssl`` block
    ssh: SSHSettings | None = None

    @model_validator(mode="after")
    def _host_or_dsn(self) -> SQLServerSettings:
        if self.dsn is None:
            if self.host is None:
                raise ValueError("give host (with port, database, username, password) or dsn")
            if (self.username is None) != (self.password is None):
                raise ValueError("username and password go together")
            return self
        fields = self.login_fields_given()
        if fields:
            raise ValueError(f"give dsn or {', '.join(fields)}, not both")
        _parse_dsn(self.dsn.get_secret_value())  # fails here, at load time
        return self

    def target(self) -> SQLServerTarget:
        if self.dsn is not None:
            return _parse_dsn(self.dsn.get_secret_value())
        return SQLServerTarget(
            host=self.host or "",
            port=self.port,
            database=self.database,
            username=self.username,
            password=None if self.password is None else self.password.get_secret_value(),
        )


def _parse_dsn(dsn: str) -> SQLServerTarget:
    """A ``mssql://user:password@host:port/database`` URL; errors never quote it."""
    try:
        parts = urlsplit(dsn.strip())
        port = parts.port or 1433
    except ValueError:
        raise ValueError("dsn is not a URL like mssql://user:password@host:1433/database") from None
    if parts.scheme not in _DSN_SCHEMES or not parts.hostname:
        raise ValueError("dsn must look like mssql://user:password@host:1433/database")
    if parts.query or parts.fragment:
        raise ValueError("dsn takes no options (?…): use the connection's own fields")
    database = unquote(parts.path.lstrip("/")) or None
    return SQLServerTarget(
        host=parts.hostname,
        port=port,
        database=database,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )


# -- the pool ---------------------------------------------------------------------


#: one read's slot: ``conn`` is what the slot holds before it, and keeps after it
_Read = Lease[pymssql.Connection]


class _Pool(ThreadBackedPool[pymssql.Connection]):
    """``size`` slots, each an open connection or None (connect on use), read on
    the pool's own ``size`` threads (`connectors.thread_pool`). The slot used
    last is taken first, and connections left unused ``idle_s`` close (down to
    `_KEEP_IDLE`). A statement cannot be interrupted: FreeTDS's query timeout
    ends it, and the slot comes back (without that connection) when it does.
    """

    def __init__(self, source_id: str, size: int, idle_s: float = 60.0) -> None:
        super().__init__(
            source_id,
            size,
            kind="sqlserver",
            close_conn=_close_quietly,
            idle_s=idle_s,
            keep_idle=_KEEP_IDLE,
        )


# -- the connector -------------------------------------------------------------


class SQLServerConnector(Connector):
    """A SQL Server database, read through pymssql."""

    type_name: ClassVar[str] = "sqlserver"
    Settings: ClassVar[type[ConnectionSettings]] = SQLServerSettings
    query_shape: ClassVar[str] = "SQL with $1…$n placeholders"
    sql_dialect = "sqlserver"

    settings: SQLServerSettings

    def setup(self) -> None:
        self._pool: _Pool | None = None
        self._network = NetworkAccess(
            self.source_id, ssl=None, ssh=self.settings.ssh, base_dir=self.base_dir
        )
        self._route: tuple[str, int] | None = None
        self._pinned: str | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if isinstance(raw, Mapping):
            if set(raw) != {"sql"}:
                raise ConfigError('a sqlserver query is SQL text, or {"sql": "SELECT …"}')
            raw = raw["sql"]
        if not isinstance(raw, str):
            raise ConfigError("a sqlserver query must be SQL text")
        return prepare_sql(raw, style="format", dialect="sqlserver")

    async def open(self) -> None:
        if self.settings.ssh is not None and self._route is None:
            target = self.settings.target()
            with self._translating():
                self._route = await self._network.route(target.host, target.port)
        await self._pin()
        self._ensure_pool()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        await self._network.close()
        self._route = None
        self._pinned = None

    async def health_check(self) -> None:
        await self._read("SELECT 1 AS ok", timeout_s=_HEALTH_TIMEOUT_S)

    async def _pin(self) -> None:
        """For a config the engine serves: connect to an address checked here.

        FreeTDS opens its sockets in C, where `connectors.egress`'s audit hook
        does not see them; so the host is resolved and checked once, and every
        connection goes to that address (a later DNS answer cannot move it).
        """
        if self.reach.trusted or self._route is not None or self._pinned is not None:
            return
        target = self.settings.target()
        host, sep, instance = target.host.partition("\\")
        ips = await self.reach.check_host(self.source_id, host, target.port)
        if not ips:
            raise SourceUnavailable(self.source_id, f"cannot resolve the host {host!r}")
        self._pinned = ips[0] + sep + instance

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, SQLSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        if len(bound.args) < query.positional:
            raise self.fail(
                f"the query takes {query.positional} argument(s), {len(bound.args)} were bound"
            )
        sql = render_sql(spec.text, spec.arguments(bound.args))
        rows = await self._read(sql, timeout_s=timeout_s)
        return ReadResult.of_rows(self.cap_rows(rows))

    def _ensure_pool(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(self.source_id, self.settings.pool_size, self.settings.pool_idle_s)
        return self._pool

    async def _read(self, sql: str, *, timeout_s: float) -> _Rows:
        await self._pin()
        pool = self._ensure_pool()
        connect_args = self._connect_args(timeout_s)
        query_timeout = max(1, math.ceil(timeout_s))
        max_rows = self.limits.max_rows

        def work(read: _Read) -> _Rows:
            return _run_in_thread(read, sql, connect_args, query_timeout, max_rows)

        with self._translating():
            async with asyncio.timeout(timeout_s):  # waiting for a slot counts too
                # The thread cannot be interrupted: on a deadline or cancellation
                # the caller leaves, FreeTDS's query timeout ends the statement,
                # and the slot comes back (without that connection) when it does.
                return await pool.run(work)

    def _connect_args(self, timeout_s: float) -> dict[str, Any]:
        """pymssql.connect's arguments: the one place the target (and, later,
        TLS and a tunnel's local port) is decided."""
        target = self.settings.target()
        host, port = self._route or (self._pinned or target.host, target.port)
        login_timeout = min(self.settings.login_timeout_s, timeout_s)
        args: dict[str, Any] = {
            "server": host,
            "port": str(port),
            "user": target.username,
            "password": target.password,
            "database": target.database or "",
            "login_timeout": max(1, math.ceil(login_timeout)),
            "timeout": max(1, math.ceil(timeout_s)),
            "appname": _APP_NAME,
            "read_only": self.settings.read_only_intent,
            "conn_properties": _SESSION_SETTINGS,
            "autocommit": False,
        }
        if self.settings.tds_version is not None:
            args["tds_version"] = self.settings.tds_version
        return args

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place."""
        try:
            yield
        except TimeoutError as exc:
            message = "the query passed its deadline; FreeTDS cancels it on the server"
            raise SourceTimeout(self.source_id, message) from exc
        except _LoginError as exc:
            raise translate_error(self.source_id, exc.error, login=True) from exc.error
        except pymssql.Error as exc:
            raise translate_error(self.source_id, exc) from exc


# -- in the worker thread -------------------------------------------------------------


def _run_in_thread(
    read: _Read,
    sql: str,
    connect_args: dict[str, Any],
    query_timeout: int,
    max_rows: int,
) -> _Rows:
    """Run one statement on the slot's connection (connecting if empty); sets
    ``read.conn`` to what the slot keeps (the pool sets ``read.done``)."""
    conn, fresh = read.conn, read.conn is None
    read.conn = None  # whatever fails below leaves the slot empty
    if conn is None:
        conn = _connect(connect_args)
    try:
        rows = _fetch(conn, sql, query_timeout, max_rows)
    except pymssql.Error as exc:
        _close_quietly(conn)
        if fresh or not (error_numbers(exc) & _CONNECTION_LOST):
            raise
        # A pooled connection the server dropped: once more on a fresh one.
        conn = _connect(connect_args)
        try:
            rows = _fetch(conn, sql, query_timeout, max_rows)
        except BaseException:
            _close_quietly(conn)
            raise
    read.conn = conn
    return rows


def _connect(connect_args: dict[str, Any]) -> pymssql.Connection:
    try:
        return pymssql.connect(**connect_args)
    except pymssql.Error as exc:
        raise _LoginError(exc) from exc


def _fetch(conn: pymssql.Connection, sql: str, query_timeout: int, max_rows: int) -> _Rows:
    # Process-wide in FreeTDS (see the module docstring).
    conn._conn.query_timeout = query_timeout
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        names = _column_names(cursor.description or ())
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchmany(max_rows)]
    finally:
        cursor.close()
    # Discards unread rows and undoes anything the statement changed.
    conn.rollback()
    return rows


def _column_names(description: Sequence[Sequence[Any]]) -> list[str]:
    return [
        str(column[0]) if column[0] else f"column{i + 1}" for i, column in enumerate(description)
    ]


def _close_quietly(conn: pymssql.Connection) -> None:
    with contextlib.suppress(Exception):
        conn.close()


# -- binding and errors ------------------------------------------------------------------

_FORMAT_TOKENS = re.compile(r"%%|%s")


def render_sql(text: str, args: Sequence[Any]) -> str:
    """`prepare_sql`'s ``format`` text with each ``%s`` replaced by a quoted value.

    Values are quoted by pymssql itself (``_mssql.quote_data``: strings as
    ``N'…'`` with quotes doubled, numbers as numbers, NULL); ``%%`` turns back
    into ``%``. Nothing else in the text is touched.
    """
    values = tuple(_sql_value(a) for a in args)
    quoted = [_text(value) for value in _mssql.quote_data(values)]
    pending = iter(quoted)

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        try:
            return next(pending)
        except StopIteration:
            raise ValueError("more placeholders than values") from None

    return _FORMAT_TOKENS.sub(substitute, text)


def _text(quoted: int | str | bytes) -> str:
    return quoted.decode("utf-8") if isinstance(quoted, bytes) else str(quoted)


def _sql_value(value: Any) -> Any:
    """A parameter as a type pymssql quotes; anything else is bound as its text."""
    if value is None or isinstance(value, str | int | float | bytes):
        return value
    converted = jsonable(value)
    return converted if isinstance(converted, int | float) else str(converted)


def error_numbers(exc: BaseException) -> set[int]:
    """The SQL Server / FreeTDS message numbers a pymssql error carries."""
    args: Any = exc.args
    if len(args) == 1 and isinstance(args[0], tuple):
        args = args[0]  # connect() wraps (number, message) once more
    numbers: set[int] = set()
    if args and isinstance(args[0], int):
        numbers.add(args[0])
    for part in args[1:2]:
        if isinstance(part, bytes | str):
            text = part.encode() if isinstance(part, str) else part
            numbers.update(int(n) for n in _MESSAGE_NUMBERS.findall(text))
    return numbers


def translate_error(
    source_id: str, exc: pymssql.Error, *, login: bool = False
) -> SourceError | InputRefused:
    """A pymssql error as a `SourceError`; its text keeps only message numbers.

    ``login``: the error came from ``pymssql.connect``, where anything but a
    refused login (a timeout too) means the server cannot be reached. Server
    messages quote user names, host names and sometimes values, so none of
    their text is passed on.
    """
    numbers = error_numbers(exc)
    listed = ", ".join(str(n) for n in sorted(numbers)) or "no number"
    if numbers & _AUTH_FAILED:
        return SourceAuthError(
            source_id, f"authentication failed: check username and password ({listed})"
        )
    if _CANNOT_OPEN_DATABASE in numbers:
        return SourceAuthError(
            source_id, f"the login may not open the database, or it does not exist ({listed})"
        )
    if login:
        return SourceUnavailable(
            source_id, f"cannot reach SQL Server (refused, unknown host, no answer) ({listed})"
        )
    if _TIMED_OUT in numbers:
        return SourceTimeout(
            source_id, "the query passed its deadline and FreeTDS cancelled it on the server"
        )
    if numbers & _CONNECTION_FAILED:
        return SourceUnavailable(source_id, f"the connection to SQL Server was lost ({listed})")
    if numbers & _VALUE_REFUSED:
        return InputRefused(source_id, f"the server refused a value ({listed})")
    if isinstance(exc, pymssql.InterfaceError):
        return SourceUnavailable(source_id, f"the connection is not usable ({listed})")
    return SourceError(source_id, f"sql server refused the query ({type(exc).__name__}: {listed})")
