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

Credentials other than headers are an ``auth`` block (`AuthSettings`), turned
into an ``httpx.Auth`` by `auth_for`: ``basic``, ``bearer``, ``header``,
``query`` and ``oauth2_client_credentials`` (`ClientCredentials`: one cached
token shared by every request of the source, fetched again just before it
expires, or once after a 401).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote_plus, urlencode, urljoin, urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator

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
    "AuthSettings",
    "BasicAuthSettings",
    "BearerAuthSettings",
    "ClientCredentials",
    "HTTPResponse",
    "HTTPSettings",
    "HeaderAuthSettings",
    "OAuth2ClientCredentialsSettings",
    "QueryAuthSettings",
    "SafeHTTP",
    "auth_for",
    "dig",
    "json_value",
    "result_of",
    "retry_after",
    "safe_message",
    "string_fields",
]

log = logging.getLogger(__name__)

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
        return _absolute_http(value, "base_url").rstrip("/")

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


def _absolute_http(value: str, field: str) -> str:
    """``value`` if it is an absolute http(s) URL with no query, fragment or credentials."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{field} takes no query, fragment or credentials")
    return value


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
        auth: httpx.Auth | None = None,
    ) -> None:
        self.source_id = source_id
        self.settings = settings
        self.base_dir = base_dir
        #: same-origin redirects followed at most (0: none, e.g. for a POST that must go once)
        self.redirects = redirects
        #: credentials put on every request (`auth_for`); a `ClientCredentials` is closed with us
        self.auth = auth
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
        auth: httpx.Auth | None = None,
    ) -> SafeHTTP:
        """A client whose response cap is the source's own or the worker's, whichever is less."""
        capped = min(settings.max_response_bytes, max_bytes)
        update = {"max_response_bytes": capped}
        copied = settings.model_copy(update=update)
        return cls(source_id, copied, base_dir=base_dir, redirects=redirects, auth=auth)

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
                auth=self.auth,
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
        if isinstance(self.auth, ClientCredentials):
            await self.auth.aclose()

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

    def link(self, current: str, target: str) -> str:
        """A link an answer gave (a next page), resolved against ``current``; refused unless
        it stays on the configured origin, as a redirect must."""
        if any(c in target for c in "\r\n\\"):
            raise SourceError(self.source_id, "the answer's link is malformed; not followed")
        url = urljoin(current, target.strip())
        if _origin(url) != self._origin:
            raise SourceError(
                self.source_id, "the answer's link points to another host; not followed"
            )
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
                response = await self._authorized(
                    method, url, deadline, params, json_body, content, headers
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

    async def _authorized(
        self,
        method: str,
        url: str,
        deadline: float,
        params: Mapping[str, Any] | None,
        json_body: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
    ) -> HTTPResponse:
        """One request; sent once more with a fresh token when an OAuth2 token met a 401
        (revoked early, or the clocks disagree). A refused request did nothing: even a
        POST may go again."""
        response = await self._follow(
            method, url, deadline - time.monotonic(), params, json_body, content, headers
        )
        if response.status == 401 and isinstance(self.auth, ClientCredentials):
            self.auth.expire_sent()
            left = deadline - time.monotonic()
            if left > 0:
                response = await self._follow(
                    method, url, left, params, json_body, content, headers
                )
        return response

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


class _NoQueryStrings(logging.Filter):
    """httpx logs each request's URL at INFO: its query string may carry a ``query`` auth
    secret or a customer's parameter, so the URL is logged without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.copy_with(query=None) if isinstance(arg, httpx.URL) and arg.query else arg
                for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_NoQueryStrings())


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


# -- credentials ----------------------------------------------------------------------------

_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an RFC 9110 token
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
_OAUTH_ERROR = re.compile(r"^[A-Za-z0-9_.-]{1,60}$")
_TOKEN_TIMEOUT_S = 10.0
_TOKEN_MAX_BYTES = 64_000
#: a token is fetched again this long before it expires (at most a tenth of its life)
_EXPIRY_MARGIN_S = 30.0


