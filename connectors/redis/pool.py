"""Connections to a Redis server: the pool, TLS, and one exchange of commands.

The deadline is the socket's: every read sets the borrowed connection's socket
timeout to ``timeout_s`` (the connect timeout to at most that), and a read that
passes it, or is cancelled, closes its connection instead of returning it, so a
late reply can never answer the next read. A pooled connection found dead (the
server restarted) is replaced, and a read that failed on one is tried once more
on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from connectors import egress
from connectors.base import SourceUnavailable
from connectors.network import TLSSettings
from connectors.redis.settings import RedisSettings, RedisTarget

__all__ = ["Borrowed", "Pool", "PoolStats", "connection_factory", "tls_options"]


_Connection = redis.asyncio.Connection
_TLSConnection = redis.asyncio.SSLConnection


def tls_options(tls: TLSSettings | None, base_dir: Path) -> dict[str, Any]:
    """redis-py's TLS keywords from the ``ssl`` block (verified unless told not)."""
    if tls is None:  # a rediss:// URL without an ssl block: verify against the system store
        return {"ssl_cert_reqs": "required", "ssl_check_hostname": True}

    def path(raw: str | None) -> str | None:
        if raw is None:
            return None
        return str(egress.current().file(raw, base_dir))  # below WORKER_DATA_DIR if untrusted

    return {
        "ssl_cert_reqs": "none" if tls.mode == "require" else "required",
        "ssl_check_hostname": tls.mode == "verify-full",
        "ssl_ca_certs": path(tls.ca_file),
        "ssl_certfile": path(tls.cert_file),
        "ssl_keyfile": path(tls.key_file),
        "ssl_password": tls.key_password.get_secret_value() if tls.key_password else None,
    }


@dataclass(frozen=True)
class PoolStats:
    """Connections a source holds: ``idle`` ones kept open, ``in_use`` by a read."""

    idle: int
    in_use: int


async def _stale(conn: _Connection) -> bool:
    """Whether an idle pooled connection must be replaced before it serves a read.

    redis-py up to 8.1 answers True for a connection the server closed (EOF is
    "readable"); from 8.2 on it raises `ConnectionError` instead. Either way,
    and for data nobody asked for, the connection is not fit for another read.
    """
    try:
        return bool(await conn.can_read())
    except (redis.exceptions.ConnectionError, OSError):
        return True


def connection_factory(
    settings: RedisSettings, target: RedisTarget, route: tuple[str, int] | None, base_dir: Path
) -> Callable[[], _Connection]:
    """How the pool opens a connection: to the route (an SSH tunnel's end) or the
    target, with TLS when the url says ``rediss://`` or an ``ssl`` block is given."""
    host, port = route or (target.host, target.port)
    tls = target.tls or settings.ssl is not None
    connection_class = _TLSConnection if tls else _Connection
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "client_name": settings.client_name,
        "decode_responses": True,
        # RESP2 whatever redis-py's default: every server speaks it, and the
        # replies are read here by their shape (hashes as field, value…).
        "protocol": 2,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": Retry(NoBackoff(), 0),  # `Pool.call` decides what is worth a retry
    }
    if tls:
        options.update(tls_options(settings.ssl, base_dir))
    return lambda: connection_class(**options)


