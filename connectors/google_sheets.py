"""Google Sheets sources: a range read through gspread, its rows filtered by header name.

A query names a range and, optionally, a row filter::

    {"range": "Customers!A:E", "filter": "phone = {customer_phone}"}

The filter is parsed when the config loads: ``column = {param}`` clauses joined
by ``and`` (the seed's ``{{$json.param}}`` and ``{{param}}`` mean the same; a
quoted literal such as ``status = "active"`` works too), or a mapping
``{"phone": "{customer_phone}"}``. The range's first row names the columns.

Any-of filters: in the text, ``or`` joins groups of ``and``-ed clauses (``and``
binds first, as in SQL: ``phone = {phone} or email = {email} and plan = 'Pro'``
keeps a row with the phone, or with the e-mail on the Pro plan); as data, a list
of mappings keeps a row that matches any one of them
(``[{"phone": "{phone}"}, {"email": "{email}"}]``). ``and`` and ``or`` inside a
quoted literal are text. A group may name a column once; an empty group is
refused, so no filter can match every row by accident.
The values come from the Sheets API v4 ``spreadsheets.values.get`` (gspread's
``HTTPClient.values_get``) and are compared here, as trimmed text: a parameter
is only ever a value to compare with and never reaches the request. Numbers
arrive unformatted (``12.5``, not ``$12.50``) and dates as the sheet shows them,
unless the query says ``"render": "formatted"``.

Credentials are a service account: ``service_account`` holds the JSON key (a
secret: JSON text, or a mapping in the config), or ``service_account_file``
names the key file. google-auth trades it for a token at the key's
``token_uri`` (the JWT-bearer grant) with the read-only Sheets scope.

gspread and google-auth block, so every call runs in ``asyncio.to_thread``, on
``requests`` sessions whose adapter (`connectors.requests_guard`) keeps the rules that
`connectors.http_base` keeps for httpx:

- only the configured origins are contacted (``api_base_url`` and the token
  endpoint); a redirect anywhere else is refused;
- every body, the token endpoint's too, is streamed and cut off at
  ``max_response_bytes``;
- each request's connect and read timeouts are what is left of the read's
  deadline (``timeout_s``), and a body still trickling in at the deadline is
  dropped;
- GETs (every request this connector makes) are retried after a connect error,
  a 429 or a 503, honouring ``Retry-After`` or else Google's recommended
  exponential back-off, only while the deadline leaves room.

A thread cannot be interrupted: when the *caller* gives up before ``timeout_s``
(a cancelled job), the read returns at once but its thread finishes its current
request in the background, at the latest when ``timeout_s`` runs out.

``api_base_url`` and ``token_uri`` default to Google's endpoints (the token URI
to the one in the key). They exist for a forward proxy and for the test
stand-in: ``api_base_url`` replaces gspread's ``https://sheets.googleapis.com/v4``
prefix on every request it builds (`_SheetsClient`), the supported way to
rebase gspread, which keeps its URLs as module constants.

A 404 (no such spreadsheet, or one the service account may not see) answers
``not_found`` as the contract says; ``worker test-connection`` reports it as a
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import requests
from google.auth import exceptions as google_errors
from google.auth.transport.requests import AuthorizedSession
from google.auth.transport.requests import Request as AuthRequest
from google.oauth2 import service_account
from gspread.exceptions import APIError
from gspread.http_client import HTTPClient, ParamsType
from gspread.urls import SPREADSHEETS_API_V4_BASE_URL
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

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
    bind_placeholders,
    jsonable,
    placeholder_names,
    validate_query,
)
from connectors.files import compare_text
from connectors.requests_guard import Guard, OffHost, guard_session, origin, translating

__all__ = [
    "GoogleSheetsConnector",
    "GoogleSheetsSettings",
    "SheetsQuery",
    "SheetsSpec",
    "parse_filter",
]

SHEETS_API = "https://sheets.googleapis.com/v4"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL
READONLY_SCOPE = "https://www.googleapis.com/auth/spreadsheets.readonly"

_HEALTH_TIMEOUT_S = 10.0

Scalar = str | int | float | bool | None
T = TypeVar("T")


# -- settings and queries -------------------------------------------------------


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("takes no query, fragment or credentials")
    return value.rstrip("/")


def _key_info(text: str) -> dict[str, Any]:
    """The parsed service-account key; errors never repeat the key."""
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("service_account is not JSON (paste the whole key file)") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError('service_account is not a service-account key ("type" must be so)')
    missing = [k for k in ("client_email", "private_key") if not isinstance(info.get(k), str)]
    if missing:
        raise ValueError(f"the service-account key has no {missing[0]}")
    return info


class GoogleSheetsSettings(ConnectionSettings):
    """``connection`` of a ``google_sheets`` source."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: the service account's JSON key (a secret): JSON text, or a mapping in the config
    service_account: SecretStr | None = None
    #: or the key file, relative to the tenant config's folder
    service_account_file: str | None = None
    spreadsheet_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,200}$")
    #: test/proxy override: where gspread's Sheets API v4 requests go
    api_base_url: str = SHEETS_API
    #: test/proxy override: the OAuth token endpoint (default: the key's ``token_uri``)
    token_uri: str | None = None
    max_response_bytes: int = Field(default=5_000_000, ge=1_000, le=500_000_000)
    retries: int = Field(default=2, ge=0, le=5)

    @field_validator("service_account", mode="before")
    @classmethod
    def _as_json_text(cls, value: Any) -> Any:
        return json.dumps(dict(value)) if isinstance(value, Mapping) else value

    @field_validator("api_base_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        url = _http_url(value)
        return url if url is not None else SHEETS_API

    @field_validator("token_uri")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        return _http_url(value)

    @model_validator(mode="after")
    def _one_key(self) -> GoogleSheetsSettings:
        if (self.service_account is None) == (self.service_account_file is None):
            raise ValueError("give service_account (the JSON key) or service_account_file")
        if self.service_account is not None:
            _key_info(self.service_account.get_secret_value())
        return self


class SheetsQuery(BaseModel):
    """A read on a sheet: the rows of ``range`` equal to ``filter``, at most ``limit``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    range: str = Field(min_length=1, max_length=500)
    filter: str | dict[str, Scalar] | list[dict[str, Scalar]] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)
    render: Literal["unformatted", "formatted"] = "unformatted"

    @field_validator("filter")
    @classmethod
    def _no_empty_group(
        cls, value: str | dict[str, Scalar] | list[dict[str, Scalar]]
    ) -> str | dict[str, Scalar] | list[dict[str, Scalar]]:
        if isinstance(value, list) and (not value or not all(value)):
            raise ValueError("an any-of list needs at least one group, each naming a column")
        return value


@dataclass(frozen=True)
class SheetsSpec:
    """A prepared sheet read: rows matching any of ``groups`` (all rows when there is none).

    Each group maps a column to a ``{name}`` or a literal, and matches when every
    column does.
    """

    range: str
    groups: tuple[dict[str, Scalar], ...]
    limit: int | None
    render: Literal["unformatted", "formatted"]


_PARAM = re.compile(
    r"\{\{\s*(?:\$json\.)?([A-Za-z_][A-Za-z0-9_]*)\s*\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}"
)
_CLAUSE = re.compile(r"^(?P<column>[^=]*?)\s*=\s*(?P<value>.*)$", re.DOTALL)
_JOIN = re.compile(r"\s+(and|or)\s+", re.IGNORECASE)


def _clauses(text: str) -> list[list[str]]:
    """The clauses of each ``or`` group, split on ``and`` / ``or`` outside quoted literals."""
    groups: list[list[str]] = [[]]
    start = at = 0
    quote: str | None = None
    while at < len(text):
        char = text[at]
        join = None if quote or char in "'\"" else _JOIN.match(text, at)
        if join is not None:
            groups[-1].append(text[start:at])
            if join.group(1).lower() == "or":
                groups.append([])
            start = at = join.end()
            continue
        if char == quote:
            quote = None
        elif quote is None and char in "'\"":
            quote = char
        at += 1
    groups[-1].append(text[start:])
    return groups


def parse_filter(text: str) -> list[dict[str, Scalar]]:
    """``"phone = {p} and plan = 'Pro' or email = {e}"`` → any-of groups of all-of clauses.

    That one gives ``[{"phone": "{p}", "plan": "Pro"}, {"email": "{e}"}]``.
    """
    return [_group(clauses) for clauses in _clauses(text.strip())]


def _group(clauses: list[str]) -> dict[str, Scalar]:
    wanted: dict[str, Scalar] = {}
    for clause in clauses:
        match = _CLAUSE.match(clause.strip())
        column = match.group("column").strip() if match else ""
        if not match or not column or column.split()[0].lower() in ("and", "or"):
            raise ConfigError(
                f"cannot read the filter clause {clause.strip()!r}: write column = {{param}}"
            )
        value = match.group("value").strip()
        param = _PARAM.fullmatch(value)
        if param:
            wanted_value: Scalar = "{" + (param.group(1) or param.group(2)) + "}"
        elif len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            wanted_value = value[1:-1]
        else:
            raise ConfigError(
                f"the filter clause {clause.strip()!r} compares with {value!r}: "
                "use a {param} placeholder or a quoted literal"
            )
        if column in wanted:
            raise ConfigError(f"the filter names the column {column!r} twice")
        wanted[column] = wanted_value
    return wanted


# -- gspread on a guarded session ---------------------------------------------------


class _SheetsClient(HTTPClient):
    """gspread's HTTP client, its Sheets API URLs rebased onto ``api_base_url``."""

    def __init__(self, session: Any, api_base_url: str) -> None:
        super().__init__(session.credentials, session=session)
        self.auth = session.credentials
        self._base = api_base_url + "/spreadsheets"

    def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> Any:
        if not endpoint.startswith(SPREADSHEETS_API_V4_BASE_URL):
            raise OffHost("only the Sheets API is used by this source")
        rebased = self._base + endpoint[len(SPREADSHEETS_API_V4_BASE_URL) :]
        return super().request(method, rebased, *args, **kwargs)


@dataclass
class _Live:
    """What `open` builds: the guard, the sessions and gspread's client."""

    guard: Guard
    api: Any  # AuthorizedSession
    tokens: Any  # requests.Session for the token endpoint
    client: _SheetsClient

    def close(self) -> None:
        self.api.close()
        self.tokens.close()


# -- the connector ----------------------------------------------------------------


class GoogleSheetsConnector(Connector):
    """One spreadsheet, read with a service account; see the module docstring."""

    type_name: ClassVar[str] = "google_sheets"
    Settings: ClassVar[type[ConnectionSettings]] = GoogleSheetsSettings
    query_shape: ClassVar[str] = (
        '{"range": "Customers!A:E", "filter": "phone = {customer_phone}"} '
        "(the range's first row names the columns)"
    )

    settings: GoogleSheetsSettings

    def setup(self) -> None:
        self._live: _Live | None = None
        self._opening = asyncio.Lock()

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a google_sheets query is a mapping: {cls.query_shape}")
        query = validate_query(SheetsQuery, raw, cls)
        if isinstance(query.filter, str):
            groups = parse_filter(query.filter)
        elif isinstance(query.filter, dict):
            groups = [query.filter] if query.filter else []
        else:
            groups = query.filter
        spec = SheetsSpec(query.range, tuple(dict(g) for g in groups), query.limit, query.render)
        return PreparedQuery(spec=spec, names=placeholder_names(list(spec.groups)))

    async def open(self) -> None:
        await self._ensure_open()

    async def close(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.close()

    async def health_check(self) -> None:
        def metadata(live: _Live) -> None:
            try:
                live.client.fetch_sheet_metadata(self.settings.spreadsheet_id)
            except APIError as exc:
                if exc.response.status_code == 404:
                    raise self.fail(
                        "no such spreadsheet, or the service account may not read it"
                    ) from exc
                raise

        await self._call(metadata, _HEALTH_TIMEOUT_S)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, SheetsSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        wanted = [bind_placeholders(group, bound.params) for group in spec.groups]
        limit = min(self.limits.max_rows, spec.limit or self.limits.max_rows)
        params: ParamsType = {"majorDimension": "ROWS"}
        if spec.render == "unformatted":
            params["valueRenderOption"] = "UNFORMATTED_VALUE"
            params["dateTimeRenderOption"] = "FORMATTED_STRING"

        def values(live: _Live) -> Any:
            try:
                return live.client.values_get(
                    self.settings.spreadsheet_id, spec.range, params=params
                )
            except APIError as exc:
                if exc.response.status_code == 404:
                    return None
                raise

        document = await self._call(values, timeout_s)
        if not isinstance(document, Mapping):
            return ReadResult(rows=[])
        table = document.get("values") or []
        return ReadResult.of_rows(self._select(spec.range, table, wanted, limit))

    def _select(
        self, where: str, table: list[list[Any]], wanted: list[dict[str, Any]], limit: int
    ) -> list[dict[str, Any]]:
        """The rows matching any group of ``wanted`` (every row when it is empty)."""
        if not table:
            return []
        columns: dict[str, int] = {}
        for index, cell in enumerate(table[0]):
            name = str(jsonable(cell)).strip() if cell is not None else ""
            if name:
                columns.setdefault(name, index)
        unknown = [key for group in wanted for key in group if key not in columns]
        if unknown:
            raise self.fail(
                f"no column {unknown[0]!r} in the header row of {where!r} "
                f"(columns: {', '.join(columns) or 'none'})"
            )
        texts = [
            {columns[key]: compare_text(value) for key, value in group.items()} for group in wanted
        ]
        found: list[dict[str, Any]] = []
        for record in table[1:]:
            cells = list(record) + [None] * (len(table[0]) - len(record))
            if not texts or any(
                all(compare_text(cells[index]) == text for index, text in group.items())
                for group in texts
            ):
                found.append({name: cells[index] for name, index in columns.items()})
                if len(found) >= limit:
                    break
        return found

    # -- plumbing ------------------------------------------------------------------

    async def _ensure_open(self) -> _Live:
        if self._live is not None:
            return self._live
        async with self._opening:
            if self._live is None:
                with self._translating():
                    self._live = await asyncio.to_thread(self._build)
            return self._live

    def _build(self) -> _Live:
        """Credentials and sessions; no request is sent until the first read."""
        settings = self.settings
        if settings.service_account is not None:
            info = _key_info(settings.service_account.get_secret_value())
        else:
            path = self.resolve_path(settings.service_account_file or "")
            try:
                info = _key_info(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise SourceAuthError(self.source_id, str(exc)) from None
        token_uri = settings.token_uri or info.get("token_uri") or GOOGLE_TOKEN_URI
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                {**info, "token_uri": token_uri}, scopes=[READONLY_SCOPE]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceAuthError(
                self.source_id, f"the service-account key cannot be used ({type(exc).__name__})"
            ) from None
        guard = Guard(
            {origin(settings.api_base_url), origin(token_uri)},
            settings.max_response_bytes,
            settings.retries,
        )
        tokens = guard_session(requests.Session(), guard)
        api = AuthorizedSession(credentials, auth_request=AuthRequest(session=tokens))  # type: ignore[no-untyped-call]
        guard_session(api, guard)
        return _Live(guard, api, tokens, _SheetsClient(api, settings.api_base_url))

    async def _call(self, fn: Callable[[_Live], T], timeout_s: float) -> T:
        live = await self._ensure_open()

        def work() -> T:
            with live.guard.deadline(timeout_s):
                return fn(live)

        with self._translating():
            async with asyncio.timeout(timeout_s):
                return await asyncio.to_thread(work)

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        """gspread, google-auth and requests errors into the `SourceError` family."""
        try:
            with translating(self.source_id, "Google Sheets"):
                yield
        except APIError as exc:
            raise self._api_error(exc) from exc
        except google_errors.RefreshError as exc:
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "refused"
            raise SourceAuthError(
                self.source_id, f"Google refused the service account a token: {reason[:160]}"
            ) from exc
        except google_errors.TransportError as exc:
            if not isinstance(exc.__cause__, requests.Timeout):
                raise SourceUnavailable(
                    self.source_id, "cannot reach the token endpoint (TransportError)"
                ) from exc
            raise SourceTimeout(self.source_id, "no answer before the deadline") from exc
        except OSError as exc:
            raise SourceUnavailable(
                self.source_id, f"cannot read the service-account key file: {exc.strerror or exc}"
            ) from exc

    def _api_error(self, exc: APIError) -> SourceError:
        status = exc.response.status_code
        error = exc.error if isinstance(exc.error, Mapping) else {}
        reason = str(error.get("status") or "")
        message = str(error.get("message") or "")[:200]
        if status in (401, 403):
            return SourceAuthError(
                self.source_id, f"Google refused the service account ({status} {reason})".strip()
            )
        if status == 429:
            return SourceUnavailable(self.source_id, "rate limited (429) past the deadline")
        return self.fail(f"Google Sheets answered {status} {reason}: {message}".strip())
