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
_SKIP = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|--[^\n]*|/\*.*?\*/""",
    re.DOTALL,
)
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
    pieces: list[str] = []
    order: list[int] = []
    keywords: list[str] = []
    statements_ended = False
    pos = 0
    for skipped in [*_SKIP.finditer(sql), None]:
        end = skipped.start() if skipped else len(sql)
        code = sql[pos:end]
        out = []
        last = 0
        for tok in _TOKEN.finditer(code):
            word = tok.group(0)
            if statements_ended and word != ";":
                raise NotARead("a query must be exactly one statement (text follows a ';')")
            if word == ";":
                statements_ended = True
            elif tok.group(1) is not None:
                n = int(tok.group(1))
                if n < 1:
                    raise ConfigError("placeholders start at $1")
                out.append(code[last : tok.start()])
                out.append(_placeholder(style, n, len(order)))
                order.append(n - 1)
                last = tok.end()
            else:
                keywords.append(word.upper())
        out.append(code[last:])
        pieces.append("".join(out))
        if skipped:
            pieces.append(skipped.group(0))
            pos = skipped.end()
    _check_read(keywords)
    count = max(order, default=-1) + 1
    missing = sorted(set(range(count)) - set(order))
    if missing:
        raise ConfigError(f"placeholder ${missing[0] + 1} is never used (placeholders run $1…$n)")
    text = "".join(pieces).strip().rstrip(";").rstrip()
    # Only `%s` binds by position of appearance; `$n` and `?n` bind by number.
    spec_order = tuple(order) if style == "format" else tuple(range(count))
    return PreparedQuery(spec=SQLSpec(text=text, order=spec_order), positional=count)


def _placeholder(style: Style, n: int, index: int) -> str:
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