def _no_control(value: SecretStr) -> SecretStr:
    if any(ord(c) < 32 or ord(c) == 127 for c in value.get_secret_value()):
        raise ValueError("must not contain control characters (CR, LF, …)")
    return value


#: a secret that goes into a header: no CR/LF (no header injection), no other controls
_HeaderSecret = Annotated[SecretStr, AfterValidator(_no_control)]


class _AuthModel(BaseModel):
    # A rejected value would otherwise be echoed, secret and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class BasicAuthSettings(_AuthModel):
    """``{type: basic, username, password}``: HTTP Basic (RFC 7617)."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value or any(ord(c) < 32 for c in value):
            raise ValueError("a Basic username takes no ':' or control characters")
        return value


class BearerAuthSettings(_AuthModel):
    """``{type: bearer, token}``: ``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token: _HeaderSecret


class HeaderAuthSettings(_AuthModel):
    """``{type: header, name, value}``: the secret in a header of its own (``X-API-Key``)."""

    type: Literal["header"]
    name: str = Field(pattern=_HEADER_NAME, max_length=100)
    value: _HeaderSecret


class QueryAuthSettings(_AuthModel):
    """``{type: query, name, value}``: the secret as a query parameter (``?api_key=…``)."""

    type: Literal["query"]
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\s&=#]+$")
    value: SecretStr


class OAuth2ClientCredentialsSettings(_AuthModel):
    """``{type: oauth2_client_credentials, token_url, client_id, client_secret, scope,
    audience}``: RFC 6749 §4.4, the client authenticated with HTTP Basic (``client_auth:
    basic``, the default) or in the form body (``client_auth: body``)."""

    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    scope: str | None = None
    audience: str | None = None
    client_auth: Literal["basic", "body"] = "basic"

    @field_validator("token_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _absolute_http(value, "token_url")


AuthSettings = Annotated[
    BasicAuthSettings
    | BearerAuthSettings
    | HeaderAuthSettings
    | QueryAuthSettings
    | OAuth2ClientCredentialsSettings,
    Field(discriminator="type"),
]


class _HeaderAuth(httpx.Auth):
    def __init__(self, name: str, value: str) -> None:
        self._name, self._value = name, value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._name] = self._value
        yield request


class _QueryAuth(httpx.Auth):
    def __init__(self, name: str, value: str) -> None:
        self._name, self._value = name, value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.url = request.url.copy_merge_params({self._name: self._value})
        yield request


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    #: monotonic time to fetch another (None: until a 401 says so)
    renew_at: float | None

    def fresh(self) -> bool:
        return self.renew_at is None or time.monotonic() < self.renew_at


