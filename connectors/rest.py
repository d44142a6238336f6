"""REST sources (``rest_api``): named endpoints read over the safe HTTP layer.

A query is a path, relative to the connection's ``base_url``, as the seed
writes it::

    "/products/{sku}/stock"

or a mapping for the rest::

    {"path": "/search", "method": "POST", "params": {"limit": 5},
     "body": {"sku": "{sku}"}, "result": "data.items"}

- ``{name}`` in the path is the parameter percent-encoded as one path
  segment; in ``params`` (query string) and ``body`` (JSON) a string that is
  exactly ``{name}`` becomes the parameter's typed value. A path is checked
  when the config loads: no scheme, host, query string or fragment of its own.
- ``method`` is ``GET`` (the default) or ``HEAD``, both retried on a connect
  error, 429 or 503 within the deadline; or ``POST``, for search APIs, which
  the config must say and which is never retried. Any other method is refused
  as not a read.
- The answer: 404 or an empty body is *not found*; JSON is decoded, ``result``
  (a dotted path, ``data.items.0``) picks the data, and then a list is one row
  per item, an object one row, a scalar the row ``{"value": …}``; a text body
  is ``data`` with the row ``{"value": text}``. ``HEAD`` answers the row
  ``{"status": 200}``. 401/403 is an auth failure, 429 and 5xx source failures.

Everything about the wire (one origin, size cap, redirects, deadline, retries,
secrets kept out of errors) is `connectors.http_base.SafeHTTP`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.base import (
    Bound,
    ConfigError,
    Connector,
    NotARead,
    PreparedQuery,
    ReadResult,
    bind_placeholders,
    first_error,
    placeholder_names,
)
from connectors.http_base import (
    HTTPResponse,
    HTTPSettings,
    SafeHTTP,
    dig,
    json_value,
    result_of,
)

__all__ = ["RESTConnector", "RESTQuery", "RESTSettings", "check_path"]

_HEALTH_TIMEOUT_S = 10.0
_READ_METHODS = ("GET", "HEAD", "POST")
_WRITE_METHODS = ("PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "OPTIONS")
_ACCEPT = "application/json, text/plain;q=0.9, text/*;q=0.8"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DOTTED = r"^[^.\s]+(\.[^.\s]+)*$"

Scalar = str | int | float | bool | None


def check_path(path: str) -> str:
    """A configured path template that stays on the configured host, or `ValueError`."""
    if _SCHEME.match(path) or path.startswith("//") or "://" in path:
        raise ValueError("the path must be relative to base_url: no scheme or host")
    if "?" in path or "#" in path:
        raise ValueError("the path takes no query string or fragment: put them under params")
    if any(c in path for c in "\\") or any(c.isspace() or ord(c) < 32 for c in path):
        raise ValueError("the path contains a backslash, a space or a control character")
    if any(step in (".", "..") for step in path.split("/")):
        raise ValueError("the path contains a '.' or '..' step")
    return path


class RESTSettings(HTTPSettings):
    """``connection`` of a ``rest_api`` source: ``base_url``, ``headers``, ``api_key``…"""

    # A rejected value would otherwise be echoed, api_key and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: what ``worker test-connection`` GETs; without it, ``base_url`` itself (any answer
    #: but 401/403/429/5xx counts as healthy)
    health_path: str | None = None

    @field_validator("health_path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and placeholder_names(value):
            raise ValueError("health_path takes no {placeholders}")
        return None if value is None else check_path(value)


class RESTQuery(BaseModel):
    """One endpoint read; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1)
    method: Literal["GET", "HEAD", "POST"] = "GET"
    params: dict[str, Scalar] = Field(default_factory=dict)
    body: Any = None
    result: str | None = Field(default=None, pattern=_DOTTED)

    @field_validator("path")
    @classmethod
    def _stays_on_host(cls, value: str) -> str:
        return check_path(value)

    @field_validator("body")
    @classmethod
    def _json_body(cls, value: Any) -> Any:
        return json_value(value, "body")

    @model_validator(mode="after")
    def _body_needs_post(self) -> RESTQuery:
        if self.body is not None and self.method != "POST":
            raise ValueError(f"a {self.method} request takes no body: use params, or POST")
        return self


