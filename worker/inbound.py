"""A customer's free text, as the seed's ``POST /webhook/inbound`` carries it (contract §6).

``{"from": "+1234567890", "message": "Order status 12345", "tenant_id": "t"}``: both
the worker (push mode: route, answer, reply) and the local engine (route, enqueue)
take this body. This module reads it and turns a `Route` into the job payload of
contract §2; routing itself is `worker.router`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from worker.errors import BadInbound
from worker.router import Route
from worker.stores.base import JOB_TYPE

__all__ = ["MAX_MESSAGE", "BadInbound", "Inbound", "inbound_job", "read_inbound"]

#: The longest customer text taken (WhatsApp's own limit is 4096 characters).
MAX_MESSAGE = 4096

# A phone number as people and providers write it: digits, an optional leading +,
# spaces, dots, dashes and brackets; 3 to 20 digits in all.
_PHONE = re.compile(r"\+?[0-9 ().\-]{3,32}")
_MESSAGE_ID = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


@dataclass(frozen=True)
class Inbound:
    sender: str
    text: str
    tenant_id: str | None
    #: the provider's message id (``message_id`` or ``id``), when the body has one
    message_id: str | None = None


def read_inbound(body: Any) -> Inbound:
    """The body's message, or `BadInbound` saying what is wrong with it."""
    if not isinstance(body, dict):
        raise BadInbound("the body must be a JSON object with `from` and `message`")
    sender, text, tenant_id = body.get("from"), body.get("message"), body.get("tenant_id")
    if not isinstance(sender, str) or not _is_phone(sender):
        raise BadInbound("`from` must be the customer's phone number, such as +1234567890")
    if not isinstance(text, str):
        raise BadInbound("`message` must be the customer's text")
    if len(text) > MAX_MESSAGE:
        raise BadInbound(f"`message` is longer than {MAX_MESSAGE} characters")
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise BadInbound("`tenant_id` must be a tenant's id")
    return Inbound(sender.strip(), text, tenant_id, _message_id(body))


def _is_phone(value: str) -> bool:
    return bool(_PHONE.fullmatch(value.strip())) and 3 <= sum(c.isdigit() for c in value) <= 20


def _message_id(body: dict[str, Any]) -> str | None:
    for key in ("message_id", "id"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and _MESSAGE_ID.fullmatch(value):
            return value
    return None


def inbound_job(tenant_id: str, route: Route, message: Inbound) -> dict[str, Any]:
    """The §2 job payload for a routed message: the sender is the reply address."""
    if route.query_type is None:
        raise ValueError("an unrouted message makes no job")
    return {
        "job_type": JOB_TYPE,
        "tenant_id": tenant_id,
        "query_type": route.query_type,
        "parameters": {**route.parameters, "customer_phone": message.sender},
        "customer_context": {"phone": message.sender},
        "reply_to": message.sender,
    }