class ClientCredentials(httpx.Auth):
    """OAuth 2.0 client credentials (RFC 6749 §4.4) as an ``httpx.Auth``.

    One token serves every request of the source: it is fetched once (concurrent
    requests wait for the same fetch), kept until shortly before ``expires_in``
    runs out, and dropped by `expire` when the API answered 401 to it. The token
    endpoint is called through its own `SafeHTTP` (size cap, deadline, no
    redirects), in the calling task, so the tenant's egress rules apply to it as
    to the API; the API's configured headers are never sent there.
    """

    def __init__(
        self,
        source_id: str,
        settings: OAuth2ClientCredentialsSettings,
        *,
        ssl: TLSSettings | None,
        base_dir: Path,
    ) -> None:
        self.source_id = source_id
        self.settings = settings
        endpoint = HTTPSettings(
            base_url=settings.token_url,
            ssl=ssl,
            retries=1,
            max_response_bytes=_TOKEN_MAX_BYTES,
        )
        self._http = SafeHTTP(source_id, endpoint, base_dir=base_dir, redirects=0)
        self._lock = asyncio.Lock()
        self._token: _Token | None = None
        # The token this task last put on a request (the auth flow runs in the caller's task).
        self._sent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            f"oauth2_sent_{id(self)}", default=None
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("ClientCredentials works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        self._sent.set(token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    async def token(self) -> str:
        """The cached token while it is fresh; else one fetch, shared by every caller."""
        cached = self._token
        if cached is None or not cached.fresh():
            async with self._lock:
                cached = self._token
                if cached is None or not cached.fresh():
                    cached = self._token = await self._fetch()
        return cached.value

    def expire_sent(self) -> None:
        """Drop the cached token if it is the one this task last sent (the API answered it
        401); a token another request fetched since is kept, so 20 refusals refetch once."""
        cached = self._token
        if cached is not None and cached.value == self._sent.get():
            self._token = None

    async def aclose(self) -> None:
        await self._http.close()

    async def _fetch(self) -> _Token:
        sent = time.monotonic()
        response = await self._http.request(
            "POST",
            self.settings.token_url,
            timeout_s=_TOKEN_TIMEOUT_S,
            idempotent=True,  # a refused or lost token request is safe to send again
            content=urlencode(self._form()).encode("ascii"),
            headers=self._headers(),
        )
        token = self._read(response, sent)
        log.debug(
            "fetched an OAuth2 token for %s",
            self.source_id,
            extra={"action": "oauth2_token", "source": self.source_id},
        )
        return token

    def _form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if self.settings.scope:
            form["scope"] = self.settings.scope
        if self.settings.audience:
            form["audience"] = self.settings.audience
        if self.settings.client_auth == "body":
            form["client_id"] = self.settings.client_id
            form["client_secret"] = self.settings.client_secret.get_secret_value()
        return form

    def _headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        if self.settings.client_auth == "basic":
            # RFC 6749 §2.3.1: both parts form-encoded before they are joined.
            pair = (
                f"{quote_plus(self.settings.client_id)}:"
                f"{quote_plus(self.settings.client_secret.get_secret_value())}"
            )
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return headers

    def _read(self, response: HTTPResponse, sent: float) -> _Token:
        answer = response.json()
        if response.status in (400, 401, 403):
            code = answer.get("error") if isinstance(answer, dict) else None
            said = f": {code}" if isinstance(code, str) and _OAUTH_ERROR.match(code) else ""
            raise SourceAuthError(
                self.source_id,
                f"the OAuth2 token endpoint refused the client credentials "
                f"({response.status}{said})",
            )
        if response.status != 200:
            raise SourceError(
                self.source_id, f"the OAuth2 token endpoint answered {response.status}"
            )
        value = answer.get("access_token") if isinstance(answer, dict) else None
        kind = answer.get("token_type", "Bearer") if isinstance(answer, dict) else None
        if not isinstance(value, str) or not _TOKEN_CHARS.match(value):
            raise SourceError(self.source_id, "the OAuth2 token endpoint sent no usable token")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise SourceError(self.source_id, "the OAuth2 token endpoint sent a non-Bearer token")
        return _Token(value, _renew_at(answer.get("expires_in"), sent))


def _renew_at(expires_in: Any, sent: float) -> float | None:
    """When to fetch again: a little before ``expires_in`` runs out, counted from the
    request (not the answer), so a slow answer never leaves a stale token cached."""
    if isinstance(expires_in, str) and expires_in.strip().isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return None
    lifetime = max(0.0, float(expires_in))
    return sent + lifetime - min(_EXPIRY_MARGIN_S, lifetime / 10)


def auth_for(
    source_id: str,
    settings: AuthSettings | None,
    *,
    ssl: TLSSettings | None = None,
    base_dir: Path,
) -> httpx.Auth | None:
    """The ``httpx.Auth`` for an ``auth`` block (None: none)."""
    if settings is None:
        return None
    if isinstance(settings, BasicAuthSettings):
        return httpx.BasicAuth(settings.username, settings.password.get_secret_value())
    if isinstance(settings, BearerAuthSettings):
        return _HeaderAuth("Authorization", f"Bearer {settings.token.get_secret_value()}")
    if isinstance(settings, HeaderAuthSettings):
        return _HeaderAuth(settings.name, settings.value.get_secret_value())
    if isinstance(settings, QueryAuthSettings):
        return _QueryAuth(settings.name, settings.value.get_secret_value())
    return ClientCredentials(source_id, settings, ssl=ssl, base_dir=base_dir)
