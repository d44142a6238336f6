"""Structured logging: JSON lines when not on a terminal, short lines when on one.

Every line carries ``action`` and, where known, ``tenant`` and ``job_id``:
pass them as ``extra={"action": "claim", "tenant": t, "job_id": j}``. Messages
use lazy ``%s`` formatting.

Nothing of the customer reaches the log. Libraries that log request URLs,
queries or their parameters (httpx, asyncpg, aiomysql, …) are held at WARNING
unless the operator asks for them with ``WORKER_LOG_LIBRARIES=debug`` (or
``info``). And whatever logs a line, ours or a library's, at any level:
`hide_customer_values` (called once per job, where the payload is read) puts
the job's parameters, phone and email in a context variable, which the job's
tasks and threads inherit, and `CustomerMask` writes ``***`` in their place.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "FIELDS",
    "LIBRARIES",
    "CustomerMask",
    "JsonFormatter",
    "TextFormatter",
    "hide_customer_values",
    "mask_customer_values",
    "setup",
]

FIELDS = ("action", "tenant", "job_id", "source", "lookup", "outcome", "ms", "attempt")

#: Loggers of libraries that write request URLs, queries or parameters at INFO or DEBUG.
LIBRARIES = (
    "aiohttp.access",
    "aiohttp.client",
    "aiomysql",
    "aiosqlite",
    "asyncpg",
    "asyncssh",
    "elastic_transport",
    "elasticsearch",
    "gql",
    "gspread",
    "httpcore",
    "httpx",
    "pymongo",
    "pymssql",
    "pymysql",
    "requests",
    "simple_salesforce",
    "urllib3",
    "zeep",
)
#: Shorter values are left alone: masking "Ana" or "12" would blank ordinary words.
MIN_MASKED = 4
MASK = "***"

_customer: contextvars.ContextVar[re.Pattern[str] | None] = contextvars.ContextVar(
    "customer_values", default=None
)


def _spellings(value: str) -> set[str]:
    """The forms a value takes in a log line: as sent, URL-encoded, JSON-escaped, digits only."""
    value = value.strip()
    forms = {value}
    try:
        forms |= {quote(value, safe=""), quote(value), quote_plus(value)}
    except UnicodeEncodeError:  # a lone surrogate: refused anyway, only its own form to mask
        pass
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 7 and re.fullmatch(r"[+0-9 ().\-]+", value):  # a phone, however written
        forms.add(digits)
    return {form for form in forms if len(form) >= MIN_MASKED}


def hide_customer_values(values: Iterable[str]) -> None:
    """From now on in this context (the job's task, its child tasks and threads), mask these."""
    forms: set[str] = set()
    for value in values:
        if len(value.strip()) >= MIN_MASKED:
            forms |= _spellings(value)
    ordered = sorted(forms, key=len, reverse=True)  # the longest form first
    _customer.set(re.compile("|".join(map(re.escape, ordered))) if ordered else None)


def mask_customer_values(text: str) -> str:
    """``text`` with the current job's customer values as ``***``."""
    pattern = _customer.get()
    return text if pattern is None else pattern.sub(MASK, text)


class CustomerMask(logging.Filter):
    """Masks the current job's customer values in a record: message, fields and error."""

    def filter(self, record: logging.LogRecord) -> bool:
        pattern = _customer.get()
        if pattern is None:
            return True
        message = record.getMessage()
        masked = pattern.sub(MASK, message)
        if masked != message:
            record.msg, record.args = masked, ()
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, pattern.sub(MASK, value))
        if record.exc_info and record.exc_info[0] is not None:
            record.error_text = pattern.sub(MASK, _error_text(record))
        return True


def _error_text(record: logging.LogRecord) -> str:
    masked = getattr(record, "error_text", None)
    if isinstance(masked, str):
        return masked
    if record.exc_info is None or record.exc_info[0] is None:
        return ""
    return f"{record.exc_info[0].__name__}: {record.exc_info[1]}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = _error_text(record)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")  # noqa: DTZ006
        tags = " ".join(
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        )
        text = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if tags:
            text += f"  [{tags}]"
        if record.exc_info and record.exc_info[0] is not None:
            text += f"\n  {_error_text(record)}"
        return text


def setup(
    level: str = "INFO", *, json_lines: bool | None = None, libraries: str | None = None
) -> None:
    """Log to stderr; JSON unless stderr is a terminal (or ``json_lines`` says).

    ``libraries`` (default ``WORKER_LOG_LIBRARIES``, else ``warning``) is the level
    of the `LIBRARIES` loggers: lower only on purpose, their lines carry URLs.
    """
    as_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    # Fields no formatter here prints: not gathering them saves time on every line
    # (the logging HOWTO's "Optimization" section).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(CustomerMask())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a driver's warnings quote values: mask them too
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    chosen = (libraries or os.environ.get("WORKER_LOG_LIBRARIES") or "warning").upper()
    library_level = logging.getLevelName(chosen)
    if not isinstance(library_level, int):
        raise ValueError(f"WORKER_LOG_LIBRARIES: {chosen.lower()!r} is not a log level")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
