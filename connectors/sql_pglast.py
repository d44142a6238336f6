"""PostgreSQL's own reading of a query (pglast): the read-only check and named placeholders.

Imported by `connectors.sql` only when a PostgreSQL query is checked, so that a
worker whose sources are not PostgreSQL never loads PostgreSQL's parser.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast import ast as pg
from pglast import parse_sql as pg_parse
from pglast.enums import A_Expr_Kind
from pglast.parser import ParseError as PGParseError

from connectors.sql import _SKIP, _TOKEN, _check_one, _denied, _refuse
from worker.errors import NotARead

__all__ = ["check_read", "comparisons"]


def check_read(sql: str, placeholders: set[int]) -> None:
    """Refuse ``sql`` unless PostgreSQL reads it as one plain read using exactly ``placeholders``.

    ``placeholders`` are the 0-based ``$n`` the token scan found outside literals.
    """
    try:
        statements = pg_parse(sql)
    except PGParseError as exc:
        raise NotARead(f"the query does not parse as PostgreSQL: {exc}") from None
    _check_one(len(statements), "PostgreSQL")
    stmt = statements[0].stmt
    if isinstance(stmt, pg.ExplainStmt):
        stmt = stmt.query  # EXPLAIN [ANALYZE] of a read: checked as that read
    elif isinstance(stmt, pg.VariableShowStmt):
        return
    if not isinstance(stmt, pg.SelectStmt):
        first = _first_word(sql[statements[0].stmt_location or 0 :])
        raise _refuse(f"{first} is not a read (only SELECT, WITH, VALUES, SHOW, EXPLAIN)")
    seen: set[int] = set()
    for node in _pg_nodes(stmt):
        _check_pg_node(node, seen)
    if seen != {n + 1 for n in placeholders}:
        raise NotARead(
            "the placeholders read differently in PostgreSQL: a $n sits inside a string, "
            "a dollar-quote or a comment"
        )


def _check_pg_node(node: Any, placeholders: set[int]) -> None:
    if isinstance(node, pg.ParamRef):
        placeholders.add(node.number or 0)
    elif isinstance(node, pg.InsertStmt | pg.UpdateStmt | pg.DeleteStmt | pg.MergeStmt):
        raise _refuse(f"a data-modifying WITH ({_pg_name(node)}) is not a read")
    elif isinstance(node, pg.SelectStmt):
        if node.intoClause is not None:
            raise _refuse("SELECT INTO creates a table")
        if node.lockingClause:
            raise _refuse("FOR UPDATE/SHARE locks rows")
    elif isinstance(node, pg.FuncCall):
        name = node.funcname[-1].sval if node.funcname else ""
        reason = _denied(name, "postgresql")
        if reason:
            raise NotARead(reason)


def _pg_name(node: Any) -> str:
    return type(node).__name__.removesuffix("Stmt").upper()


def _first_word(text: str) -> str:
    words = (m.group(0) for m in _TOKEN.finditer(_SKIP.sub(" ", text)))
    return next((w.upper() for w in words if w != ";"), "the statement")


def _pg_nodes(root: Any) -> Iterator[Any]:
    """Every pglast node below ``root`` (included), depth first."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, pg.Node):
            yield node
            stack.extend(getattr(node, attr, None) for attr in getattr(node, "__slots__", ()))


#: PostgreSQL's comparison operators that name a parameter after its column
_PG_COMPARE = {"=", "<>", "!=", "<", ">", "<=", ">=", "~~", "~~*"}


def comparisons(sql: str) -> Iterator[tuple[int, str]]:
    """``(n, column)`` for each ``$n`` compared with a column, in PostgreSQL's reading."""
    try:
        statements = pg_parse(sql)
    except PGParseError:
        return
    kinds = {A_Expr_Kind.AEXPR_IN, A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE}
    kinds.add(A_Expr_Kind.AEXPR_OP)
    for node in _pg_nodes([s.stmt for s in statements]):
        if not isinstance(node, pg.A_Expr) or node.kind not in kinds:
            continue
        op = node.name[-1].sval if node.name else ""
        if node.kind == A_Expr_Kind.AEXPR_OP and op not in _PG_COMPARE:
            continue
        left = node.lexpr
        rights = node.rexpr if isinstance(node.rexpr, list | tuple) else (node.rexpr,)
        for right in rights:
            for a, b in ((left, right), (right, left)):
                number, column = _pg_param(a), _pg_column(b)
                if number and column:
                    yield number, column


def _pg_unwrap(node: Any) -> Any:
    while isinstance(node, pg.TypeCast):
        node = node.arg
    return node


def _pg_param(node: Any) -> int | None:
    node = _pg_unwrap(node)
    return node.number if isinstance(node, pg.ParamRef) else None


def _pg_column(node: Any) -> str | None:
    node = _pg_unwrap(node)
    if not isinstance(node, pg.ColumnRef) or not node.fields:
        return None
    last = node.fields[-1]
    return last.sval if isinstance(last, pg.String) else None
