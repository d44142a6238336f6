"""Secrets at rest: ``enc:v1:<token>`` values, Fernet under MultiFernet.

``WORKER_SECRET_KEYS`` holds one or more keys from ``worker secrets keygen``,
comma-separated: the first encrypts, every one decrypts, so a new key can be
put first while old ciphertexts still load (rotation without downtime).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from worker.errors import ConfigError

__all__ = [
    "PREFIX",
    "decrypt",
    "encrypt",
    "keygen",
    "plaintext_warnings",
    "rotate_text",
    "undecryptable",
]

PREFIX = "enc:v1:"
ENV_KEYS = "WORKER_SECRET_KEYS"

# Connection keys whose values are credentials.
SECRET_KEYS = re.compile(
    r"(?i)^(password|passwd|secret|api_key|apikey|token|security_token|private_key|"
    r"service_account|client_secret|access_token|dsn|uri|url)$"
)


def keygen() -> str:
    return Fernet.generate_key().decode("ascii")


def _fernet(keys: str | None = None) -> MultiFernet:
    raw = keys if keys is not None else os.environ.get(ENV_KEYS, "")
    parts = [k.strip() for k in raw.split(",") if k.strip()]
    if not parts:
        raise ConfigError(
            f"an encrypted value needs {ENV_KEYS} (keys from `worker secrets keygen`)"
        )
    try:
        return MultiFernet([Fernet(k.encode("ascii")) for k in parts])
    except (ValueError, UnicodeEncodeError) as exc:
        raise ConfigError(f"{ENV_KEYS} holds a key that is not a Fernet key") from exc


def encrypt(plaintext: str, *, keys: str | None = None) -> str:
    token = _fernet(keys).encrypt(plaintext.encode("utf-8"))
    return PREFIX + token.decode("ascii")


def decrypt(value: str, *, keys: str | None = None) -> str:
    if not value.startswith(PREFIX):
        return value
    try:
        return _fernet(keys).decrypt(value[len(PREFIX) :].encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError) as exc:
        raise ConfigError(
            f"an encrypted value does not decrypt with any key in {ENV_KEYS}"
        ) from exc


TOKEN = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_=-]+")


def rotate_text(text: str, *, keys: str | None = None) -> tuple[str, int]:
    """Every ``enc:v1:`` value in ``text`` re-encrypted with the first key; the rest untouched."""
    fernet = _fernet(keys)
    count = 0

    def again(match: re.Match[str]) -> str:
        nonlocal count
        try:
            token = fernet.rotate(match.group(0)[len(PREFIX) :].encode("ascii"))
        except InvalidToken as exc:
            raise ConfigError(
                f"an encrypted value does not decrypt with any key in {ENV_KEYS}"
            ) from exc
        count += 1
        return PREFIX + token.decode("ascii")

    return TOKEN.sub(again, text), count


def undecryptable(document: Any, *, keys: str | None = None) -> Iterator[str]:
    """The path of every ``enc:v1:`` value that no key decrypts (never the value)."""

    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, str) and node.startswith(PREFIX):
            try:
                decrypt(node, keys=keys)
            except ConfigError:
                yield path or "(top)"
        elif isinstance(node, Mapping):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")

    yield from walk(document, "")


def _plain_secrets(node: Any, path: str) -> Iterator[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, str) and SECRET_KEYS.match(str(key)):
                if value and not value.startswith(PREFIX) and "${env:" not in value:
                    if not (str(key).lower() in {"url", "uri", "dsn"} and "@" not in value):
                        yield where
            else:
                yield from _plain_secrets(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _plain_secrets(value, f"{path}[{i}]")


def plaintext_warnings(document: Mapping[str, Any], name: str) -> list[str]:
    """One warning per credential written in clear in a config (they still load)."""
    return [
        f"{name}: {where} is a plaintext secret; encrypt it with `worker secrets encrypt`"
        for where in _plain_secrets(document.get("data_sources", []), "data_sources")
    ]
