"""The sandbox reply templates render in: Jinja's immutable sandbox, hardened.

- `ChainableUndefined`: a missing field (`{{ row.missing.deeper }}`) renders as
  an empty string instead of failing the reply; `None` renders empty too.
- no globals beyond `range`, `dict`, `cycler`, `joiner` and `namespace`, so a
  template reaches neither files nor environment variables (files only through
  its loader: `worker.render` gives one that reads the templates directory).
- limits: `range()` yields at most `MAX_RANGE` items; an operator, filter or
  string method may not build a string or list over `MAX_SIZE` items, and the
  size is checked before the value is built (``~``, ``join``, ``wordwrap``,
  ``indent``, ``urlize``, ``tojson``, ``pprint``, ``string``, ``sum``, printing a
  value: each estimates what it would make first); the deadline (`DEADLINE`,
  set by the renderer) is checked at every loop step and call. These stop
  mistakes (a runaway loop, a huge reply); one C-level call on a huge value
  cannot be interrupted, so keep process memory limits in place as well.

A refusal is Jinja's `SecurityError`; a passed deadline is `DeadlinePassed`.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from datetime import date
from decimal import Decimal
from typing import Any, NoReturn

from jinja2 import (
    BaseLoader,
    ChainableUndefined,
    Environment,
    nodes,
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

from worker.errors import DeadlinePassed

__all__ = [
    "DEADLINE",
    "MAX_RANGE",
    "MAX_SIZE",
    "DeadlinePassed",
    "check_deadline",
    "make_environment",
]


MAX_RANGE = 10_000
"""Most items a template's `range()` may produce."""

MAX_SIZE = 100_000
"""Most characters (or items) an operator, filter or string method may build."""


# When the render in progress must stop, on the monotonic clock.
DEADLINE: ContextVar[float | None] = ContextVar("render_deadline", default=None)


def check_deadline() -> None:
    deadline = DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlinePassed


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
        check_deadline()
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
        check_deadline()
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


def make_environment(loader: BaseLoader) -> _Sandbox:
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
