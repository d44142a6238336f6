"""SOAP sources: an operation of a WSDL, its arguments bound from parameters.

A query, as the contract writes it::

    {"operation": "GetOrderStatus", "args": {"orderId": "{order_id}"}}

plus, optionally, ``"result": "items.0"`` (a dotted path into the answer) and
``"idempotent": true`` (see retries below).

How the work is split between zeep and us — zeep does the SOAP, we do the wire:

- The WSDL (``wsdl``: a URL, or a file path relative to the tenant config) is
  loaded at `open` by zeep's sync `zeep.Client`, in a thread. Its documents
  (the WSDL and the schemas it imports) are fetched by `BoundedTransport`, a
  zeep transport that only reads from the WSDL's own origin, caps each
  document at ``max_response_bytes``, and gives the whole load one deadline;
  a local WSDL may import local files only. DTDs and entities are refused.
- A read builds the envelope with zeep (the operation's binding turns ``args``
  into typed XML as the WSDL's schema says, so a parameter is only ever
  escaped element text or a typed value), then POSTs it *ourselves* through
  `connectors.http_base.SafeHTTP`, and hands the bytes back to zeep's binding
  to parse. zeep's own `AsyncTransport` (httpx) reads a whole body into
  memory before anyone can look at it, so it cannot honour the size cap;
  SafeHTTP streams with the cap, keeps the request on the service's origin
  (redirects included), and puts connect, headers and body under the deadline.
- The service address is the WSDL's ``soap:address`` unless the connection's
  ``address`` replaces it (a WSDL served with an internal host name).

Operations: existence is checked when a read runs (the WSDL is not loaded when
the config is), with the WSDL's operations named in the error. An operation
whose name starts with a write verb (``Create…``, ``Update…``, ``Delete…``,
``Cancel…``, see `WRITE_VERBS`) is refused as not a read when the config loads:
a guard against an obvious mistake, not a proof — SOAP cannot say which
operations only read, so give the source an account that can only read.
Being POSTs, reads are not retried unless the query says ``"idempotent": true``
(then: connect errors, 429 and 503 within the deadline).

The answer: zeep's result through `zeep.helpers.serialize_object` into dicts
and lists, then ``result`` picks from it; None (an empty response) or a 404 is
*not found*, a list one row per item, an object one row, a scalar the row
``{"value": …}``. A SOAP Fault is a source failure whose text is the fault
string, one line, trimmed, parameter values and secrets masked; 401/403 an
auth failure.

Without a WSDL (a service that publishes none, or one zeep cannot read), a
query is the envelope itself, written by the tenant, posted to ``address``::

    {"envelope": "<soapenv:Envelope xmlns:soapenv=…><soapenv:Body><ord:GetOrderStatus>"
                 "<ord:orderId>{order_id}</ord:orderId></ord:GetOrderStatus>"
                 "</soapenv:Body></soapenv:Envelope>",
     "action": "urn:example:orders#GetOrderStatus", "result": "GetOrderStatusResult"}

The envelope is parsed when the config loads (zeep's safe parser: no DTD, no
entities; an ``Envelope`` of SOAP 1.1 or 1.2 with a ``Body`` holding one
operation element, whose name is checked against `WRITE_VERBS` as an
operation's is). ``{name}`` may stand in element text and attribute values
only — not in names, comments or processing instructions. A read fills each
into the parsed tree as text and lets lxml serialise it, so ``<``, ``&`` and
``]]>`` are escaped wherever they appear, CDATA sections included (they are
parsed into plain text); a value XML cannot carry (a NUL, a control
character) is refused. SOAP 1.1 is sent as ``text/xml`` with ``SOAPAction:
"<action>"``, 1.2 as ``application/soap+xml; action="<action>"``. The answer
is parsed the same safe way into dicts (element local names; a repeated
element becomes a list; an empty or ``xsi:nil`` element None; attributes
are dropped), and ``result`` is a dotted path inside the Body's first element
(the operation's response), which is the answer when ``result`` is absent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import httpx
import zeep
import zeep.exceptions
import zeep.helpers
import zeep.loader
import zeep.wsdl.utils
from lxml import etree  # type: ignore[import-untyped]
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors import egress
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
    SourceTimeout,
    SourceUnavailable,
    bind_placeholders,
    first_error,
    jsonable,
    placeholder_names,
)
from connectors.http_base import (
    HTTPResponse,
    HTTPSettings,
    SafeHTTP,
    dig,
    result_of,
    safe_message,
    string_fields,
)
from connectors.network import TLSSettings

__all__ = [
    "WRITE_VERBS",
    "BoundedTransport",
    "EnvelopeSpec",
    "SOAPConnector",
    "SOAPEnvelopeQuery",
    "SOAPQuery",
    "SOAPSettings",
    "render_envelope",
]

_LOAD_TIMEOUT_S = 30.0
_HEALTH_TIMEOUT_S = 10.0
_MAX_REDIRECTS = 3
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DOTTED = r"^[^.\s]+(\.[^.\s]+)*$"

#: first words of operation names refused as writes (compared case-insensitively)
WRITE_VERBS = frozenset(
    """add append approve assign book cancel change charge clear close commit confirm create
    delete deactivate disable drop enable execute import insert lock merge modify move pay
    post purchase put refund register reject remove rename replace reserve reset restore
    save send set start stop submit transfer unlock update upload upsert void write""".split()
)


def _origin(url: str) -> tuple[str, str, int | None] | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    return parts.scheme, parts.hostname.lower(), parts.port or default


def _is_url(value: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", value) is not None


# -- settings and queries ---------------------------------------------------------


class SOAPSettings(ConnectionSettings):
    """``connection`` of a ``soap`` source: the ``wsdl``, and how to reach the service."""

    # A rejected value would otherwise be echoed, password and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: the WSDL: an http(s) URL, or a file path relative to the tenant config;
    #: none for a service read only with raw envelopes (then ``address`` is needed)
    wsdl: str | None = Field(default=None, min_length=1)
    #: replaces the WSDL's ``soap:address`` (where reads are POSTed)
    address: str | None = None
    #: which ``wsdl:service`` and ``port`` to use; the first ones when absent
    service: str | None = None
    port: str | None = None
    #: sent with every request; ``{api_key}``, ``{username}``, ``{password}`` name fields
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: SecretStr | None = None
    #: HTTP basic auth, unless ``headers`` sets Authorization
    username: str | None = None
    password: SecretStr | None = None
    max_response_bytes: int = Field(default=5_000_000, ge=1_000, le=500_000_000)
    retries: int = Field(default=2, ge=0, le=5)
    ssl: TLSSettings | None = None

    @field_validator("wsdl")
    @classmethod
    def _wsdl_location(cls, value: str | None) -> str | None:
        if value is not None and (_is_url(value) or value.startswith("//")):
            parts = urlsplit(value)
            if _origin(value) is None or parts.username or parts.password:
                raise ValueError("a wsdl URL must be http(s), with a host and no credentials")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if _origin(value) is None or parts.username or parts.password or parts.fragment:
                raise ValueError("address must be an http(s) URL without credentials or fragment")
        return value

    @model_validator(mode="after")
    def _basic_auth_pair(self) -> SOAPSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.wsdl is None and self.address is None:
            raise ValueError("give a wsdl, or the service's address for raw envelopes")
        return self

    def fields(self) -> dict[str, str]:
        """String fields, secrets revealed: what ``{field}`` in a header names."""
        return string_fields(self)

    def secrets(self) -> list[str]:
        return [
            value.get_secret_value() for value in (self.api_key, self.password) if value is not None
        ]


class SOAPQuery(BaseModel):
    """One configured SOAP read: an operation and its arguments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operation: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    args: dict[str, Any] = Field(default_factory=dict)
    result: str | None = Field(default=None, pattern=_DOTTED)
    #: the operator vouches that repeating this operation is harmless: retry it
    idempotent: bool = False


