"""Reply templates: a sandboxed Jinja environment and its filters (contract §5.2).

Templates come from the tenant's config, never from a job, and replies are plain
text: no HTML autoescaping. The environment is Jinja's immutable sandbox with:

- `ChainableUndefined`: a missing field (`{{ row.missing.deeper }}`) renders as
  an empty string instead of failing the reply; `None` renders empty too.
- a loader that reads only the templates directory (no absolute paths, no `..`);
  no globals beyond `range`, `dict`, `cycler`, `joiner` and `namespace`, so a
  template reaches neither files nor environment variables.
- limits: `range()` yields at most `MAX_RANGE` items; an operator, filter or
  string method may not build a string or list over `MAX_SIZE` items, and the
  size is checked before the value is built (``~``, ``join``, ``wordwrap``,
  ``indent``, ``urlize``, ``tojson``, ``pprint``, ``string``, ``sum``, printing a
  value: each estimates what it would make first); the
  deadline is checked at every loop step, call and output chunk; the reply is
  capped at `max_output_chars`. These stop mistakes (a runaway loop, a huge
  reply); one C-level call on a huge value cannot be interrupted, so keep
  process memory limits in place as well.

Every failure while rendering is a `RenderError` whose message names the template
and the line, never the data in the context.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from jinja2 import (
    BaseLoader,
    ChainableUndefined,
    DictLoader,
    Environment,
    FileSystemLoader,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    nodes,
    pass_context,
    pass_environment,
    pass_eval_context,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import (
    do_batch,
    do_center,
    do_format,
    do_indent,
    do_pprint,
    do_replace,
    do_tojson,
    do_urlize,
    do_wordwrap,
    make_attrgetter,
    sync_do_slice,
)
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import soft_str

from worker.errors import ConfigError, WorkerError

if TYPE_CHECKING:
    from babel import Locale

__all__ = [
    "MAX_RANGE",
    "MAX_SIZE",
    "RenderError",
    "Renderer",
    "format_date",
    "format_money",
    "join_and",
    "phone_mask",
]

MAX_RANGE = 10_000
"""Most items a template's `range()` may produce."""

MAX_SIZE = 100_000
"""Most characters (or items) an operator, filter or string method may build."""

_FILE_NAME = re.compile(r"[A-Za-z0-9_./-]+\.(?:j2|jinja|jinja2|txt)")
_ENGLISH_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_DEFAULT_LOCALE = "en_US"

# When the render in progress must stop, on the monotonic clock.
_DEADLINE: ContextVar[float | None] = ContextVar("render_deadline", default=None)


class RenderError(WorkerError):
    """A reply template failed to render; the job is answered with its fallback."""


class _Timeout(Exception):
    """The render in progress passed its deadline."""


# --- filters -------------------------------------------------------------------


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


# --- sandbox limits ------------------------------------------------------------


def _check_deadline() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise _Timeout


def _check_size(size: int, what: str) -> None:
    if size > MAX_SIZE:
        raise SecurityError(f"{what} would be too large (over {MAX_SIZE} items)")


def _text_size(value: Any, indent: int = 0) -> int:
    """About how many characters ``str(value)`` (or its JSON) would take, without building it.

    Containers count their items, separators and, with ``indent``, one indented line
    an item at its depth. Counting stops once past `MAX_SIZE`: a list holding one
    long string 100,000 times is refused after a few items, not after gigabytes.
    """
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            total += len(item) + (2 if depth else 0)
        elif isinstance(item, bool | float | Decimal | date | Undefined) or item is None:
            total += 8
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, Mapping):
            total += 2 + len(item) * (4 + indent * (depth + 1))
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + len(item) * (2 + indent * (depth + 1))
            if total <= MAX_SIZE:
                stack.extend((v, depth + 1) for v in item)
        else:
            total += len(str(item))
        if total > MAX_SIZE:
            return total
    return total


def _check_text(value: Any, what: str, indent: int = 0) -> None:
    _check_size(_text_size(value, indent), what)


_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(fmt: str) -> None:
    for match in _PRINTF_FIELD.finditer(fmt):
        for width in match.groups():
            if width == "*":
                raise SecurityError("'*' widths are not allowed in a format string")
            if width:
                _check_size(int(width[:7]), "a format width")


