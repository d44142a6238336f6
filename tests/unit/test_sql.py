"""SQL queries (contract §5.1): the read-only check, `$n` placeholders, and binding helpers."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.base import bind_placeholders, jsonable, placeholder_names
from connectors.sql import Dialect, SQLSpec, Style, prepare_sql
from worker.errors import ConfigError, NotARead

# --- reads accepted ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "positional"),
    [
        pytest.param("SELECT 1", 0, id="select"),
        pytest.param("select status from orders where order_id = $1", 1, id="lower-case"),
        pytest.param(
            "SELECT status, tracking_number FROM orders WHERE order_id = $1", 1, id="seed"
        ),
        pytest.param("WITH x AS (SELECT 1 AS a) SELECT a FROM x", 0, id="with-select"),
        pytest.param("-- find it; DELETE nothing\nSELECT 1", 0, id="line-comment"),
        pytest.param("/* DROP TABLE orders; */ SELECT 1", 0, id="block-comment"),
        pytest.param("SELECT 1 -- trailing; DROP TABLE orders\n", 0, id="trailing-comment"),
        pytest.param("SELECT 'a;b' AS x", 0, id="literal-semicolon"),
        pytest.param("SELECT 'DELETE' AS x", 0, id="literal-delete"),
        pytest.param("SELECT 'it''s; DROP' AS x", 0, id="literal-doubled-quote"),
        pytest.param("SELECT '$9' AS x WHERE a = $1", 1, id="literal-dollar-nine"),
        pytest.param('SELECT "delete", "x;y" FROM t', 0, id="quoted-identifiers"),
        pytest.param('SELECT "$1" FROM t', 0, id="quoted-identifier-dollar"),
        pytest.param("SELECT * FROM t WHERE updated_at > $1", 1, id="keyword-inside-name"),
        pytest.param("SELECT 1;", 0, id="one-trailing-semicolon"),
        pytest.param("SELECT $1, $1", 1, id="same-placeholder-twice"),
        pytest.param("SELECT * FROM t WHERE a = $2 AND b = $1", 2, id="out-of-order"),
        pytest.param("SELECT * FROM t WHERE a = $1::int", 1, id="cast"),
        pytest.param("VALUES (1)", 0, id="values"),
        pytest.param("EXPLAIN SELECT 1", 0, id="explain"),
    ],
)
def test_prepare_sql__reads_accepted(sql: str, positional: int) -> None:
    prepared = prepare_sql(sql, style="dollar", dialect="postgresql")

    assert prepared.positional == positional
    assert isinstance(prepared.spec, SQLSpec)
    assert prepared.names == ()


def test_prepare_sql__text_trimmed_of_trailing_semicolon() -> None:
    assert (
        prepare_sql("  SELECT 1 ;  ", style="dollar", dialect="postgresql").spec.text == "SELECT 1"
    )


# --- writes refused --------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("INSERT INTO orders (id) VALUES ($1)", id="insert"),
        pytest.param("UPDATE orders SET status = $1", id="update"),
        pytest.param("DELETE FROM orders", id="delete"),
        pytest.param("delete from orders", id="delete-lower-case"),
        pytest.param("DROP TABLE orders", id="drop"),
        pytest.param("ALTER TABLE orders ADD c int", id="alter"),
        pytest.param("CREATE TABLE t (a int)", id="create"),
        pytest.param("TRUNCATE orders", id="truncate"),
        pytest.param("GRANT ALL ON orders TO public", id="grant"),
        pytest.param("COPY orders TO 'orders.csv'", id="copy"),
        pytest.param("CALL refresh()", id="call"),
        pytest.param("SELECT * INTO backup FROM orders", id="select-into"),
        pytest.param("SELECT * FROM orders WHERE id = $1 FOR UPDATE", id="for-update"),
        pytest.param("SELECT * FROM orders FOR UPDATE SKIP LOCKED", id="for-update-skip-locked"),
        pytest.param("SELECT * FROM orders FOR NO KEY UPDATE", id="for-no-key-update"),
        pytest.param("WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x", id="cte-delete"),
        pytest.param("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", id="cte-insert"),
        pytest.param("EXPLAIN ANALYZE DELETE FROM orders", id="explain-analyze-delete"),
        pytest.param("SET ROLE admin", id="set"),
        pytest.param("BEGIN", id="begin"),
    ],
)
def test_prepare_sql__writes_refused(sql: str) -> None:
    with pytest.raises(NotARead, match="only reads are allowed"):
        prepare_sql(sql, style="dollar", dialect="postgresql")


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        pytest.param("EXEC refresh", "sqlserver", id="exec"),
        pytest.param("ATTACH DATABASE 'x.db' AS x", "sqlite", id="attach"),
        pytest.param("PRAGMA writable_schema = 1", "sqlite", id="pragma"),
        pytest.param("DELETE FROM orders", "mysql", id="mysql-delete"),
        pytest.param("REPLACE INTO orders VALUES (1)", "mysql", id="mysql-replace"),
        pytest.param("SET @a = 1", "mysql", id="mysql-set"),
        pytest.param("UPDATE t SET a = $1", "sqlite", id="sqlite-update"),
        pytest.param(
            "MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE", "sqlserver", id="merge"
        ),
    ],
)
def test_prepare_sql__other_dialects_writes_refused(sql: str, dialect: Dialect) -> None:
    style: Style = "qmark_numbered" if dialect == "sqlite" else "format"
    with pytest.raises(NotARead, match="only reads are allowed"):
        prepare_sql(sql, style=style, dialect=dialect)


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("SELECT 1; SELECT 2", id="two-reads"),
        pytest.param("SELECT 1; DROP TABLE orders", id="select-drop"),
        pytest.param("SELECT * FROM t WHERE a = $1;DELETE FROM t", id="no-space"),
        pytest.param("SELECT 'x;'; DELETE FROM t", id="after-literal"),
    ],
)
def test_prepare_sql__multiple_statements_refused(sql: str) -> None:
    with pytest.raises(NotARead, match="exactly one statement"):
        prepare_sql(sql, style="dollar", dialect="postgresql")


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param(r"SELECT E'a\'' ; DELETE FROM t -- '", id="postgres-e-string"),
        pytest.param(r"SELECT * FROM t WHERE a = 'x\'' ; DROP TABLE t; -- '", id="mysql-string"),
    ],
)
def test_prepare_sql__backslash_escape_cannot_hide_a_statement(sql: str) -> None:
    with pytest.raises(NotARead):
        prepare_sql(sql, style="dollar", dialect="postgresql")


def test_prepare_sql__mysql_executable_comment_checked() -> None:
    with pytest.raises(NotARead):
        prepare_sql(
            "SELECT * FROM t /*! INTO OUTFILE 'orders.csv' */", style="format", dialect="mysql"
        )


# --- malformed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        pytest.param("", "non-empty", id="empty"),
        pytest.param("   \n ", "non-empty", id="blank"),
        pytest.param("-- only a comment", "only reads are allowed", id="comment-only"),
        pytest.param("SELECT $1, $3", r"\$2 is never used", id="gap"),
        pytest.param("SELECT $2", r"\$1 is never used", id="no-first"),
        pytest.param("SELECT $0", r"start at \$1", id="zero"),
    ],
)
def test_prepare_sql__malformed_refused(sql: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        prepare_sql(sql, style="dollar", dialect="postgresql")


def test_prepare_sql__non_string_refused() -> None:
    with pytest.raises(ConfigError, match="non-empty string"):
        prepare_sql({"sql": "SELECT 1"}, style="dollar", dialect="postgresql")  # type: ignore[arg-type]


# --- placeholder styles -----------------------------------------------------------------

#: the dialect whose driver takes each placeholder style
DIALECT_OF: dict[Style, Dialect] = {
    "dollar": "postgresql",
    "qmark_numbered": "sqlite",
    "format": "mysql",
}
MIXED = "SELECT * FROM t WHERE a = $2 AND b = $1 AND c = $2 AND d = '$1'"


@pytest.mark.parametrize(
    ("style", "text", "arguments"),
    [
        pytest.param(
            "dollar",
            "SELECT * FROM t WHERE a = $2 AND b = $1 AND c = $2 AND d = '$1'",
            ("one", "two"),
            id="dollar",
        ),
        pytest.param(
            "qmark_numbered",
            "SELECT * FROM t WHERE a = ?2 AND b = ?1 AND c = ?2 AND d = '$1'",
            ("one", "two"),
            id="qmark_numbered",
        ),
        pytest.param(
            "format",
            "SELECT * FROM t WHERE a = %s AND b = %s AND c = %s AND d = '$1'",
            ("two", "one", "two"),
            id="format",
        ),
    ],
)
def test_prepare_sql__placeholder_styles(
    style: Style, text: str, arguments: tuple[str, ...]
) -> None:
    prepared = prepare_sql(MIXED, style=style, dialect=DIALECT_OF[style])

    assert prepared.positional == 2
    assert prepared.spec.text == text
    assert prepared.spec.arguments(("one", "two")) == arguments


def test_prepare_sql__format_reorders_reversed_args() -> None:
    spec = prepare_sql(
        "SELECT * FROM t WHERE a = $2 AND b = $1", style="format", dialect="mysql"
    ).spec

    assert spec.text == "SELECT * FROM t WHERE a = %s AND b = %s"
    assert spec.arguments((10, 20)) == (20, 10)


def test_prepare_sql__format_escapes_percent() -> None:
    spec = prepare_sql(
        "SELECT * FROM t WHERE name LIKE 'a%' AND id = $1", style="format", dialect="mysql"
    ).spec

    assert spec.text == "SELECT * FROM t WHERE name LIKE 'a%%' AND id = %s"


# --- bind_placeholders ------------------------------------------------------------------

PARAMS: dict[str, Any] = {"order_id": 12345, "op": '{"$ne": null}', "sku": "AB-1", "n": 0}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("{order_id}", 12345, id="exact-keeps-int"),
        pytest.param(" {order_id} ", 12345, id="exact-with-blanks"),
        pytest.param("{op}", '{"$ne": null}', id="operator-text-stays-text"),
        pytest.param("{n}", 0, id="exact-zero"),
        pytest.param("{{order_id}}", 12345, id="double-braces"),
        pytest.param("{{ order_id }}", 12345, id="double-braces-spaced"),
        pytest.param("{{$json.order_id}}", 12345, id="n8n-json"),
        pytest.param("{{ $json.order_id }}", 12345, id="n8n-json-spaced"),
        pytest.param("order:{order_id}", "order:12345", id="text-insertion"),
        pytest.param("{sku}-{order_id}", "AB-1-12345", id="two-in-text"),
        pytest.param("a{{sku}}b{{$json.n}}", "aAB-1b0", id="n8n-in-text"),
        pytest.param("{missing}", None, id="missing-exact"),
        pytest.param("x{missing}y", "xy", id="missing-in-text"),
        pytest.param("no placeholders", "no placeholders", id="plain"),
        pytest.param(7, 7, id="non-string"),
    ],
)
def test_bind_placeholders(template: Any, expected: Any) -> None:
    assert bind_placeholders(template, PARAMS) == expected


def test_bind_placeholders__structure_values_bound_keys_never() -> None:
    query: dict[str, Any] = {
        "filter": {"order_id": "{order_id}", "{sku}": "{sku}", "$or": ["{op}", "k:{n}"]},
        "limit": 1,
    }

    bound = bind_placeholders(query, PARAMS)

    assert bound == {
        "filter": {"order_id": 12345, "{sku}": "AB-1", "$or": ['{"$ne": null}', "k:0"]},
        "limit": 1,
    }
    assert query["filter"]["order_id"] == "{order_id}"  # the prepared query is untouched


def test_bind_placeholders__value_is_not_expanded_again() -> None:
    assert bind_placeholders("a {x} b", {"x": "{y}", "y": "no"}) == "a {y} b"


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        pytest.param("AB-1", "AB-1", id="plain"),
        pytest.param("a/b", "a%2Fb", id="slash"),
        pytest.param("../", "..%2F", id="dot-dot-slash"),
        pytest.param("../../admin", "..%2F..%2Fadmin", id="traversal"),
        pytest.param("%2e%2e", "%252e%252e", id="encoded-dots"),
        pytest.param("a@b", "a%40b", id="at"),
        pytest.param("a#b", "a%23b", id="hash"),
        pytest.param("a?b=c", "a%3Fb%3Dc", id="question"),
        pytest.param("a\r\nb", "a%0D%0Ab", id="crlf"),
        pytest.param(".", "%2E", id="dot"),
        pytest.param("..", "%2E%2E", id="dot-dot"),
        pytest.param("a.b", "a.b", id="inner-dot"),
        pytest.param("é", "%C3%A9", id="unicode"),
        pytest.param(12, "12", id="int"),
    ],
)
def test_bind_placeholders__url_path_segment(value: Any, segment: str) -> None:
    bound = bind_placeholders("/products/{sku}/stock", {"sku": value}, url_path=True)

    assert bound == f"/products/{segment}/stock"
    assert bound.count("/") == 3
    assert not any(ch in bound for ch in "?#@\r\n")


def test_bind_placeholders__url_path_exact_keeps_value() -> None:
    assert bind_placeholders("{sku}", {"sku": "a/b"}, url_path=True) == "a/b"


@pytest.mark.parametrize(
    ("query", "names"),
    [
        pytest.param("/products/{sku}/stock", ("sku",), id="path"),
        pytest.param("{a}{b}{a}", ("a", "b"), id="once-each-in-order"),
        pytest.param("{{a}} {{ $json.b }} {c}", ("a", "b", "c"), id="three-spellings"),
        pytest.param({"f": {"x": "{x}"}, "l": ["{y}", 3]}, ("x", "y"), id="structure"),
        pytest.param({"{key}": "v"}, (), id="keys-ignored"),
        pytest.param("{1bad} {} {a-b}", (), id="not-names"),
        pytest.param(None, (), id="none"),
    ],
)
def test_placeholder_names(query: Any, names: tuple[str, ...]) -> None:
    assert placeholder_names(query) == names


# --- jsonable ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(Decimal("1.50"), 1.5, id="decimal-fraction"),
        pytest.param(Decimal("2"), 2, id="decimal-whole"),
        pytest.param(Decimal("2.000"), 2, id="decimal-whole-with-zeros"),
        pytest.param(
            dt.datetime(2025, 9, 12, 10, 30, tzinfo=dt.UTC),
            "2025-09-12T10:30:00+00:00",
            id="datetime",
        ),
        pytest.param(dt.date(2025, 9, 12), "2025-09-12", id="date"),
        pytest.param(dt.time(8, 15), "08:15:00", id="time"),
        pytest.param(dt.timedelta(minutes=2), 120.0, id="timedelta"),
        pytest.param(
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "12345678-1234-5678-1234-567812345678",
            id="uuid",
        ),
        pytest.param(b"hello", "hello", id="bytes-utf8"),
        pytest.param(b"\xff\x00", "/wA=", id="bytes-not-utf8-base64"),
        pytest.param(bytearray(b"x"), "x", id="bytearray"),
        pytest.param(memoryview(b"y"), "y", id="memoryview"),
        pytest.param(None, None, id="none"),
        pytest.param(True, True, id="bool"),
        pytest.param(
            {"total": Decimal("9.99"), 1: [dt.date(2025, 1, 2), (b"a",)], "tags": {"x"}},
            {"total": 9.99, "1": ["2025-01-02", ["a"]], "tags": ["x"]},
            id="nested",
        ),
    ],
)
def test_jsonable(value: Any, expected: Any) -> None:
    result = jsonable(value)

    assert result == expected
    assert type(result) is type(expected)
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(Decimal("Infinity"), id="infinity"),
        pytest.param(Decimal("-Infinity"), id="minus-infinity"),
        pytest.param(Decimal("NaN"), id="nan"),
    ],
)
def test_jsonable__non_finite_decimal_is_json(value: Decimal) -> None:
    json.dumps(jsonable(value), allow_nan=False)


# --- the parsers never crash ----------------------------------------------------------------

SQL_ALPHABET = "SELECT FROM WHERE INTO ;'\"`[]$1#-/*!\\\n ()%?:,.=abcdeLOCK"


@settings(max_examples=200, deadline=None)
@given(sql=st.text(alphabet=SQL_ALPHABET, min_size=1, max_size=60))
@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlserver", "sqlite"])
def test_prepare_sql__any_text_loads_or_is_a_config_error(dialect: Dialect, sql: str) -> None:
    style: Style = "dollar" if dialect == "postgresql" else "format"
    try:
        prepared = prepare_sql(sql, style=style, dialect=dialect)
    except ConfigError:
        return
    assert isinstance(prepared.spec, SQLSpec)


# --- $n named after the column it is compared with ---------------------------------------

_STYLES: dict[str, Style] = {
    "postgresql": "dollar",
    "mysql": "format",
    "sqlite": "qmark_numbered",
    "sqlserver": "format",
}


@pytest.mark.parametrize("dialect", list(_STYLES))
@pytest.mark.parametrize(
    ("sql", "columns"),
    [
        pytest.param(
            "SELECT status, tracking_number FROM orders WHERE order_id = $1",
            ("order_id",),
            id="seed",
        ),
        pytest.param(
            "SELECT * FROM orders o WHERE $2 = o.customer_phone AND o.status IN ($1) "
            "AND name LIKE $3",
            ("status", "customer_phone", "name"),
            id="reversed-qualified-in-like",
        ),
        pytest.param(
            "SELECT a FROM t WHERE b <> $1 OR c < $2 OR d > $3 OR e <= $4 OR f >= $5",
            ("b", "c", "d", "e", "f"),
            id="comparisons",
        ),
        pytest.param(
            "SELECT a FROM t WHERE CAST(a AS varchar(20)) = CAST($1 AS varchar(20))",
            ("a",),
            id="casts",
        ),
        pytest.param("SELECT 1 FROM t WHERE lower(a) = $1", (None,), id="expression"),
        pytest.param("SELECT $1 AS x", (None,), id="no-comparison"),
        pytest.param("SELECT 1 FROM t WHERE a = $1 OR b = $1", (None,), id="two-columns"),
        pytest.param(
            "SELECT 1 FROM t WHERE d >= $1 AND d < $2", (None, None), id="one-column-twice"
        ),
        pytest.param(
            "SELECT $1 AS asked, status FROM orders WHERE order_id = $1",
            ("order_id",),
            id="other-uses-ignored",
        ),
        pytest.param(
            "SELECT a FROM t WHERE a = 'x = $1' AND b = $1", ("b",), id="dollar-in-a-string"
        ),
        pytest.param(
            "SELECT a FROM t WHERE a IN (SELECT a FROM u WHERE u.sku = $1)",
            ("sku",),
            id="subquery",
        ),
    ],
)
def test_prepare_sql__columns_name_each_placeholder(
    dialect: Dialect, sql: str, columns: tuple[str | None, ...]
) -> None:
    assert prepare_sql(sql, style=_STYLES[dialect], dialect=dialect).columns == columns


def test_prepare_sql__no_placeholders_no_columns() -> None:
    assert prepare_sql("SELECT 1", style="dollar", dialect="postgresql").columns == ()
