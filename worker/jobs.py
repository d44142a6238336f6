"""Jobs (contract §2): payload normalisation and parameter validation.

`read_payload` decides whether a payload is this worker's at all (`NotOurs`:
fail it, never run it) and normalises both spellings of the job into a
`JobRequest`. `validate_params` checks parameters against a lookup's rules
before any source is touched; what fails becomes `InvalidInput`, whose
messages are fit to show a customer (they never echo the bad value).

Every string the customer sent is made safe once, here, for every connector:
text that cannot be written as UTF-8 (a lone surrogate such as ``"\\ud800"``
is valid JSON) and control characters in parameters are refused as
`InvalidInput`. The job's customer values are also handed to `worker.logs`,
which masks them in every log line written while the job runs. Tenant
patterns run on RE2, so no input can make them backtrack.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker import logs
from worker.errors import InvalidInput, NotOurs
from worker.stores.base import JOB_TYPE

if TYPE_CHECKING:
    from worker.config import Lookup, ParamRule

__all__ = [
    "JobRequest",
    "normalise_query_type",
    "read_payload",
    "refused_by_source",
    "validate_params",
]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    job_type: str
    tenant_id: str
    query_type: str | None = Field(default=None, max_length=100)
    query: str | None = Field(default=None, max_length=100)
    parameters: dict[str, Any] = Field(default_factory=dict)
    data_source: str | None = Field(default=None, max_length=255)
    data_source_config: dict[str, Any] | None = None
    customer_context: dict[str, Any] = Field(default_factory=dict)
    reply_to: str | None = Field(default=None, max_length=64)


@dataclass(frozen=True)
class JobRequest:
    """A payload this worker will answer, in one spelling."""

    tenant_id: str
    query_type: str
    parameters: Mapping[str, Any]
    data_source: str | None
    customer: Mapping[str, Any]
    reply_to: str | None
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)


def normalise_query_type(text: str) -> str:
    """``"Order status"`` → ``"order_status"``: lower case, spaces and dashes to ``_``."""
    return re.sub(r"[\s\-]+", "_", text.strip().lower())


def _reply_address(payload: Mapping[str, Any]) -> str | None:
    """The first address of contract §2's order; none when that one is unreadable."""
    customer = payload.get("customer_context")
    params = payload.get("parameters")
    for candidate in (
        payload.get("reply_to"),
        customer.get("phone") if isinstance(customer, Mapping) else None,
        params.get("customer_phone") if isinstance(params, Mapping) else None,
    ):
        if isinstance(candidate, str) and candidate.strip():
            if not _readable(candidate) or _CONTROL.search(candidate):
                return None  # never message an address that cannot be read as sent
            return candidate.strip()[:64]
    return None


# -- the customer's strings ------------------------------------------------------

#: C0 control characters but tab, newline and carriage return, and DEL
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: the payload's fields besides ``parameters`` that carry what the customer sent
_CUSTOMER_FIELDS = {
    "customer_context": "the customer details contain",
    "reply_to": "the reply address contains",
    "query_type": "the question type contains",
    "query": "the question type contains",
    "data_source": "the data source contains",
    "data_source_config": "the data source contains",
}


def _leaves(value: Any, *, keys: bool = True) -> list[Any]:
    """Every scalar inside a JSON-like value (and every key, unless told); no recursion."""
    out: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict or (kind not in _SCALARS and isinstance(item, Mapping)):
            if keys:
                stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        else:
            out.append(item)
    return out


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _readable(text: str) -> bool:
    """Can the text be written as UTF-8? A lone surrogate cannot, by any driver."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unreadable(value: Any) -> bool:
    return any(isinstance(leaf, str) and not _readable(leaf) for leaf in _leaves(value))


def _controls(value: Any) -> bool:
    return any(isinstance(leaf, str) and _CONTROL.search(leaf) for leaf in _leaves(value))


def _strings(value: Any) -> list[str]:
    return [leaf for leaf in _leaves(value) if isinstance(leaf, str)]


def _all_safe(payload: Mapping[str, Any]) -> bool:
    """The common case in one pass: every string readable, no control character in params."""
    params = "\n".join(_strings(payload.get("parameters")))
    others = "\n".join(_strings([payload.get(name) for name in _CUSTOMER_FIELDS]))
    reply_to = payload.get("reply_to")
    return (
        _readable(params)
        and _readable(others)
        and _CONTROL.search(params) is None
        and not (isinstance(reply_to, str) and _CONTROL.search(reply_to))
    )


def _unsafe_text(payload: Mapping[str, Any]) -> list[str]:
    """Customer-readable problems with the payload's strings; never the strings themselves."""
    if _all_safe(payload):
        return []
    problems: list[str] = []
    params = payload.get("parameters")
    if isinstance(params, Mapping):
        for key, value in params.items():
            where = _label(key) if isinstance(key, str) and _readable(key) else "a detail"
            if _unreadable({key: value}):
                problems.append(f"{where} contains characters that cannot be read")
            elif _controls({key: value}):
                problems.append(f"{where} contains characters that are not allowed")
    elif _unreadable(params):
        problems.append("the details contain characters that cannot be read")
    reply_to = payload.get("reply_to")
    if isinstance(reply_to, str) and _CONTROL.search(reply_to):
        problems.append("the reply address contains characters that are not allowed")
    problems.extend(
        f"{says} characters that cannot be read"
        for name, says in _CUSTOMER_FIELDS.items()
        if _unreadable(payload.get(name))
    )
    return problems


