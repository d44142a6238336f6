"""The sandboxed reply renderer and its filters (contract §5.2)."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import worker.render as render_module
from worker.errors import ConfigError, WorkerError
from worker.render import (
    MAX_RANGE,
    Renderer,
    RenderError,
    format_date,
    format_money,
    join_and,
    phone_mask,
)

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

SEED_TEMPLATE = """\
Your order #{{ params.order_id }} has been {{ row.status }}! 📦
Tracking: {{ row.tracking }}
Expected delivery: {{ row.estimated_delivery | date }}
"""
SEED_CONTEXT: dict[str, Any] = {
    "params": {"order_id": "12345", "customer_phone": "+1234567890"},
    "row": {
        "order_id": "12345",
        "status": "shipped",
        "tracking": "UPS123456",
        "estimated_delivery": "2025-09-12",
    },
    "customer": {"phone": "+1234567890", "name": "Ana", "locale": "en"},
    "tenant_id": "whappstream",
    "lookup": "order_status",
}
SEED_REPLY = (
    "Your order #12345 has been shipped! 📦\nTracking: UPS123456\nExpected delivery: September 12th"
)


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(TEMPLATES)


def _render(renderer: Renderer, source: str, context: dict[str, Any] | None = None) -> str:
    return renderer.render(renderer.compile(source), context or {})


# --- the seed's reply ------------------------------------------------------------


def test_render__seed_reply_inline(renderer: Renderer) -> None:
    assert _render(renderer, SEED_TEMPLATE, SEED_CONTEXT) == SEED_REPLY


def test_render__seed_reply_from_file(renderer: Renderer) -> None:
    assert _render(renderer, "order_status.j2", SEED_CONTEXT) == SEED_REPLY


def test_render__nul_bytes_from_the_data_are_dropped(renderer: Renderer) -> None:
    reply = _render(renderer, "Status: {{ row.status }}", {"row": {"status": "ship\x00ped"}})
    assert reply == "Status: shipped"


def test_render__seed_reply_in_customer_locale(renderer: Renderer) -> None:
    context = {**SEED_CONTEXT, "customer": {"locale": "es"}}
    assert _render(renderer, SEED_TEMPLATE, context).endswith("Expected delivery: 12 de septiembre")


# --- filters, standalone -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt", "locale", "expected"),
    [
        pytest.param("2025-09-12", None, None, "September 12th", id="iso-date"),
        pytest.param("2025-09-12", "long", None, "September 12th, 2025", id="iso-date-long"),
        pytest.param(" 2025-09-12 ", None, None, "September 12th", id="surrounding-blanks"),
        pytest.param("2025-09-12T23:30:00Z", None, None, "September 12th", id="iso-datetime-z"),
        pytest.param("2025-09-12 08:00:00+02:00", None, None, "September 12th", id="iso-offset"),
        pytest.param(date(2025, 9, 12), None, None, "September 12th", id="date"),
        pytest.param(datetime(2025, 9, 12, 9, tzinfo=UTC), None, None, "September 12th", id="dt"),
        pytest.param(None, None, None, "", id="none"),
        pytest.param("next Tuesday", None, None, "next Tuesday", id="unparseable-unchanged"),
        pytest.param(20250912, None, None, 20250912, id="number-unchanged"),
        pytest.param("2025-09-12", None, "es", "12 de septiembre", id="es"),
        pytest.param("2025-09-12", None, "pt_BR", "12 de setembro", id="pt_BR"),
        pytest.param("2025-09-12", None, "pt-BR", "12 de setembro", id="pt-BR-dash"),
        pytest.param("2025-09-12", None, "fr", "12 septembre", id="fr"),
        pytest.param("2025-09-12", "long", "es", "12 de septiembre de 2025", id="es-long"),
        pytest.param("2025-09-12", None, "en_GB", "September 12th", id="any-english"),
        pytest.param("2025-09-12", None, "xx", "September 12th", id="unknown-locale-english"),
        pytest.param("2025-09-12", None, "not a locale!", "September 12th", id="bad-locale"),
        pytest.param("2025-09-12", "d MMM yyyy", None, "12 Sep 2025", id="babel-pattern"),
    ],
)
def test_format_date(value: object, fmt: str | None, locale: str | None, expected: object) -> None:
    assert format_date(value, fmt, locale=locale) == expected


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        pytest.param(1, "1st", id="1"),
        pytest.param(2, "2nd", id="2"),
        pytest.param(3, "3rd", id="3"),
        pytest.param(4, "4th", id="4"),
        pytest.param(11, "11th", id="11"),
        pytest.param(12, "12th", id="12"),
        pytest.param(13, "13th", id="13"),
        pytest.param(21, "21st", id="21"),
        pytest.param(22, "22nd", id="22"),
        pytest.param(23, "23rd", id="23"),
        pytest.param(30, "30th", id="30"),
        pytest.param(31, "31st", id="31"),
    ],
)
def test_format_date__ordinals(day: int, expected: str) -> None:
    assert format_date(date(2025, 1, day)) == f"January {expected}"


@pytest.mark.parametrize(
    ("value", "currency", "locale", "expected"),
    [
        pytest.param(12.5, "USD", None, "$12.50", id="float"),
        pytest.param(12, "USD", None, "$12.00", id="int"),
        pytest.param(Decimal("1234.5"), "USD", None, "$1,234.50", id="decimal-grouping"),
        pytest.param("12.5", "USD", None, "$12.50", id="numeric-text"),
        pytest.param(12.5, "eur", None, "€12.50", id="currency-lower-case"),
        pytest.param(12.5, "USD", "en", "$12.50", id="en"),
        pytest.param(12.5, "USD", "es", "12,50\xa0US$", id="es"),
        pytest.param(12.5, "EUR", "pt_BR", "€\xa012,50", id="pt_BR"),
        pytest.param(12.5, "USD", "xx", "$12.50", id="unknown-locale"),
        pytest.param("free", "USD", None, "free", id="text-unchanged"),
        pytest.param(None, "USD", None, None, id="none-unchanged"),
        pytest.param(True, "USD", None, True, id="bool-unchanged"),
        pytest.param("NaN", "USD", None, "NaN", id="nan-unchanged"),
        pytest.param(float("inf"), "USD", None, float("inf"), id="inf-unchanged"),
    ],
)
def test_format_money(value: object, currency: str, locale: str | None, expected: object) -> None:
    assert format_money(value, currency, locale=locale) == expected


@pytest.mark.parametrize(
    ("value", "locale", "expected"),
    [
        pytest.param(["a", "b", "c"], None, "a, b and c", id="three"),
        pytest.param(["a", "b", "c", "d"], None, "a, b, c and d", id="four"),
        pytest.param(["a", "b"], None, "a and b", id="two"),
        pytest.param(["a"], None, "a", id="one"),
        pytest.param([], None, "", id="empty"),
        pytest.param((n for n in (1, 2, 3)), None, "1, 2 and 3", id="any-iterable"),
        pytest.param(None, None, "", id="none"),
        pytest.param("abc", None, "abc", id="string-unchanged"),
        pytest.param(42, None, 42, id="non-iterable-unchanged"),
        pytest.param(["a", "b", "c"], "es", "a, b y c", id="es"),
        pytest.param(["a", "b", "c"], "pt_BR", "a, b e c", id="pt_BR"),
        pytest.param(["a", "b"], "fr", "a et b", id="fr"),
        pytest.param(["a", "b", "c"], "en_US", "a, b and c", id="en-no-oxford-comma"),
    ],
)
def test_join_and(value: object, locale: str | None, expected: object) -> None:
    assert join_and(value, locale=locale) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("+1234567890", "+12******90", id="e164"),
        pytest.param("1234567890", "12******90", id="no-plus"),
        pytest.param("+1 (234) 567-890", "+12******90", id="formatted"),
        pytest.param("12345", "*****", id="short"),
        pytest.param(None, "", id="none"),
    ],
)
def test_phone_mask(value: object, expected: str) -> None:
    assert phone_mask(value) == expected


# --- filters, in templates --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "locale", "expected"),
    [
        pytest.param("{{ '2025-09-12' | date }}", None, "September 12th", id="date-no-customer"),
        pytest.param("{{ '2025-09-12' | date('long') }}", "en", "September 12th, 2025", id="long"),
        pytest.param("{{ '2025-09-12' | date }}", "es", "12 de septiembre", id="date-es"),
        pytest.param("{{ 12.5 | money }}", None, "$12.50", id="money-default-usd"),
        pytest.param("{{ 12.5 | money('USD') }}", "es", "12,50\xa0US$", id="money-es"),
        pytest.param("{{ ['a', 'b', 'c'] | join_and }}", None, "a, b and c", id="join-and"),
        pytest.param("{{ ['a', 'b', 'c'] | join_and }}", "es", "a, b y c", id="join-and-es"),
        pytest.param("{{ '+1234567890' | phone_mask }}", None, "+12******90", id="phone-mask"),
        pytest.param("{{ row.missing | date }}", None, "", id="date-of-missing-field"),
    ],
)
def test_filters__in_template_use_customer_locale(
    renderer: Renderer, source: str, locale: str | None, expected: str
) -> None:
    context: dict[str, Any] = {"row": {}}
    if locale is not None:
        context["customer"] = {"locale": locale}
    assert _render(renderer, source, context) == expected


# --- plain text rendering ----------------------------------------------------------


def test_render__no_autoescape(renderer: Renderer) -> None:
    context = {"params": {"x": "<b>Tom & Jerry's</b>"}}
    assert _render(renderer, "{{ params.x }}", context) == "<b>Tom & Jerry's</b>"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("[{{ row.missing }}]", "[]", id="missing-field"),
        pytest.param("[{{ row.missing.deeper.still }}]", "[]", id="chained-missing"),
        pytest.param("[{{ nothing.at.all }}]", "[]", id="missing-variable"),
        pytest.param("[{{ row.tracking }}]", "[]", id="none-renders-empty"),
        pytest.param("[{{ environ }}{{ os }}{{ config }}]", "[]", id="no-process-globals"),
    ],
)
def test_render__missing_values_render_empty(
    renderer: Renderer, source: str, expected: str
) -> None:
    assert _render(renderer, source, {"row": {"tracking": None}}) == expected


def test_render__loops_keep_their_semantics_under_the_guards(renderer: Renderer) -> None:
    source = (
        '{% for x in rows %}{{ loop.index }}/{{ loop.length }}{{ "" if loop.last else ", " }}'
        "{% endfor %}|{% for k, v in row | dictsort %}{{ k }}={{ v }};{% endfor %}"
        "|{% for x in [] %}x{% else %}none{% endfor %}"
        "|{% for n in tree recursive %}{{ n.name }}{% if n.kids %}({{ loop(n.kids) }}){% endif %}"
        "{% endfor %}|{% for x in rows if x > 1 %}{{ x }}{% endfor %}"
    )
    context = {
        "rows": [1, 2, 3],
        "row": {"b": 2, "a": 1},
        "tree": [{"name": "a", "kids": [{"name": "b"}]}],
    }
    assert _render(renderer, source, context) == "1/3, 2/3, 3/3|a=1;b=2;|none|a(b)|23"


def test_render__strips_surrounding_whitespace(renderer: Renderer) -> None:
    assert _render(renderer, "\n\n  {% if true %}\n  hello \n{% endif %}\n\n") == "hello"


# --- the sandbox --------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ ''.__class__.__mro__ }}", id="str-class-mro"),
        pytest.param("{{ ''['__class__'] }}", id="subscript-dunder"),
        pytest.param("{{ cycler.__init__.__globals__ }}", id="cycler-globals"),
        pytest.param("{{ self._TemplateReference__context }}", id="template-context"),
        pytest.param("{{ row.missing.__class__ }}", id="undefined-class"),
        pytest.param("{{ [].append(1) }}", id="mutating-list"),
        pytest.param("{{ '{0.__class__}'.format('') }}", id="format-dunder"),
    ],
)
def test_render__sandbox_violation_is_render_error(renderer: Renderer, source: str) -> None:
    with pytest.raises(RenderError, match=r"inline template, line 1: the sandbox refused it"):
        _render(renderer, source, {"row": {}})


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{% include '../pyproject.toml' %}", id="parent-dir"),
        pytest.param("{% include '/etc/passwd' %}", id="absolute"),
        pytest.param("{% extends '../README.md' %}", id="extends"),
        pytest.param("{% import '../pyproject.toml' as x %}", id="import"),
    ],
)
def test_compile__include_outside_templates_is_config_error(
    renderer: Renderer, source: str
) -> None:
    with pytest.raises(ConfigError, match=r"line 1: '.+' is not a file under templates/"):
        renderer.compile(source, where="acme.yaml:lookups.x.template")


def test_render__dynamic_include_outside_templates_is_render_error(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match=r"TemplateNotFound"):
        _render(renderer, "{% include name %}", {"name": "../pyproject.toml"})


def test_render__without_templates_dir_nothing_is_included() -> None:
    with pytest.raises(ConfigError, match="is not a file under templates/"):
        Renderer(None).compile("{% include 'order_status.j2' %}")


# --- limits --------------------------------------------------------------------------


def test_render__output_cap() -> None:
    renderer = Renderer(None, max_output_chars=100)
    with pytest.raises(RenderError, match="longer than 100 characters"):
        _render(renderer, "{% for i in range(1000) %}xxxxxxxxxx{% endfor %}")


def test_render__output_cap_counts_the_stripped_reply() -> None:
    renderer = Renderer(None, max_output_chars=100)
    assert _render(renderer, "\n   {{ 'x' * 100 }}   \n\n") == "x" * 100
    with pytest.raises(RenderError, match="longer than 100 characters"):
        _render(renderer, "{{ 'x' * 101 }}")


def test_render__blank_output_without_end_is_cut(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match="longer than 4096 characters"):
        _render(renderer, "{% for i in range(10000) %}          {% endfor %}")


def test_render__huge_range_is_refused_at_once(renderer: Renderer) -> None:
    started = time.monotonic()
    with pytest.raises(RenderError, match=f"range\\(\\) is limited to {MAX_RANGE} items"):
        _render(renderer, "{% for i in range(10**9) %}{{ i }}{% endfor %}")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(
            "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
            id="nested-loops-no-output",
        ),
        pytest.param(
            "{% set xs = range(10000) | list %}"
            "{% for a in xs %}{% for b in xs %}{% for c in xs %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            id="loops-over-a-list",
        ),
        pytest.param(
            "{% macro f(n) %}{% for i in range(3) %}{{ f(n + 1) if n < 12 else '' }}"
            "{% endfor %}{% endmacro %}{{ f(0) }}",
            id="wide-recursion",
        ),
    ],
)
def test_render__slow_template_is_cut_off(source: str) -> None:
    renderer = Renderer(None, max_render_s=0.2)
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"rendering took longer than 0.2 s"):
        _render(renderer, source)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ 'a' * 10**9 }}", id="repeat-string"),
        pytest.param("{{ [0] * 10**9 }}", id="repeat-list"),
        pytest.param("{{ 2 ** (10**9) }}", id="power"),
        pytest.param("{{ '%1000000000s' % 'a' }}", id="printf-width"),
        pytest.param("{{ '%*s' % (5, 'a') }}", id="printf-star"),
        pytest.param("{{ '%1000000000s' | format('a') }}", id="format-filter"),
        pytest.param("{{ '{:>1000000000}'.format('a') }}", id="str-format-width"),
        pytest.param("{{ '{:{w}}'.format('a', w=10**9) }}", id="str-format-nested"),
        pytest.param("{{ 'a'.center(10**9) }}", id="str-center"),
        pytest.param("{{ 'a'.zfill(10**9) }}", id="str-zfill"),
        pytest.param("{{ 'a' | center(10**9) }}", id="center-filter"),
        pytest.param("{{ 'a' | indent(10**9, true) }}", id="indent-filter"),
        pytest.param("{{ 'abc' | replace('', 'x' * 50000) }}", id="replace-filter"),
        pytest.param("{{ 'abc'.replace('', 'x' * 50000) }}", id="str-replace"),
        pytest.param("{{ [1] | batch(10**9, 0) | list }}", id="batch"),
        pytest.param("{{ [1] | slice(10**9) | list }}", id="slice"),
        pytest.param(
            "{% set ns = namespace(s='ab') %}"
            "{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            id="doubling-concat",
        ),
        pytest.param(
            "{% set ns = namespace(s='ab') %}"
            "{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            id="doubling-plus",
        ),
    ],
)
def test_render__oversized_values_are_refused(renderer: Renderer, source: str) -> None:
    started = time.monotonic()
    with pytest.raises(RenderError, match="the sandbox refused it"):
        _render(renderer, source)
    assert time.monotonic() - started < 5


def test_render__ordinary_arithmetic_and_strings_still_work(renderer: Renderer) -> None:
    source = "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 7 % 3 }} {{ '%05.1f' % 3.14159 }} {{ 'x' ~ 1 }}"
    assert _render(renderer, source) == "1024 ababab 1 003.1 x1"


def test_render__other_errors_name_the_line_but_not_the_data(renderer: Renderer) -> None:
    source = "line one\n{{ params.secret / 2 }}"
    with pytest.raises(RenderError, match=r"^inline template, line 2: TypeError$") as caught:
        _render(renderer, source, {"params": {"secret": "4111-1111-1111-1111"}})
    assert "4111" not in str(caught.value)
    assert isinstance(caught.value, WorkerError)


def test_renderer__rejects_non_positive_limits() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Renderer(None, max_output_chars=0)


# --- compiling -----------------------------------------------------------------------


def test_compile__syntax_error_reports_where_and_line(renderer: Renderer) -> None:
    where = "config/tenants/acme.yaml:lookups.order_status.template"
    source = "Hello\n{{ params.order_id }}\n{{ row.status }"
    with pytest.raises(
        ConfigError, match=r"^config/tenants/acme\.yaml:.+: inline template, line 3:"
    ):
        renderer.compile(source, where=where)


def test_compile__syntax_error_in_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.j2").write_text("one\ntwo\n{% if x %}never closed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"template 'broken\.j2', line \d+: Unexpected end"):
        Renderer(tmp_path).compile("broken.j2")


def test_compile__syntax_error_in_included_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "part.j2").write_text("fine\n{{ oops(", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"template 'part\.j2', line 2:"):
        Renderer(tmp_path).compile("{% include 'part.j2' %}")


def test_compile__include_inside_templates_works(tmp_path: Path) -> None:
    (tmp_path / "sig.j2").write_text("-- {{ tenant_id }}", encoding="utf-8")
    renderer = Renderer(tmp_path)
    assert _render(renderer, "Hi\n{% include 'sig.j2' %}", {"tenant_id": "acme"}) == "Hi\n-- acme"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("missing.j2", r"template 'missing\.j2' is not a readable file", id="missing"),
        pytest.param("../pyproject.txt", r"not a file name under templates/", id="parent-dir"),
        pytest.param("a/../../b.j2", r"not a file name under templates/", id="parent-inside"),
        pytest.param("/etc/passwd.txt", r"not a file name under templates/", id="absolute"),
    ],
)
def test_compile__bad_file_name_is_config_error(
    renderer: Renderer, source: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=f"^acme.yaml:lookups.x.template: .*{message}"):
        renderer.compile(source, where="acme.yaml:lookups.x.template")


def test_compile__file_name_without_templates_dir() -> None:
    with pytest.raises(ConfigError, match="no templates directory"):
        Renderer(None).compile("order_status.j2")


def test_compile__caches_by_source(renderer: Renderer) -> None:
    assert renderer.compile(SEED_TEMPLATE) is renderer.compile(SEED_TEMPLATE)
    assert renderer.compile("order_status.j2") is renderer.compile("order_status.j2")


# --- the shipped templates ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(
            {"name": "Blue Mug", "quantity": 12},
            "Good news! Blue Mug (SKU-789) is in stock: 12 units available. ✅",
            id="in-stock",
        ),
        pytest.param(
            {"stock": "1"},
            "Good news! Item SKU-789 is in stock: 1 unit available. ✅",
            id="stock-field-as-text",
        ),
        pytest.param(
            {"name": "Blue Mug", "quantity": 0, "restock_date": "2025-10-01"},
            "Sorry, Blue Mug (SKU-789) is out of stock right now. 😕\n"
            "We expect more by October 1st.",
            id="out-of-stock-with-restock",
        ),
        pytest.param({}, "Sorry, Item SKU-789 is out of stock right now. 😕", id="no-quantity"),
    ],
)
def test_template__inventory_stock(renderer: Renderer, row: dict[str, Any], expected: str) -> None:
    assert _render(renderer, "inventory_stock.j2", {"params": {"sku": "SKU-789"}, "row": row}) == (
        expected
    )


def test_template__customer_lookup_full_row(renderer: Renderer) -> None:
    row = {
        "name": "Ana",
        "email": "ana@example.com",
        "phone": "+1234567890",
        "plan": "Pro",
        "status": "active",
        "renewal_date": "2025-10-01",
        "balance": "12.5",
    }
    context = {"params": {"customer_phone": "+1234567890"}, "row": row}
    assert _render(renderer, "customer_lookup.j2", context) == (
        "Hi Ana! Here is what we have on file for you:\n"
        "📧 Email: ana@example.com\n"
        "📱 Phone: +12******90\n"
        "⭐ Plan: Pro (active)\n"
        "🔄 Renews on: October 1st, 2025\n"
        "💳 Balance: $12.50"
    )


def test_template__customer_lookup_sparse_row_in_portuguese(renderer: Renderer) -> None:
    context = {
        "params": {"customer_phone": "+5511987654321"},
        "row": {"balance": 0, "currency": "EUR", "renewal_date": "2025-10-01"},
        "customer": {"name": "João", "locale": "pt_BR"},
    }
    assert _render(renderer, "customer_lookup.j2", context) == (
        "Hi João! Here is what we have on file for you:\n"
        "📱 Phone: +55*********21\n"
        "🔄 Renews on: 1 de outubro de 2025\n"
        "💳 Balance: €\xa00,00"
    )


@pytest.mark.parametrize("name", ["order_status.j2", "inventory_stock.j2", "customer_lookup.j2"])
def test_template__renders_with_an_empty_context(renderer: Renderer, name: str) -> None:
    assert _render(renderer, name, {}).strip()


# --- properties -----------------------------------------------------------------------

_PROPERTY_RENDERER = Renderer(None)
_ECHO = _PROPERTY_RENDERER.compile("{{ params.x }}")


@given(st.text())
def test_render__any_text_parameter_is_rendered_verbatim(value: str) -> None:
    out = _PROPERTY_RENDERER.render(_ECHO, {"params": {"x": value}})
    assert out == value.replace("\x00", "").strip()  # NUL bytes alone are dropped


@given(st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.dates()))
def test_filters__never_raise(value: object) -> None:
    format_date(value)
    format_money(value)
    join_and(value)
    phone_mask(value)


# --- the module -------------------------------------------------------------------------


def test_module__all_matches_public_names() -> None:
    public = {
        name
        for name, obj in vars(render_module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == render_module.__name__
    }
    assert public <= set(render_module.__all__)
    assert all(hasattr(render_module, name) for name in render_module.__all__)


# --- filters that multiply size are bounded before they build (issue 10) -------------------------

URLIZED = 'see <a href="https://x.com" rel="noopener">https://x.com</a>'
BIG = "{% set s = 'x' * 99999 %}{% set many = [s] * 100000 %}"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ range(10000) | join('x' * 99999) }}", id="join-separator"),
        pytest.param(BIG + "{{ many | join }}", id="join-items"),
        pytest.param(BIG + "{{ many | join(attribute='upper') }}", id="join-attribute"),
        pytest.param("{{ ('x' * 99999).join(range(10000) | map('string')) }}", id="str-join"),
        pytest.param(BIG + "{{ ''.join(many) }}", id="str-join-items"),
        pytest.param(BIG + "{{ s ~ s }}", id="concat-two-halves"),
        pytest.param(BIG + "{{ '' ~ many }}", id="concat-a-huge-list"),
        pytest.param(BIG + "{{ many }}", id="print-a-huge-list"),
        pytest.param(BIG + "{{ many | string }}", id="string"),
        pytest.param(BIG + "{{ many | tojson }}", id="tojson"),
        pytest.param("{{ range(5000) | list | tojson(indent=99999) }}", id="tojson-indent"),
        pytest.param(BIG + "{{ many | pprint }}", id="pprint"),
        pytest.param(BIG + "{{ '%s' % (many,) }}", id="printf-operand"),
        pytest.param(BIG + "{{ '%s' | format(many) }}", id="format-operand"),
        pytest.param(BIG + "{{ '{}'.format(many) }}", id="str-format-operand"),
        pytest.param("{{ ('a ' * 20000) | wordwrap(1, wrapstring='x' * 99999) }}", id="wordwrap"),
        pytest.param("{{ ('a\n' * 50000) | indent(99999) }}", id="indent-many-lines"),
        pytest.param("{{ ('a.co ' * 10000) | urlize(target='x' * 99999) }}", id="urlize"),
        pytest.param(
            BIG + "{{ ([many] * 10) | sum(start=[]) }}",
            id="sum-lists",
        ),
        pytest.param("{{ ('abc' * 30000).translate({97: 'x' * 99999}) }}", id="str-translate"),
    ],
)
def test_render__size_multiplying_filters_are_refused_before_building(
    renderer: Renderer, source: str
) -> None:
    started = time.monotonic()
    with pytest.raises(RenderError, match="the sandbox refused it"):
        _render(renderer, source)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("{{ ['a', 'b', 1] | join(', ') }}", "a, b, 1", id="join"),
        pytest.param(
            "{{ rows | join(' / ', attribute='sku') }}", "A1 / B2", id="join-attribute"
        ),
        pytest.param("{{ '-'.join(['a', 'b']) }}", "a-b", id="str-join"),
        pytest.param("{{ 'a' ~ 1 ~ none ~ missing ~ [2] }}", "a1None[2]", id="concat"),
        pytest.param("{{ 'aaa bbb ccc' | wordwrap(4) }}", "aaa\nbbb\nccc", id="wordwrap"),
        pytest.param("{{ 'aaa bbb' | wordwrap(4, wrapstring='|') }}", "aaa|bbb", id="wordwrap-s"),
        pytest.param("{{ 'a\nb' | indent(2) }}", "a\n  b", id="indent"),
        pytest.param("{{ rows | tojson }}", '[{"sku": "A1"}, {"sku": "B2"}]', id="tojson"),
        pytest.param("{{ {'a': [1]} | pprint }}", "{'a': [1]}", id="pprint"),
        pytest.param("{{ [1, 2] | string }}", "[1, 2]", id="string"),
        pytest.param("{{ [1, 2] | sum }} {{ [[1], [2]] | sum(start=[]) }}", "3 [1, 2]", id="sum"),
        pytest.param("{{ rows | sum(attribute='n') }}", "0", id="sum-attribute"),
        pytest.param("{{ 'see https://x.com' | urlize }}", URLIZED, id="urlize"),
        pytest.param("{{ 'abc'.translate({97: 'xy'}) }}", "xybc", id="translate"),
        pytest.param("{{ rows }}", "[{'sku': 'A1'}, {'sku': 'B2'}]", id="print-list"),
    ],
)  # fmt: skip
def test_render__bounded_filters_keep_their_meaning(
    renderer: Renderer, source: str, expected: str
) -> None:
    context = {"rows": [{"sku": "A1"}, {"sku": "B2"}]}
    if "attribute='n'" in source:
        context = {"rows": []}
    assert _render(renderer, source, context) == expected
