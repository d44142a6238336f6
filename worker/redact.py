"""The redaction layer: no secret reaches a log line, an error text or a result.

At load time the config collects every credential it resolved
(`secrets_in`): the values of the connection settings each connector marks
``SecretStr``, what the name rule of `worker.secret_fields` finds where no
settings model says, and the password inside every URL. `Redactor.scrub`
blanks them out of any text; `Redactor.install` puts it in front of every log
handler, and the pipeline passes each fallback's error text through it before
it goes to the engine.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.secret_fields import config_secrets

__all__ = ["MASK", "Redactor", "secrets_in"]

MASK = "***"
_MIN_LENGTH = 4  # shorter values would blank out ordinary words
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def secrets_in(document: Any) -> set[str]:
    """Every credential value in a (resolved) config document."""
    found = {secret.value for secret in config_secrets(document) if not secret.url}
    found.update(_url_passwords(document))
    return {s for s in found if len(s) >= _MIN_LENGTH}


def _url_passwords(node: Any) -> Iterator[str]:
    """The password inside every URL of ``node``, as written and decoded: wherever it is,
    a URL's password is a credential."""
    if isinstance(node, Mapping):
        for value in node.values():
            yield from _url_passwords(value)
    elif isinstance(node, list):
        for value in node:
            yield from _url_passwords(value)
    elif isinstance(node, str) and "://" in node:
        password = urlsplit(node).password
        if password:
            yield from (password, unquote(password))


class Redactor(logging.Filter):
    """Blanks known secrets (and bearer tokens) out of text and log records."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        super().__init__()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        self._values.update(v for v in values if len(v) >= _MIN_LENGTH)
        ordered = sorted(self._values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def scrub(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)

    def scrub_any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self.scrub_any(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_any(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if self.scrub(text) != text:
                # the exception's text holds a secret: keep its type only
                record.exc_info = (record.exc_info[0], Exception(MASK), None)
                record.exc_text = None
        return True

    def install(self) -> None:
        """Put the redactor in front of every handler of the root logger."""
        for handler in logging.getLogger().handlers:
            if self not in handler.filters:
                handler.addFilter(self)