class RESTConnector(Connector):
    """Reads configured endpoints of one HTTP JSON/text API."""

    type_name: ClassVar[str] = "rest_api"
    Settings = RESTSettings
    query_shape: ClassVar[str] = (
        '"/products/{sku}/stock", or {"path": …, "method": "GET", "params": {…}, '
        '"body": {…} (POST only), "result": "data.items"}'
    )
    extra: ClassVar[str | None] = "rest"

    settings: RESTSettings

    def setup(self) -> None:
        self._http = SafeHTTP.within(
            self.source_id, self.settings, max_bytes=self.limits.max_bytes, base_dir=self.base_dir
        )

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        body: Mapping[str, Any] = {"path": raw} if isinstance(raw, str) else raw
        if not isinstance(body, Mapping):
            raise ConfigError('a rest_api query is a path, or a mapping with "path"')
        method = body.get("method", "GET")
        if isinstance(method, str):
            method = method.upper()
            if method in _WRITE_METHODS:
                raise NotARead(f"{method} is not a read: a rest_api query is GET, HEAD or POST")
        try:
            query = RESTQuery.model_validate({**body, "method": method})
        except ValidationError as exc:
            raise ConfigError("rest_api query: " + first_error(exc)) from None
        return PreparedQuery(
            spec=query, names=placeholder_names([query.path, query.params, query.body])
        )

    async def close(self) -> None:
        await self._http.close()

    async def health_check(self) -> None:
        path = self.settings.health_path or ""
        response = await self._http.request(
            "GET", self._http.url(path, {}), timeout_s=_HEALTH_TIMEOUT_S, idempotent=True
        )
        # Without a health path any answer shows the API is up, save refusal and failure.
        status = response.status
        if self.settings.health_path or status in (401, 403, 429) or status >= 500:
            self._http.check(response, not_found_ok=False)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, RESTQuery):
            raise self.fail("the query was not prepared by the rest_api connector")
        params = bound.params
        response = await self._http.request(
            spec.method,
            self._http.url(spec.path, params),
            timeout_s=timeout_s,
            idempotent=spec.method != "POST",
            params=bind_placeholders(spec.params, params),
            json_body=bind_placeholders(spec.body, params) if spec.body is not None else None,
            headers=self._accept(),
        )
        checked = self._http.check(response)
        if checked is None:
            return ReadResult(rows=[])
        if spec.method == "HEAD":
            return ReadResult(rows=[{"status": checked.status}], data={"status": checked.status})
        return self._decode(checked, spec)

    def _accept(self) -> dict[str, str]:
        configured = {name.lower() for name in self.settings.headers}
        return {} if "accept" in configured else {"Accept": _ACCEPT}

    def _decode(self, response: HTTPResponse, spec: RESTQuery) -> ReadResult:
        if not response.body.strip():
            return ReadResult(rows=[])
        media, charset = _content_type(response)
        if _is_json(media) or (not media and response.json() is not None):
            try:
                document = json.loads(response.body.decode(charset or "utf-8"))
            except (ValueError, LookupError):
                raise self.fail("the answer is not valid JSON") from None
            return result_of(dig(document, spec.result), max_rows=self.limits.max_rows)
        if media and not _is_text(media):
            raise self.fail(f"the answer is {media}, neither JSON nor text")
        if spec.result:
            raise self.fail("the answer is text, not JSON: `result` cannot pick from it")
        try:
            text = response.body.decode(charset or "utf-8", errors="replace")
        except LookupError:
            text = response.text
        return ReadResult(rows=[{"value": text}], data=text)


def _content_type(response: HTTPResponse) -> tuple[str, str | None]:
    raw = response.headers.get("content-type", "")
    media, _, rest = raw.partition(";")
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", rest)
    return media.strip().lower(), match.group(1) if match else None


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _is_text(media: str) -> bool:
    return media.startswith("text/") or media in ("application/xml",) or media.endswith("+xml")
