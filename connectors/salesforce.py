"""Salesforce sources: one SOQL SELECT, its values quoted by simple-salesforce.

A query is SOQL with ``{name}`` placeholders (the seed's ``{{$json.name}}`` and
``{{name}}`` mean the same)::

    {"soql": "SELECT Status FROM Order WHERE OrderNumber = {order_id}"}

At load time the text becomes a template for simple-salesforce's `format_soql`:
each placeholder a replacement field, every other brace doubled. At run time
`format_soql` quotes and escapes each value by the SOQL rules (a string becomes
``'…'`` with quotes, backslashes and line breaks escaped; numbers, booleans,
``null``, dates and lists as SOQL literals), so a parameter can never become
SOQL text. Write a placeholder bare (``= {order_id}``, not ``= '{order_id}'``);
inside a LIKE pattern use ``'%{name:like}%'``, which escapes ``%`` and ``_`` too.
Only one statement that starts with SELECT loads; ``FOR UPDATE`` (locks rows),
``FOR VIEW``/``FOR REFERENCE`` and ``UPDATE TRACKING``/``UPDATE VIEWSTAT`` (they
write usage data) and ``;`` are refused.

Reads are ``query`` then ``query_more`` on ``nextRecordsUrl`` until ``max_rows``
records; a row is a record without its ``attributes`` (nested ones too).

Login: ``username``, ``password`` and ``security_token`` through the SOAP
``login()`` call, as simple-salesforce's `SalesforceLogin` makes it. ``domain``
is ``login`` (production), ``test`` (sandboxes), a My Domain prefix
(``acme.my``), or an ``https://…`` URL whose ``/services/Soap/u/{version}``
serves the login — a proxy, or the test stand-in. The login answer's
``serverUrl`` names the instance the REST calls then go to. The login happens
on the first read (under its deadline), and again once when a call answers 401
``INVALID_SESSION_ID``.

simple-salesforce blocks, so every call runs in ``asyncio.to_thread``, on a
``requests`` session from `connectors.requests_guard`, which keeps the rules of
`connectors.http_base`: only the login and instance origins are contacted (a
redirect elsewhere is refused); every body is streamed and cut off at
``max_response_bytes``; connect and read timeouts are what is left of the deadline;
GETs are retried after a connect error, a 429 or a 503 with ``Retry-After`` (else a
short back-off) only while the deadline leaves room. A thread cannot be interrupted:
when the caller gives up before ``timeout_s``, its thread finishes the current
request in the background, at the latest at ``timeout_s``. ``ca_file`` trusts
another CA (a TLS-inspecting proxy, or the stand-in's test CA): simple-salesforce
only speaks https.

Errors: a refused login or 401 is a `SourceAuthError` (Salesforce's exception
code only: no username, password or token in the text); 403
``REQUEST_LIMIT_EXCEEDED`` is `SourceUnavailable`, another 403 a
`SourceAuthError`; 400 (``MALFORMED_QUERY``, ``INVALID_FIELD``…) a `SourceError`
with Salesforce's code and message, parameter values masked; 404 is not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import requests
from pydantic import ConfigDict, Field, SecretStr, field_validator
from simple_salesforce.api import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)
from simple_salesforce.format import format_soql
from simple_salesforce.login import SalesforceLogin

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
    NotARead,
    PreparedQuery,
    ReadResult,
    SourceAuthError,
    SourceError,
    SourceUnavailable,
    jsonable,
)
from connectors.http_base import safe_message
from connectors.requests_guard import Guard, guard_session, origin, translating

__all__ = ["SOQLSpec", "SalesforceConnector", "SalesforceSettings", "prepare_soql"]

_HEALTH_TIMEOUT_S = 10.0

T = TypeVar("T")


class SalesforceSettings(ConnectionSettings):
    """``connection`` of a ``salesforce`` source."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    username: str = Field(min_length=1)
    password: SecretStr
    #: appended to the password at login; empty when the worker's IP is trusted
    security_token: SecretStr = SecretStr("")
    #: login, test, a My Domain prefix (acme.my), or an https:// URL serving the login
    domain: str = "login"
    #: the API version, as simple-salesforce writes it
    version: str = Field(default="59.0", pattern=r"^\d{2,3}\.\d$")
    #: a CA bundle to trust instead of the system's (a proxy, the test stand-in)
    ca_file: str | None = None
    max_response_bytes: int = Field(default=5_000_000, ge=1_000, le=500_000_000)
    retries: int = Field(default=2, ge=0, le=5)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if "://" in value:
            parts = urlsplit(value)
            if parts.scheme != "https" or not parts.hostname:
                raise ValueError("a domain URL must be an absolute https URL")
            if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
                raise ValueError("a domain URL is only scheme, host and port")
            return value.rstrip("/")
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,200}[A-Za-z0-9])?", value):
            raise ValueError("domain is login, test, a My Domain prefix or an https URL")
        return value.removesuffix(".salesforce.com")

    @property
    def login_url(self) -> str:
        if "://" in self.domain:
            return self.domain
        return f"https://{self.domain}.salesforce.com"


