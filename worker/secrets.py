"""Secrets at rest: ``enc:v1:`` values, Fernet under MultiFernet.

``WORKER_SECRET_KEYS`` holds one or more keys from ``worker secrets keygen``,
comma-separated: the first encrypts, every one decrypts, so a new key can be
put first while old ciphertexts still load (rotation without downtime).

A value is bound to one tenant (contract §5.0) when it is encrypted with
``--tenant T``: ``enc:v1:T:<token>``, where the token is Fernet under a key
derived for T from each configured key (HKDF-SHA256, ``info`` naming the
tenant). It decrypts only in tenant T's config: another tenant who copies it
into their own config gets a config error, whatever they write in front of the
token, since their key is another. Unbound values (``enc:v1:<token>``, made
before tenants were bound or without ``--tenant``) still decrypt in any
config; ``worker secrets rotate`` binds them to the config's tenant.

cryptography (its OpenSSL bindings: about 6 MB resident) is imported only when
a value is encrypted or decrypted: a config without ``enc:v1:`` values never
loads it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from worker.errors import ConfigError
from worker.settings import Settings, env_name

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

    from worker.secret_fields import Secret

__all__ = [
    "PREFIX",
    "TOKEN",
    "bound_tenant",
    "decrypt",
    "encrypt",
    "keygen",
    "plaintext_warnings",
    "rotate_text",
    "undecryptable",
]

PREFIX = "enc:v1:"
ENV_KEYS = env_name("secret_keys")


def keygen() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


# A tenant id (config.py's pattern) and a Fernet token (URL-safe base64) share no ':'.
TOKEN = re.compile(re.escape(PREFIX) + r"(?:([A-Za-z0-9_][A-Za-z0-9_.-]{0,99}):)?([A-Za-z0-9_=-]+)")


def _keys(keys: str | None) -> list[bytes]:
    raw = keys if keys is not None else Settings.load().secret_keys.get_secret_value()
    parts = [k.strip().encode("ascii", "replace") for k in raw.split(",") if k.strip()]
    if not parts:
        raise ConfigError(
            f"an encrypted value needs {ENV_KEYS} (keys from `worker secrets keygen`)"
        )
    return parts


def _derive(key: bytes, tenant: str) -> bytes:
    """The Fernet key of ``tenant`` under the configured ``key``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    material = base64.urlsafe_b64decode(key)
    info = b"data-lookup-worker secret of tenant " + tenant.encode("utf-8")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)
    return base64.urlsafe_b64encode(derived)


def _fernet(keys: str | None = None, *, tenant: str | None = None) -> MultiFernet:
    from cryptography.fernet import Fernet, MultiFernet

    try:
        parts = _keys(keys)
        if tenant is not None:
            parts = [_derive(k, tenant) for k in parts]
        return MultiFernet([Fernet(k) for k in parts])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{ENV_KEYS} holds a key that is not a Fernet key") from exc


def encrypt(plaintext: str, *, keys: str | None = None, tenant: str | None = None) -> str:
    """``enc:v1:…`` for ``plaintext``; with ``tenant``, bound to that tenant's configs."""
    token = _fernet(keys, tenant=tenant).encrypt(plaintext.encode("utf-8")).decode("ascii")
    return f"{PREFIX}{tenant}:{token}" if tenant is not None else PREFIX + token


def bound_tenant(value: str) -> str | None:
    """The tenant an ``enc:v1:`` value is bound to, or None for an unbound one."""
    match = TOKEN.fullmatch(value)
    return match.group(1) if match else None


def decrypt(value: str, *, keys: str | None = None, tenant: str | None = None) -> str:
    """The plaintext of an ``enc:v1:`` value found in ``tenant``'s config.

    A bound value decrypts only when ``tenant`` is the one it is bound to.
    """
    if not value.startswith(PREFIX):
        return value
    match = TOKEN.fullmatch(value)
    if match is None:
        raise ConfigError("an encrypted value is not of the form enc:v1:[TENANT:]TOKEN")
    owner, token = match.group(1), match.group(2)
    if owner is not None and owner != tenant:
        raise ConfigError(
            f"an encrypted value is bound to tenant {owner!r}; it does not decrypt in "
            f"{'this' if tenant is None else repr(tenant)} tenant's config"
        )
    from cryptography.fernet import InvalidToken

    try:
        plain = _fernet(keys, tenant=owner).decrypt(token.encode("ascii"))
        return plain.decode("utf-8")
    except (InvalidToken, UnicodeError) as exc:
        raise ConfigError(
            f"an encrypted value does not decrypt with any key in {ENV_KEYS}"
            + (f" for tenant {owner!r}" if owner else "")
        ) from exc


def rotate_text(
    text: str, *, keys: str | None = None, tenant: str | None = None
) -> tuple[str, int]:
    """Every ``enc:v1:`` value in ``text`` re-encrypted with the first key; the rest untouched.

    With ``tenant``, unbound values come out bound to it; a value bound to
    another tenant is an error (it could not decrypt in this config anyway).
    """
    count = 0

    def again(match: re.Match[str]) -> str:
        nonlocal count
        owner = match.group(1)
        plain = decrypt(match.group(0), keys=keys, tenant=owner if tenant is None else tenant)
        count += 1
        return encrypt(plain, keys=keys, tenant=owner or tenant)

    return TOKEN.sub(again, text), count


def undecryptable(
    document: Any, *, keys: str | None = None, tenant: str | None = None
) -> Iterator[tuple[str, str]]:
    """Each ``enc:v1:`` value that does not decrypt in ``tenant``'s config: (path, why).

    Neither the value nor its plaintext is ever part of the answer.
    """

    def walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, str) and node.startswith(PREFIX):
            try:
                decrypt(node, keys=keys, tenant=tenant)
            except ConfigError as exc:
                yield path or "(top)", exc.message
        elif isinstance(node, Mapping):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")

    yield from walk(document, "")


def plaintext_warnings(document: Mapping[str, Any], name: str) -> list[str]:
    """One warning per credential of the config's sources written in clear (they still
    load): each secret `worker.secret_fields` finds that is neither ``enc:v1:`` nor
    ``${env:…}``; a URL only when it holds credentials."""
    from worker.secret_fields import config_secrets  # loads connectors: not for keygen

    sources = {"data_sources": document.get("data_sources", [])}
    return [
        f"{name}: {_dotted(secret.where)} is a plaintext secret; "
        "encrypt it with `worker secrets encrypt`"
        for secret in config_secrets(sources)
        if _in_clear(secret)
    ]


def _in_clear(secret: Secret) -> bool:
    if secret.value.startswith(PREFIX) or "${env:" in secret.value:
        return False
    return "@" in secret.value if secret.url else True


def _dotted(where: tuple[str | int, ...]) -> str:
    """``data_sources[0].connection.password``."""
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
