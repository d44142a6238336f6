"""Bounded ``requests`` sessions for the connectors whose libraries block on them.

gspread, google-auth and simple-salesforce speak ``requests``, so they cannot use
`connectors.http_base`; a session from `guard_session` keeps the same rules:

- only the origins in `Guard.origins` are contacted; a redirect elsewhere is
  refused (`OffHost`);
- every body is streamed and cut off at `Guard.cap` bytes (`TooLarge`);
- each request's connect and read timeouts are what is left of the deadline set
  with `Guard.deadline`, and a body still trickling in at the deadline is dropped
  (`Late`);
- GETs and HEADs are retried after a connect error, a 429 or a 503, honouring
  ``Retry-After`` or else an exponential back-off, only while the deadline
  leaves room.

The deadline is per thread: the connector sets it inside the thread its
blocking call runs in. `translating` turns these stops and ``requests``
errors into the `SourceError` family.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from connectors.base import SourceError, SourceTimeout, SourceUnavailable
from connectors.http_base import retry_after

__all__ = [
    "BoundedAdapter",
    "Guard",
    "Late",
    "OffHost",
    "Stop",
    "TooLarge",
    "guard_session",
    "origin",
    "translating",
]

_NO_DEADLINE_S = 10.0  # what a request outside `Guard.deadline` may take
_CONNECT_S = 10.0
_BACKOFF_S = 0.5  # Google: retry after 1 s, 2 s, 4 s… plus jitter; halved for a 10 s job
_CHUNK = 64 * 1024

Origin = tuple[str, str, int | None]
S = TypeVar("S", bound=requests.Session)


class Stop(Exception):
    """Raised inside a request thread; translated in `translating`."""


class TooLarge(Stop):
    pass


class Late(Stop):
    pass


class OffHost(Stop):
    pass


def origin(url: str) -> Origin:
    """Scheme, lower-cased host and port (the scheme's default when not given)."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class Guard:
    """Per-thread deadline, allowed origins and limits shared by one source's sessions."""

    def __init__(self, origins: set[Origin], cap: int, retries: int) -> None:
        self.origins = origins
        self.cap = cap
        self.retries = retries
        self._local = threading.local()

    @contextlib.contextmanager
    def deadline(self, timeout_s: float) -> Iterator[None]:
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = time.monotonic() + timeout_s
        try:
            yield
        finally:
            self._local.deadline = previous

    def left(self) -> float:
        deadline: float | None = getattr(self._local, "deadline", None)
        return _NO_DEADLINE_S if deadline is None else float(deadline - time.monotonic())


class BoundedAdapter(HTTPAdapter):
    """A requests adapter keeping one origin set, one deadline, one body cap, safe retries."""

    def __init__(self, guard: Guard) -> None:
        super().__init__(pool_connections=4, pool_maxsize=32)
        self.guard = guard

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        if origin(request.url or "") not in self.guard.origins:
            raise OffHost("a request (or a redirect) pointed at another host; refused")
        attempts = self.guard.retries + 1 if request.method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            left = self.guard.left()
            if left <= 0:
                raise Late("no answer before the deadline")
            kwargs["timeout"] = (min(left, _CONNECT_S), left)
            try:
                response = super().send(request, stream=True, **kwargs)
            except requests.ConnectionError:
                if attempt + 1 >= attempts or not self._pause(_backoff(attempt)):
                    raise
                continue
            self._read_body(response)
            if response.status_code in (429, 503) and attempt + 1 < attempts:
                if self._pause(retry_after(response.headers) or _backoff(attempt)):
                    continue
            return response
        raise Late("no answer before the deadline")  # pragma: no cover - the loop returns

    def _pause(self, seconds: float) -> bool:
        if seconds >= self.guard.left():
            return False
        time.sleep(seconds)
        return True

    def _read_body(self, response: requests.Response) -> None:
        body = bytearray()
        try:
            for chunk in response.iter_content(_CHUNK):
                body.extend(chunk)
                if len(body) > self.guard.cap:
                    raise TooLarge(f"the answer is larger than {self.guard.cap} bytes; cut off")
                if self.guard.left() <= 0:
                    raise Late("the answer was still arriving at the deadline")
        finally:
            response.close()
        response._content = bytes(body)


def guard_session(session: S, guard: Guard) -> S:
    """``session`` sending through `BoundedAdapter` only, blind to proxy variables."""
    session.trust_env = False
    for prefix in ("https://", "http://"):
        session.mount(prefix, BoundedAdapter(guard))
    return session


@contextlib.contextmanager
def translating(source_id: str, service: str) -> Iterator[None]:
    """Deadlines, `Stop`s and ``requests`` errors into the `SourceError` family;
    ``service`` names the remote end in "cannot reach …"."""
    try:
        yield
    except SourceError:
        raise
    except (TimeoutError, requests.Timeout) as exc:
        raise SourceTimeout(source_id, "no answer before the deadline") from exc
    except Late as exc:
        raise SourceTimeout(source_id, str(exc)) from exc
    except Stop as exc:
        raise SourceError(source_id, str(exc)) from exc
    except requests.ConnectionError as exc:
        raise SourceUnavailable(
            source_id, f"cannot reach {service} ({type(exc).__name__})"
        ) from exc
    except requests.RequestException as exc:
        raise SourceError(source_id, f"HTTP error ({type(exc).__name__})") from exc


def _backoff(attempt: int) -> float:
    return _BACKOFF_S * 2.0**attempt + random.uniform(0, 0.1)  # noqa: S311 - jitter, not secrecy
