"""PostgreSQL sources: an asyncpg pool of read-only sessions, stoppable reads.

Every pooled connection starts with ``default_transaction_read_only = on`` and
``application_name = data-lookup-worker``, so every statement runs in a
read-only transaction: a write, or a function that writes, fails on the
server. One read is one round trip on one pooled connection: the cached
prepared statement is bound and executed for at most ``limits.max_rows``
rows, in the implicit (read-only) transaction of that one statement.

The deadline holds twice over: the session's ``statement_timeout`` is the
lookup's ``timeout_s`` (capped by ``statement_timeout_ms``; set once per
connection, again only when a read asks for another value), so the server
stops a statement by itself; and when the read's own deadline or a
cancellation comes first, asyncpg sends the server a cancel request and waits
for the statement to end. Either way the connection goes back to the pool or
is closed; it never leaks.

A released connection is checked, not reset with a round trip: the server
reports ``default_transaction_read_only`` whenever it changes (PostgreSQL 14+),
so a session that a configured query switched to read-write
(``set_config(…)``) is closed instead of pooled, and one left inside a
transaction is rolled back.

A read whose connection turns out to be dead (the server restarted since it
was pooled) is tried once more on a fresh connection: reads have no side
effects, and no result was handed out yet. Connecting gives up after
``min(5 s, what is left of timeout_s)``, so an unreachable server answers
``fallback`` fast.

TLS is the ``ssl`` block's (connectors.network). Without one, a server on this
machine (``localhost``, ``127.0.0.0/8``, ``::1``) is reached in plain TCP first
and over TLS only if it refuses that (sslmode ``allow``); any other server, or a
dsn naming its own ``sslmode``, gets asyncpg's default (``prefer``: TLS whenever
the server offers it). ``ssl: {mode: disable}`` never uses TLS.

Parameters are bound by the driver, never spliced into the text. asyncpg is
strict about Python types (a ``"12345"`` for an ``integer`` column is an
error), so each value is first converted to the type the server says the
placeholder has, the way the server would read the same text in a literal:
the text ``"12345"`` binds to ``int4``, ``"2025-09-12"`` to ``date``, the
number ``7`` to ``text``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import decimal
import json
import logging
import math
import re
import ssl
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
from pydantic import Field, model_validator

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
)
from connectors.network import NetworkAccess, SSHSettings, TLSSettings, is_loopback
from connectors.sql import (
    POSTGRESQL_WRITE_ACCESS,
    SQLConnectionSettings,
    SQLSpec,
    postgresql_write_access,
    prepare_sql,
)
from worker.errors import InputRefused, SourceFull

__all__ = ["APPLICATION_NAME", "PostgreSQLConnector", "PostgreSQLSettings"]

log = logging.getLogger(__name__)

#: ``application_name`` of every session, as ``pg_stat_activity`` shows it
APPLICATION_NAME = "data-lookup-worker"
#: longest wait for one new connection (less when the read has less time left)
_CONNECT_TIMEOUT_S = 5.0
#: longest wait for a connection to be cleaned and pooled again; then it is closed
_RELEASE_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 10.0
_HEALTH_TIMEOUT_S = 10.0
#: connections kept open while idle (more are opened on demand, up to pool_size)
_MIN_POOL = 1
_SESSION = {"application_name": APPLICATION_NAME, "default_transaction_read_only": "on"}
#: SQLSTATE classes whose server messages name objects, never parameter values
_PLAIN_CLASSES = ("0A", "25", "3D", "3F", "42", "53", "54", "55", "57")
_ARGUMENT = re.compile(r"\$\d+")
#: a cached statement that no longer matches the schema (after ALTER TABLE…)
_STALE_PLAN = (asyncpg.InvalidCachedStatementError, asyncpg.OutdatedSchemaCacheError)
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


class PostgreSQLSettings(SQLConnectionSettings):
    """``connection`` of a ``postgresql`` source: ``host`` …, or a ``dsn``.

    With a ``dsn`` (``postgresql://user:pass@host:5432/db?…``) the other
    fields, when given, override its parts; ``password`` may stay out of it.
    """

    # A busy tenant's full pool (pool_size, 25) is a quarter of a small server's 100.

    #: with a dsn, only when given here
    port: int = Field(default=5432, ge=1, le=65535)
    #: a server-side cap on one statement, below the lookup's ``timeout_s``
    statement_timeout_ms: int | None = Field(default=None, ge=1, le=3_600_000)
    #: TLS to the server, and an SSH bastion in front of it (connectors.network)
    ssl: TLSSettings | None = None
    ssh: SSHSettings | None = None

    @model_validator(mode="after")
    def _one_target(self) -> PostgreSQLSettings:
        if self.dsn is not None:
            if self.host is not None:
                raise ValueError("give either dsn or host, not both")
            scheme = self.dsn.get_secret_value().split("://", 1)[0].lower()
            if scheme not in ("postgresql", "postgres"):
                # Never echo the dsn: it may hold a password.
                raise ValueError("dsn must start with postgresql:// or postgres://")
        elif self.host is None or self.database is None or self.username is None:
            raise ValueError("give host, database and username (or a dsn)")
        return self


@dataclass(frozen=True)
class _Target:
    """Where connections go: ``host``/``port`` (None: as the dsn says) and TLS."""

    host: str | None
    port: int | None
    #: an `ssl.SSLContext` or an asyncpg sslmode; None: asyncpg's default (prefer)
    tls: ssl.SSLContext | str | None = None


@dataclass(eq=False)
class _Attempt:
    """One read in flight: its deadline, and whether it is opening a connection."""

    task: asyncio.Task[Any] | None
    deadline: float
    timeout_s: float
    connecting: bool = False


class _ReadSession(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """A pooled connection that knows the ``statement_timeout`` its session has."""

    __slots__ = ("_statement_timeout_ms",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._statement_timeout_ms: int | None = None

    async def use_statement_timeout(self, ms: int) -> None:
        """Set the session's statement_timeout, unless it has that value already."""
        if ms != self._statement_timeout_ms:
            await self.execute(f"SET statement_timeout = {ms:d}")
            self._statement_timeout_ms = ms

    async def reset_session(self) -> None:
        """``RESET ALL``: the session as it started (read-only, no statement_timeout)."""
        await self.execute("RESET ALL")
        self._statement_timeout_ms = None

    async def fetch_at_most(self, sql: str, args: Sequence[Any], limit: int) -> list[Any]:
        """``fetch``, but the portal stops after ``limit`` rows: no more cross the wire.

        One round trip (bind and execute a cached prepared statement) in the
        statement's own implicit transaction. asyncpg's public ``fetch`` has
        no row limit and its cursors need an explicit transaction (three more
        round trips); ``fetchrow`` is this with a limit of one.
        """
        return await self._execute(sql, args, limit, None)  # type: ignore[no-any-return]


class _SessionChanged(Exception):
    """A released connection is no longer a read-only session: it is closed, not pooled."""


async def _check_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: no round trip, but no read-write session goes back into the pool.

    asyncpg has already rolled back a transaction left open. The server reports
    ``default_transaction_read_only`` on every change (PostgreSQL 14+), so a
    query that switched it off (``set_config``) is seen here; the pool then
    closes the connection. Other session state cannot change: configured
    queries are single reads (no ``SET``, ``LISTEN``, ``PREPARE``, DDL). An
    older server does not report it: the session is reset (a round trip) instead.
    """
    reported = getattr(conn.get_settings(), "default_transaction_read_only", None)
    if reported is None:  # before PostgreSQL 14 it is not reported: reset instead
        await conn.reset_session()
    elif reported != "on":
        raise _SessionChanged("the session is no longer read-only")


#: the read the current task runs, so the pool's connect hook can honour its deadline
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "postgresql_attempt", default=None
)


class PostgreSQLConnector(Connector):
    """A PostgreSQL database, read through a pool of read-only sessions."""

    type_name: ClassVar[str] = "postgresql"
    Settings: ClassVar[type[ConnectionSettings]] = PostgreSQLSettings
    query_shape: ClassVar[str] = "SQL with $1…$n placeholders"
    sql_dialect = "postgresql"

    settings: PostgreSQLSettings

    def setup(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._network = NetworkAccess(
            self.source_id, ssl=self.settings.ssl, ssh=self.settings.ssh, base_dir=self.base_dir
        )
        self._route: tuple[str, int] | None = None
        self._opening = asyncio.Lock()
        #: the type names of each SQL text's `$n`, learned from the server on first use
        self._param_types: dict[str, tuple[str, ...]] = {}

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The asyncpg pool once open (for tests and diagnostics: do not write with it)."""
        return self._pool

    # -- the Connector interface ---------------------------------------------------

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if isinstance(raw, Mapping):
            if set(raw) != {"sql"}:
                raise ConfigError('a postgresql query is SQL text, or {"sql": "SELECT …"}')
            raw = raw["sql"]
        if not isinstance(raw, str):
            raise ConfigError("a postgresql query must be SQL text")
        return prepare_sql(raw, style="dollar", dialect="postgresql")

    async def open(self) -> None:
        with self._translating(None):
            await self._ensure_open()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            # Reads in flight finish first (each is bounded by its own deadline).
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await pool.close()
        except TimeoutError:
            pool.terminate()  # `close` ends every connection itself on any other error
            log.warning(
                "source %s: connections still busy after %g s were closed",
                self.source_id,
                _CLOSE_TIMEOUT_S,
                extra={"action": "close", "source": self.source_id},
            )
        finally:
            await self._network.close()
            self._route = None

    async def health_check(self) -> None:
        await self._read("SELECT 1", (), timeout_s=_HEALTH_TIMEOUT_S)

    async def write_access(self) -> list[str]:
        rows = await self._read(POSTGRESQL_WRITE_ACCESS, (), timeout_s=_HEALTH_TIMEOUT_S)
        return postgresql_write_access(rows[0] if rows else None)

    async def describe(self, query: PreparedQuery, *, timeout_s: float) -> tuple[str, ...]:
        """The names of the columns ``query`` returns, as the server prepares it: nothing runs."""
        if not isinstance(query.spec, SQLSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        loop = asyncio.get_running_loop()
        attempt = _Attempt(asyncio.current_task(), loop.time() + timeout_s, timeout_s)
        token = _ATTEMPT.set(attempt)
        try:
            with self._translating(attempt):
                async with asyncio.timeout_at(attempt.deadline):
                    pool = await self._ensure_open()
                    conn = await pool.acquire()
                    attempt.connecting = False
                    try:
                        statement = await conn.prepare(query.spec.text)
                        return tuple(attribute.name for attribute in statement.get_attributes())
                    finally:
                        await self._release(pool, conn)
        finally:
            _ATTEMPT.reset(token)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, SQLSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        if len(bound.args) < query.positional:
            raise self.fail(
                f"the query takes {query.positional} argument(s), {len(bound.args)} were bound"
            )
        rows = await self._read(spec.text, spec.arguments(bound.args), timeout_s=timeout_s)
        return ReadResult.of_rows(rows)

    # -- reading -----------------------------------------------------------------

    async def _read(
        self, sql: str, args: tuple[Any, ...], *, timeout_s: float
    ) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        attempt = _Attempt(asyncio.current_task(), loop.time() + timeout_s, timeout_s)
        token = _ATTEMPT.set(attempt)
        try:
            with self._translating(attempt):
                async with asyncio.timeout_at(attempt.deadline):
                    pool = await self._ensure_open()
                    try:
                        return await self._read_once(pool, attempt, sql, args)
                    except _DRIVER_ERRORS as exc:
                        if attempt.connecting or not await self._ready_retry(pool, sql, exc):
                            raise
                    return await self._read_once(pool, attempt, sql, args)
        finally:
            _ATTEMPT.reset(token)

    async def _ready_retry(self, pool: asyncpg.Pool, sql: str, exc: BaseException) -> bool:
        """Prepare one more try after ``exc`` if it is worth one; no result was handed out."""
        if isinstance(exc, _STALE_PLAN):
            self._param_types.pop(sql, None)
            reason = "a cached statement went stale"
        elif _lost_connection(exc):
            # The other pooled sessions most likely died with this one (a restart,
            # a failover): have the pool replace them all, so the retry gets a new one.
            await pool.expire_connections()
            reason = "the connection was lost"
        else:
            return False
        log.info(
            "source %s: %s (%s); trying once more",
            self.source_id,
            reason,
            type(exc).__name__,
            extra={"action": "retry", "source": self.source_id},
        )
        return True

    async def _read_once(
        self, pool: asyncpg.Pool, attempt: _Attempt, sql: str, args: tuple[Any, ...]
    ) -> list[dict[str, Any]]:
        conn = await pool.acquire()
        attempt.connecting = False  # a connection made for this read is up and pooled
        try:
            # `conn` is the pool's proxy of a `_ReadSession`: its methods are the session's.
            await conn.use_statement_timeout(self._server_ms(attempt))
            values = self._coerce(args, await self._types(conn, sql))
            try:
                records = await conn.fetch_at_most(sql, values, self.limits.max_rows)
            except asyncpg.DataError:
                self._param_types.pop(sql, None)  # the schema may have changed: ask again
                raise
            except _STALE_PLAN:
                await conn.reload_schema_state()  # drop cached plans: the retry parses anew
                raise
        finally:
            await self._release(pool, conn)
        return [dict(record.items()) for record in records]

    async def _types(self, conn: Any, sql: str) -> tuple[str, ...]:
        """The type names of ``sql``'s ``$n``, asked of the server once per text."""
        types = self._param_types.get(sql)
        if types is None:
            statement = await conn.prepare(sql)
            types = tuple(t.name for t in statement.get_parameters())
            self._param_types[sql] = types
        return types

    def _coerce(self, args: tuple[Any, ...], types: tuple[str, ...]) -> list[Any]:
        if len(args) != len(types):
            raise self.fail(f"the query takes {len(types)} argument(s), {len(args)} were bound")
        out = []
        for n, (value, type_name) in enumerate(zip(args, types, strict=True), start=1):
            try:
                out.append(_coerce(value, type_name))
            except (ValueError, TypeError, ArithmeticError):
                # The customer's value, not the source: answered invalid_input, no circuit count.
                message = f"the value for ${n} is not a valid {type_name}"
                raise InputRefused(self.source_id, message, argument=n) from None
        return out

    def _server_ms(self, attempt: _Attempt) -> int:
        """The session's statement_timeout for this read: its ``timeout_s`` (what is left of
        the job's deadline) rounded up to the second, capped.

        The read's own deadline is enforced by a cancel request; this is the
        server's own stop, should the worker not get to send one. Whole seconds
        keep most reads on the value their session already has (no ``SET``).
        """
        ms = max(1, math.ceil(attempt.timeout_s)) * 1000
        cap = self.settings.statement_timeout_ms
        return min(ms, cap) if cap is not None else ms

    async def _release(self, pool: asyncpg.Pool, conn: Any) -> None:
        # `release` is shielded from cancellation and closes the connection when
        # it cannot be reset in time, so no connection stays borrowed.
        try:
            await pool.release(conn, timeout=_RELEASE_TIMEOUT_S)
        except Exception as exc:  # the connection was closed instead of pooled
            log.info(
                "source %s: closed a connection that could not be reset (%s)",
                self.source_id,
                type(exc).__name__,
                extra={"action": "release", "source": self.source_id},
            )

    # -- the pool ------------------------------------------------------------------

    async def _ensure_open(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                if self.settings.ssh is not None:
                    self._route = await self._network.route(*self._server_address())
                self._pool = await asyncpg.create_pool(
                    init_size=_MIN_POOL,
                    min_size=_MIN_POOL,
                    max_size=self.settings.pool_size,
                    # asyncpg hands out the most recently used connection first, so
                    # after a burst the surplus sits unused and is closed here
                    max_inactive_connection_lifetime=self.settings.pool_idle_s,
                    connect=self._connect,
                    init=_init_connection,
                    reset=_check_session,
                    connection_class=_ReadSession,
                )
            return self._pool

    def _server_address(self) -> tuple[str, int]:
        """The server's own host and port (what an SSH tunnel forwards to)."""
        settings = self.settings
        if settings.dsn is not None:
            parts = urlsplit(settings.dsn.get_secret_value())
            port = settings.port if "port" in settings.model_fields_set else (parts.port or 5432)
            return parts.hostname or "localhost", port
        return settings.host or "localhost", settings.port

    def _connect_target(self) -> _Target:
        """Where connections go (an SSH tunnel's local end, if any), and with which TLS."""
        settings = self.settings
        tls = self._tls()
        if self._route is not None:
            return _Target(self._route[0], self._route[1], tls)
        if settings.dsn is not None:
            port = settings.port if "port" in settings.model_fields_set else None
            return _Target(None, port, tls)
        return _Target(settings.host, settings.port, tls)

    def _tls(self) -> ssl.SSLContext | str | None:
        """The ``ssl`` block's TLS (``mode: disable``: none at all); without one, to a server
        on this machine, plain first: asyncpg's ``allow`` takes TLS only when the server
        refuses a plain connection. Loopback traffic never leaves the host, and TLS costs a
        read about a third of its client CPU. Elsewhere (and when the dsn names an
        ``sslmode``) asyncpg's default, ``prefer``: TLS whenever the server offers it."""
        settings = self.settings
        if settings.ssl is not None:
            return self._network.tls() or "disable"
        if settings.dsn is not None:
            query = parse_qs(urlsplit(settings.dsn.get_secret_value()).query)
            if "sslmode" in query or "ssl" in query:
                return None
        # The server's own address, not an SSH tunnel's local end: past the bastion the
        # traffic crosses a network, and TLS to the server is what protects it there.
        return "allow" if is_loopback(self._server_address()[0]) else None

    def _connect_kwargs(self) -> dict[str, Any]:
        settings = self.settings
        target = self._connect_target()
        kwargs: dict[str, Any] = {
            "server_settings": dict(_SESSION),
            "command_timeout": None,
        }
        if settings.dsn is not None:
            kwargs["dsn"] = settings.dsn.get_secret_value()
        if target.host is not None:
            kwargs["host"] = target.host
        if target.port is not None:
            kwargs["port"] = target.port
        if target.tls is not None:
            kwargs["ssl"] = target.tls
        if settings.database is not None:
            kwargs["database"] = settings.database
        if settings.username is not None:
            kwargs["user"] = settings.username
        if settings.password is not None:
            kwargs["password"] = settings.password.get_secret_value()
        return kwargs

    async def _connect(self, *_args: Any, **pool_kwargs: Any) -> asyncpg.Connection:
        """The pool's connect hook: our settings, and the read's deadline if it has one."""
        timeout = _CONNECT_TIMEOUT_S
        attempt = _ATTEMPT.get()
        if attempt is not None and attempt.task is asyncio.current_task():
            left = attempt.deadline - asyncio.get_running_loop().time()
            timeout = max(0.001, min(timeout, left))
            attempt.connecting = True  # stays set if this fails: the translator reads it
        pool_kwargs.pop("loop", None)
        return await asyncpg.connect(**pool_kwargs, **self._connect_kwargs(), timeout=timeout)

    # -- errors --------------------------------------------------------------------

    def _where(self) -> str:
        """The server as configured, for messages: ``host:port``, never the dsn."""
        settings = self.settings
        host, port = settings.host, settings.port
        if settings.dsn is not None:
            with contextlib.suppress(ValueError):
                parts = urlsplit(settings.dsn.get_secret_value())
                host = parts.hostname
                if "port" not in settings.model_fields_set:
                    port = parts.port or port
        return f"{host or 'the server'}:{port}"

    @contextlib.contextmanager
    def _translating(self, attempt: _Attempt | None) -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place."""
        try:
            yield
        except SourceError:
            raise
        except TimeoutError as exc:
            if attempt is None or attempt.connecting:
                raise SourceUnavailable(
                    self.source_id, f"cannot connect to {self._where()}: no answer in time"
                ) from exc
            message = "the query passed its deadline and was stopped"
            raise SourceTimeout(self.source_id, message) from exc
        except asyncpg.PostgresError as exc:
            raise self._server_error(exc) from exc
        except asyncpg.ClientConfigurationError as exc:
            raise self.fail("the connection settings are not valid for asyncpg") from exc
        except asyncpg.DataError as exc:
            found = _ARGUMENT.search(str(exc))
            which = f" {found.group(0)}" if found else ""
            raise self.fail(
                f"the value for{which} does not fit the type the query expects"
            ) from exc
        except asyncpg.InterfaceError as exc:
            raise self.fail(f"postgresql: {exc}") from exc
        except OSError as exc:
            raise SourceUnavailable(
                self.source_id, f"cannot connect to {self._where()}: {_os_reason(exc)}"
            ) from exc
        except (asyncpg.InternalClientError, ValueError) as exc:
            raise self.fail(f"postgresql client error ({type(exc).__name__})") from exc

    def _server_error(self, exc: asyncpg.PostgresError) -> SourceError | InputRefused:
        state = str(exc.sqlstate or "")
        text = str(exc.args[0]) if exc.args else type(exc).__name__
        if state.startswith("22"):  # data exception: a value (22P02, 22003, 22007, 22001…)
            found = _ARGUMENT.search(text)  # asyncpg names the $n it could not encode
            argument = int(found.group(0)[1:]) if found else None
            message = f"the server refused a value ({type(exc).__name__}, SQLSTATE {state})"
            return InputRefused(self.source_id, message, argument=argument)
        if state.startswith("28"):
            return SourceAuthError(self.source_id, f"authentication failed: {text}")
        if state == "57014":
            return SourceTimeout(
                self.source_id, "the query passed its deadline and the server stopped it"
            )
        if state == "53300":  # too many connections: worker.sources reads on the ones it has
            return SourceFull(self.source_id, f"{self._where()}: {text}")
        if state.startswith("08") or state in ("57P01", "57P02", "57P03"):
            return SourceUnavailable(self.source_id, f"{self._where()}: {text}")
        if state.startswith(_PLAIN_CLASSES):
            return self.fail(f"postgresql: {text}")
        # Other messages (bad input syntax, constraint details…) may quote a parameter.
        return self.fail(f"the query failed ({type(exc).__name__}, SQLSTATE {state})")


async def _init_connection(conn: asyncpg.Connection) -> None:
    """json and jsonb columns come back as values, not as their text."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


def _lost_connection(exc: BaseException) -> bool:
    """Did the read fail because its pooled connection was dead or broken?"""
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | ConnectionResetError
        | BrokenPipeError
        # "another operation is in progress": the server's goodbye arrived, its EOF not yet
        | asyncpg.InternalClientError,
    ):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if type(exc).__name__ == "gaierror":
        return "the host name does not resolve"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    return exc.strerror or type(exc).__name__


# -- binding values as the types the server expects ------------------------------

_INTEGERS = frozenset({"int2", "int4", "int8", "oid"})
_FLOATS = frozenset({"float4", "float8"})
_TEXTS = frozenset({"text", "varchar", "bpchar", "name", "citext", "char"})
_TRUE = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE = frozenset({"f", "false", "n", "no", "off", "0"})


def _integer(value: Any) -> Any:
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float | decimal.Decimal) and value == int(value):
        return int(value)
    return value


def _numeric(value: Any) -> Any:
    if isinstance(value, str):
        return decimal.Decimal(value.strip())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return decimal.Decimal(str(value))
    return value


def _float(value: Any) -> Any:
    if isinstance(value, str):
        return float(value.strip())
    if isinstance(value, int | decimal.Decimal) and not isinstance(value, bool):
        return float(value)
    return value


def _text(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


def _boolean(value: Any) -> Any:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("not a boolean")
    return value


def _date(value: Any) -> Any:
    if isinstance(value, str):
        return dt.date.fromisoformat(value.strip())
    return value


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value.strip())
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime.combine(value, dt.time())
    return value


def _time(value: Any) -> Any:
    if isinstance(value, str):
        return dt.time.fromisoformat(value.strip())
    return value


def _uuid(value: Any) -> Any:
    return uuid.UUID(value.strip()) if isinstance(value, str) else value


def _bytea(value: Any) -> Any:
    return value.encode("utf-8") if isinstance(value, str) else value


_COERCE: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_INTEGERS, _integer),
    **dict.fromkeys(_FLOATS, _float),
    **dict.fromkeys(_TEXTS, _text),
    "numeric": _numeric,
    "bool": _boolean,
    "date": _date,
    "timestamp": _timestamp,
    "timestamptz": _timestamp,
    "time": _time,
    "uuid": _uuid,
    "bytea": _bytea,
}


def _coerce(value: Any, type_name: str) -> Any:
    """``value`` as the Python type asyncpg binds to ``type_name``; others unchanged."""
    if value is None:
        return None
    convert = _COERCE.get(type_name)
    return convert(value) if convert is not None else value
