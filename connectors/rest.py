"""REST sources (``rest_api``): named endpoints read over the safe HTTP layer.

A query is a path, relative to the connection's ``base_url``, as the seed
writes it::

    "/products/{sku}/stock"

or a mapping for the rest::

    {"path": "/search", "method": "POST", "params": {"limit": 5},
     "body": {"sku": "{sku}"}, "result": "data.items",
     "format": "auto", "pagination": {"type": "cursor", "cursor": "meta.next", "param": "after"}}

- ``{name}`` in the path is the parameter percent-encoded as one path
  segment; in ``params`` (query string) and ``body`` (JSON) a string that is
  exactly ``{name}`` becomes the parameter's typed value. A path is checked
  when the config loads: no scheme, host, query string or fragment of its own.
- ``method`` is ``GET`` (the default) or ``HEAD``, both retried on a connect
  error, 429 or 503 within the deadline; or ``POST``, for search APIs, which
  the config must say and which is never retried. Any other method is refused
  as not a read.
- The answer: 404 or an empty body is *not found*. ``format`` says how to read
  it: ``auto`` (the default) by its Content-Type, or ``json``, ``xml`` or
  ``text`` whatever it says. JSON is decoded; XML is parsed without DTD
  entities or network access into the shape of `xml_document`; ``result`` (a
  dotted path, ``data.items.0``) picks the data from either, and then a list is
  one row per item, an object one row, a scalar the row ``{"value": …}``. A
  text body is ``data`` with the row ``{"value": text}``. ``HEAD`` answers the
  row ``{"status": 200}``. 401/403 is an auth failure, 429 and 5xx source
  failures.
- ``pagination`` (GET or POST, JSON or XML pages) reads page after page, as
  n8n's HTTP Request node does, taking each page's rows from ``result``:
  ``next_url`` (a link in the body, at the dotted path ``next``),
  ``link_header`` (``Link: <…>; rel="next"``), ``cursor`` (the value at the
  path ``cursor`` sent as the parameter ``param``), ``page`` and ``offset`` (a
  parameter counted up until a page comes back empty). It stops at no next
  link or cursor, an empty page or a 404, ``max_pages`` (default 10), the
  source's ``max_rows``, or a link or cursor seen before; all pages share the
  read's deadline, and a link must stay on ``base_url``'s origin.

Credentials are the connection's ``headers`` (``"Bearer {api_key}"``) or its
``auth`` block (`connectors.http_base.AuthSettings`). Everything about the wire
(one origin, size cap, redirects, deadline, retries, the OAuth2 token, secrets
kept out of errors) is `connectors.http_base.SafeHTTP`'s.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError

import httpx
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse
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
    SourceTimeout,
    bind_placeholders,
    first_error,
    placeholder_names,
)
from connectors.http_base import (
    AuthSettings,
    HeaderAuthSettings,
    HTTPResponse,
    HTTPSettings,
    OAuth2ClientCredentialsSettings,
    QueryAuthSettings,
    SafeHTTP,
    auth_for,
    dig,
    json_value,
    result_of,
)

__all__ = [
    "CursorPages",
    "LinkHeaderPages",
    "NextURLPages",
    "OffsetPages",
    "PageNumberPages",
    "Pagination",
    "RESTConnector",
    "RESTQuery",
    "RESTSettings",
    "check_path",
    "xml_document",
]

_HEALTH_TIMEOUT_S = 10.0
_READ_METHODS = ("GET", "HEAD", "POST")
_WRITE_METHODS = ("PUT", "PATCH", "DELETE", "CONNECT", "TRACE", "OPTIONS")
_ACCEPT = "application/json, application/xml;q=0.9, text/plain;q=0.8, text/*;q=0.7"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DOTTED = r"^[^.\s]+(\.[^.\s]+)*$"
_PARAM = r"^[^\s&=#]+$"
#: an XML answer deeper or larger than this is refused, not parsed into memory
_XML_MAX_DEPTH = 100
_XML_MAX_ELEMENTS = 200_000

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
    """``connection`` of a ``rest_api`` source: ``base_url``, ``headers``, ``api_key``, ``auth``…"""

    # A rejected value would otherwise be echoed, api_key and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: what ``worker test-connection`` GETs; without it, ``base_url`` itself (any answer
    #: but 401/403/429/5xx counts as healthy)
    health_path: str | None = None
    #: credentials other than headers: basic, bearer, header, query, oauth2_client_credentials
    auth: AuthSettings | None = None

    @field_validator("health_path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and placeholder_names(value):
            raise ValueError("health_path takes no {placeholders}")
        return None if value is None else check_path(value)

    @model_validator(mode="after")
    def _one_credential(self) -> RESTSettings:
        if self.auth is None or isinstance(self.auth, QueryAuthSettings):
            return self
        header = self.auth.name if isinstance(self.auth, HeaderAuthSettings) else "Authorization"
        if header.lower() in {name.lower() for name in self.headers}:
            raise ValueError(f"auth sets the {header} header: leave it out of headers")
        return self


# -- pagination ------------------------------------------------------------------------------


class _Pages(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: pages read at most (n8n: "Limit Pages Fetched")
    max_pages: int = Field(default=10, ge=1, le=100)


class NextURLPages(_Pages):
    """n8n "Response Contains Next URL": the link at the dotted path ``next``."""

    type: Literal["next_url"]
    next: str = Field(pattern=_DOTTED)


class LinkHeaderPages(_Pages):
    """n8n "Response Contains Next URL" from ``$response.headers.link``: ``rel="next"``."""

    type: Literal["link_header"]


class CursorPages(_Pages):
    """n8n "Update a Parameter in Each Request" with ``$response.body.<cursor>``."""

    type: Literal["cursor"]
    cursor: str = Field(pattern=_DOTTED)
    param: str = Field(pattern=_PARAM)


class PageNumberPages(_Pages):
    """n8n "Update a Parameter in Each Request" with ``$pageCount``: 1, 2, 3…"""

    type: Literal["page"]
    param: str = Field(default="page", pattern=_PARAM)
    start: int = Field(default=1, ge=0)


class OffsetPages(_Pages):
    """An offset counted up by ``step``, or by the rows the page before gave."""

    type: Literal["offset"]
    param: str = Field(default="offset", pattern=_PARAM)
    start: int = Field(default=0, ge=0)
    step: int | None = Field(default=None, ge=1)


Pagination = Annotated[
    NextURLPages | LinkHeaderPages | CursorPages | PageNumberPages | OffsetPages,
    Field(discriminator="type"),
]


class RESTQuery(BaseModel):
    """One endpoint read; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1)
    method: Literal["GET", "HEAD", "POST"] = "GET"
    params: dict[str, Scalar] = Field(default_factory=dict)
    body: Any = None
    result: str | None = Field(default=None, pattern=_DOTTED)
    format: Literal["auto", "json", "xml", "text"] = "auto"
    pagination: Pagination | None = None

    @field_validator("path")
    @classmethod
    def _stays_on_host(cls, value: str) -> str:
        return check_path(value)

    @field_validator("body")
    @classmethod
    def _json_body(cls, value: Any) -> Any:
        return json_value(value, "body")

    @model_validator(mode="after")
    def _consistent(self) -> RESTQuery:
        if self.body is not None and self.method != "POST":
            raise ValueError(f"a {self.method} request takes no body: use params, or POST")
        if self.pagination is not None and self.method == "HEAD":
            raise ValueError("a HEAD request has no pages: pagination needs GET or POST")
        if self.pagination is not None and self.format == "text":
            raise ValueError("text answers have no rows to page through: use json or xml")
        return self