def _customer_values(payload: Mapping[str, Any]) -> list[str]:
    """What the customer sent that must not reach a log line: parameters, contact, address."""
    return [
        str(leaf)
        for name in ("parameters", "customer_context", "reply_to")
        for leaf in _leaves(payload.get(name), keys=False)
        if isinstance(leaf, str | int | float) and not isinstance(leaf, bool)
    ]


def read_payload(payload: Any, tenant_id: str) -> JobRequest:
    """Normalise a job payload, or raise `NotOurs` / `InvalidInput`."""
    if isinstance(payload, str | bytes):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError):
            raise NotOurs("the job payload is not valid JSON") from None
    if not isinstance(payload, Mapping):
        raise NotOurs("the job payload is not a JSON object")
    if payload.get("job_type") != JOB_TYPE:
        raise NotOurs(f"job_type {payload.get('job_type')!r} is not {JOB_TYPE!r}")
    if payload.get("tenant_id") != tenant_id:
        raise NotOurs(
            f"job is for tenant {payload.get('tenant_id')!r}, this worker serves {tenant_id!r}"
        )
    config = payload.get("data_source_config")
    if isinstance(config, Mapping) and set(config) - {"id"}:
        raise NotOurs(
            'data_source_config may only name a configured source ({"id": …}); '
            "connection settings in a job are refused"
        )
    logs.hide_customer_values(_customer_values(payload))
    reply_to = _reply_address(payload)
    problems = _unsafe_text(payload)
    if problems:
        raise InvalidInput(problems, reply_to)
    try:
        job = _Payload.model_validate(payload)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise InvalidInput(problems, reply_to) from None
    query_type = normalise_query_type(job.query_type or job.query or "")
    if not query_type:
        raise InvalidInput(["the job names no query_type"], reply_to)
    source = job.data_source
    if source is None and isinstance(config, Mapping) and "id" in config:
        if not isinstance(config["id"], str) or not config["id"].strip():
            raise InvalidInput(["data_source_config.id must name a configured source"], reply_to)
        source = config["id"]
    return JobRequest(
        tenant_id=job.tenant_id,
        query_type=query_type,
        parameters=job.parameters,
        data_source=str(source) if source else None,
        customer=job.customer_context,
        reply_to=reply_to,
        raw=payload,
    )


# -- parameters --------------------------------------------------------------

_PHONE = re.compile(r"^\+?[0-9][0-9 ().\-]{4,24}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")


def _label(name: str) -> str:
    return "the " + name.replace("_", " ")


def _as_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        return str(value).strip()
    return None


def _integer(text: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,18}", text):
        raise ValueError("must be a whole number")
    return int(text)


def _number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("must be a number")
    return number


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered not in {"true", "false", "yes", "no", "1", "0"}:
        raise ValueError("must be yes or no")
    return lowered in {"true", "yes", "1"}


def _phone(text: str) -> str:
    if not _PHONE.fullmatch(text):
        raise ValueError("must be a phone number")
    return ("+" if text.startswith("+") else "") + re.sub(r"\D", "", text)


def _email(text: str) -> str:
    if not _EMAIL.fullmatch(text):
        raise ValueError("must be an email address")
    return text


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError("must be a date like 2025-09-12") from None


# Each type's converter: the typed value, or ValueError with a customer-readable reason.
_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "phone": _phone,
    "email": _email,
    "date": _date,
}


@functools.lru_cache(maxsize=1024)
def _pattern(text: str) -> Any:
    """A tenant's pattern on RE2: linear time, whatever the customer sends (checked at load)."""
    import re2  # a tenant without patterns never loads it

    options = re2.Options()
    options.log_errors = False
    return re2.compile(text, options)


def _check_one(name: str, rule: ParamRule, value: Any) -> Any:
    if isinstance(value, bool) and rule.type == "boolean":
        return value
    text = _as_text(value)
    if text is None:
        raise ValueError("must be text or a number")
    if len(text) > rule.max_length:
        raise ValueError(f"is too long (at most {rule.max_length} characters)")
    if not _readable(text):  # read_payload refuses these first; this is for direct callers
        raise ValueError("contains characters that cannot be read")
    if "\x00" in text:
        raise ValueError("contains characters that are not allowed")
    if rule.pattern is not None and not _pattern(rule.pattern).fullmatch(text):
        raise ValueError("is not in the expected format")
    return _CONVERTERS[rule.type](text)


def refused_by_source(name: str | None, reply_to: str | None) -> InvalidInput:
    """The customer's answer when the source refused the value of ``name`` (or of one of them)."""
    what = _label(name) if name else "one of the details"
    return InvalidInput([f"{what} is not in a form the system accepts"], reply_to)


def validate_params(
    lookup: Lookup, raw: Mapping[str, Any], *, reply_to: str | None
) -> dict[str, Any]:
    """The lookup's parameters, checked and typed; unknown ones are dropped."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, rule in lookup.params.items():
        value = raw.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if rule.required:
                errors.append(f"{_label(name)} is missing")
            continue
        try:
            values[name] = _check_one(name, rule, value)
        except ValueError as exc:
            errors.append(f"{_label(name)} {exc}")
    if errors:
        raise InvalidInput(errors, reply_to)
    return values
