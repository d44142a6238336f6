"""What the token-authenticated SaaS APIs (Airtable, HubSpot) have in common.

Each is one HTTPS API read through `connectors.http_base.SafeHTTP` with a
bearer token. A subclass names the vendor, the cheap ``GET`` that
``worker test-connection`` sends, and where the vendor's error body keeps its
error kind and message (`SaaSConnector.error_of`). Answers are read the same
way: 404 is not found; 401 and 403 are a `SourceAuthError`; a 429 still there
after `SafeHTTP`'s retries is `SourceUnavailable`; any other error a
`SourceError` with the vendor's kind and message, parameter values and the
token masked.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from pydantic import SecretStr

from connectors.base import Connector, SourceAuthError, SourceTimeout, SourceUnavailable
from connectors.http_base import HTTPResponse, HTTPSettings, SafeHTTP, safe_message

__all__ = ["SaaSConnector", "SaaSSettings", "records_with_id"]

_HEALTH_TIMEOUT_S = 10.0


class SaaSSettings(HTTPSettings):
    """``connection`` of a SaaS API read with a bearer token."""

    token: SecretStr


class SaaSConnector(Connector):
    """One account of a SaaS API; a subclass says what differs."""

    #: the vendor's name, as error messages say it
    vendor: ClassVar[str]
    #: a ``GET`` any valid token may make, for `health_check`
    health_path: ClassVar[str]

    settings: SaaSSettings

    def setup(self) -> None:
        self._http = SafeHTTP(self.source_id, self.settings, base_dir=self.base_dir)

    async def close(self) -> None:
        await self._http.close()

    async def health_check(self) -> None:
        url = self._http.url(self.health_path, {})
        response = await self._http.request(
            "GET", url, timeout_s=_HEALTH_TIMEOUT_S, idempotent=True, headers=self._auth()
        )
        if self._document(response, ()) is None:
            raise self.fail(f"{self.vendor} answered 404 to {self.health_path}")

    @staticmethod
    @abc.abstractmethod
    def error_of(document: Any) -> tuple[str, str]:
        """The error kind and message in an error answer's JSON (``""`` when absent)."""

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.token.get_secret_value()}"}

    def _time_left(self, deadline: float, timeout_s: float) -> float:
        """Seconds to ``deadline``, a monotonic time; `SourceTimeout` when none are left."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceTimeout(self.source_id, f"no answer within {timeout_s:g} s")
        return left

    def _document(self, response: HTTPResponse, hide: Sequence[Any]) -> Any:
        """The JSON answer, None for a 404, or the vendor's error as ours."""
        status = response.status
        if status == 404:
            return None
        if status >= 400:
            kind, message = self.error_of(response.json())
            if status in (401, 403):
                raise SourceAuthError(
                    self.source_id, f"{self.vendor} refused the token ({status} {kind})".strip()
                )
            if status == 429:
                raise SourceUnavailable(self.source_id, "rate limited (429) past the deadline")
            text = safe_message(message, [*hide, self.settings.token.get_secret_value()])
            raise self.fail(f"{self.vendor} answered {status} {kind}: {text}".strip(" :"))
        document = response.json()
        if not isinstance(document, Mapping):
            raise self.fail(f"{self.vendor} answered {status} without a JSON object")
        return document


def records_with_id(items: Iterable[Any], key: str) -> list[dict[str, Any]]:
    """Rows from a page's records: each one's ``key`` mapping plus its ``id``."""
    return [
        {**item[key], "id": item.get("id")}
        for item in items
        if isinstance(item, Mapping) and isinstance(item.get(key), Mapping)
    ]