# -- SOQL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SOQLSpec:
    """A prepared SELECT: a `format_soql` template and the parameters it takes."""

    template: str
    names: tuple[str, ...]

    def bind(self, params: Mapping[str, Any]) -> str:
        return str(format_soql(self.template, **{n: _value(params.get(n)) for n in self.names}))


_PLACEHOLDER = re.compile(
    r"\{\{\s*(?:\$json\.)?(?P<a>[A-Za-z_][A-Za-z0-9_]*)\s*\}\}"
    r"|\{(?P<b>[A-Za-z_][A-Za-z0-9_]*)(?P<like>:like)?\}"
)
_WRITES = re.compile(
    r"\bFOR\s+(?:UPDATE|VIEW|REFERENCE)\b|\bUPDATE\s+(?:TRACKING|VIEWSTAT)\b", re.IGNORECASE
)


def prepare_soql(text: str) -> SOQLSpec:
    """Check one SELECT and turn its placeholders into `format_soql` fields."""
    out: list[str] = []
    bare: list[str] = []  # the text outside string literals, for the checks below
    names: dict[str, None] = {}
    quote: str | None = None
    at = 0
    while at < len(text):
        char = text[at]
        match = _PLACEHOLDER.match(text, at) if char == "{" else None
        if match:
            name = match.group("a") or match.group("b")
            like = bool(match.group("like"))
            if like != (quote is not None):
                raise ConfigError(
                    f"write {{{name}:like}} inside a quoted LIKE pattern ('%{{{name}:like}}%')"
                    if like
                    else f"write {{{name}}} without quotes around it: the value is quoted for you"
                )
            names.setdefault(name, None)
            out.append(f"{{{name}:like}}" if like else f"{{{name}}}")
            bare.append(" ? ")
            at = match.end()
            continue
        if quote is not None and char == "\\" and at + 1 < len(text):
            out.append(text[at : at + 2].replace("{", "{{").replace("}", "}}"))
            at += 2
            continue
        if char == "'":
            quote = None if quote else char
        elif quote is None:
            bare.append(char)
        out.append({"{": "{{", "}": "}}"}.get(char, char))
        at += 1
    if quote is not None:
        raise ConfigError("the SOQL has an unterminated string literal")
    _check_read("".join(bare))
    return SOQLSpec("".join(out).strip(), tuple(names))


def _check_read(bare: str) -> None:
    words = bare.split()
    if not words or words[0].upper() != "SELECT":
        raise NotARead("a salesforce query must be one SOQL SELECT")
    if ";" in bare:
        raise NotARead("a salesforce query is one statement: no ';'")
    found = _WRITES.search(bare)
    if found:
        clause = " ".join(found.group(0).upper().split())
        raise NotARead(f"{clause} locks records or writes usage data; only plain reads load")


def _value(value: Any) -> Any:
    """A parameter as a value `format_soql` quotes; anything else as its text."""
    if value is None or isinstance(value, str | bool | int | float | dt.date):
        return value
    if isinstance(value, list | tuple | set):
        return [_value(v) for v in value]
    return str(jsonable(value))


def _plain(record: Any) -> Any:
    """A record without ``attributes``, at every depth."""
    if isinstance(record, Mapping):
        return {str(k): _plain(v) for k, v in record.items() if k != "attributes"}
    if isinstance(record, list):
        return [_plain(v) for v in record]
    return record


# -- the connector --------------------------------------------------------------------