def _check_format_spec(fmt: str) -> None:
    for _, _, spec, _ in string.Formatter().parse(fmt):
        if spec and "{" in spec:
            raise SecurityError("nested fields are not allowed in a format spec")
        for width in re.findall(r"\d+", spec or ""):
            _check_size(int(width[:7]), "a format width")


def _check_replace(text: object, old: object, new: object, count: object) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old)
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _check_size(len(text) + hits * (len(new) - len(old)), "a replace() result")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    sized = (str, list, tuple)
    if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        _check_size(len(left) + len(right), "a concatenation")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, sized) and isinstance(times, int):
                _check_size(len(seq) * times, "a repeated sequence")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        _check_size(max(abs(left).bit_length(), 1) * right, "a power (in bits)")
    elif operator == "%" and isinstance(left, str):
        _check_printf(left)
        _check_size(len(left) + _text_size(right), "a formatted string")


_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _check_str_method(
    func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Refuse a string method call that would build too much; the args to call it with."""
    target = getattr(func, "__self__", None)
    if not isinstance(target, str):
        return args
    name = getattr(func, "__name__", "")
    if name == "join" and len(args) == 1:
        items = list(_guarded_iter(args[0]))
        _check_size(len(items), "str.join()")
        _check_size(
            sum(_text_size(i) for i in items) + max(len(items) - 1, 0) * len(target), "str.join()"
        )
        return (items,)
    if name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        _check_size(len(target) * max(longest, 1), "str.translate()")
    if name in _WIDTH_METHODS and args and isinstance(args[0], int):
        _check_size(args[0], f"str.{name}()")
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_size(len(target) + target.count("\t") * tabsize, "str.expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _check_replace(target, args[0], args[1], args[2] if len(args) > 2 else -1)
    return args


def _capped_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE} items in templates")
    return rng


def _center(value: str, width: int = 80) -> str:
    _check_size(width, "center()")
    return do_center(value, width)


def _indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = str(s)
    prefix = width if isinstance(width, int) else len(str(width))
    _check_size(prefix, "indent()")
    _check_size(len(text) + (text.count("\n") + 1) * prefix, "indent()")
    return do_indent(text, width, first, blank)


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _check_printf(str(value))
    _check_size(len(str(value)) + _text_size(args) + _text_size(kwargs), "format()")
    return do_format(value, *args, **kwargs)


@pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    separator = str(d)
    items = []
    size = -len(separator)  # the separators: one fewer than the items
    for item in _guarded_iter(value):
        items.append(item)
        # counted as it grows: a join too large stops at its first items, not after all
        size += _text_size(item) + len(separator)
        _check_size(max(size, len(items)), "join()")
    return separator.join(map(str, items))


@pass_environment
def _wordwrap(
    environment: Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    wrapped = do_wordwrap(environment, str(s), width, break_long_words, "\n", break_on_hyphens)
    separator = environment.newline_sequence if wrapstring is None else str(wrapstring)
    breaks = wrapped.count("\n")
    _check_size(len(wrapped) + breaks * (len(separator) - 1), "wordwrap()")
    return wrapped.replace("\n", separator) if separator != "\n" else wrapped


@pass_eval_context
def _urlize(
    eval_ctx: EvalContext,
    value: str,
    trim_url_limit: int | None = None,
    nofollow: bool = False,
    target: str | None = None,
    rel: str | None = None,
    extra_schemes: Iterable[str] | None = None,
) -> str:
    text = str(value)
    # every word may become a link: twice the URL, the tags, and target and rel each time
    per_word = len(str(target or "")) + len(str(rel or "")) + 64
    _check_size(3 * len(text) + (len(text.split()) + 1) * per_word, "urlize()")
    return str(do_urlize(eval_ctx, text, trim_url_limit, nofollow, target, rel, extra_schemes))


@pass_eval_context
def _tojson(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> str:
    _check_size(indent or 0, "tojson() indent")
    _check_text(value, "tojson()", indent or 0)
    return str(do_tojson(eval_ctx, value, indent))


def _pprint(value: Any) -> str:
    _check_text(value, "pprint()", 2)
    return do_pprint(value)


def _string(value: Any) -> str:
    _check_text(value, "string()")
    return soft_str(value)


@pass_environment
def _sum(
    environment: Environment,
    iterable: Iterable[Any],
    attribute: str | int | None = None,
    start: Any = 0,
) -> Any:
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = list(_guarded_iter(iterable))
    if isinstance(start, list | tuple | str):
        sized = [len(i) for i in items if isinstance(i, list | tuple | str)]
        _check_size(len(start) + sum(sized), "sum()")
    return sum(items, start)


@pass_eval_context
def _replace(eval_ctx: EvalContext, s: str, old: str, new: str, count: int | None = None) -> str:
    _check_replace(str(s), str(old), str(new), -1 if count is None else count)
    return do_replace(eval_ctx, s, old, new, count)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _check_size(linecount, "batch()")
    return do_batch(value, linecount, fill_with)


def _slice(value: Iterable[Any], slices: int, fill_with: Any = None) -> Iterator[list[Any]]:
    _check_size(slices, "slice()")
    return sync_do_slice(list(value), slices, fill_with)


def _guarded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _check_deadline()
        yield item


def _concat(*values: Any) -> str:
    """``a ~ b ~ c``: the size is checked before the string is built."""
    _check_size(sum(_text_size(v) for v in values), "a concatenation")
    return "".join(map(str, values))


def _env_call(name: str, args: list[Any], lineno: int) -> nodes.Call:
    node = nodes.EnvironmentAttribute(name, lineno=lineno)
    return nodes.Call(node, args, [], None, None, lineno=lineno)


class _Guards(NodeTransformer):
    """Routes every loop's iterable and every `~` through the sandbox's checks."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _env_call("guarded_iter", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _env_call("guarded_concat", node.nodes, node.lineno)


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Guards().visit(node)
        node.set_environment(self.environment)
        super().visit_Template(node, frame)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with deadlines and size limits."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    guarded_iter = staticmethod(_guarded_iter)
    guarded_concat = staticmethod(_concat)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        args = _check_str_method(obj, args, kwargs)
        return super().call(context, obj, *args, **kwargs)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        # The stock sandbox returns an Undefined that renders as "": refuse loudly.
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template: str = value.__self__
        _check_format_spec(template)

        def checked(*args: Any, **kwargs: Any) -> str:
            values = (*args, *kwargs.values())
            _check_size(len(template) + sum(_text_size(v) for v in values), "str.format()")
            return wrapped(*args, **kwargs)

        return checked


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if not isinstance(value, str):  # printing a value builds its text: not past the limit
        _check_text(value, "a printed value")
    return value


def _make_environment(loader: BaseLoader) -> _Sandbox:
    env = _Sandbox(
        loader=loader,
        autoescape=False,
        undefined=ChainableUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
        # constant folding would run template expressions at load, outside the limits
        optimized=False,
    )
    env.globals.pop("lipsum", None)
    env.globals["range"] = _capped_range
    env.filters.update(
        date=_date_filter,
        money=_money_filter,
        join_and=_join_and_filter,
        phone_mask=phone_mask,
        center=_center,
        indent=_indent,
        format=_format,
        replace=_replace,
        batch=_batch,
        slice=_slice,
        join=_join,
        wordwrap=_wordwrap,
        urlize=_urlize,
        tojson=_tojson,
        pprint=_pprint,
        string=_string,
        sum=_sum,
    )
    return env


# --- the renderer ----------------------------------------------------------------


def _label(template: Template) -> str:
    return f"template {template.name!r}" if template.name else "inline template"


def _template_line(tb: TracebackType | None) -> int | None:
    """The line of the innermost template frame in a traceback Jinja rewrote."""
    line = None
    while tb is not None:
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class Renderer:
    """Compiles and renders reply templates in the sandbox."""

    def __init__(
        self,
        templates_dir: Path | None,
        *,
        max_output_chars: int = 4096,
        max_render_s: float = 1.0,
    ) -> None:
        if max_output_chars <= 0 or max_render_s <= 0:
            raise ValueError("max_output_chars and max_render_s must be positive")
        self.templates_dir = templates_dir
        self.max_output_chars = max_output_chars
        self.max_render_s = max_render_s
        self._loader: BaseLoader = (
            FileSystemLoader(templates_dir) if templates_dir is not None else DictLoader({})
        )
        self._env = _make_environment(self._loader)
        self._cache: dict[str, Template] = {}

    def compile(self, source: str, *, where: str = "") -> Template:
        """A template file name under `templates_dir`, or inline template text.

        Raises `ConfigError` (with `where`, the template and the line) on a
        syntax error, a missing or unreadable file, or an include of one.
        """
        cached = self._cache.get(source)
        if cached is not None:
            return cached
        name = source if _FILE_NAME.fullmatch(source) else None
        label = f"template {name!r}" if name else "inline template"
        try:
            if name is None:
                tree = self._env.parse(source)
            else:
                tree = self._env.parse(self._read(name, where), name, name)
            self._check_references(tree, label, where)
            template = self._env.from_string(tree) if name is None else self._env.get_template(name)
        except TemplateSyntaxError as exc:
            at = f"template {exc.name!r}" if exc.name and exc.name != name else label
            raise ConfigError(f"{at}, line {exc.lineno}: {exc.message}", where=where) from None
        self._cache[source] = template
        return template

    def _read(self, name: str, where: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise ConfigError(f"template {name!r}: not a file name under templates/", where=where)
        if self.templates_dir is None:
            raise ConfigError(
                f"template {name!r} names a file, but no templates directory is set", where=where
            )
        try:
            text, _, _ = self._loader.get_source(self._env, name)
        except (TemplateNotFound, OSError, UnicodeDecodeError):
            raise ConfigError(
                f"template {name!r} is not a readable file in {self.templates_dir}", where=where
            ) from None
        return text

    def _check_references(self, tree: nodes.Template, label: str, where: str) -> None:
        """Fail at load, not at reply time, on an include of a file that is not there."""
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            target = getattr(node, "template", None)
            if getattr(node, "ignore_missing", False) or not (
                isinstance(target, nodes.Const) and isinstance(target.value, str)
            ):
                continue
            try:
                self._env.get_template(target.value)
            except (TemplateNotFound, OSError, UnicodeDecodeError):
                raise ConfigError(
                    f"{label}, line {node.lineno}: {target.value!r} is not a file under templates/",
                    where=where,
                ) from None

    def render(self, template: Template, context: Mapping[str, Any]) -> str:
        """The reply: `template` rendered with `context`, surrounding whitespace stripped.

        Raises `RenderError` on a sandbox violation, a reply longer than
        `max_output_chars`, a render slower than `max_render_s`, or any other
        failure inside the template.
        """
        label = _label(template)
        token = _DEADLINE.set(time.monotonic() + self.max_render_s)
        try:
            return self._stream(template, context, label)
        except RenderError:
            raise
        except _Timeout:
            raise RenderError(
                f"{label}: rendering took longer than {self.max_render_s:g} s"
            ) from None
        except SecurityError as exc:
            line = _template_line(exc.__traceback__)
            at = f", line {line}" if line else ""
            raise RenderError(f"{label}{at}: the sandbox refused it: {exc}") from None
        except Exception as exc:
            line = _template_line(exc.__traceback__)
            at = f", line {line}" if line else ""
            # Jinja's own messages name variables and types; others may quote data.
            detail = f": {exc}" if isinstance(exc, TemplateError) else ""
            raise RenderError(f"{label}{at}: {type(exc).__name__}{detail}") from None
        finally:
            _DEADLINE.reset(token)

    def _stream(self, template: Template, context: Mapping[str, Any], label: str) -> str:
        limit = self.max_output_chars
        parts: list[str] = []
        pos = 0  # characters streamed so far
        start: int | None = None  # where the first non-blank character is
        for chunk in template.generate(dict(context)):
            parts.append(chunk)
            body = chunk.rstrip()
            if body:
                if start is None:
                    start = pos + len(chunk) - len(chunk.lstrip())
                if pos + len(body) - start > limit:
                    raise RenderError(f"{label}: the reply is longer than {limit} characters")
            pos += len(chunk)
            if pos > 4 * limit + 1024:  # blank output that never ends
                raise RenderError(f"{label}: the reply is longer than {limit} characters")
            _check_deadline()
        # A NUL byte (from source data) means nothing in a chat message, and
        # PostgreSQL's text cannot hold one: it would keep the reply from being stored.
        return "".join(parts).replace("\x00", "").strip()
