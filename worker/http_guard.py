"""Defences both HTTP servers share: the worker's endpoints (§6) and the local engine (§3).

- A JSON body nested deeper than `MAX_JSON_DEPTH` is refused (400) before it is
  parsed, so no body reaches Python's recursion limit.
- A header value that is not UTF-8 is refused: 401 for ``Authorization``, 400 for
  any other (the code behind never sees undecodable text).
- Bearer tokens are compared in constant time, whatever bytes came.
- A connection must send a whole request head within `HEADER_TIMEOUT_S` seconds
  (``WORKER_HTTP_HEADER_TIMEOUT_S``) of connecting, or of starting the head of its next
  request; otherwise it is closed, so unfinished requests cannot hold sockets open.
  aiohttp has no such setting: `GuardedRunner` serves the app with a request
  handler that keeps that deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from worker.settings import Settings, env_name

__all__ = [
    "HEADER_TIMEOUT_S",
    "MAX_JSON_DEPTH",
    "GuardedRunner",
    "basic_matches",
    "bearer_matches",
    "header_timeout_from_env",
    "json_too_deep",
    "read_json",
    "refuse_undecodable_headers",
]

MAX_JSON_DEPTH = 32
"""How deeply arrays and objects may nest in a request body."""

HEADER_TIMEOUT_S = 10.0
"""Seconds a connection has to send a whole request head (``WORKER_HTTP_HEADER_TIMEOUT_S``)."""

#: Seconds an idle keep-alive connection stays open (aiohttp's default is an hour).
KEEPALIVE_S = 75.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in JSON ``text`` nest deeper than ``limit``.

    Strings are skipped first, so brackets inside them do not count.
    """
    if text.count("{") + text.count("[") <= limit:  # it cannot nest deeper than it opens
        return False
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; 400 when it is not UTF-8 JSON or nests too deeply."""
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_request("the body is not valid JSON (not UTF-8)") from None
    if json_too_deep(text):
        raise _bad_request(f"the body nests arrays or objects deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _bad_request("the body is not valid JSON") from None


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def bearer_matches(request: web.Request, token: str) -> bool:
    """Whether ``Authorization`` is ``Bearer <token>``, compared in constant time."""
    given = request.headers.get("Authorization", "")
    # aiohttp hands undecodable bytes over as surrogates: compare them as the bytes they were.
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode())


def basic_matches(request: web.Request, token: str) -> bool:
    """Whether ``Authorization`` is HTTP Basic with ``token`` as the password (any user
    name): what a browser sends for a page behind the token. Constant-time compare."""
    given = request.headers.get("Authorization", "")
    scheme, _, encoded = given.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return False
    _user, colon, password = decoded.partition(b":")
    return bool(colon) and hmac.compare_digest(password, token.encode())


@web.middleware
async def refuse_undecodable_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 for an ``Authorization`` that is not UTF-8, 400 for any other such header."""
    for name, value in request.raw_headers:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            if name.lower() == b"authorization":
                return _error(401, "missing or wrong bearer token")
            label = name.decode("ascii", "replace")
            return _error(400, f"the {label} header is not UTF-8 text")
    return await handler(request)


def header_timeout_from_env(settings: Settings | None = None) -> float:
    """``WORKER_HTTP_HEADER_TIMEOUT_S`` if set (0: no deadline), else `HEADER_TIMEOUT_S`."""
    raw = (settings or Settings.load()).http_header_timeout_s.strip()
    if not raw:
        return HEADER_TIMEOUT_S
    name = env_name("http_header_timeout_s")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


class _HeadDeadline(RequestHandler):
    """aiohttp's request handler, closing a connection whose request head is late."""

    __slots__ = ("_head_seen", "_head_timeout_s", "_head_timer")

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count != self._head_seen:  # one head (or more) came in whole
            self._head_seen = self._request_count
            self._disarm()
        elif data and self._idle():  # the first bytes of the next request's head
            self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """Waiting for a request: none queued, none being handled (so no body is due)."""
        waiter = self._waiter
        return not self._messages and waiter is not None and not waiter.done()

    def _arm(self) -> None:
        if self._head_timer is None and self._head_timeout_s > 0:
            self._head_timer = self._loop.call_later(
                self._head_timeout_s, self._head_late, self._request_count
            )

    def _disarm(self) -> None:
        timer, self._head_timer = self._head_timer, None
        if timer is not None:
            timer.cancel()

    def _head_late(self, heads_before: int) -> None:
        self._head_timer = None
        if self._request_count == heads_before:
            self.force_close()


class _Server(web.Server):
    """aiohttp's low-level server, making `_HeadDeadline` handlers."""

    def __init__(self, server: web.Server, header_timeout_s: float) -> None:
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self.header_timeout_s = header_timeout_s

    def __call__(self) -> RequestHandler:
        return _HeadDeadline(
            self, loop=self._loop, header_timeout_s=self.header_timeout_s, **self._kwargs
        )


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` with a request head deadline and a shorter keep-alive."""

    def __init__(
        self, app: web.Application, *, header_timeout_s: float | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_S)
        super().__init__(app, **kwargs)
        self.header_timeout_s = (
            header_timeout_from_env() if header_timeout_s is None else header_timeout_s
        )

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self.header_timeout_s)
