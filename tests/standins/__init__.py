"""Stand-ins for the SaaS APIs the connectors read, served on loopback.

Google Sheets, Airtable, Salesforce and HubSpot cannot be reached from the test
machines, so each has a small aiohttp app here that answers what the service's
public API reference documents — paths, methods, auth header, JSON shapes, error
bodies and codes, paging — with the sources cited at the top of its module. The
connectors' real client libraries (gspread, simple-salesforce, httpx) are pointed
at them through configuration only.

Every stand-in records each request as it arrived (a `tests.servers.hostile.Recorder`
middleware, whose ``misbehave`` also swaps in an endless body, a stall or a
redirect), and can be told to answer its documented 429 for the next requests
(`StandIn.throttle`). Tests serve one with `tests.servers.hostile.serve` on their
own event loop, or with `serve_in_thread` when the test blocks (a subprocess).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import ClientConnectionResetError, web

from tests.servers.hostile import RECORDERS, Behaviour, Recorder, Seen, recorded_app, serve

__all__ = ["StandIn", "endless_until_hangup", "serve_in_thread", "serve_tls"]


class StandIn(abc.ABC):
    """What the stand-ins share: the request log and scripted rate limiting."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self._throttle_left = 0
        self._retry_after: str | None = None

    @abc.abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the service's routes to ``app``."""

    @abc.abstractmethod
    def rate_limited(self, retry_after: str | None) -> web.Response:
        """The service's documented 429 answer."""

    def app(self) -> web.Application:
        app = recorded_app(self.recorder)
        self.routes(app)
        return app

    def throttle(self, times: int, retry_after: str | None = "1") -> None:
        """Answer the next ``times`` data requests with the documented 429."""
        self._throttle_left = times
        self._retry_after = retry_after

    def throttled(self) -> web.Response | None:
        """Call first in a data handler: the 429 to send, or None to go on."""
        if self._throttle_left <= 0:
            return None
        self._throttle_left -= 1
        return self.rate_limited(self._retry_after)

    async def slow_down(self, seconds: float) -> None:
        """Answer late, as a slow source does; cut short when the server shuts down."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.recorder.stop.wait(), seconds)

    @property
    def seen(self) -> list[Seen]:
        return self.recorder.seen

    def seen_at(self, prefix: str) -> list[Seen]:
        """The requests whose raw path starts with ``prefix``."""
        return [s for s in self.recorder.seen if s.raw_path.startswith(prefix)]


@contextlib.contextmanager
def serve_in_thread(make_app: Callable[[], web.Application]) -> Iterator[str]:
    """Serve an app on its own event loop in a thread; yields its base URL."""
    box: dict[str, Any] = {}
    started = threading.Event()

    async def run() -> None:
        box["loop"] = asyncio.get_running_loop()
        stop = box["stop"] = asyncio.Event()
        async with serve(make_app()) as url:
            box["url"] = url
            started.set()
            await stop.wait()

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # reported to the waiting test below
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="stand-in", daemon=True)
    thread.start()
    if not started.wait(15) or "error" in box:
        raise RuntimeError(f"the stand-in did not start: {box.get('error')!r}")
    try:
        yield str(box["url"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(15)


@contextlib.asynccontextmanager
async def serve_tls(app: web.Application, context: ssl.SSLContext) -> AsyncIterator[str]:
    """Like `tests.servers.hostile.serve`, over TLS; yields ``https://127.0.0.1:port``.

    The listening socket is made here rather than by a `web.TCPSite` so that TLS
    shutdowns are bounded (``ssl_shutdown_timeout``): a client that hung up without
    ``close_notify`` would otherwise leave its server-side socket open past the test.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    if runner.server is None:  # pragma: no cover - setup() makes it
        raise RuntimeError("the app runner has no server")
    server = await asyncio.get_running_loop().create_server(
        runner.server, "127.0.0.1", 0, ssl=context, ssl_shutdown_timeout=0.5
    )
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for recorder in app.get(RECORDERS, []):
            recorder.close()
        server.close()
        await runner.cleanup()
        await server.wait_closed()
        await asyncio.sleep(0.6)  # the TLS shutdowns end (or time out) on this loop


def endless_until_hangup(recorder: Recorder, cap_bytes: int = 256 * 1024 * 1024) -> Behaviour:
    """`tests.servers.hostile.endless` for TLS too: stops when the client hangs up.

    Over TLS a write to a connection the client closed does not fail, and need not
    yield to the event loop that would learn of the hang-up: the plain version would
    go on "sending" into the void. This one yields after each chunk and stops once
    the transport is gone.
    """
    chunk = b"x" * 65536

    async def behave(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ClientConnectionResetError, ConnectionError):
            await response.write(b'{"records": ["')
            while recorder.streamed < cap_bytes and not recorder.stop.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                await response.write(chunk)
                recorder.streamed += len(chunk)
                # A write into a TLS transport need not yield; the hang-up news only
                # arrives through the loop.
                await asyncio.sleep(0)
        return response

    return behave
