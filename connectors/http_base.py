"""Safe HTTP for every HTTP-based source (REST, GraphQL, SOAP, the SaaS APIs).

What a parameter can and cannot do here:

- The scheme, host and port come from the config's ``base_url`` only. A path
  template's ``{name}`` is filled with the parameter percent-encoded as one
  segment (``/``, ``?``, ``#``, ``@``, CR/LF, ``..`` cannot escape it), and a
  built URL that points anywhere else is refused before any request is sent.
- Redirects are followed only within the same origin, at most three.
- A body is streamed and cut off at ``max_response_bytes`` (default 5 MB):
  a huge or endless answer cannot exhaust memory.
- The job's deadline covers connect, TLS, headers and body.
- Retries happen only for reads the connector marks idempotent, only after a
  connect error, a 429 or a 503 (honouring ``Retry-After``), and only while the
  deadline leaves room for them.
- Headers may name other connection fields (``"Bearer {api_key}"``), never a
  parameter; no header, token or query string ever reaches an error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, Field, SecretStr, field_validator

from connectors.base import (
    ConnectionSettings,
    ReadResult,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    bind_placeholders,
    jsonable,
)
from connectors.network import TLSSettings

__all__ = [
    "HTTPResponse",
    "HTTPSettings",
    "SafeHTTP",
    "dig",
    "json_value",
    "result_of",
    "retry_after",
    "safe_message",
    "string_fields",
]

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAX_REDIRECTS = 3


class HTTPSettings(ConnectionSettings):
    """Connection fields every HTTP source shares; connectors add their own."""

    base_url: str
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: SecretStr | None = None
    max_response_bytes: int = Field(default=5_000_000, ge=1_000, le=500_000_000)
    retries: int = Field(default=2, ge=0, le=5)
    ssl: TLSSettings | None = None

    @field_validator("base_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an absolute http(s) URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("base_url takes no query, fragment or credentials")
        return value.rstrip("/")

    def secret_fields(self) -> dict[str, str]:
        """Every string connection field, secrets revealed: what ``{field}`` in a header names."""
        return string_fields(self)


def string_fields(settings: BaseModel) -> dict[str, str]:
    """Every string field of ``settings``, secrets revealed (for ``{field}`` in headers)."""
    out: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            out[name] = value.get_secret_value()
        elif isinstance(value, str):
            out[name] = value
    return out


@dataclass(frozen=True)
class HTTPResponse:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def json_value(value: Any, what: str) -> Any:
    """``value`` if JSON can carry it (a query's body or payload, checked when the config
    loads), else a `ValueError` naming ``what``."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON: {exc}") from None
    return value


def dig(document: Any, path: str | None) -> Any:
    """``dig({"data": {"items": [1]}}, "data.items")`` → ``[1]``; numbers index lists."""
    if not path:
        return document
    node = document
    for step in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(step)
        elif isinstance(node, list) and step.lstrip("-").isdigit():
            index = int(step)
            node = node[index] if -len(node) <= index < len(node) else None
        else:
            return None
        if node is None:
            return None
    return node