class SOAPEnvelopeQuery(BaseModel):
    """One configured SOAP read without a WSDL: the envelope, written out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    envelope: str = Field(min_length=1, max_length=100_000)
    #: the SOAPAction (1.1) or ``action`` parameter (1.2); fixed in the config
    action: str | None = Field(default=None, pattern=r'^[^"\s{}]{1,500}$')
    result: str | None = Field(default=None, pattern=_DOTTED)
    idempotent: bool = False


_SOAP_NS: dict[str, Literal["1.1", "1.2"]] = {
    "http://schemas.xmlsoap.org/soap/envelope/": "1.1",
    "http://www.w3.org/2003/05/soap-envelope": "1.2",
}
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
#: no DTD, no entities, no network: for envelopes the tenant writes and answers services send
_SAFE_XML = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True)


@dataclass(frozen=True)
class EnvelopeSpec:
    """A prepared raw-envelope read: the template (checked), and how to send it."""

    template: str
    version: Literal["1.1", "1.2"]
    operation: str
    action: str | None = None
    result: str | None = None
    idempotent: bool = False


def _parse_xml(content: bytes | str) -> Any:
    """An lxml root element, parsed with `_SAFE_XML`; zeep's errors pass through."""
    return zeep.loader.parse_xml(content, None, settings=_SAFE_XML)  # type: ignore[arg-type]  # bytes work


