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

A line about a job says which job even when its caller did not pass the fields:
`job_context` (entered once per job, where the job starts being handled) puts the
tenant and job id in a context variable, and `JobFields` adds them to every line
that lacks them, a library's or a connector's included.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

from worker.settings import Settings

__all__ = [
    "FIELDS",
    "LIBRARIES",
    "CustomerMask",
    "JobFields",
    "JsonFormatter",
    "TextFormatter",
    "TurnBatchedHandler",
    "hide_customer_values",
    "job_context",
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

#: The current job's customer values: raw as the payload had them; their spellings
#: are worked out only when a line is logged in the job's context.
_customer: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "customer_values", default=()
)
_PHONE_LIKE = re.compile(r"[+0-9 ().\-]+")
_NON_DIGITS = re.compile(r"\D")


def _spellings(value: str) -> set[str]:
    """The forms a value takes in a log line: as sent, URL-encoded, JSON-escaped, digits only."""
    value = value.strip()
    forms = {value}
    if not (value.isascii() and value.isalnum()):  # ASCII letters and digits: one spelling
        try:
            forms |= {quote(value, safe=""), quote(value), quote_plus(value)}
        except UnicodeEncodeError:  # a lone surrogate: refused anyway, only its own form to mask
            pass
        forms.add(json.dumps(value)[1:-1])
        forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
        if _PHONE_LIKE.fullmatch(value):  # a phone, however written
            digits = _NON_DIGITS.sub("", value)
            if len(digits) >= 7:
                forms.add(digits)
    return {form for form in forms if len(form) >= MIN_MASKED}


@functools.lru_cache(maxsize=256)
def _forms(values: tuple[str, ...]) -> tuple[str, ...]:
    """Every spelling of ``values``, the longest first (a phone before its digits)."""
    forms: set[str] = set()
    for value in values:
        forms |= _spellings(value)
    return tuple(sorted(forms, key=len, reverse=True))


def hide_customer_values(values: Iterable[str]) -> None:
    """From now on in this context (the job's task, its child tasks and threads), mask these."""
    _customer.set(tuple(v for v in values if len(v.strip()) >= MIN_MASKED))


def _masked(text: str, forms: tuple[str, ...]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def mask_customer_values(text: str) -> str:
    """``text`` with the current job's customer values as ``***``."""
    values = _customer.get()
    return _masked(text, _forms(values)) if values else text


_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")


@functools.lru_cache(maxsize=256)
def _cores(values: tuple[str, ...]) -> tuple[str | None, ...]:
    """Each value's longest run of ASCII letters and digits (None: it has none).

    Every spelling `_spellings` makes keeps such a run whole (URL and JSON
    escaping leave ASCII letters and digits alone; a phone's digits-only form
    keeps its digit runs), so a text without a value's core holds no spelling of it.
    """
    return tuple(max(_ASCII_WORD.findall(value), key=len, default=None) for value in values)


def _may_mention(values: tuple[str, ...], texts: Iterable[str]) -> bool:
    """False when no text can hold a customer value: most lines, spared building the spellings."""
    texts = tuple(texts)
    return any(core is None or any(core in text for text in texts) for core in _cores(values))


class CustomerMask(logging.Filter):
    """Masks the current job's customer values in a record: message, fields and error."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = _customer.get()
        if not values:
            return True
        message = record.getMessage()
        record.msg, record.args = message, ()  # formatted once: the formatter reuses it
        error = record.exc_info is not None and record.exc_info[0] is not None
        fields = (getattr(record, name, None) for name in FIELDS)
        texts = [message, *(v for v in fields if isinstance(v, str))]
        if not _may_mention(values, [*texts, _error_text(record)] if error else texts):
            return True
        forms = _forms(values)
        masked = _masked(message, forms)
        if masked != message:
            record.msg, record.args = masked, ()
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, _masked(value, forms))
        if record.exc_info and record.exc_info[0] is not None:
            record.error_text = _masked(_error_text(record), forms)
        return True


#: The tenant and job id of the job this context works on, (None, None) outside one.
_job: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "job_fields", default=(None, None)
)


@contextlib.contextmanager
def job_context(tenant: str | None, job_id: str | None = None) -> Iterator[None]:
    """Lines logged inside (in this task, its child tasks and threads) carry these."""
    token = _job.set((tenant, job_id))
    try:
        yield
    finally:
        _job.reset(token)


class JobFields(logging.Filter):
    """Adds the current job's ``tenant`` and ``job_id`` to a record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        tenant, job_id = _job.get()
        if tenant is not None and getattr(record, "tenant", None) is None:
            record.tenant = tenant
        if job_id is not None and getattr(record, "job_id", None) is None:
            record.job_id = job_id
        return True


def _error_text(record: logging.LogRecord) -> str:
    masked = getattr(record, "error_text", None)
    if isinstance(masked, str):
        return masked
    if record.exc_info is None or record.exc_info[0] is None:
        return ""
    return f"{record.exc_info[0].__name__}: {record.exc_info[1]}"


#: one encoder for every line (``json.dumps`` with ``default=`` builds one a call)
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _utc_stamp(created: float) -> str:
    """``2026-12-07T08:34:46.546+00:00``, as ``datetime.isoformat`` writes it, built for less."""
    second = int(created)
    return f"{_utc_second(second)}.{int((created - second) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc_stamp(record.created),
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
        return _JSON.encode(line)


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


class TurnBatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the lines of one event-loop turn in one write.

    Under load a turn settles dozens of jobs at once (a group commit returns many
    completions), and each job's line was a write system call of its own. Lines
    logged off the loop (a driver's thread, start-up, shutdown) and errors go out
    at once, with whatever is waiting before them; `logging.shutdown` at exit
    flushes the rest, so only a SIGKILL can lose a turn's lines.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._due = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or record.levelno >= logging.ERROR:
            self.flush()
        elif not self._due:
            self._due = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._due = False
            if not self._lines:
                return
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell it
                pass


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
    handler = TurnBatchedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(JobFields())
    handler.addFilter(CustomerMask())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a driver's warnings quote values: mask them too
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    chosen = (libraries or Settings.load().log_libraries or "warning").upper()
    library_level = logging.getLevelName(chosen)
    if not isinstance(library_level, int):
        raise ValueError(f"WORKER_LOG_LIBRARIES: {chosen.lower()!r} is not a log level")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
