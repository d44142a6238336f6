"""MySQL and MariaDB sources: an aiomysql pool, READ ONLY transactions, deadlines on the server.

Each read takes a pooled connection and runs, in four round trips::

    SET SESSION max_statement_time = <s>      -- MariaDB (seconds; every statement)
    SET SESSION max_execution_time = <ms>     -- MySQL   (milliseconds; SELECT only)
    START TRANSACTION READ ONLY
    <the configured SELECT, parameters bound by the driver>
    COMMIT                                    -- ROLLBACK when the read failed

The server flavour is read once per pool (``SELECT VERSION()`` names MariaDB),
so a proxy that fakes the handshake's version does not mislead it. Rows stream
(an unbuffered cursor): at most ``limits.max_rows`` are fetched, and a result
much longer than that costs the connection rather than the time to read it all.

Read-only, three ways: `prepare_sql` refuses anything but one read when the
config loads; every connection has multi-statements switched off on the server
(aiomysql always asks for them), so ``SELECT 1; DROP …`` cannot run even when
``prepare`` is bypassed; and the READ ONLY transaction refuses INSERT, UPDATE,
DELETE, REPLACE, LOAD DATA, locking reads and temporary tables. DDL (CREATE,
DROP, ALTER, GRANT, SET GLOBAL) commits implicitly and is *not* stopped by a
READ ONLY transaction on either server: give the source a SELECT-only account.

Deadlines: the server gets the read's remaining time as its own limit and
stops the statement there (error 1969 / 3024, the connection stays usable).
The worker waits a little longer (`_SERVER_FIRST_S`); when it gives up first —
its own deadline, or the caller's cancellation — the connection may be in the
middle of a reply, so it is closed rather than pooled, and ``KILL QUERY`` on a
second connection stops the statement on the server at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import logging
import math
import re
import ssl
import struct
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self
from urllib.parse import unquote, urlsplit

import aiomysql
from pydantic import Field, field_validator, model_validator
from pymysql.charset import charset_by_name
from pymysql.constants import COMMAND
from pymysql.protocol import FieldDescriptorPacket

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
from connectors.network import NetworkAccess, SSHSettings, TLSSettings
from connectors.sql import SQLConnectionSettings, SQLSpec, mysql_write_access, prepare_sql
from worker.errors import InputRefused, SourceFull

__all__ = ["MySQLConnector", "MySQLSettings"]

log = logging.getLogger(__name__)

_Rows = list[dict[str, Any]]

#: how long the worker waits past the deadline for the server to stop the statement itself
_SERVER_FIRST_S = 0.25
#: the shortest limit handed to the server (MariaDB takes 0 as "no limit")
_MIN_SERVER_S = 0.001
#: rows read past the cap to finish a result and keep the connection, before giving it up
_DRAIN_ROWS = 1000
#: TCP connect timeout; the read's deadline bounds the whole connect too
_CONNECT_TIMEOUT_S = 10.0
#: `open()` has no caller's deadline: its own
_OPEN_TIMEOUT_S = 15.0
#: idle pooled connections older than this are replaced (under common idle-TCP cut-offs)
_RECYCLE_S = 180
#: connections a quiet pool keeps open (the others close after ``pool_idle_s`` unused)
_KEEP_IDLE = 1
#: how long a read given up on waits for its ``KILL QUERY``
_KILL_TIMEOUT_S = 1.0
_HEALTH_TIMEOUT_S = 10.0
#: COM_SET_OPTION's MYSQL_OPTION_MULTI_STATEMENTS_OFF
_MULTI_STATEMENTS_OFF = struct.pack("<H", 1)

# Server and client error codes, by what they mean for the caller.
_TIMED_OUT = {1969, 3024}  # MariaDB max_statement_time, MySQL max_execution_time
_AUTH = {1044, 1045, 1130, 1251, 1698, 1820, 1862, 2059, 3118, 4151}
_LOST = {2006, 2013, 2055, 1053, 1927, 4031}  # the connection died under us
_UNREACHABLE = {2003, 2005, 1129} | _LOST
_TOO_MANY_CONNECTIONS = {1040, 1203}  # the server's, the account's (max_user_connections)
_UNKNOWN_VARIABLE = 1193
# The server refused a value (the customer's): no such date, not a number, out of range,
# too long, bad JSON, a bad regular expression. The source is fine: `InputRefused`.
_VALUE_REFUSED = {1139, 1264, 1265, 1292, 1300, 1365, 1366, 1367, 1406, 1411, 1525, 1690, 1918}
_VALUE_REFUSED |= {3140, 3141, 3146} | set(range(3685, 3698))  # MySQL: JSON, REGEXP_*
# Codes whose quoted words are identifiers from the configured query, never values.
_NAMES_IN_MESSAGE = {1049, 1051, 1052, 1054, 1142, 1143, 1146, 1305}
_QUOTED = re.compile(r"'.*'", re.DOTALL)


# -- settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Login:
    """Where and as whom to connect, from the fields or the DSN."""

    host: str
    port: int
    user: str
    password: str
    database: str | None

    def __repr__(self) -> str:  # never the password
        return f"_Login(host={self.host!r}, port={self.port}, user={self.user!r})"


class MySQLSettings(SQLConnectionSettings):
    """``connection`` of a ``mysql`` source (MySQL or MariaDB).

    Either ``host`` (with ``port``, ``database``, ``username``, ``password``) or
    ``dsn`` (``mysql://user:password@host:3306/database``), not both.
    """

    # A dsn is mysql:// or mariadb://, its user and password percent-encoded. A busy
    # tenant's full pool (pool_size, 25) is a sixth of MySQL's default 151 connections.
    # Names are held to the server's own limits on a host, a database and a user.
    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int = Field(default=3306, ge=1, le=65535)
    database: str | None = Field(default=None, min_length=1, max_length=64)
    username: str | None = Field(default=None, min_length=1, max_length=128)
    charset: str = "utf8mb4"
    #: TLS to the server, and an SSH bastion in front of it (connectors.network)
    ssl: TLSSettings | None = None
    ssh: SSHSettings | None = None

    @field_validator("charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        if charset_by_name(value) is None:
            raise ValueError(f"unknown MySQL character set {value!r}")
        return value

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> Self:
        if self.dsn is not None:
            given = self.login_fields_given()
            if given:
                raise ValueError(
                    f"give either dsn or host/port/database/username/password, not both"
                    f" (also given: {', '.join(given)})"
                )
            _parse_dsn(self.dsn.get_secret_value())  # its errors never echo the DSN
        elif self.host is None:
            raise ValueError("host (or dsn) is required")
        elif self.username is None:
            raise ValueError("username is required")
        return self

    def login(self) -> _Login:
        if self.dsn is not None:
            return _parse_dsn(self.dsn.get_secret_value())
        if self.host is None or self.username is None:  # the validator saw to this
            raise ConfigError("host and username are required")
        password = self.password.get_secret_value() if self.password else ""
        return _Login(self.host, self.port, self.username, password, self.database)


def _parse_dsn(dsn: str) -> _Login:
    """``mysql://user:password@host:port/database``; messages never repeat the DSN."""
    try:
        parts = urlsplit(dsn.strip())
        port = parts.port or 3306
    except ValueError:
        raise ValueError("dsn is not a URL like mysql://user:password@host:3306/db") from None
    if parts.scheme not in {"mysql", "mariadb"}:
        raise ValueError("dsn must start with mysql:// or mariadb://")
    if not parts.hostname:
        raise ValueError("dsn names no host")
    if not parts.username:
        raise ValueError("dsn names no user")
    if parts.query or parts.fragment:
        raise ValueError("dsn takes no ?options: use the connection's own fields (charset…)")
    database = unquote(parts.path.lstrip("/")) or None
    if database is not None and "/" in database:
        raise ValueError("dsn path must be just the database name")
    password = unquote(parts.password) if parts.password else ""
    return _Login(parts.hostname, port, unquote(parts.username), password, database)


# -- the pool ----------------------------------------------------------------------


class _Retry(Exception):
    """A pooled connection turned out dead before the query was sent."""


class _Pool:
    """The aiomysql pool of one source, and what a read needs besides it.

    aiomysql's pool never shrinks by itself (``pool_recycle`` only looks at a
    connection when a read asks for one) and hands out the connection released
    longest ago, so after a burst every connection stays in use a little. Here
    the most recently released goes out first, and a timer closes the ones left
    unused ``idle_s``, down to `_KEEP_IDLE`.
    """

    def __init__(
        self, source_id: str, pool: Any, connect_kwargs: dict[str, Any], size: int, idle_s: float
    ) -> None:
        self.source_id = source_id
        self.pool = pool
        self.idle_s = idle_s
        self._sweep_timer: asyncio.TimerHandle | None = None
        #: Who gets the next free connection: the longest waiter. aiomysql's own
        #: pool hands a released connection to whoever asks first, which left some
        #: reads waiting seconds while others went straight through (bench/README.md).
        self._slots = asyncio.Semaphore(size)
        self.connect_kwargs = connect_kwargs
        self.mariadb = True
        #: whether the server takes a per-session statement time limit
        self.server_deadline = True
        self.closing = False
        self._single_statement: weakref.WeakSet[Any] = weakref.WeakSet()

    @classmethod
    async def create(
        cls, source_id: str, connect_kwargs: dict[str, Any], size: int, idle_s: float
    ) -> _Pool:
        pool = await aiomysql.create_pool(
            minsize=0, maxsize=size, pool_recycle=_RECYCLE_S, **connect_kwargs
        )
        self = cls(source_id, pool, connect_kwargs, size, idle_s)
        try:
            conn = await self.acquire()
            try:
                cursor = await conn.cursor()
                await cursor.execute("SELECT VERSION()", ())
                (version,) = await cursor.fetchone()
                await cursor.close()
                await conn.rollback()
            finally:
                self.release(conn)
            self.mariadb = "mariadb" in str(version).lower()
        except BaseException:
            await self.close()
            raise
        return self

    async def acquire(self) -> Any:
        if self.closing:
            raise SourceUnavailable(self.source_id, "the source was closed")
        await self._slots.acquire()  # FIFO; holding a slot, the pool has a connection for us
        try:
            if self.closing:  # woken by close(): pass the wake-up on to the next waiter
                raise SourceUnavailable(self.source_id, "the source was closed")
            conn = await self.pool.acquire()
        except BaseException:
            self._slots.release()
            raise
        if self.closing:
            self.release(conn)
            raise SourceUnavailable(self.source_id, "the source was closed")
        return conn

    def release(self, conn: Any) -> None:
        # A dropped connection frees its place in aiomysql's pool too: the slot
        # wakes the next waiter either way (nobody ever waits inside that pool).
        self.pool.release(conn)
        free = self.pool._free  # the pool's idle connections; the next read takes [0]
        if free and free[-1] is conn:
            free.rotate(1)  # most recently used first: the surplus stays unused
            self._arm_sweep()
        self._slots.release()

    def _arm_sweep(self) -> None:
        if self._sweep_timer is None and not self.closing:
            loop = asyncio.get_running_loop()
            self._sweep_timer = loop.call_later(self.idle_s, self._sweep)

    def _sweep(self) -> None:
        """Close the connections left unused ``idle_s``, the least recently used first."""
        self._sweep_timer = None
        if self.closing:
            return
        free = self.pool._free
        now = asyncio.get_running_loop().time()
        while len(free) > _KEEP_IDLE and now - free[-1].last_usage >= self.idle_s:
            free.pop().close()
        if len(free) > _KEEP_IDLE:
            due = free[-1].last_usage + self.idle_s - now
            self._sweep_timer = asyncio.get_running_loop().call_later(due, self._sweep)

    async def read(
        self, sql: str, args: tuple[Any, ...], *, deadline: float, max_rows: int
    ) -> _Rows:
        """One read; a dead pooled connection is retried once on another."""
        for retry_left in (True, False):
            conn = await self.acquire()
            try:
                return await self._read_on(conn, sql, args, deadline, max_rows, retry_left)
            except aiomysql.Error as exc:
                if self.closing:  # close() dropped the connection under the read
                    raise SourceUnavailable(self.source_id, "the source was closed") from exc
                raise
            except _Retry:
                log.info(
                    "source %s: a pooled connection was dead; retrying on another",
                    self.source_id,
                    extra={"action": "reconnect", "source": self.source_id},
                )
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _read_on(
        self,
        conn: Any,
        sql: str,
        args: tuple[Any, ...],
        deadline: float,
        max_rows: int,
        retry_left: bool,
    ) -> _Rows:
        """Run one read in a READ ONLY transaction on ``conn``, and always give ``conn`` back."""
        sent = False
        try:
            try:
                await self._begin(conn, deadline)
            except aiomysql.Error as exc:
                if retry_left and _is_lost(exc):
                    conn.close()
                    raise _Retry from exc
                raise
            sent = True
            rows, complete = await _fetch(conn, sql, args, max_rows)
            if complete:
                await conn.commit()
            else:
                conn.close()  # the rest of the result would have to be read first
            return rows
        except asyncio.CancelledError:
            # Deadline or cancellation: the connection may be mid-reply. Drop it,
            # and stop the statement on the server now, not at its own limit.
            thread_id = conn.thread_id()
            conn.close()
            if sent:
                await self._kill_query(thread_id)
            raise
        except BaseException:
            await _end_failed(conn)
            raise
        finally:
            self.release(conn)

    async def _begin(self, conn: Any, deadline: float) -> None:
        if conn not in self._single_statement:
            # aiomysql always asks for multi-statements; turn them off on the server.
            await conn._execute_command(COMMAND.COM_SET_OPTION, _MULTI_STATEMENTS_OFF)
            await conn._read_packet()
            self._single_statement.add(conn)
        if self.server_deadline:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await conn.query(_deadline_sql(self.mariadb, remaining))
            except aiomysql.OperationalError as exc:
                if _code(exc) != _UNKNOWN_VARIABLE:
                    raise
                self._no_server_deadline()
        await conn.query("START TRANSACTION READ ONLY")

    def _no_server_deadline(self) -> None:
        # MySQL before 5.7.8, MariaDB before 10.1, look-alikes: the worker's own
        # deadline and KILL QUERY are left to stop the statement.
        self.server_deadline = False
        log.warning(
            "source %s: the server has no %s; queries are stopped by KILL QUERY only",
            self.source_id,
            "max_statement_time" if self.mariadb else "max_execution_time",
            extra={"action": "open", "source": self.source_id},
        )

    async def _kill_query(self, thread_id: int) -> None:
        """``KILL QUERY`` on a second connection; a failure is logged, never raised."""
        try:
            async with asyncio.timeout(_KILL_TIMEOUT_S):
                killer = await aiomysql.connect(**self.connect_kwargs)
                try:
                    await killer.query(f"KILL QUERY {int(thread_id)}")
                finally:
                    killer.close()
        except Exception as exc:  # 1094: the statement had already ended
            if not (isinstance(exc, aiomysql.Error) and _code(exc) == 1094):
                log.warning(
                    "source %s: could not stop a query given up on (%s); "
                    "the server's own time limit will",
                    self.source_id,
                    type(exc).__name__,
                    extra={"action": "kill_query", "source": self.source_id},
                )

    async def close(self) -> None:
        self.closing = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self.pool.terminate()  # drops reads in flight; they end with an error
        self._slots.release()  # the first waiter wakes, finds `closing`, wakes the next…
        await self.pool.wait_closed()


async def _fetch(conn: Any, sql: str, args: tuple[Any, ...], max_rows: int) -> tuple[_Rows, bool]:
    """At most ``max_rows`` rows, and whether the result was read to its end."""
    cursor = await conn.cursor(aiomysql.SSDictCursor)
    # Always a tuple, even empty: the driver turns the `%%` of format style back into `%`.
    await cursor.execute(sql, args)
    rows: _Rows = await cursor.fetchmany(max_rows)
    complete = len(rows) < max_rows
    if not complete:  # a short rest is read and dropped, so the connection can be kept
        complete = len(await cursor.fetchmany(_DRAIN_ROWS + 1)) <= _DRAIN_ROWS
    if complete:
        await cursor.close()
    return rows, complete


async def _prepared_columns(conn: Any, sql: str) -> tuple[str, ...]:
    """``sql`` prepared on the server and closed again; the names of its result columns.

    aiomysql has no prepared statements: this is the binary protocol's prepare
    reply read by hand (an OK packet with the counts, then the parameters' and
    the columns' definitions, each list ended by an EOF packet).
    """
    await conn._execute_command(COMMAND.COM_STMT_PREPARE, sql)
    head = (await conn._read_packet()).get_all_data()  # an error reply raises here
    statement, columns, parameters = struct.unpack("<xIHH", head[:9])
    for _ in range(parameters + (1 if parameters else 0)):
        await conn._read_packet()
    names = [(await conn._read_packet(FieldDescriptorPacket)).name for _ in range(columns)]
    if columns:
        await conn._read_packet()
    # No reply comes to a close.
    await conn._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", statement))
    return tuple(names)


async def _end_failed(conn: Any) -> None:
    """After a failed read: roll back and keep the connection, or drop it."""
    if conn.closed:
        return
    try:
        await conn.rollback()
    except Exception:
        conn.close()


def _deadline_sql(mariadb: bool, remaining_s: float) -> str:
    seconds = max(remaining_s, _MIN_SERVER_S)
    if mariadb:
        return f"SET SESSION max_statement_time = {seconds:.3f}"
    return f"SET SESSION max_execution_time = {math.ceil(seconds * 1000)}"


def _code(exc: BaseException) -> int:
    args = exc.args
    return args[0] if args and isinstance(args[0], int) else 0


def _is_lost(exc: BaseException) -> bool:
    return isinstance(exc, aiomysql.InterfaceError) or _code(exc) in _LOST


def _unreachable_reason(exc: BaseException) -> str:
    code = _code(exc)
    if code in {2003, 2005}:  # aiomysql keeps the socket error as the cause
        cause = exc.__cause__
        if isinstance(cause, TimeoutError):
            return "no answer to the connection attempt"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        return "cannot connect"
    if code == 1129:
        return "the server blocks this host after too many connection errors"
    if code == 1053:
        return "the server is shutting down"
    return "the connection was lost"


def _connections_limited(exc: BaseException) -> bool:
    """Error 1226 for the account's ``MAX_USER_CONNECTIONS`` (not its other resource limits)."""
    return _code(exc) == 1226 and "max_user_connections" in str(exc.args[-1:])


def _server_text(exc: BaseException) -> str:
    """The server's message, with quoted text (which may hold values) cut out."""
    args = exc.args
    text = str(args[1]) if len(args) > 1 else type(exc).__name__
    if _code(exc) == 1064:  # "… near '<the rest of the statement, values bound>' at line 1"
        text = text.split(" near ", 1)[0]
    elif _code(exc) not in _NAMES_IN_MESSAGE:
        text = _QUOTED.sub("'…'", text)
    return text[:300]


# -- the connector -----------------------------------------------------------------


class MySQLConnector(Connector):
    """A MySQL or MariaDB database, read in READ ONLY transactions."""

    type_name: ClassVar[str] = "mysql"
    Settings: ClassVar[type[ConnectionSettings]] = MySQLSettings
    query_shape: ClassVar[str] = "SQL with $1…$n placeholders"
    sql_dialect = "mysql"

    settings: MySQLSettings

    def setup(self) -> None:
        self._login = self.settings.login()
        self._pool: _Pool | None = None
        self._opening = asyncio.Lock()
        self._network = NetworkAccess(
            self.source_id, ssl=self.settings.ssl, ssh=self.settings.ssh, base_dir=self.base_dir
        )
        self._route = (self._login.host, self._login.port)

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if isinstance(raw, Mapping):
            if set(raw) != {"sql"}:
                raise ConfigError('a mysql query is SQL text, or {"sql": "SELECT …"}')
            raw = raw["sql"]
        if not isinstance(raw, str):
            raise ConfigError("a mysql query must be SQL text")
        return prepare_sql(raw, style="format", dialect="mysql")

    async def open(self) -> None:
        try:
            async with asyncio.timeout(_OPEN_TIMEOUT_S):
                with self._translating():
                    await self._ensure_open()
        except TimeoutError as exc:
            message = f"no answer from {self._login.host}:{self._login.port} in time"
            raise SourceUnavailable(self.source_id, message) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        await self._network.close()

    async def health_check(self) -> None:
        await self._read("SELECT 1", (), timeout_s=_HEALTH_TIMEOUT_S)

    async def write_access(self) -> list[str]:
        rows = await self._read("SHOW GRANTS", (), timeout_s=_HEALTH_TIMEOUT_S)
        return mysql_write_access([str(v) for row in rows for v in row.values()])

    async def describe(self, query: PreparedQuery, *, timeout_s: float) -> tuple[str, ...]:
        """The names of the columns ``query`` returns, as the server prepares it
        (``COM_STMT_PREPARE``, then ``COM_STMT_CLOSE``): nothing runs."""
        if not isinstance(query.spec, SQLSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        # The driver's `%s` (and `%%` for a literal `%`) back to the server's own `?`.
        sql = re.sub(r"%([%s])", lambda m: "?" if m.group(1) == "s" else "%", query.spec.text)
        with self._translating():
            async with asyncio.timeout(timeout_s):
                pool = await self._ensure_open()
                conn = await pool.acquire()
                try:
                    return await _prepared_columns(conn, sql)
                except BaseException as exc:
                    code = _code(exc)  # 2000-2999: the client's own errors
                    if not (1000 <= code < 2000 or code >= 3000):
                        conn.close()  # not the server's error reply: maybe mid-reply
                    raise
                finally:
                    pool.release(conn)

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
        return ReadResult.of_rows(rows)

    async def _read(self, sql: str, args: tuple[Any, ...], *, timeout_s: float) -> _Rows:
        deadline = asyncio.get_running_loop().time() + timeout_s
        with self._translating():
            # The server stops the statement at `deadline`; this is for when it cannot.
            async with asyncio.timeout_at(deadline + _SERVER_FIRST_S):
                pool = await self._ensure_open()
                return await pool.read(sql, args, deadline=deadline, max_rows=self.limits.max_rows)

    async def _ensure_open(self) -> _Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                self._route = await self._network.route(self._login.host, self._login.port)
                self._pool = await _Pool.create(
                    self.source_id,
                    self._connect_kwargs(),
                    self.settings.pool_size,
                    self.settings.pool_idle_s,
                )
            return self._pool

    def _connect_target(self) -> tuple[str, int, ssl.SSLContext | None]:
        """Where the driver connects (an SSH tunnel's local end, if any), and with what TLS."""
        host, port = self._route
        return host, port, self._network.tls()

    def _connect_kwargs(self) -> dict[str, Any]:
        host, port, tls = self._connect_target()
        return {
            "host": host,
            "port": port,
            "ssl": tls,
            "user": self._login.user,
            "password": self._login.password,
            "db": self._login.database,
            "charset": self.settings.charset,
            "autocommit": False,
            "connect_timeout": _CONNECT_TIMEOUT_S,
            "local_infile": False,
            "program_name": "data-lookup-worker",
        }

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place."""
        try:
            yield
        except SourceError:
            raise
        except TimeoutError as exc:
            message = "the query passed its deadline and was stopped"
            raise SourceTimeout(self.source_id, message) from exc
        except aiomysql.Error as exc:
            raise self._translated(exc) from exc
        except OSError as exc:
            raise self._unreachable(type(exc).__name__) from exc

    def _translated(self, exc: BaseException) -> SourceError | InputRefused:
        code = _code(exc)
        if code in _VALUE_REFUSED:
            return InputRefused(self.source_id, f"the server refused a value (MySQL error {code})")
        if code in _TIMED_OUT:
            return SourceTimeout(self.source_id, "the server stopped the query at its deadline")
        if code in _AUTH:
            return SourceAuthError(
                self.source_id,
                f"authentication failed for user {self._login.user!r} (MySQL error {code})",
            )
        if code in _TOO_MANY_CONNECTIONS or _connections_limited(exc):
            # worker.sources reads on the connections it has
            host, port, _ = self._connect_target()
            return SourceFull(self.source_id, f"{host}:{port} has too many connections")
        if code in _UNREACHABLE or isinstance(exc, aiomysql.InterfaceError):
            return self._unreachable(_unreachable_reason(exc))
        if code == 0:
            return self.fail(f"MySQL driver error: {type(exc).__name__}")
        return self.fail(f"MySQL error {code}: {_server_text(exc)}")

    def _unreachable(self, reason: str) -> SourceUnavailable:
        host, port, _ = self._connect_target()
        return SourceUnavailable(self.source_id, f"cannot reach {host}:{port} ({reason})")


def _sql_value(value: Any) -> Any:
    """A parameter as a type the driver escapes; anything else is bound as its text."""
    plain = (str, int, float, bytes, decimal.Decimal, dt.date, dt.time, dt.timedelta)
    if value is None or isinstance(value, plain):
        return value
    return str(jsonable(value))