def _prepare_envelope(query: SOAPEnvelopeQuery) -> EnvelopeSpec:
    """Check the envelope once, at load time (module docstring)."""
    try:
        root = _parse_xml(query.envelope.strip().encode())
    except zeep.exceptions.Error as exc:
        raise ConfigError(f"soap envelope: not well-formed, safe XML ({_short(exc)})") from None
    name = etree.QName(root)
    version = _SOAP_NS.get(name.namespace or "")
    if name.localname != "Envelope" or version is None:
        raise ConfigError("soap envelope: the root must be a SOAP 1.1 or 1.2 Envelope")
    body = root.find(f"{{{name.namespace}}}Body")
    operations = [] if body is None else [e for e in body if isinstance(e.tag, str)]
    if len(operations) != 1:
        raise ConfigError("soap envelope: the Body must hold exactly one operation element")
    for node in root.iter():
        if not isinstance(node.tag, str) and placeholder_names(node.text or ""):
            raise ConfigError(
                "soap envelope: {placeholders} go in element text or attribute values, "
                "not in comments or processing instructions"
            )
    template = etree.tostring(root, encoding="unicode")
    return EnvelopeSpec(
        template,
        version,
        etree.QName(operations[0]).localname,
        query.action,
        query.result,
        query.idempotent,
    )


def _xml_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(jsonable(value))


def render_envelope(spec: EnvelopeSpec, params: Mapping[str, Any]) -> bytes:
    """The envelope with every ``{name}`` filled as text; `ValueError` for a value XML
    cannot carry. Parameters are set on the parsed tree, so lxml escapes them."""
    texts = {name: _xml_text(value) for name, value in params.items()}
    root = _parse_xml(spec.template.encode())

    def fill(text: str | None) -> str | None:
        if text is None or not placeholder_names(text):
            return text
        return str(bind_placeholders(text, texts))

    for node in root.iter():
        if not isinstance(node.tag, str):
            continue  # comments and processing instructions stay as written
        node.text = fill(node.text)
        node.tail = fill(node.tail)
        for key, value in node.attrib.items():
            node.set(key, fill(value) or "")
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="utf-8")
    return data


def _envelope_headers(spec: EnvelopeSpec) -> dict[str, str]:
    if spec.version == "1.1":
        return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{spec.action or ""}"'}
    action = f'; action="{spec.action}"' if spec.action else ""
    return {"Content-Type": f"application/soap+xml; charset=utf-8{action}"}


def _plain(element: Any) -> Any:
    """An answer's element as dicts, lists and text (module docstring)."""
    children = [child for child in element if isinstance(child.tag, str)]
    if not children:
        if element.get(_XSI_NIL) in ("true", "1"):
            return None
        text = (element.text or "").strip()
        return text or None
    grouped: dict[str, list[Any]] = {}
    for child in children:
        grouped.setdefault(etree.QName(child).localname, []).append(_plain(child))
    return {name: items[0] if len(items) == 1 else items for name, items in grouped.items()}


