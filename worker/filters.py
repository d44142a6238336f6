"""The reply templates' own filters: dates, amounts and lists for the customer's
locale, and phone numbers masked (contract §5.2).

``date``, ``money`` and ``join_and`` read the locale from ``customer.locale`` in
the template's context; other locales than English go through babel (CLDR).
What a filter cannot read it returns unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import pass_context
from jinja2.runtime import Context

if TYPE_CHECKING:
    from babel import Locale

__all__ = ["REPLY_FILTERS", "format_date", "format_money", "join_and", "phone_mask"]


_ENGLISH_MONTHS = (
    "January February March April May June July August September October November December"
).split()


_DEFAULT_LOCALE = "en_US"


@lru_cache(maxsize=256)
def _parse_locale(tag: str) -> Locale:
    # babel (CLDR data, pytz) loads on the first template that formats a date, an
    # amount or a list: a worker whose templates never do never imports it.
    from babel import Locale, UnknownLocaleError

    try:
        return Locale.parse(tag.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse(_DEFAULT_LOCALE)


def _locale(tag: object) -> Locale:
    return _parse_locale(tag) if isinstance(tag, str) and tag else _parse_locale(_DEFAULT_LOCALE)


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _as_date(value: object) -> date | None:
    if isinstance(value, datetime):
        return value.date()  # the date as the source wrote it, in its own zone
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip()).date()
        except ValueError:
            return None
    return None


def format_date(value: object, format: str | None = None, locale: str | None = None) -> object:
    """`2025-09-12` → "September 12th" (`format="long"`: "September 12th, 2025").

    Takes an ISO date or datetime string, a `date`/`datetime` or None (→ "").
    Other locales use CLDR ("12 de septiembre"); any other `format` is a babel
    format name or pattern. What cannot be read is returned unchanged.
    """
    if value is None:
        return ""
    day = _as_date(value)
    if day is None:
        return value
    loc = _locale(locale)
    try:
        if loc.language == "en" and format in (None, "long"):
            text = f"{_ENGLISH_MONTHS[day.month - 1]} {_ordinal(day.day)}"
            return f"{text}, {day.year}" if format == "long" else text
        from babel.dates import format_date as babel_format_date
        from babel.dates import format_skeleton

        if format is None:
            return str(format_skeleton("MMMMd", day, locale=loc))
        return str(babel_format_date(day, format=format, locale=loc))
    except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError):
        return value


def format_money(value: object, currency: str = "USD", locale: str | None = None) -> object:
    """`12.5` → "$12.50": a number (or numeric string) in `currency`, for `locale`.

    Anything that is not a finite number is returned unchanged.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return value
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return value
    if not amount.is_finite():
        return value
    from babel.numbers import format_currency

    try:
        return str(format_currency(amount, str(currency).upper(), locale=_locale(locale)))
    except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError):
        return value


def join_and(value: object, locale: str | None = None) -> object:
    """`["a", "b", "c"]` → "a, b and c" ("a and b", "a", ""); other locales via CLDR.

    A string or a non-iterable is returned unchanged; None gives "".
    """
    if value is None:
        return ""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return value
    items = [str(item) for item in value]
    loc = _locale(locale)
    if loc.language != "en":
        from babel.lists import format_list

        return str(format_list(items, locale=loc))
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def phone_mask(value: object) -> str:
    """`+1234567890` → `+12******90`: the first two and last two digits kept."""
    if value is None:
        return ""
    text = str(value).strip()
    digits = re.sub(r"\D", "", text)
    plus = "+" if text.startswith("+") else ""
    if len(digits) < 6:
        return plus + "*" * len(digits)
    return f"{plus}{digits[:2]}{'*' * (len(digits) - 4)}{digits[-2:]}"


def _context_locale(context: Context) -> str | None:
    customer = context.get("customer")
    if isinstance(customer, Mapping):
        tag = customer.get("locale")
        return tag if isinstance(tag, str) else None
    return None


@pass_context
def _date_filter(context: Context, value: object, format: str | None = None) -> object:
    return format_date(value, format, locale=_context_locale(context))


@pass_context
def _money_filter(context: Context, value: object, currency: str = "USD") -> object:
    return format_money(value, currency, locale=_context_locale(context))


@pass_context
def _join_and_filter(context: Context, value: object) -> object:
    return join_and(value, locale=_context_locale(context))


#: the filters a reply template has besides Jinja's own
REPLY_FILTERS: dict[str, Callable[..., Any]] = {
    "date": _date_filter,
    "money": _money_filter,
    "join_and": _join_and_filter,
    "phone_mask": phone_mask,
}