class SafeHTTP:
    """One pooled httpx client bound to one origin, with the rules of the module docstring."""

    def __init__(
        self,
        source_id: str,
        settings: HTTPSettings,
        *,
        base_dir: Path,
        redirects: int = _MAX_REDIRECTS,
    ) -> None:
        self.source_id = source_id
        self.settings = settings
        self.base_dir = base_dir
        #: same-origin redirects followed at most (0: none, e.g. for a POST that must go once)
        self.redirects = redirects
        self._origin = _origin(settings.base_url)
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def within(
        cls,
        source_id: str,
        settings: HTTPSettings,
        *,
        max_bytes: int,
        base_dir: Path,
        redirects: int = _MAX_REDIRECTS,
    ) -> SafeHTTP:
        """A client whose response cap is the source's own or the worker's, whichever is less."""
        capped = min(settings.max_response_bytes, max_bytes)
        update = {"max_response_bytes": capped}
        copied = settings.model_copy(update=update)
        return cls(source_id, copied, base_dir=base_dir, redirects=redirects)

    def headers(self) -> dict[str, str]:
        """Configured headers with ``{field}`` filled from the connection, never from a job."""
        fields = self.settings.secret_fields()

        def fill(value: str) -> str:
            return _FIELD.sub(lambda m: fields.get(m.group(1), ""), value)

        return {name: fill(value) for name, value in self.settings.headers.items()}

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            tls = self.settings.ssl.context(self.base_dir) if self.settings.ssl else None
            self._client = httpx.AsyncClient(
                headers=self.headers(),
                follow_redirects=False,
                verify=tls if tls is not None else True,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                trust_env=False,
            )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def url(self, path: str, params: Mapping[str, Any]) -> str:
        """The base URL joined with a path template whose ``{name}`` are URL-encoded values."""
        bound = bind_placeholders(path, params, url_path=True)
        # A path that is exactly "{name}" binds the typed value: encode it as a segment too.
        filled = (
            bound
            if isinstance(bound, str) and bound != params.get(path.strip("{}"))
            else (str(bind_placeholders("/" + path.lstrip("/"), params, url_path=True)))
        )
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//", filled) or any(c in filled for c in "\r\n\\"):
            raise SourceError(self.source_id, "the request path must stay on the configured host")
        url = self.settings.base_url + "/" + filled.lstrip("/")
        if _origin(url) != self._origin:
            raise SourceError(self.source_id, "the request path must stay on the configured host")
        return url

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout_s: float,
        idempotent: bool,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        rate_limit_pause_s: float | None = None,
    ) -> HTTPResponse:
        """Send one request (with same-origin redirects and safe retries) under the deadline.

        ``rate_limit_pause_s`` is the wait after a 429 without ``Retry-After`` when
        the service documents one (Airtable: 30 s); by default a short exponential one.
        """
        deadline = time.monotonic() + timeout_s
        attempts = self.settings.retries + 1 if idempotent else 1
        for attempt in range(attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceTimeout(self.source_id, f"no answer within {timeout_s:g} s")
            try:
                response = await self._follow(
                    method, url, left, params, json_body, content, headers
                )
            except SourceUnavailable:
                if attempt + 1 >= attempts:
                    raise
                await self._pause(0.2 * 2**attempt, deadline)
                continue
            if response.status in (429, 503) and attempt + 1 < attempts:
                pause = retry_after(response.headers)
                if pause is None:  # "Retry-After: 0" means at once, not the default
                    pause = 0.2 * 2**attempt
                if response.status == 429 and rate_limit_pause_s is not None:
                    pause = retry_after(response.headers) or rate_limit_pause_s
                if time.monotonic() + pause < deadline:
                    await asyncio.sleep(pause)
                    continue
            return response
        raise SourceTimeout(self.source_id, f"no answer within {timeout_s:g} s")

    async def _pause(self, seconds: float, deadline: float) -> None:
        if time.monotonic() + seconds >= deadline:
            raise SourceTimeout(self.source_id, "the deadline left no room to retry")
        await asyncio.sleep(seconds)

    async def _follow(
        self,
        method: str,
        url: str,
        left: float,
        params: Mapping[str, Any] | None,
        json_body: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> HTTPResponse:
        for _ in range(self.redirects + 1):
            response = await self._send(method, url, left, params, json_body, content, headers)
            if response.status not in (301, 302, 303, 307, 308):
                return response
            if not self.redirects:
                raise SourceError(
                    self.source_id, f"the source redirected ({response.status}); not followed"
                )
            target = urljoin(url, response.headers.get("location", ""))
            if _origin(target) != self._origin:
                raise SourceError(
                    self.source_id, "the source redirected to another host; not followed"
                )
            url, params = target, None
            if response.status == 303:
                method, json_body, content = "GET", None, None
        raise SourceError(self.source_id, "too many redirects")

    async def _send(
        self,
        method: str,
        url: str,
        left: float,
        params: Mapping[str, Any] | None,
        json_body: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> HTTPResponse:
        cap = self.settings.max_response_bytes
        try:
            async with asyncio.timeout(left):
                request = self.client().build_request(
                    method,
                    url,
                    params=_query(params),
                    json=json_body,
                    content=content,
                    headers=dict(headers or {}),
                    timeout=httpx.Timeout(left),
                )
                response = await self.client().send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body.extend(chunk)
                        if len(body) > cap:
                            raise SourceError(
                                self.source_id, f"the answer is larger than {cap} bytes; cut off"
                            )
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise SourceTimeout(self.source_id, "no answer before the deadline") from exc
        except httpx.TimeoutException as exc:
            raise SourceTimeout(self.source_id, "no answer before the deadline") from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            raise SourceUnavailable(
                self.source_id, f"cannot reach {self._origin} ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise SourceError(self.source_id, f"HTTP error ({type(exc).__name__})") from exc
        return HTTPResponse(response.status_code, response.headers, bytes(body))

    def check(self, response: HTTPResponse, *, not_found_ok: bool = True) -> HTTPResponse | None:
        """Map a status to the outcome: None for 404 (not found), errors for 401/403/5xx."""
        status = response.status
        if status in (401, 403):
            raise SourceAuthError(self.source_id, f"authentication failed ({status})")
        if status == 404 and not_found_ok:
            return None
        if status == 429:
            raise SourceUnavailable(self.source_id, "rate limited (429) past the deadline")
        if status >= 400:
            raise SourceError(self.source_id, f"the source answered {status}")
        return response


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {
        str(k): ("true" if v is True else "false" if v is False else str(v))
        for k, v in params.items()
        if v is not None
    }


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    if raw.strip().isdigit():
        return float(raw.strip())
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def result_of(value: Any, *, max_rows: int) -> ReadResult:
    """A decoded answer (JSON, a SOAP object turned into dicts) as rows.

    A list gives a row per item (at most ``max_rows``), an object one row, a
    scalar the row ``{"value": …}``; None, ``""``, ``[]`` and ``{}`` are not found.
    """
    plain = jsonable(value)
    if plain in (None, "", [], {}):
        return ReadResult(rows=[])
    if isinstance(plain, list):
        items = plain[:max_rows]
        return ReadResult([i if isinstance(i, dict) else {"value": i} for i in items], items)
    if isinstance(plain, dict):
        return ReadResult(rows=[plain], data=plain)
    return ReadResult(rows=[{"value": plain}], data=plain)


def safe_message(text: str, hide: Any = (), *, limit: int = 200) -> str:
    """A source's own error text fit for our errors: one line, trimmed, ``hide`` values masked.

    Sources echo what they were sent ("invalid value 'ABC-1'"): every value in
    ``hide`` (parameters, secrets), standing as a token of its own, becomes ``…``.
    """
    line = " ".join(str(text).split())
    forms = {form for v in hide if v is not None for form in (str(v), json.dumps(str(v))[1:-1])}
    for value in sorted(forms - {""}, key=len, reverse=True):
        line = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "…", line)
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
