"""Reply templates: compiling and rendering them (contract §5.2).

Templates come from the tenant's config, never from a job, and replies are plain
text: no HTML autoescaping. `Renderer` compiles a template file name (read only
from the templates directory: no absolute paths, no ``..``) or inline text,
failing at load on a syntax error or a missing include, and renders it in the
hardened sandbox (`worker.sandbox`) with the reply filters (`worker.filters`):
within `max_render_s`, checked at every output chunk too, and the reply capped
at `max_output_chars`.

Every failure while rendering is a `RenderError` whose message names the template
and the line, never the data in the context.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import (
    BaseLoader,
    DictLoader,
    FileSystemLoader,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    nodes,
)
from jinja2.exceptions import SecurityError

from worker.errors import ConfigError, WorkerError
from worker.filters import REPLY_FILTERS, format_date, format_money, join_and, phone_mask
from worker.sandbox import (
    DEADLINE,
    MAX_RANGE,
    MAX_SIZE,
    DeadlinePassed,
    check_deadline,
    make_environment,
)

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


_FILE_NAME = re.compile(r"[A-Za-z0-9_./-]+\.(?:j2|jinja|jinja2|txt)")


class RenderError(WorkerError):
    """A reply template failed to render; the job is answered with its fallback."""


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
        self._env = make_environment(self._loader)
        self._env.filters.update(REPLY_FILTERS)
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
        token = DEADLINE.set(time.monotonic() + self.max_render_s)
        try:
            return self._stream(template, context, label)
        except RenderError:
            raise
        except DeadlinePassed:
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
            DEADLINE.reset(token)

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
            check_deadline()
        # A NUL byte (from source data) means nothing in a chat message, and
        # PostgreSQL's text cannot hold one: it would keep the reply from being stored.
        return "".join(parts).replace("\x00", "").strip()
