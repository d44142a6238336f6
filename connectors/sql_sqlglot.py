"""MySQL's, T-SQL's and SQLite's reading of a query (sqlglot): read-only check, named placeholders.

Imported by `connectors.sql` only when a query in one of those dialects is checked
(or a PostgreSQL one where pglast is not installed): sqlglot is the largest
import a worker could make, and a PostgreSQL-only tenant never needs it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect as SQLGlotDialect
from sqlglot.errors import SqlglotError

from connectors.sql import _DIALECT_NAMES, _MARK, Dialect, _check_one, _denied, _refuse
from worker.errors import NotARead

__all__ = ["check_read", "comparisons"]

# sqlglot warns when it falls back to an opaque "Command" for a statement it does not
# model; such a statement is refused here with a clearer reason, so the warning is noise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_SQLGLOT_READ: dict[str, str] = {
    "postgresql": "postgres",
    "mysql": "mysql",
    "sqlserver": "tsql",
    "sqlite": "sqlite",
}
#: T-SQL table hints that take or hold locks.
_LOCK_HINTS = {
    "UPDLOCK",
    "XLOCK",
    "HOLDLOCK",
    "TABLOCK",
    "TABLOCKX",
    "PAGLOCK",
    "ROWLOCK",
    "SERIALIZABLE",
    "REPEATABLEREAD",
}
_MARKED = re.compile(re.escape(_MARK) + r"(\d+)__")
_SQLGLOT_COMPARE: tuple[type, ...] = (
    exp.EQ,
    exp.NEQ,
    exp.LT,
    exp.GT,
    exp.LTE,
    exp.GTE,
    exp.Like,
    exp.ILike,
)


def comparisons(text: str, dialect: Dialect) -> list[tuple[int, str]]:
    """``(n, column)`` for each marked ``$n`` compared with a column; none if it does not parse.

    ``text`` has each ``$n`` as a column-like marker (`connectors.sql`'s "mark" scan).
    """
    try:
        return list(_comparisons(text, dialect))
    except SqlglotError:
        return []


def _comparisons(text: str, dialect: Dialect) -> Iterator[tuple[int, str]]:
    reader = SQLGlotDialect.get_or_raise(_SQLGLOT_READ[dialect])
    for tree in reader.parse(text):
        if tree is None:
            continue
        for node in tree.walk():
            if isinstance(node, _SQLGLOT_COMPARE):
                pairs = [(node.this, node.expression)]
            elif isinstance(node, exp.In):
                pairs = [(node.this, value) for value in node.expressions]
            else:
                continue
            for left, right in pairs:
                for a, b in ((left, right), (right, left)):
                    number, column = _sqlglot_param(a), _sqlglot_column(b)
                    if number and column:
                        yield number, column


def _sqlglot_unwrap(node: Any) -> Any:
    while isinstance(node, exp.Cast | exp.Paren):
        node = node.this
    return node


def _sqlglot_param(node: Any) -> int | None:
    node = _sqlglot_unwrap(node)
    if isinstance(node, exp.Column) and not node.table:
        marked = _MARKED.fullmatch(node.name)
        return int(marked.group(1)) if marked else None
    return None


def _sqlglot_column(node: Any) -> str | None:
    node = _sqlglot_unwrap(node)
    if isinstance(node, exp.Column) and node.name and not _MARKED.fullmatch(node.name):
        return str(node.name)
    return None


#: nodes that make a statement more than a read, wherever they appear
_NOT_READ_NODES: tuple[type, ...] = tuple(
    getattr(exp, name)
    for name in (
        "Insert",
        "Update",
        "Delete",
        "Merge",
        "Create",
        "Drop",
        "Alter",
        "TruncateTable",
        "Command",
        "Copy",
        "LoadData",
        "Set",
        "Use",
        "Transaction",
        "Commit",
        "Rollback",
        "Pragma",
        "Execute",
        "Grant",
        "Revoke",
        "Attach",
        "Detach",
        "Kill",
        "Declare",
    )
    if hasattr(exp, name)
)


def check_read(text: str, dialect: Dialect, placeholders: int) -> None:
    """Refuse ``text`` unless ``dialect`` reads it as one plain read with ``placeholders`` ``?``.

    ``text`` has each ``$n`` as ``?`` (`connectors.sql`'s "parse" scan).
    """
    name = _DIALECT_NAMES[dialect]
    reader = SQLGlotDialect.get_or_raise(_SQLGLOT_READ[dialect])
    try:
        tokens = reader.tokenize(text)
        trees = [t for t in reader.parser().parse(tokens, text) if t is not None]
    except SqlglotError as exc:
        raise NotARead(f"the query does not parse as {name}: {_sqlglot_problem(exc)}") from None
    _check_one(len(trees), name)
    tree = trees[0]
    if not isinstance(tree, exp.Command):  # a Command's tokens end in one lump of text
        _check_gaps(text, tokens, dialect)
    if dialect == "mysql" and isinstance(tree, exp.Show):
        return  # SHOW only reads, in MySQL and MariaDB alike
    inner = tree.this if dialect == "mysql" and isinstance(tree, exp.Describe) else tree
    if not isinstance(inner, exp.Query | exp.Values) and not (
        inner is not tree and isinstance(inner, exp.Table)
    ):
        first = tokens[0].text.upper() if tokens else "the statement"
        raise _refuse(f"{first} is not a read in {name} (only SELECT, WITH, VALUES)")
    for node in tree.walk():
        _check_sqlglot_node(node, dialect)
    found = sum(1 for _ in tree.find_all(exp.Placeholder))
    if found != placeholders:
        raise NotARead(
            f"the placeholders read differently in {name}: a $n sits inside a string "
            "or a comment, or the query has placeholders of its own"
        )


def _check_sqlglot_node(node: Any, dialect: Dialect) -> None:
    """Refuse ``node`` (a sqlglot expression) when it writes, locks or calls a denied function."""
    if isinstance(node, _NOT_READ_NODES):
        raise _refuse(f"{type(node).__name__.upper()} is not a read")
    if isinstance(node, exp.Into):
        raise _refuse("SELECT … INTO writes a table, a variable or a file")
    if isinstance(node, exp.Lock):
        raise _refuse("FOR UPDATE/SHARE locks rows")
    if isinstance(node, exp.WithTableHint):
        hints = {h.name.upper() for h in node.expressions} & _LOCK_HINTS
        if hints:
            raise _refuse(f"the table hint {min(hints)} takes locks")
    names: list[str] = []
    if isinstance(node, exp.Anonymous):
        names.append(node.name)
    elif isinstance(node, exp.Func):
        names.extend(type(node).sql_names())
    elif dialect == "sqlserver" and isinstance(node, exp.Table):
        names.append(node.name)
    for fname in names:
        reason = _denied(fname, dialect)
        if reason:
            raise NotARead(reason)


def _sqlglot_problem(exc: SqlglotError) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        return f"{first.get('description')} (line {first.get('line')}, column {first.get('col')})"
    return _ANSI.sub("", str(exc)).splitlines()[0] if str(exc) else type(exc).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _check_gaps(text: str, tokens: list[Any], dialect: Dialect) -> None:
    """Refuse text between tokens that the server would read as code.

    The tokenizer and the server must agree on what is a comment: MySQL runs
    the body of ``/*! … */``, and reads ``--`` as a comment only before a space.
    """
    pos = 0
    for token in [*tokens, None]:
        end = token.start if token is not None else len(text)
        gap = text[pos:end]
        if gap.strip() and not _only_comments(gap, dialect):
            raise NotARead(
                f"the comments read differently in {_DIALECT_NAMES[dialect]}: "
                f"{gap.strip()[:40]!r} may run as code"
            )
        if token is not None:
            pos = max(pos, token.end + 1)


def _only_comments(gap: str, dialect: Dialect) -> bool:
    i = 0
    while i < len(gap):
        if gap[i].isspace():
            i += 1
        elif gap.startswith("--", i) and (
            dialect != "mysql" or i + 2 == len(gap) or gap[i + 2].isspace() or gap[i + 2] < " "
        ):
            i = _line_end(gap, i)
        elif gap[i] == "#" and dialect == "mysql":
            i = _line_end(gap, i)
        elif gap.startswith("/*", i):
            if dialect == "mysql" and gap.startswith(("/*!", "/*M!"), i):
                return False  # MySQL and MariaDB run these
            i = _block_end(gap, i, nested=dialect == "sqlserver")
            if i < 0:
                return False
        else:
            return False
    return True


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end + 1


def _block_end(text: str, i: int, *, nested: bool) -> int:
    """Where the block comment opened at ``i`` ends, or -1 when it never does."""
    depth = 0
    while i < len(text):
        if text.startswith("/*", i) and (nested or depth == 0):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1