def _answer(body: bytes, version: str) -> tuple[Any, str | None]:
    """The Body's first element as plain data, or the fault's text (blocking: lxml)."""
    root = _parse_xml(body)
    namespace = next(ns for ns, v in _SOAP_NS.items() if v == version)
    soap_body = root.find(f"{{{namespace}}}Body")
    if etree.QName(root).localname != "Envelope" or soap_body is None:
        raise ValueError("not a SOAP envelope of the version sent")
    first = next((e for e in soap_body if isinstance(e.tag, str)), None)
    if first is None:
        return None, None
    if etree.QName(first).localname == "Fault":
        fault = _plain(first) or {}
        reason = fault.get("faultstring") or fault.get("Reason") or fault
        text = reason.get("Text") if isinstance(reason, Mapping) else reason
        return None, str(text)
    return _plain(first), None


# -- loading the WSDL -------------------------------------------------------------------


class BoundedTransport(zeep.Transport):
    """A zeep transport for loading WSDL and XSD documents: one origin, capped, one deadline.

    Blocking (it runs in the thread that builds the zeep client). Local paths
    are read as zeep reads them; http(s) documents only from ``origin``.
    """

    def __init__(
        self,
        source_id: str,
        *,
        origin: tuple[str, str, int | None] | None,
        headers: Mapping[str, str],
        max_bytes: int,
        timeout_s: float,
        verify: Any = True,
    ) -> None:
        # No super().__init__(): it opens a requests session that would never be used.
        self.cache = None
        self.load_timeout = timeout_s
        self.operation_timeout = timeout_s
        self.logger = logging.getLogger("zeep.transports")
        self._close_session = False
        self.session = None
        self.source_id = source_id
        self._origin = origin
        self._max_bytes = max_bytes
        self._deadline = time.monotonic() + timeout_s
        self._http = httpx.Client(
            headers=dict(headers), follow_redirects=False, verify=verify, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def load(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            return self._load_remote_data(url)
        reach = egress.current()
        if parts.scheme == "file" or (not reach.trusted and parts.scheme == ""):
            local = Path(url2pathname(parts.path)) if parts.scheme else Path(url)
            try:
                return reach.check_file(local).read_bytes()
            except egress.EgressRefused as exc:
                raise SourceUnavailable(self.source_id, str(exc)) from None
        if not reach.trusted:
            raise SourceUnavailable(
                self.source_id, f"the WSDL refers to {parts.scheme}: documents; not read"
            )
        data: bytes = super().load(url)  # type: ignore[no-untyped-call]
        return data

    def _load_remote_data(self, url: str) -> bytes:
        for _ in range(_MAX_REDIRECTS + 1):
            if _origin(url) != self._origin or self._origin is None:
                raise SourceError(
                    self.source_id,
                    f"the WSDL refers to a document on another host ({urlsplit(url).hostname});"
                    " only its own origin is read (save the documents beside the config)",
                )
            with self._errors():
                body, location = self._get(url)
            if location is None:
                return body
            url = urljoin(url, location)
        raise SourceError(self.source_id, "too many redirects while loading the WSDL")

    def _get(self, url: str) -> tuple[bytes, str | None]:
        with self._http.stream("GET", url, timeout=self._left()) as response:
            if response.status_code in (301, 302, 303, 307, 308):
                return b"", response.headers.get("location", "")
            if response.status_code in (401, 403):
                raise SourceAuthError(
                    self.source_id,
                    f"loading the WSDL: authentication failed ({response.status_code})",
                )
            if response.status_code >= 400:
                raise SourceError(
                    self.source_id, f"loading the WSDL: the server answered {response.status_code}"
                )
            body = bytearray()
            for chunk in response.iter_raw():
                body.extend(chunk)
                if len(body) > self._max_bytes:
                    raise SourceError(
                        self.source_id,
                        f"a WSDL document is larger than {self._max_bytes} bytes; cut off",
                    )
                self._left()
            return bytes(body), None

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise SourceTimeout(
                self.source_id, f"the WSDL did not load within {self.load_timeout:g} s"
            )
        return left

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise SourceTimeout(
                self.source_id, "the WSDL did not load before the deadline"
            ) from exc
        except (httpx.ConnectError, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise SourceUnavailable(
                self.source_id, f"cannot reach the WSDL's host ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise SourceError(
                self.source_id, f"loading the WSDL failed ({type(exc).__name__})"
            ) from exc


@dataclass(frozen=True)
class _Service:
    """What `open` made: the zeep client, the bound service, and the wire to it."""

    client: Any
    proxy: Any
    address: str
    http: SafeHTTP


@dataclass(frozen=True)
class _Reply:
    """What zeep's ``process_reply`` reads of a response."""

    status_code: int
    content: bytes
    headers: httpx.Headers
    encoding: str | None = None


# -- the connector ------------------------------------------------------------------------


class SOAPConnector(Connector):
    """Calls read operations of one SOAP service described by a WSDL."""

    type_name: ClassVar[str] = "soap"
    Settings = SOAPSettings
    query_shape: ClassVar[str] = (
        '{"operation": "GetOrderStatus", "args": {"orderId": "{order_id}"}, '
        '"result": "dotted.path" (optional)}, or without a WSDL {"envelope": "<soapenv:Envelope…'
        '{order_id}…>", "action": "…", "result": "dotted.path"}'
    )

    settings: SOAPSettings

    def setup(self) -> None:
        self._service: _Service | None = None
        self._opening = asyncio.Lock()
        #: the wire to ``address`` of a source without a WSDL
        self._raw: SafeHTTP | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError('a soap query is a mapping: {"operation": …, "args": {…}}')
        if "envelope" in raw:
            try:
                raw_query = SOAPEnvelopeQuery.model_validate(raw)
            except ValidationError as exc:
                raise ConfigError("soap query: " + first_error(exc)) from None
            spec = _prepare_envelope(raw_query)
            _check_read(spec.operation)
            names = placeholder_names(_texts_of(spec.template))
            return PreparedQuery(spec=spec, names=names)
        try:
            query = SOAPQuery.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError("soap query: " + first_error(exc)) from None
        _check_read(query.operation)
        return PreparedQuery(spec=query, names=placeholder_names(query.args))

    async def open(self) -> None:
        if self.settings.wsdl is not None:
            await self._opened()

    async def close(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            await service.http.close()
        raw, self._raw = self._raw, None
        if raw is not None:
            await raw.close()

    async def health_check(self) -> None:
        address, http = await self._endpoint()
        response = await http.request(
            "GET",
            address,
            timeout_s=_HEALTH_TIMEOUT_S,
            idempotent=True,
            headers=self._headers(),
        )
        # Any answer from the endpoint shows it is up, save refusals and real failures.
        if response.status in (401, 403, 429) or (
            response.status >= 500 and not _is_fault(response)
        ):
            http.check(response, not_found_ok=False)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if isinstance(spec, EnvelopeSpec):
            return await self._run_envelope(spec, bound.params, timeout_s)
        if not isinstance(spec, SOAPQuery):
            raise self.fail("the query was not prepared by the soap connector")
        service = await self._opened()
        hide = [*bound.params.values(), *self.settings.secrets()]
        operation, body, headers = self._envelope(service, spec, bound.params, hide)
        response = await service.http.request(
            "POST",
            service.address,
            timeout_s=timeout_s,
            idempotent=spec.idempotent,
            content=body,
            headers={**headers, **self._headers()},
        )
        if response.status in (401, 403, 429):
            service.http.check(response)
        if response.status == 404:
            return ReadResult(rows=[])
        if response.status != 200 and not _is_fault(response):
            raise self.fail(f"the source answered {response.status}")
        answer = await asyncio.to_thread(self._parse, service, operation, response, hide)
        return result_of(dig(answer, spec.result), max_rows=self.limits.max_rows)

    async def _run_envelope(
        self, spec: EnvelopeSpec, params: Mapping[str, Any], timeout_s: float
    ) -> ReadResult:
        hide = [*params.values(), *self.settings.secrets()]
        try:
            body = render_envelope(spec, params)
        except ValueError:
            raise self.fail(
                "a parameter holds characters XML cannot carry (NUL or control characters)"
            ) from None
        address, http = await self._endpoint()
        response = await http.request(
            "POST",
            address,
            timeout_s=timeout_s,
            idempotent=spec.idempotent,
            content=body,
            headers={**_envelope_headers(spec), **self._headers()},
        )
        if response.status in (401, 403, 429):
            http.check(response)
        if response.status == 404:
            return ReadResult(rows=[])
        if response.status != 200 and not _is_fault(response):
            raise self.fail(f"the source answered {response.status}")
        try:
            answer, fault = await asyncio.to_thread(_answer, response.body, spec.version)
        except (zeep.exceptions.Error, ValueError) as exc:
            raise self.fail(
                f"the answer is not a safe, well-formed SOAP {spec.version} envelope "
                f"({type(exc).__name__})"
            ) from None
        if fault is not None:
            raise self.fail("the service answered a SOAP fault: " + safe_message(fault, hide))
        return result_of(dig(answer, spec.result), max_rows=self.limits.max_rows)

    # -- the parts of a read ----------------------------------------------------------

    # zeep has no public API for "build the envelope" and "parse these bytes" apart from its
    # transport: these use the binding's own `_create` and `process_reply` (zeep 4.2-4.3).

    def _envelope(
        self, service: _Service, spec: SOAPQuery, params: Mapping[str, Any], hide: list[Any]
    ) -> tuple[Any, bytes, dict[str, str]]:
        binding = service.proxy._binding
        try:
            operation = binding.get(spec.operation)
        except ValueError:
            known = ", ".join(sorted(binding.all())) or "none"
            raise self.fail(
                f"the WSDL has no operation {spec.operation!r} (it has: {known})"
            ) from None
        options = {**service.proxy._binding_options, "address": service.address}
        args = bind_placeholders(spec.args, params)
        try:
            envelope, headers = binding._create(
                spec.operation, (), args, client=service.client, options=options
            )
        except (TypeError, ValueError, zeep.exceptions.Error) as exc:
            raise self.fail(
                f"the arguments do not fit operation {spec.operation!r}: "
                + safe_message(str(exc), hide)
            ) from None
        body: bytes = zeep.wsdl.utils.etree_to_string(envelope)  # type: ignore[no-untyped-call]
        return operation, body, {str(k): str(v) for k, v in headers.items()}

    def _parse(
        self, service: _Service, operation: Any, response: HTTPResponse, hide: list[Any]
    ) -> Any:
        reply = _Reply(response.status, response.body, response.headers)
        try:
            result = service.proxy._binding.process_reply(service.client, operation, reply)
        except zeep.exceptions.Fault as exc:
            raise self.fail(
                "the service answered a SOAP fault: " + safe_message(exc.message or "", hide)
            ) from None
        except (zeep.exceptions.Error, ValueError, TypeError) as exc:
            raise self.fail(
                f"the answer is not the operation's SOAP response ({type(exc).__name__})"
            ) from None
        return zeep.helpers.serialize_object(result, target_cls=dict)  # type: ignore[no-untyped-call]

    def _headers(self) -> dict[str, str]:
        """Configured headers, ``{field}`` filled from the connection; basic auth."""
        fields = self.settings.fields()
        headers = {
            name: _FIELD.sub(lambda m: fields.get(m.group(1), ""), value)
            for name, value in self.settings.headers.items()
        }
        if self.settings.username is not None and self.settings.password is not None:
            if not any(name.lower() == "authorization" for name in headers):
                pair = f"{self.settings.username}:{self.settings.password.get_secret_value()}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return headers

    # -- opening ---------------------------------------------------------------------------

    async def _endpoint(self) -> tuple[str, SafeHTTP]:
        """Where reads are POSTed, and the wire to it: the WSDL's service, or ``address``."""
        address = self.settings.address
        if self.settings.wsdl is not None or address is None:
            service = await self._opened()
            return service.address, service.http
        if self._raw is None:
            self._raw = self._wire(address)
        return address, self._raw

    def _wire(self, address: str) -> SafeHTTP:
        parts = urlsplit(address)
        http_settings = HTTPSettings(
            base_url=f"{parts.scheme}://{parts.netloc}",
            max_response_bytes=min(self.settings.max_response_bytes, self.limits.max_bytes),
            retries=self.settings.retries,
            ssl=self.settings.ssl,
        )
        return SafeHTTP(self.source_id, http_settings, base_dir=self.base_dir)

    async def _opened(self) -> _Service:
        service = self._service
        if service is not None:
            return service
        if self.settings.wsdl is None:
            raise self.fail(
                'the source has no wsdl: its queries must be raw envelopes ({"envelope": …})'
            )
        async with self._opening:
            if self._service is None:
                self._service = await self._open()
            return self._service

    async def _open(self) -> _Service:
        client = await asyncio.to_thread(self._load_wsdl)
        try:
            proxy = client.bind(self.settings.service, self.settings.port)
        except (ValueError, zeep.exceptions.Error) as exc:
            raise self.fail(f"the WSDL has no such service or port ({exc})") from None
        if proxy is None:
            raise self.fail("the WSDL defines no service")
        address = self.settings.address or proxy._binding_options.get("address")
        if not isinstance(address, str) or _origin(address) is None:
            raise self.fail("the WSDL gives no http(s) address for the service: set address")
        return _Service(client, proxy, address, self._wire(address))

    def _load_wsdl(self) -> Any:
        """zeep's client for the WSDL (blocking: run in a thread)."""
        wsdl = self.settings.wsdl
        if wsdl is None:  # `_opened` says so first
            raise self.fail("the source has no wsdl")
        remote = _is_url(wsdl)
        location = wsdl if remote else str(self.resolve_path(wsdl))
        if not remote and not Path(location).is_file():
            raise SourceUnavailable(self.source_id, f"the WSDL file {wsdl!r} does not exist")
        tls = self.settings.ssl.context(self.base_dir) if self.settings.ssl else None
        transport = BoundedTransport(
            self.source_id,
            origin=_origin(wsdl) if remote else None,
            headers=self._headers(),
            max_bytes=min(self.settings.max_response_bytes, self.limits.max_bytes),
            timeout_s=_LOAD_TIMEOUT_S,
            verify=tls if tls is not None else True,
        )
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True)
        try:
            return zeep.Client(location, transport=transport, settings=settings)  # type: ignore[no-untyped-call]
        except SourceError:
            raise
        except (zeep.exceptions.Error, ValueError, LookupError, NotImplementedError) as exc:
            raise self.fail(
                f"the WSDL does not load ({type(exc).__name__}: {_short(exc)})"
            ) from None
        except OSError as exc:
            raise SourceUnavailable(
                self.source_id, f"the WSDL cannot be read ({exc.strerror})"
            ) from None
        finally:
            transport.close()


def _is_fault(response: HTTPResponse) -> bool:
    return b"Fault" in response.body[:65536] and b"Envelope" in response.body[:65536]


def _short(exc: BaseException) -> str:
    return safe_message(str(exc), limit=160)


def _check_read(operation: str) -> None:
    verb = re.split(r"(?<=[a-z0-9])(?=[A-Z])|[_.\-]", operation)[0].lower()
    if verb in WRITE_VERBS:
        raise NotARead(
            f"operation {operation!r} reads like a write ({verb!r}); "
            "only read operations may be configured"
        )


def _texts_of(template: str) -> list[str]:
    """Every element text, tail and attribute value of a checked envelope, in order."""
    texts: list[str] = []
    for node in _parse_xml(template.encode()).iter():
        if isinstance(node.tag, str):
            texts += [node.text or "", *node.attrib.values(), node.tail or ""]
    return texts
