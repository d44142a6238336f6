"""Shared SQL handling: the read-only check and ``$1…$n`` placeholders.

Every SQL source takes ``$n`` placeholders in its configured queries, as the
seed writes them, whatever the driver's own style; `prepare_sql` rewrites them
for the driver and says how many there are, so the config can check a lookup's
``args`` against them at load time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from connectors.base import ConfigError, NotARead, PreparedQuery

__all__ = ["SQLSpec", "prepare_sql"]

Style = Literal["dollar", "qmark_numbered", "format"]

# String literals, quoted identifiers and comments: skipped by the scanners below.
# MySQL runs the body of a `/*! … */` comment, so that one is scanned as code.
_QUOTED = r""""(?:[^"]|"")*"|`[^`]*`|--[^\n]*|/\*(?!!).*?\*/"""
_SKIP = re.compile(r"'(?:[^']|'')*'|" + _QUOTED, re.DOTALL)
# The same, for dialects where a backslash escapes a quote (MySQL, PostgreSQL E'…'):
# a query must read as one read statement under both rules.
_SKIP_BACKSLASH = re.compile(r"'(?:[^'\\]|\\.|'')*'|" + _QUOTED, re.DOTALL)
_TOKEN = re.compile(r"\$(\d+)|;|[A-Za-z_][A-Za-z0-9_]*")
_READ_STARTS = {"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "DESCRIBE"}
# Statements that write or change state. Function names that are also
# keywords elsewhere (REPLACE, SET in CHARACTER SET) are left out on purpose:
# the read-only session the driver opens is the second line of defence.
_WRITES = {
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "DROP",
    "ALTER",
    "CREATE",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "COPY",
    "CALL",
    "EXEC",
    "EXECUTE",
    "ATTACH",
    "DETACH",
    "PRAGMA",
    "VACUUM",
    "REINDEX",
    "INTO",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
}


@dataclass(frozen=True)
class SQLSpec:
    """SQL in the driver's placeholder style, and the order args bind in."""

    text: str
    #: for positional styles: which ``$n`` (0-based) each driver placeholder takes
    order: tuple[int, ...]

    def arguments(self, args: tuple[object, ...]) -> tuple[object, ...]:
        return tuple(args[i] for i in self.order)


def prepare_sql(sql: str, *, style: Style) -> PreparedQuery:
    """Check that ``sql`` is one read and rewrite its ``$n`` for the driver."""
    if not isinstance(sql, str) or not sql.strip():
        raise ConfigError("a SQL query must be a non-empty string")
    _scan(sql, _SKIP_BACKSLASH, style)  # only for its checks
    text, order = _scan(sql, _SKIP, style)
    count = max(order, default=-1) + 1
    missing = sorted(set(range(count)) - set(order))
    if missing:
        raise ConfigError(f"placeholder ${missing[0] + 1} is never used (placeholders run $1…$n)")
    # Only `%s` binds by position of appearance; `$n` and `?n` bind by number.
    spec_order = tuple(order) if style == "format" else tuple(range(count))
    return PreparedQuery(spec=SQLSpec(text=text, order=spec_order), positional=count)


def _scan(sql: str, skip: re.Pattern[str], style: Style) -> tuple[str, list[int]]:
    """Rewrite placeholders outside literals and comments; refuse what is not one read."""
    pieces: list[str] = []
    order: list[int] = []
    keywords: list[str] = []
    ended = False
    pos = 0
    for skipped in [*skip.finditer(sql), None]:
        code = sql[pos : skipped.start() if skipped else len(sql)]
        last = 0
        for tok in _TOKEN.finditer(code):
            word = tok.group(0)
            if ended and word != ";":
                raise NotARead("a query must be exactly one statement (text follows a ';')")
            if word == ";":
                ended = True
            elif tok.group(1) is not None:
                n = int(tok.group(1))
                if n < 1:
                    raise ConfigError("placeholders start at $1")
                pieces.append(_escape(code[last : tok.start()], style))
                pieces.append(_placeholder(style, n))
                order.append(n - 1)
                last = tok.end()
            else:
                keywords.append(word.upper())
        pieces.append(_escape(code[last:], style))
        if skipped:
            pieces.append(_escape(skipped.group(0), style))
            pos = skipped.end()
    _check_read(keywords)
    return "".join(pieces).strip().rstrip(";").rstrip(), order


def _escape(text: str, style: Style) -> str:
    # With `%s` placeholders a literal `%` (LIKE 'a%', the modulo operator) is `%%`.
    return text.replace("%", "%%") if style == "format" else text


def _placeholder(style: Style, n: int) -> str:
    if style == "dollar":
        return f"${n}"
    if style == "qmark_numbered":
        return f"?{n}"
    return "%s"


def _check_read(keywords: list[str]) -> None:
    if not keywords or keywords[0] not in _READ_STARTS:
        first = keywords[0] if keywords else "nothing"
        raise NotARead(f"only reads are allowed: the query starts with {first}, not SELECT/WITH")
    writes = sorted(set(keywords) & _WRITES)
    if writes:
        raise NotARead(f"only reads are allowed: the query contains {', '.join(writes)}")