@dataclass
class _Live:
    """The session and, once logged in, the simple-salesforce client."""

    guard: Guard
    session: requests.Session
    client: Salesforce | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class SalesforceConnector(Connector):
    """One Salesforce org, read with a user's login; see the module docstring."""

    type_name: ClassVar[str] = "salesforce"
    Settings: ClassVar[type[ConnectionSettings]] = SalesforceSettings
    query_shape: ClassVar[str] = (
        '{"soql": "SELECT Status FROM Order WHERE OrderNumber = {order_id}"} '
        "(values quoted by SOQL rules)"
    )

    settings: SalesforceSettings

    def setup(self) -> None:
        self._live: _Live | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if isinstance(raw, Mapping):
            if set(raw) != {"soql"} or not isinstance(raw["soql"], str):
                raise ConfigError('a salesforce query is SOQL text, or {"soql": "SELECT …"}')
            raw = raw["soql"]
        if not isinstance(raw, str):
            raise ConfigError("a salesforce query must be SOQL text")
        spec = prepare_soql(raw)
        return PreparedQuery(spec=spec, names=spec.names)

    async def open(self) -> None:
        self._ensure_live()

    async def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.session.close()

    async def health_check(self) -> None:
        await self._call(lambda client: client.limits(), _HEALTH_TIMEOUT_S)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, SOQLSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        soql = spec.bind(bound.params)
        cap = self.limits.max_rows

        def read(client: Salesforce) -> list[Any] | None:
            try:
                result = client.query(soql)
                records = list(result.get("records") or [])
                while len(records) < cap and not result.get("done", True):
                    following = result.get("nextRecordsUrl")
                    if not isinstance(following, str):
                        break
                    result = client.query_more(following, identifier_is_url=True)
                    records.extend(result.get("records") or [])
            except SalesforceResourceNotFound:
                return None
            return records[:cap]

        records = await self._call(read, timeout_s, hide=list(bound.params.values()))
        return ReadResult.of_rows([_plain(r) for r in records or [] if isinstance(r, Mapping)])

    # -- plumbing ------------------------------------------------------------------

    def _ensure_live(self) -> _Live:
        if self._live is None:
            settings = self.settings
            guard = Guard(
                {origin(settings.login_url)}, settings.max_response_bytes, settings.retries
            )
            session = guard_session(requests.Session(), guard)
            if settings.ca_file:
                session.verify = str(self.resolve_path(settings.ca_file))
            self._live = _Live(guard, session)
        return self._live

    def _login(self, live: _Live, stale: Salesforce | None) -> Salesforce:
        """Log in (once, whichever thread comes first); ``stale`` is a client that got a 401."""
        with live.lock:
            if live.client is not None and live.client is not stale:
                return live.client
            settings = self.settings
            url = "://" in settings.domain
            session_id, instance = SalesforceLogin(
                username=settings.username,
                password=settings.password.get_secret_value(),
                security_token=settings.security_token.get_secret_value(),
                sf_version=settings.version,
                session=live.session,
                domain=None if url else settings.domain,
                scratch_url=settings.domain if url else None,
            )
            live.guard.origins.add(origin(f"https://{instance}"))
            live.client = Salesforce(
                session_id=session_id,
                instance=instance,
                version=settings.version,
                session=live.session,
            )
            return live.client

    async def _call(
        self, fn: Callable[[Salesforce], T], timeout_s: float, *, hide: Sequence[Any] = ()
    ) -> T:
        """``fn`` on the logged-in client, in a thread, under the deadline; ``hide``: values
        that Salesforce's messages may quote back (parameters), masked in our errors."""
        live = self._ensure_live()

        def work() -> T:
            with live.guard.deadline(timeout_s):
                client = live.client or self._login(live, None)
                try:
                    return fn(client)
                except SalesforceExpiredSession:
                    return fn(self._login(live, client))

        with self._translating(hide):
            async with asyncio.timeout(timeout_s):
                return await asyncio.to_thread(work)

    @contextlib.contextmanager
    def _translating(self, hide: Sequence[Any]) -> Iterator[None]:
        """simple-salesforce and requests errors into the `SourceError` family."""
        try:
            with translating(self.source_id, "Salesforce"):
                yield
        except SalesforceAuthenticationFailed as exc:
            code = getattr(exc, "code", None) or "refused"
            raise SourceAuthError(
                self.source_id, f"Salesforce refused the login ({str(code)[:60]})"
            ) from exc
        except SalesforceError as exc:
            raise self._api_error(exc, hide) from exc

    def _api_error(self, exc: SalesforceError, hide: Sequence[Any]) -> SourceError:
        """From the status and Salesforce's ``[{"errorCode", "message"}]``; never the URL."""
        content = exc.content
        first: Any = content[0] if isinstance(content, list) and content else {}
        code = str(first.get("errorCode") or "") if isinstance(first, Mapping) else ""
        message = str(first.get("message") or "") if isinstance(first, Mapping) else ""
        status = exc.status
        if status == 401:
            return SourceAuthError(self.source_id, f"Salesforce refused the session ({code})")
        if isinstance(exc, SalesforceRefusedRequest):
            if code == "REQUEST_LIMIT_EXCEEDED":
                return SourceUnavailable(self.source_id, "the org's API request limit is used up")
            return SourceAuthError(self.source_id, f"Salesforce refused the request ({code})")
        if status in (429, 503):
            return SourceUnavailable(
                self.source_id, f"Salesforce is busy ({status}) past the deadline"
            )
        secrets = [self.settings.password.get_secret_value(), self.settings.username]
        text = safe_message(message, [*hide, *secrets], limit=300)
        return self.fail(f"Salesforce answered {status} {code}: {text}".strip(" :"))
