"""Custom webhooks (``webhook``): the tenant's own endpoint answers a lookup.

The worker POSTs one signed JSON body per read to the connection's ``url``::

    {"event": "order_status", "source": "orders_hook", "delivery": "<uuid hex>",
     "parameters": {"order_id": "12345"}}

with the headers

    Content-Type: application/json
    X-Lookup-Event: order_status
    X-Lookup-Delivery: <uuid hex>
    X-Lookup-Timestamp: 1700000000
    X-Lookup-Signature: t=1700000000,v1=<hex HMAC-SHA256(secret, "1700000000." + raw body)>

The receiver verifies as Stripe's and GitHub's receivers do: split the
signature header on ``,``, take ``t`` and ``v1``; refuse (401) when ``t`` is more
than 300 s away from its clock; compute the HMAC-SHA256 of ``f"{t}."`` followed
by the raw request body (the bytes, before any JSON parsing) with the shared
secret, and compare it with ``v1`` in constant time (``hmac.compare_digest``).

A query is an event name, whose payload is all of the lookup's parameters::

    "order_status"

or a mapping: ``{"event": "order_status", "payload": {"order_id": "{order_id}"},
"result": "data.order"}``, where a string that is exactly ``{name}`` becomes the
parameter's typed value (as in a ``rest_api`` body).

The JSON answer is the data: ``result`` (a dotted path) picks inside it, then a
list is one row per item, an object one row, a scalar the row ``{"value": …}``.
A 404, an empty body, ``null``, ``[]`` or ``{}`` is *not found*; 401/403 (the
receiver refused the signature), 429, 5xx, a timeout, a redirect or an answer
that is not JSON is a source failure (the lookup's fallback). A POST is never
retried and never redirected. ``worker test-connection`` sends the event
``ping`` with empty parameters: any answer but 401/403/429/5xx is healthy.
Everything else about the wire (size cap, the deadline, the reach of an
engine-served config) is `connectors.http_base.SafeHTTP`'s.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
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
from connectors.network import TLSSettings

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookConnector",
    "WebhookQuery",
    "WebhookSettings",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Lookup-Signature"
TIMESTAMP_HEADER = "X-Lookup-Timestamp"
#: how far a receiver should accept a timestamp from its own clock
TOLERANCE_S = 300
_HEALTH_TIMEOUT_S = 10.0
_EVENT = r"^[A-Za-z0-9_.:-]{1,100}$"
_DOTTED = r"^[^.\s]+(\.[^.\s]+)*$"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Lookup-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, now: float | None = None) -> bool:
    """A receiver's check of ``header`` against the raw ``body`` (5 minutes' tolerance)."""
    parts = dict(item.strip().partition("=")[::2] for item in header.split(","))
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or not given:
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > TOLERANCE_S:
        return False
    expected = sign(secret, body, int(stamp)).rpartition("v1=")[2]
    return hmac.compare_digest(expected, given)


class WebhookSettings(ConnectionSettings):
    """``connection`` of a ``webhook`` source: ``url``, ``secret``, ``headers``…"""

    # A rejected value would otherwise be echoed, secret and all, in the error's text.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: the tenant's endpoint; every read POSTs here
    url: str
    #: the shared HMAC key of the signature header
    secret: SecretStr = Field(min_length=16)
    #: extra headers; ``{api_key}`` in a value names the field below
    headers: dict[str, str] = Field(default_factory=dict)
    api_key: SecretStr | None = None
    #: a cap on one call, below the lookup's own deadline
    timeout_s: float | None = Field(default=None, gt=0, le=300)
    max_response_bytes: int = Field(default=1_000_000, ge=1_000, le=500_000_000)
    ssl: TLSSettings | None = None

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        HTTPSettings.model_validate({"base_url": value})  # same rules as a base_url
        return value

    def http(self) -> HTTPSettings:
        """The wire settings: one origin, no retries (a POST is never repeated)."""
        return HTTPSettings(
            base_url=self.url,
            headers=self.headers,
            api_key=self.api_key,
            max_response_bytes=self.max_response_bytes,
            retries=0,
            ssl=self.ssl,
        )


class WebhookQuery(BaseModel):
    """One event sent to the webhook; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: str = Field(pattern=_EVENT)
    #: the ``parameters`` object sent; None sends all of the lookup's parameters
    payload: dict[str, Any] | None = None
    result: str | None = Field(default=None, pattern=_DOTTED)

    @field_validator("payload")
    @classmethod
    def _json_payload(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return json_value(value, "payload")  # type: ignore[no-any-return]


class WebhookConnector(Connector):
    """Asks the tenant's own signed webhook for the data of a lookup."""

    type_name: ClassVar[str] = "webhook"
    Settings = WebhookSettings
    query_shape: ClassVar[str] = (
        '"order_status" (an event name; the payload is the lookup\'s parameters), or '
        '{"event": …, "payload": {"order_id": "{order_id}"}, "result": "data.order"}'
    )

    settings: WebhookSettings

    def setup(self) -> None:
        self._secret = self.settings.secret.get_secret_value()
        self._http = SafeHTTP.within(
            self.source_id,
            self.settings.http(),
            max_bytes=self.limits.max_bytes,
            base_dir=self.base_dir,
            redirects=0,  # a POST goes to the configured URL once
        )

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        body: Mapping[str, Any] = {"event": raw} if isinstance(raw, str) else raw
        if not isinstance(body, Mapping):
            raise ConfigError('a webhook query is an event name, or a mapping with "event"')
        try:
            query = WebhookQuery.model_validate(body)
        except ValidationError as exc:
            raise ConfigError("webhook query: " + first_error(exc)) from None
        names = placeholder_names(query.payload) if query.payload is not None else ()
        return PreparedQuery(spec=query, names=names)

    async def close(self) -> None:
        await self._http.close()

    async def health_check(self) -> None:
        response = await self._post("ping", {}, _HEALTH_TIMEOUT_S)
        # Any answer but a refusal or a failure shows the endpoint is up and knows the secret.
        if response.status in (401, 403, 429) or response.status >= 500:
            self._http.check(response, not_found_ok=False)

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, WebhookQuery):
            raise self.fail("the query was not prepared by the webhook connector")
        parameters = (
            dict(bound.params)
            if spec.payload is None
            else bind_placeholders(spec.payload, bound.params)
        )
        cap = self.settings.timeout_s
        response = await self._post(spec.event, parameters, min(timeout_s, cap or timeout_s))
        checked = self._http.check(response)
        if checked is None or not checked.body.strip():
            return ReadResult(rows=[])
        try:
            document = json.loads(checked.body)
        except (ValueError, UnicodeDecodeError):
            raise self.fail("the webhook's answer is not JSON") from None
        return result_of(dig(document, spec.result), max_rows=self.limits.max_rows)

    async def _post(self, event: str, parameters: Any, timeout_s: float) -> HTTPResponse:
        delivery = uuid.uuid4().hex
        document = {
            "event": event,
            "source": self.source_id,
            "delivery": delivery,
            "parameters": parameters,
        }
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Lookup-Event": event,
            "X-Lookup-Delivery": delivery,
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(self._secret, body, stamp),
        }
        return await self._http.request(
            "POST",
            self.settings.url,
            timeout_s=timeout_s,
            idempotent=False,
            content=body,
            headers=headers,
        )
