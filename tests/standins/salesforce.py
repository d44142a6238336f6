"""A stand-in for Salesforce: the SOAP ``login()`` call and the REST Query resources.

What it answers, and the public references it follows:

- ``POST /services/Soap/u/{version}`` — the partner API's ``login()``
  (developer.salesforce.com, SOAP API Developer Guide, "login()" and "LoginResult";
  sample messages "PartnerLogin"): an envelope with ``urn:partner.soap.sforce.com``
  ``login``/``username``/``password`` (the password with the security token
  appended); the answer ``loginResponse/result`` with ``metadataServerUrl``,
  ``passwordExpired``, ``sandbox``, ``serverUrl`` (the instance's
  ``/services/Soap/u/{version}/{orgId}``: here, this stand-in again), ``sessionId``,
  ``userId`` and ``userInfo``. A wrong login is HTTP 500 with a ``soapenv:Fault``
  whose ``detail`` holds an ``sf:LoginFault`` with ``sf:exceptionCode``
  ``INVALID_LOGIN`` and ``sf:exceptionMessage`` "Invalid username, password,
  security token; or user locked out.".
- ``GET /services/data/vXX.X/query?q=SOQL`` and ``GET
  /services/data/vXX.X/query/{locator}`` — "Query" and "Query More Results"
  (REST API Developer Guide, resources_query): ``{"totalSize", "done",
  "nextRecordsUrl", "records"}``, ``nextRecordsUrl`` (``/services/data/vXX.X/query/
  01g…-2000``) only while ``done`` is false; each record carries
  ``attributes: {type, url}``. Batches are 2000 records unless the
  ``Sforce-Query-Options: batchSize=N`` header asks for 200–2000 (or a test sets
  `batch_size`). Authentication: ``Authorization: Bearer <sessionId>``.
- ``GET /services/data/vXX.X/limits/`` — "Limits": ``{"DailyApiRequests": {"Max",
  "Remaining"}, …}``.
- Errors (REST API Developer Guide, "Status Codes and Error Responses"): a JSON
  array ``[{"message", "errorCode"}]`` — 401 ``INVALID_SESSION_ID`` "Session
  expired or invalid"; 400 ``MALFORMED_QUERY`` (the message quotes the query and
  points at the unexpected token), ``INVALID_TYPE``, ``INVALID_FIELD``,
  ``INVALID_QUERY_LOCATOR``; 403 ``REQUEST_LIMIT_EXCEEDED`` once the org's API
  requests are used up (`api_limit_exceeded`); 503 when the server "is down for
  maintenance or is currently overloaded" — what `throttle` answers, with
  ``Retry-After`` when asked: Salesforce documents no 429 for the REST API.

SOQL: the stand-in understands ``SELECT f, … FROM Object [WHERE f = literal [AND …]]
[LIMIT n]`` with ``=``, ``!=``, ``LIKE`` and ``IN (…)``, literals being quoted
strings with the documented escapes (``\\'``, ``\\\\``, ``\\"``, ``\\n``, ``\\r``,
``\\t``, ``\\b``, ``\\f``, ``\\%``, ``\\_``), numbers, ``true``, ``false`` and
``null``. Every SOQL text received is kept in `queries`. Served over TLS
(`tests.standins.serve_tls`): simple-salesforce only speaks https. The object
``SlowOrder`` answers after `slow_s` seconds.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web

from tests.standins import StandIn

__all__ = ["SOQLError", "SalesforceStandIn", "parse_soql"]

PARTNER = "{urn:partner.soap.sforce.com}"
ORG_ID = "00D000000000001AAA"
_INVALID_LOGIN = "Invalid username, password, security token; or user locked out."
USER_ID = "005000000000001AAA"

_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:\\.|[^'\\])*')|(?P<number>-?\d+(?:\.\d+)?)"
    r"|(?P<op>!=|=|,|\(|\))|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


def _errors(status: int, code: str, message: str) -> web.Response:
    return web.json_response([{"message": message, "errorCode": code}], status=status)


class SOQLError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Query:
    fields: list[str]
    sobject: str
    where: list[tuple[str, str, Any]]
    limit: int | None


def _unquote(token: str) -> str:
    body, out, at = token[1:-1], [], 0
    while at < len(body):
        if body[at] == "\\" and at + 1 < len(body):
            nxt = body[at + 1]
            out.append(_ESCAPES.get(nxt, nxt if nxt not in "%_" else "\\" + nxt))
            at += 2
        else:
            out.append(body[at])
            at += 1
    return "".join(out)


Token = tuple[str, str, int]  # kind, text, column


class _Tokens:
    """The tokens of one SOQL text, taken one by one."""

    def __init__(self, soql: str) -> None:
        self.soql = soql
        tokens: list[Token] = []
        at = 0
        while at < len(soql.rstrip()):
            match = _TOKEN.match(soql, at)
            if match is None or match.end() == at:
                words = soql[at:].split()
                raise _malformed(soql, at, words[0] if words else "")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind), match.start(kind)))
            at = match.end()
        self._stream = iter([*tokens, ("end", "", len(soql))])

    def next(self) -> Token:
        return next(self._stream)

    def take(self, expected: str | None = None, kind: str | None = None) -> Token:
        token = self.next()
        if (expected and token[1].upper() != expected) or (kind and token[0] != kind):
            raise self.unexpected(token)
        return token

    def unexpected(self, token: Token) -> SOQLError:
        return _malformed(self.soql, token[2], token[1] or "<EOF>")

    def value(self) -> Any:
        return _value(self.take(), self.soql)


def parse_soql(soql: str) -> _Query:
    """The subset of SOQL in the module docstring, or a `SOQLError` as Salesforce words it."""
    tokens = _Tokens(soql)
    query = _Query([], "", [], None)
    tokens.take("SELECT")
    query.fields.append(tokens.take(kind="word")[1])
    while (token := tokens.next())[1] == ",":
        query.fields.append(tokens.take(kind="word")[1])
    if token[1].upper() != "FROM":
        raise tokens.unexpected(token)
    query.sobject = tokens.take(kind="word")[1]
    token = tokens.next()
    if token[1].upper() == "WHERE":
        token = _where(tokens, query)
    if token[1].upper() == "LIMIT":
        query.limit = int(tokens.take(kind="number")[1])
        token = tokens.next()
    if token[0] != "end":
        raise tokens.unexpected(token)
    return query


def _where(tokens: _Tokens, query: _Query) -> Token:
    """The conditions joined by AND; returns the token after them."""
    while True:
        name = tokens.take(kind="word")[1]
        op = tokens.next()
        if op[1] in ("=", "!=") or op[1].upper() == "LIKE":
            query.where.append((name, op[1].upper(), tokens.value()))
        elif op[1].upper() == "IN":
            tokens.take("(")
            values = [tokens.value()]
            while (sep := tokens.next())[1] == ",":
                values.append(tokens.value())
            if sep[1] != ")":
                raise tokens.unexpected(sep)
            query.where.append((name, "IN", values))
        else:
            raise tokens.unexpected(op)
        token = tokens.next()
        if token[1].upper() != "AND":
            return token


def _value(token: tuple[str, str, int], soql: str) -> Any:
    kind, text, at = token
    if kind == "string":
        return _unquote(text)
    if kind == "number":
        return float(text) if "." in text else int(text)
    if kind == "word" and text.lower() in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text.lower()]
    raise _malformed(soql, at, text or "<EOF>")


def _malformed(soql: str, at: int, token: str) -> SOQLError:
    return SOQLError(
        "MALFORMED_QUERY",
        f"\n{soql}\n{' ' * at}^\nERROR at Row:1:Column:{at + 1}\nunexpected token: {token}",
    )


def _like(pattern: str) -> re.Pattern[str]:
    out, at = [], 0
    while at < len(pattern):
        if pattern[at] == "\\" and at + 1 < len(pattern):
            out.append(re.escape(pattern[at + 1]))
            at += 2
            continue
        out.append({"%": ".*", "_": "."}.get(pattern[at], re.escape(pattern[at])))
        at += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _holds(value: Any, op: str, wanted: Any) -> bool:
    if op == "=":
        return bool(value == wanted)
    if op == "!=":
        return bool(value != wanted)
    if op == "IN":
        return value in wanted
    return value is not None and bool(_like(str(wanted)).fullmatch(str(value)))


@dataclass
class SalesforceStandIn(StandIn):
    """One org, one API user, sObjects by name; see the module docstring."""

    username: str = "integration@tenant.example"
    password: str = "correct horse battery"
    security_token: str = "TOKENtoken0123456789"
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    batch_size: int = 2000
    slow_s: float = 3.0
    api_limit_exceeded: bool = False
    queries: list[str] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    logins: int = 0
    base_url: str = ""

    def __post_init__(self) -> None:
        super().__init__()
        self._locators: dict[str, tuple[str, list[dict[str, Any]]]] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/Soap/u/{version}", self.login)
        for path in ("/services/data/{v}/query", "/services/data/{v}/query/"):
            app.router.add_get(path, self.query)
        app.router.add_get("/services/data/{v}/query/{locator}", self.query_more)
        app.router.add_get("/services/data/{v}/limits/", self.limits)

    def rate_limited(self, retry_after: str | None) -> web.Response:
        response = _errors(
            503, "SERVER_UNAVAILABLE", "Server is unavailable: down for maintenance or overloaded"
        )
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def expire_sessions(self) -> None:
        self.sessions.clear()

    # -- SOAP login ---------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            envelope = ElementTree.fromstring(body)  # noqa: S314 - the test's own client
        except ElementTree.ParseError:
            return self._login_fault("INVALID_LOGIN", _INVALID_LOGIN)
        username = envelope.findtext(f".//{PARTNER}username")
        password = envelope.findtext(f".//{PARTNER}password")
        if username != self.username or password != self.password + self.security_token:
            return self._login_fault("INVALID_LOGIN", _INVALID_LOGIN)
        self.logins += 1
        session = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(48)}"
        self.sessions.add(session)
        version = request.match_info["version"]
        base = f"https://{request.host}"
        result = (
            f"<metadataServerUrl>{base}/services/Soap/m/{version}/{ORG_ID[:15]}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
            f"<serverUrl>{base}/services/Soap/u/{version}/{ORG_ID[:15]}</serverUrl>"
            f"<sessionId>{session}</sessionId><userId>{USER_ID}</userId>"
            "<userInfo><accessibilityMode>false</accessibilityMode>"
            "<currencySymbol>$</currencySymbol>"
            f"<organizationId>{ORG_ID}</organizationId><organizationName>Tenant</organizationName>"
            f"<userEmail>{escape(self.username)}</userEmail>"
            "<userFullName>Integration User</userFullName>"
            f"<userId>{USER_ID}</userId><userName>{escape(self.username)}</userName>"
            "<userTimeZone>America/Los_Angeles</userTimeZone></userInfo>"
        )
        return web.Response(
            status=200,
            content_type="text/xml",
            text=(
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns="urn:partner.soap.sforce.com" '
                'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                f"<soapenv:Body><loginResponse><result>{result}</result></loginResponse>"
                "</soapenv:Body></soapenv:Envelope>"
            ),
        )

    @staticmethod
    def _login_fault(code: str, message: str) -> web.Response:
        return web.Response(
            status=500,
            content_type="text/xml",
            text=(
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns:sf="urn:fault.partner.soap.sforce.com" '
                'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                "<soapenv:Body><soapenv:Fault>"
                f"<faultcode>sf:{code}</faultcode><faultstring>{code}: {message}</faultstring>"
                '<detail><sf:LoginFault xsi:type="sf:LoginFault">'
                f"<sf:exceptionCode>{code}</sf:exceptionCode>"
                f"<sf:exceptionMessage>{message}</sf:exceptionMessage>"
                "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
            ),
        )

    # -- REST -------------------------------------------------------------------------

    def _refused(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.sessions:
            return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if self.api_limit_exceeded:
            return _errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        return None

    async def limits(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        return web.json_response(
            {
                "DailyApiRequests": {"Max": 15000, "Remaining": 14990},
                "ConcurrentAsyncGetReportInstances": {"Max": 200, "Remaining": 200},
            }
        )

    async def query(self, request: web.Request) -> web.Response:
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        refused = self._refused(request)
        if refused is not None:
            return refused
        soql = request.query.get("q", "")
        self.queries.append(soql)
        try:
            found = self._run(parse_soql(soql), request.match_info["v"])
        except SOQLError as exc:
            return _errors(400, exc.code, exc.message)
        if soql and "SlowOrder" in soql:
            await self.slow_down(self.slow_s)
        return self._page(request, f"01g{secrets.token_hex(8)}", found, 0)

    async def query_more(self, request: web.Request) -> web.Response:
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        refused = self._refused(request)
        if refused is not None:
            return refused
        locator, _, position = request.match_info["locator"].rpartition("-")
        entry = self._locators.get(locator)
        if entry is None or not position.isdigit():
            return _errors(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(request, locator, entry[1], int(position))

    def _page(
        self, request: web.Request, locator: str, records: list[dict[str, Any]], start: int
    ) -> web.Response:
        size = self.batch_size
        options = request.headers.get("Sforce-Query-Options", "")
        asked = re.search(r"batchSize=(\d+)", options)
        if asked:
            size = min(2000, max(200, int(asked.group(1))))
        page = records[start : start + size]
        version = request.match_info["v"]
        body: dict[str, Any] = {
            "totalSize": len(records),
            "done": start + size >= len(records),
            "records": page,
        }
        if not body["done"]:
            self._locators[locator] = (version, records)
            body["nextRecordsUrl"] = f"/services/data/{version}/query/{locator}-{start + size}"
        return web.json_response(body)

    def _run(self, query: _Query, version: str) -> list[dict[str, Any]]:
        table = self.objects.get(query.sobject)
        if table is None:
            raise SOQLError(
                "INVALID_TYPE",
                f"\n{query.sobject}\n^\nERROR at Row:1:Column:1\nsObject type "
                f"'{query.sobject}' is not supported. If you are attempting to use a custom "
                "object, be sure to append the '__c' after the entity name. Please reference "
                "your WSDL or the describe call for the appropriate names.",
            )
        columns = {name.lower(): name for row in table for name in row}
        columns["id"] = "Id"

        def column(name: str) -> str:
            if name.lower() not in columns:
                raise SOQLError(
                    "INVALID_FIELD",
                    f"\nNo such column '{name}' on entity '{query.sobject}'. If you are "
                    "attempting to use a custom field, be sure to append the '__c' after the "
                    "custom field name.",
                )
            return columns[name.lower()]

        selected = [column(name) for name in query.fields]
        where = [(column(name), op, value) for name, op, value in query.where]
        rows = [r for r in table if all(_holds(r.get(c), op, v) for c, op, v in where)]
        rows = rows[: query.limit] if query.limit is not None else rows
        return [
            {
                "attributes": {
                    "type": query.sobject,
                    "url": f"/services/data/{version}/sobjects/{query.sobject}/{row['Id']}",
                },
                **{name: row.get(name) for name in selected},
            }
            for row in rows
        ]
