"""The replies a tenant gets where its config says none, and compiling a config's texts.

`compile_text` compiles one of the config's texts (a template file name or inline
text) with the `worker.render.Renderer`, its problem reported at the config's
file, path and line.
"""

from __future__ import annotations

from jinja2 import Template

from worker.config_source import DocPath, Problems
from worker.errors import ConfigError
from worker.render import Renderer

__all__ = [
    "DEFAULT_FALLBACK",
    "DEFAULT_INVALID",
    "DEFAULT_NOT_FOUND",
    "DEFAULT_TEMPLATE",
    "KNOWLEDGE_TEMPLATE",
    "compile_text",
]


DEFAULT_NOT_FOUND = (
    "Sorry, I couldn't find anything for that. Please check the details and try again."
)


DEFAULT_FALLBACK = (
    "Sorry, I can't look that up right now. Please try again in a few minutes, "
    "or a member of our team will get back to you."
)


DEFAULT_INVALID = (
    "Sorry, I couldn't read that: {{ errors | join_and }}. Please check it and try again."
)


# Without a template, a reply reads the row to the customer: "Status: shipped" one field a
# line (names humanised, up to 10 fields, nested objects left out, lists joined); several
# rows, one line each (up to 5).
DEFAULT_TEMPLATE = """\
{%- macro fields(r, sep) -%}
{%- for key, value in r.items() if value is not none and value is not mapping
    and not (value is sequence and value is not string and value | select("mapping") | list) -%}
{%- if loop.index <= 10 -%}
{%- set name = key | string | replace("_", " ") | trim -%}
{{ sep if loop.index > 1 }}{{ name[:1] | upper }}{{ name[1:] }}: {{ value | join(", ")
    if value is sequence and value is not string else value }}
{%- endif -%}
{%- endfor -%}
{%- endmacro -%}
{%- if rows | length > 1 -%}
{%- for r in rows[:5] -%}{{ fields(r, ", ") }}{{ "\n" if not loop.last }}{%- endfor -%}
{%- if rows | length > 5 %}{{ "\n" }}…and {{ rows | length - 5 }} more{% endif -%}
{%- elif row is mapping -%}{{ fields(row, "\n") }}
{%- endif -%}"""


# A knowledge base's row read to the customer: its answer (or text), else the readable default.
KNOWLEDGE_TEMPLATE = (
    "{%- if row.answer -%}{{ row.answer }}{%- elif row.text -%}{{ row.text }}{%- else -%}"
    + DEFAULT_TEMPLATE
    + "{%- endif -%}"
)


def compile_text(renderer: Renderer, text: str, at: DocPath, errors: Problems) -> Template | None:
    """``text`` compiled; None, with the problem noted at ``at``, if it does not compile."""
    try:
        return renderer.compile(text, where=errors.where(at))
    except ConfigError as exc:
        errors.items.append(exc)
        return None
