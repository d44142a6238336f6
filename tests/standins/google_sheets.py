"""A stand-in for the Google Sheets API v4 and Google's OAuth 2.0 token endpoint.

What it answers, and the public references it follows:

- ``POST /token`` — the service-account flow of "Using OAuth 2.0 for Server to
  Server Applications" (developers.google.com/identity/protocols/oauth2/service-account):
  a form with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and
  ``assertion``, an RS256 JWT whose claims are ``iss`` (the client e-mail),
  ``scope``, ``aud`` ("always https://oauth2.googleapis.com/token", whatever
  URI the request goes to), ``iat`` and ``exp`` (at most an hour later).
  Success: ``{"access_token", "expires_in": 3599, "token_type": "Bearer"}``;
  failure: 400 ``{"error": "invalid_grant", "error_description": …}``. The
  signature is checked against the public half of the key the test made.
- ``GET /v4/spreadsheets/{spreadsheetId}/values/{range}`` — spreadsheets.values.get
  (developers.google.com/sheets/api/reference/rest/v4/spreadsheets.values/get):
  a ValueRange ``{"range", "majorDimension": "ROWS", "values"}`` where ``range``
  is the whole requested range in A1 notation (``Customers!A1:E1000``), trailing
  empty rows and cells are left out, ``values`` is absent when nothing is there;
  ``valueRenderOption`` FORMATTED_VALUE (default: every cell as shown, text) or
  UNFORMATTED_VALUE (numbers as numbers). An A1 range that does not parse, or
  names no sheet, is 400 INVALID_ARGUMENT "Unable to parse range: …".
- ``GET /v4/spreadsheets/{spreadsheetId}`` — spreadsheets.get: ``spreadsheetId``,
  ``properties``, ``sheets[].properties`` (sheetId, title, index, sheetType,
  gridProperties), ``spreadsheetUrl``.
- Errors in Google's JSON error shape (cloud.google.com/apis/design/errors):
  ``{"error": {"code", "message", "status"}}`` — 401 UNAUTHENTICATED without a
  valid bearer token, 403 PERMISSION_DENIED when the sheet is not shared with the
  service account or the token lacks a Sheets scope, 404 NOT_FOUND for an
  unknown spreadsheet, 429 RESOURCE_EXHAUSTED past the quota (Sheets API usage
  limits: developers.google.com/sheets/api/limits — clients back off
  exponentially; Google documents no ``Retry-After`` for it, so by default none is
  sent).

A sheet titled ``Slow`` answers after `slow_s` seconds, for deadline tests.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.standins import StandIn

__all__ = ["GOOGLE_TOKEN_AUDIENCE", "JWT_BEARER", "SCOPES", "GoogleSheetsStandIn", "Spreadsheet"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
SCOPES = (
    "https://www.googleapis.com/auth/spreadsheets.readonly",
    "https://www.googleapis.com/auth/spreadsheets",
)
_GRID_ROWS = 1000
_GRID_COLUMNS = 26


@dataclass
class Spreadsheet:
    title: str
    #: sheet title → rows of cells (None or "" for an empty cell)
    sheets: dict[str, list[list[Any]]]
    #: client e-mails the spreadsheet is shared with
    readers: set[str] = field(default_factory=set)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _google_error(code: int, status: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "status": status}}
    return web.json_response(body, status=code)


def _column(letters: str) -> int:
    number = 0
    for char in letters:
        number = number * 26 + (ord(char) - ord("A") + 1)
    return number


def _letters(number: int) -> str:
    out = ""
    while number:
        number, rest = divmod(number - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


_CELL = re.compile(r"^([A-Z]*)([0-9]*)$")


class GoogleSheetsStandIn(StandIn):
    """Spreadsheets, service accounts and tokens, as the module docstring says."""

    def __init__(self, spreadsheets: dict[str, Spreadsheet]) -> None:
        super().__init__()
        self.spreadsheets = spreadsheets
        self.accounts: dict[str, rsa.RSAPublicKey] = {}
        self.tokens: dict[str, tuple[str, str, float]] = {}  # token → (email, scope, expiry)
        self.base_url = ""
        self.slow_s = 3.0
        #: every API call answers 401 (a revoked grant): the refresh cannot mend it
        self.reject_all_tokens = False

    def register(self, client_email: str, public_key: rsa.RSAPublicKey) -> None:
        self.accounts[client_email] = public_key

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self.token)
        app.router.add_get("/v4/spreadsheets/{spreadsheet_id}/values/{range}", self.values_get)
        app.router.add_get("/v4/spreadsheets/{spreadsheet_id}", self.spreadsheets_get)

    def rate_limited(self, retry_after: str | None) -> web.Response:
        response = _google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per "
            "minute per user' of service 'sheets.googleapis.com' for consumer "
            "'project_number:1234567890'.",
        )
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    # -- OAuth ------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return self._oauth_error("unsupported_grant_type", "Invalid grant_type")
        try:
            claims = self._verified_claims(str(form.get("assertion", "")), request)
        except ValueError as exc:
            return self._oauth_error("invalid_grant", str(exc))
        token = "ya29." + secrets.token_urlsafe(32)
        self.tokens[token] = (claims["iss"], claims.get("scope", ""), time.time() + 3599)
        return web.json_response(
            {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        )

    def _verified_claims(self, assertion: str, request: web.Request) -> dict[str, Any]:
        try:
            head, body, signature = assertion.split(".")
            header = json.loads(_b64(head))
            claims = json.loads(_b64(body))
        except ValueError:
            raise ValueError("Invalid JWT: not a JWT") from None
        key = self.accounts.get(claims.get("iss", ""))
        if header.get("alg") != "RS256" or key is None:
            raise ValueError("Invalid JWT Signature.")
        try:
            key.verify(
                _b64(signature), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise ValueError("Invalid JWT Signature.") from None
        now = time.time()
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            raise ValueError("Invalid JWT: Failed audience check.")
        if not (claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0)) or (
            claims["exp"] - claims["iat"] > 3600
        ):
            raise ValueError(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe."
            )
        return dict(claims)

    @staticmethod
    def _oauth_error(error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=400)

    def _caller(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """The service account behind the bearer token, or the error to answer."""
        auth = request.headers.get("Authorization", "")
        entry = (
            self.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        )
        if self.reject_all_tokens or entry is None or entry[2] < time.time():
            return None, _google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
            )
        email, scope, _ = entry
        if not any(s in scope.split() for s in SCOPES):
            return None, _google_error(
                403, "PERMISSION_DENIED", "Request had insufficient authentication scopes."
            )
        return email, None

    def _spreadsheet(self, request: web.Request) -> tuple[Spreadsheet | None, web.Response | None]:
        email, refused = self._caller(request)
        if refused is not None:
            return None, refused
        sheet = self.spreadsheets.get(request.match_info["spreadsheet_id"])
        if sheet is None:
            return None, _google_error(404, "NOT_FOUND", "Requested entity was not found.")
        if email not in sheet.readers:
            return None, _google_error(
                403, "PERMISSION_DENIED", "The caller does not have permission"
            )
        return sheet, None

    # -- Sheets API -------------------------------------------------------------

    async def spreadsheets_get(self, request: web.Request) -> web.Response:
        sheet, refused = self._spreadsheet(request)
        if sheet is None:
            return refused or web.Response(status=500)
        spreadsheet_id = request.match_info["spreadsheet_id"]
        return web.json_response(
            {
                "spreadsheetId": spreadsheet_id,
                "properties": {"title": sheet.title, "locale": "en_US", "timeZone": "Etc/GMT"},
                "sheets": [
                    {
                        "properties": {
                            "sheetId": index,
                            "title": title,
                            "index": index,
                            "sheetType": "GRID",
                            "gridProperties": {
                                "rowCount": max(_GRID_ROWS, len(rows)),
                                "columnCount": _GRID_COLUMNS,
                            },
                        }
                    }
                    for index, (title, rows) in enumerate(sheet.sheets.items())
                ],
                "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{spreadsheet_id}/edit",
            }
        )

    async def values_get(self, request: web.Request) -> web.Response:
        throttled = self.throttled()
        if throttled is not None:
            return throttled
        sheet, refused = self._spreadsheet(request)
        if sheet is None:
            return refused or web.Response(status=500)
        a1 = request.match_info["range"]
        parsed = self._parse_range(sheet, a1)
        if parsed is None:
            return _google_error(400, "INVALID_ARGUMENT", f"Unable to parse range: {a1}")
        title, (c1, r1, c2, r2) = parsed
        if title == "Slow":
            await self.slow_down(self.slow_s)
        formatted = request.query.get("valueRenderOption", "FORMATTED_VALUE") == "FORMATTED_VALUE"
        rows = [
            [self._render(cell, formatted) for cell in row[c1 - 1 : c2]]
            for row in sheet.sheets[title][r1 - 1 : r2]
        ]
        for row in rows:
            while row and row[-1] in (None, ""):
                row.pop()
        while rows and not rows[-1]:
            rows.pop()
        quoted = f"'{title}'" if re.search(r"[^A-Za-z0-9_]", title) else title
        body: dict[str, Any] = {
            "range": f"{quoted}!{_letters(c1)}{r1}:{_letters(c2)}{r2}",
            "majorDimension": "ROWS",
        }
        if rows:
            body["values"] = [["" if cell is None else cell for cell in row] for row in rows]
        return web.json_response(body)

    @staticmethod
    def _render(cell: Any, formatted: bool) -> Any:
        if not formatted or cell is None:
            return cell
        if isinstance(cell, bool):
            return "TRUE" if cell else "FALSE"
        if isinstance(cell, float) and cell.is_integer():
            return str(int(cell))
        return str(cell)

    @staticmethod
    def _parse_range(sheet: Spreadsheet, a1: str) -> tuple[str, tuple[int, int, int, int]] | None:
        """``Customers!A:E`` → ("Customers", (1, 1, 5, 1000)); None when it does not parse."""
        if "!" in a1:
            title, cells = a1.rsplit("!", 1)
            if len(title) >= 2 and title[0] == title[-1] == "'":
                title = title[1:-1].replace("''", "'")
        elif a1 in sheet.sheets or a1.strip("'").replace("''", "'") in sheet.sheets:
            title, cells = a1.strip("'").replace("''", "'"), ""
        else:
            title, cells = next(iter(sheet.sheets), ""), a1
        if title not in sheet.sheets:
            return None
        rows = max(_GRID_ROWS, len(sheet.sheets[title]))
        if not cells:
            return title, (1, 1, _GRID_COLUMNS, rows)
        start, colon, end = cells.partition(":")
        first, last = _CELL.match(start), _CELL.match(end or start)
        if first is None or last is None or not start or (colon and not end):
            return None
        c1 = _column(first.group(1)) if first.group(1) else 1
        r1 = int(first.group(2)) if first.group(2) else 1
        c2 = _column(last.group(1)) if last.group(1) else _GRID_COLUMNS
        r2 = int(last.group(2)) if last.group(2) else rows
        if c1 > c2 or r1 > r2 or r1 < 1:
            return None
        return title, (c1, r1, c2, r2)
