"""Structured logging: JSON lines when not on a terminal, short lines when on one.

Every line carries ``action`` and, where known, ``tenant`` and ``job_id``:
pass them as ``extra={"action": "claim", "tenant": t, "job_id": j}``. Messages
use lazy ``%s`` formatting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

__all__ = ["FIELDS", "JsonFormatter", "TextFormatter", "setup"]

FIELDS = ("action", "tenant", "job_id", "source", "lookup", "outcome", "ms", "attempt")


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
            line["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
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
            text += f"\n  {record.exc_info[0].__name__}: {record.exc_info[1]}"
        return text


def setup(level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Log to stderr; JSON unless stderr is a terminal (or ``json_lines`` says)."""
    as_json = (not sys.stderr.isatty()) if json_lines is None else json_lines
    # Fields no formatter here prints: not gathering them saves time on every line
    # (the logging HOWTO's "Optimization" section).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
