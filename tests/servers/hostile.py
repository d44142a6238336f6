"""Serving test apps on loopback, recording what they saw, and misbehaving on demand.

Every API test server (REST, GraphQL, the SOAP proxy) is an aiohttp app with a
`Recorder` middleware: it keeps each request as the server received it (method,
raw path with its percent-encoding, headers, body) and, when a test sets
``recorder.misbehave``, answers with that behaviour instead of the real
handler: an endless body, headers then a stalled body, a redirect, a status
with ``Retry-After``. Streams and stalls are bounded in time and size, and end
when the recorder closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import ClientConnectionResetError, web

__all__ = [
    "RECORDERS",
    "Behaviour",
    "Recorder",
    "Seen",
    "dropping_server",
    "endless",
    "recorded_app",
    "redirect",
    "serve",
    "stall",
    "status",
]

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse | None]]

#: an endless body stops after this much, or this long, whatever the client does
_STREAM_CAP_BYTES = 512 * 1024 * 1024
_STREAM_CAP_S = 20.0
_CHUNK = b"x" * 65536


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes
    host: str


@dataclass
class Recorder:
    """Middleware that records requests and lets a test swap in a misbehaviour."""

    seen: list[Seen] = field(default_factory=list)
    misbehave: Behaviour | None = None
    streamed: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.raw_path, dict(request.headers), body, request.host)
        )
        if self.misbehave is not None:
            response = await self.misbehave(request)
            if response is not None:
                return response
        return await handler(request)

    def close(self) -> None:
        self.stop.set()


RECORDERS = web.AppKey("recorders", list[Recorder])


def recorded_app(recorder: Recorder) -> web.Application:
    """An app with ``recorder`` as its middleware, closed when `serve` ends."""
    app = web.Application(middlewares=[recorder.middleware])
    app[RECORDERS] = [recorder]
    return app


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` on a free port of ``host``; yields ``http://host:port``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://{host}:{port}"
    finally:
        for recorder in app.get(RECORDERS, []):
            recorder.close()
        await runner.cleanup()


# -- misbehaviours ---------------------------------------------------------------


def endless(recorder: Recorder, content_type: str = "application/json") -> Behaviour:
    """A 200 whose body never ends (until the client hangs up, or the caps)."""

    async def behave(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        started = time.monotonic()
        with contextlib.suppress(ClientConnectionResetError, ConnectionError):
            await response.write(b'{"items": ["')
            while (
                recorder.streamed < _STREAM_CAP_BYTES
                and time.monotonic() - started < _STREAM_CAP_S
                and not recorder.stop.is_set()
            ):
                await response.write(_CHUNK)
                recorder.streamed += len(_CHUNK)
        return response

    return behave


def stall(recorder: Recorder, content_type: str = "application/json") -> Behaviour:
    """Headers and the first bytes of a body, then nothing until the recorder closes."""

    async def behave(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        with contextlib.suppress(ClientConnectionResetError, ConnectionError):
            await response.write(b'{"status": "sh')
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorder.stop.wait(), _STREAM_CAP_S)
        return response

    return behave


def redirect(location: str, code: int = 302) -> Behaviour:
    async def behave(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return behave


def status(
    code: int, *, times: int = 1_000_000, retry_after: str | None = None, body: str = ""
) -> Behaviour:
    """Answer ``code`` (with ``Retry-After``) the first ``times`` requests, then behave."""
    left = [times]

    async def behave(request: web.Request) -> web.StreamResponse | None:
        if left[0] <= 0:
            return None
        left[0] -= 1
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return web.Response(status=code, text=body, headers=headers)

    return behave


@contextlib.asynccontextmanager
async def dropping_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server that accepts and at once closes every connection, counting them."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(65536), 1.0)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()