class Pool:
    """At most ``size`` connections; a read borrows one and gives it back, or closes it.

    Giving a connection back, or closing it, never suspends (``disconnect``
    with ``nowait`` only closes the socket), so a read cancelled at any point
    never leaves its connection open, or counted as borrowed.
    """

    def __init__(
        self,
        source_id: str,
        size: int,
        make: Callable[[], _Connection],
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.source_id = source_id
        self._make = make
        self.connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self.closed = False

    def stats(self) -> PoolStats:
        return PoolStats(idle=len(self._idle), in_use=len(self._busy))

    async def call(self, line: Sequence[str], timeout_s: float) -> Any:
        """Send one command and read its reply; once more if a pooled connection was dead."""
        return (await self.call_many([line], timeout_s))[0]

    async def call_many(self, lines: Sequence[Sequence[str]], timeout_s: float) -> list[Any]:
        """Send commands in one write (a pipeline) and read every reply; as `call`."""
        if not lines:
            return []
        try:
            return await self._send(lines, timeout_s, retry_dead=True)
        except _DeadConnection:
            # A read is safe to repeat; the connections opened with that one are suspect too.
            await self.drop_idle()
            return await self._send(lines, timeout_s, retry_dead=False)

    async def _send(
        self, lines: Sequence[Sequence[str]], timeout_s: float, *, retry_dead: bool
    ) -> list[Any]:
        async with self.borrow(timeout_s, self.connect_timeout_s) as borrowed:
            try:
                return await _exchange(borrowed.conn, lines)
            except redis.exceptions.ConnectionError as exc:
                if self.closed:
                    raise SourceUnavailable(self.source_id, "the source was closed") from exc
                if retry_dead and borrowed.reused and _dead_connection(exc):
                    raise _DeadConnection from exc
                raise

    @contextlib.asynccontextmanager
    async def borrow(self, timeout_s: float, connect_timeout_s: float) -> AsyncIterator[Borrowed]:
        async with self._slots:
            if self.closed:
                raise SourceUnavailable(self.source_id, "the source was closed")
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._make()
            self._busy.add(conn)
            try:
                conn.socket_timeout = timeout_s
                conn.socket_connect_timeout = min(connect_timeout_s, timeout_s)
                if reused and await _stale(conn):
                    # The server closed it (a restart) or left a reply unread: replace it.
                    await conn.disconnect(nowait=True)
                    reused = False
                await conn.connect()  # type: ignore[no-untyped-call]  # unannotated upstream
                yield Borrowed(conn, reused)
            except redis.exceptions.ResponseError:
                raise  # the server answered: the connection is still in step
            except BaseException:
                # Timeout, cancellation, a broken socket: a reply may still be on its
                # way, so the connection must never serve another read.
                await conn.disconnect(nowait=True)
                raise
            finally:
                self._busy.discard(conn)
                if conn.is_connected and not self.closed:
                    self._idle.append(conn)
                elif conn.is_connected:
                    await conn.disconnect(nowait=True)

    async def drop_idle(self) -> None:
        """Close the idle connections (after one was found dead, the rest likely are)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)

    async def close(self) -> None:
        self.closed = True
        busy = list(self._busy)
        await self.drop_idle()
        for conn in busy:  # their reads end with a closed-connection error
            await conn.disconnect(nowait=True)


@dataclass(frozen=True)
class Borrowed:
    conn: _Connection
    #: it served an earlier read, so it may have died since
    reused: bool


async def _exchange(conn: _Connection, lines: Sequence[Sequence[str]]) -> list[Any]:
    """Send ``lines`` in one write and read every reply, so the connection stays in step."""
    if len(lines) == 1:
        await conn.send_command(*lines[0])
    else:
        await conn.send_packed_command(conn.pack_commands(lines))
    replies: list[Any] = []
    refused: redis.exceptions.ResponseError | None = None
    for _ in lines:
        try:  # every reply is read, so the connection stays in step
            replies.append(await conn.read_response())
        except redis.exceptions.ResponseError as exc:
            refused = refused or exc
            replies.append(None)
    if refused is not None:
        raise refused
    return replies


class _DeadConnection(Exception):
    """A connection that served earlier reads turned out closed: worth one more try."""


def _dead_connection(exc: redis.exceptions.ConnectionError) -> bool:
    """A socket-level failure, not the server refusing us."""
    refusals = (
        redis.exceptions.AuthenticationError,
        redis.exceptions.AuthorizationError,
        redis.exceptions.BusyLoadingError,
        redis.exceptions.MaxConnectionsError,
    )
    return not isinstance(exc, refusals)