# -- the connector ---------------------------------------------------------------------------


class RESTConnector(Connector):
    """Reads configured endpoints of one HTTP JSON, XML or text API."""

    type_name: ClassVar[str] = "rest_api"
    Settings = RESTSettings
    query_shape: ClassVar[str] = (
        '"/products/{sku}/stock", or {"path": …, "method": "GET", "params": {…}, '
        '"body": {…} (POST only), "result": "data.items", "format": "auto|json|xml|text", '
        '"pagination": {"type": "next_url|link_header|cursor|page|offset", …}}'
    )

    settings: RESTSettings

    def setup(self) -> None:
        auth = auth_for(
            self.source_id, self.settings.auth, ssl=self.settings.ssl, base_dir=self.base_dir
        )
        self._http = SafeHTTP.within(
            self.source_id,
            self.settings,
            max_bytes=self.limits.max_bytes,
            base_dir=self.base_dir,
            auth=auth,
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

    def targets(self) -> list[tuple[str, int]]:
        """The API's origin, and the OAuth2 token endpoint's when there is one."""
        found = super().targets()
        auth = self.settings.auth
        if isinstance(auth, OAuth2ClientCredentialsSettings):
            parts = urlsplit(auth.token_url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found.append((parts.hostname or "", port))
        return list(dict.fromkeys(found))

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
        if spec.pagination is not None:
            return await self._pages(spec, spec.pagination, bound.params, timeout_s)
        params = bound.params
        url = self._http.url(spec.path, params)
        body = bind_placeholders(spec.body, params)
        query_params = bind_placeholders(spec.params, params)
        response = await self._send(spec, url, query_params, bound_body=body, timeout_s=timeout_s)
        checked = self._http.check(response)
        if checked is None:
            return ReadResult(rows=[])
        if spec.method == "HEAD":
            return ReadResult(rows=[{"status": checked.status}], data={"status": checked.status})
        if not checked.body.strip():
            return ReadResult(rows=[])
        kind, document = self._decode(checked, spec)
        if kind == "text":
            if spec.result:
                raise self.fail("the answer is text, not JSON or XML: `result` cannot pick from it")
            return ReadResult(rows=[{"value": document}], data=document)
        return result_of(dig(document, spec.result), max_rows=self.limits.max_rows)

    async def _send(
        self,
        spec: RESTQuery,
        url: str,
        params: Mapping[str, Any] | None,
        *,
        bound_body: Any,
        timeout_s: float,
    ) -> HTTPResponse:
        return await self._http.request(
            spec.method,
            url,
            timeout_s=timeout_s,
            idempotent=spec.method != "POST",
            params=params,
            json_body=bound_body if spec.body is not None else None,
            headers=self._accept(),
        )

    async def _pages(
        self, spec: RESTQuery, pages: Pagination, values: Mapping[str, Any], timeout_s: float
    ) -> ReadResult:
        """Page after page into one list of rows, within one deadline (module docstring)."""
        deadline = time.monotonic() + timeout_s
        url = self._http.url(spec.path, values)
        params: dict[str, Any] = dict(bind_placeholders(spec.params, values))
        if isinstance(pages, PageNumberPages | OffsetPages):
            params[pages.param] = pages.start
        body = bind_placeholders(spec.body, values)
        cap = self.limits.max_rows
        rows: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(pages.max_pages):
            seen.add(_request_key(url, params))
            left = deadline - time.monotonic()
            if left <= 0:
                raise SourceTimeout(self.source_id, f"the pages took longer than {timeout_s:g} s")
            response = await self._send(spec, url, params, bound_body=body, timeout_s=left)
            checked = self._http.check(response)
            if checked is None or not checked.body.strip():
                break  # a 404 or an empty body past the last page
            document = self._paged_document(checked, spec)
            items = dig(document, spec.result)
            page = result_of(items, max_rows=cap - len(rows)).rows
            if not page:
                break
            rows.extend(page)
            following = self._following(pages, url, params, checked, document, _count(items))
            if len(rows) >= cap or following is None or _request_key(*following) in seen:
                break
            url, params = following
        return ReadResult(rows=rows, data=rows) if rows else ReadResult(rows=[])

    def _paged_document(self, response: HTTPResponse, spec: RESTQuery) -> Any:
        kind, document = self._decode(response, spec)
        if kind == "text":
            raise self.fail("a page of a paged read is text: pages must be JSON or XML")
        return document

    def _following(
        self,
        pages: Pagination,
        url: str,
        params: dict[str, Any],
        response: HTTPResponse,
        document: Any,
        count: int,
    ) -> tuple[str, dict[str, Any]] | None:
        """The next page's URL and query parameters, or None after the last page."""
        if isinstance(pages, NextURLPages | LinkHeaderPages):
            if isinstance(pages, NextURLPages):
                link = dig(document, pages.next)
            else:
                link = httpx.Response(response.status, headers=response.headers).links
                link = link.get("next", {}).get("url")
            if not isinstance(link, str) or not link.strip():
                return None
            return self._http.link(str(httpx.URL(url, params=params)), link), {}
        if isinstance(pages, CursorPages):
            cursor = dig(document, pages.cursor)
            if isinstance(cursor, bool) or not isinstance(cursor, str | int | float):
                return None
            return (url, {**params, pages.param: cursor}) if str(cursor).strip() else None
        if isinstance(pages, PageNumberPages):
            return url, {**params, pages.param: int(params[pages.param]) + 1}
        return url, {**params, pages.param: int(params[pages.param]) + (pages.step or count)}

    def _accept(self) -> dict[str, str]:
        configured = {name.lower() for name in self.settings.headers}
        return {} if "accept" in configured else {"Accept": _ACCEPT}

    def _decode(self, response: HTTPResponse, spec: RESTQuery) -> tuple[str, Any]:
        """``("json" | "xml", document)`` or ``("text", str)``, as ``format`` says."""
        media, charset = _content_type(response)
        kind = spec.format
        if kind == "auto":
            if _is_json(media) or (not media and response.json() is not None):
                kind = "json"
            elif _is_xml(media):
                kind = "xml"
            elif not media or media.startswith("text/"):
                kind = "text"
            else:
                raise self.fail(f"the answer is {media}, neither JSON, XML nor text")
        if kind == "json":
            try:
                return "json", json.loads(response.body.decode(charset or "utf-8"))
            except (ValueError, LookupError):
                raise self.fail("the answer is not valid JSON") from None
        if kind == "xml":
            return "xml", self._xml(response.body)
        try:
            return "text", response.body.decode(charset or "utf-8", errors="replace")
        except LookupError:
            return "text", response.text

    def _xml(self, body: bytes) -> Any:
        try:
            return xml_document(body)
        except DefusedXmlException:
            raise self.fail("the XML answer declares entities; refused") from None
        except ParseError:
            raise self.fail("the answer is not well-formed XML") from None
        except ValueError as exc:
            raise self.fail(str(exc)) from None


# -- XML ----------------------------------------------------------------------------------


def xml_document(
    body: bytes, *, max_depth: int = _XML_MAX_DEPTH, max_elements: int = _XML_MAX_ELEMENTS
) -> dict[str, Any]:
    """An XML document as JSON-like values, the shape ``result`` paths read::

        <catalog><product id="1"><sku>A</sku></product><product id="2"><sku>B</sku>
        </product><note>hi</note></catalog>
        → {"catalog": {"product": [{"@id": "1", "sku": "A"}, {"@id": "2", "sku": "B"}],
                       "note": "hi"}}

    The root element is the one key. An element with neither attributes nor
    children is its text (stripped; None when empty); any other is an object
    of ``@attribute`` values, child elements (a list when the name repeats)
    and its own text as ``#text``. Namespaces are dropped (``{urn:x}sku`` is
    ``sku``); every value is a string. Entity declarations (and so entity
    bombs and external entities) raise `defusedxml.DefusedXmlException`,
    malformed XML `ParseError`, and a document deeper than ``max_depth`` or
    with more than ``max_elements`` elements `ValueError`, while parsing.
    """
    root: Element | None = None
    depth = elements = 0
    parsed = iterparse(io.BytesIO(body), events=("start", "end"), forbid_dtd=False)
    for event, element in parsed:
        if event == "end":
            depth -= 1
            continue
        root = element if root is None else root
        depth, elements = depth + 1, elements + 1
        if depth > max_depth:
            raise ValueError(f"the XML answer is nested deeper than {max_depth} elements")
        if elements > max_elements:
            raise ValueError(f"the XML answer has more than {max_elements} elements")
    if root is None:
        raise ParseError("no element")
    return {_local(root.tag): _element(root)}


def _element(element: Element) -> Any:
    children = list(element)
    own_text = "".join([element.text or "", *(child.tail or "" for child in children)]).strip()
    if not children and not element.attrib:
        return own_text or None
    node: dict[str, Any] = {f"@{_local(k)}": v for k, v in element.attrib.items()}
    for child in children:
        name, value = _local(child.tag), _element(child)
        if name not in node:
            node[name] = value
        elif isinstance(node[name], list):  # an element's value is never a list of its own
            node[name].append(value)
        else:
            node[name] = [node[name], value]
    if own_text:
        node["#text"] = own_text
    return node


def _local(tag: Any) -> str:
    text = str(tag)
    return text.rsplit("}", 1)[-1] if text.startswith("{") else text


# -- helpers ------------------------------------------------------------------------------


def _request_key(url: str, params: Mapping[str, Any]) -> str:
    return url + "?" + json.dumps(params, sort_keys=True, default=str)


def _count(items: Any) -> int:
    """How many items a page's ``result`` held (what an offset steps by)."""
    if isinstance(items, list):
        return len(items)
    return 0 if items in (None, "", {}) else 1


def _content_type(response: HTTPResponse) -> tuple[str, str | None]:
    raw = response.headers.get("content-type", "")
    media, _, rest = raw.partition(";")
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", rest)
    return media.strip().lower(), match.group(1) if match else None


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _is_xml(media: str) -> bool:
    return media in ("application/xml", "text/xml") or media.endswith("+xml")
