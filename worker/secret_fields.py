"""Which values of a tenant config are secrets: one answer for the redaction layer,
the plaintext warnings and ``worker connectors``.

A connector marks its secret settings with ``SecretStr`` (`connectors.base`).
`secret_paths` walks a settings model for the fields that hold one, through
nested models, ``X | None`` and other unions, ``list[…]`` and ``dict[str, …]``;
`config_secrets` reads those places out of a raw config, each ``connection``
block by the settings model of its source's ``type``.

A secret that is a URL (a ``dsn``, MongoDB's ``uri``, Redis's ``url``) is the
password inside it: its scheme, host and database stay readable in messages,
and it is no plaintext secret while it holds no credentials.

Where no model says which values are secret, one name rule does
(`names_a_secret`: a key naming a password, token, key or secret, but not one
naming where or which it is, like ``private_key_file``; or the ``value`` of an
``auth`` block), erring on the side of masking:

- a ``connection`` whose connector cannot load (unknown type, driver missing);
- free-form data inside settings: a map the model does not name the keys of
  (``headers``), and a secret written as a mapping (a service-account key);
- the rest of the document (``engine.token``, queries, lookups): no connector
  describes it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from types import UnionType
from typing import Annotated, Any, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr

from connectors.registry import load
from worker.errors import ConnectorMissing

__all__ = [
    "ANY",
    "Secret",
    "SecretPath",
    "config_secrets",
    "connection_secrets",
    "names_a_secret",
    "open_paths",
    "secret_fields",
    "secret_paths",
    "settings_model",
]

#: A place in a settings model: field names (their aliases where they have one), and
#: `ANY` for every item of a list or value of a map.
SecretPath = tuple[str, ...]
ANY = "*"

#: Where a value is in a raw document: keys and list indexes.
Location = tuple[str | int, ...]

# The one name rule, for data no settings model describes (module docstring): a key
# naming a credential, unless it names where one is (``private_key_file``,
# ``token_url``) or which (``private_key_id``).
_SECRET_NAME = re.compile(
    r"(?i)(password|passwd|secret|api_?key|token|private_key|passphrase|service_account|"
    r"credentials?)"
)
_REFERENCE = re.compile(r"(?i)[_-](file|path|url|uri|id)$")


class Secret(NamedTuple):
    """A secret string of a raw config, where it was found and how to read it."""

    where: Location
    value: str
    #: a URL: what is secret is its password (and it is plaintext only with credentials)
    url: bool = False


def names_a_secret(key: str, parent: str = "") -> bool:
    """Whether a value under ``key`` (in a mapping under ``parent``) is a credential,
    where no settings model says: the name rule of the module docstring."""
    if _SECRET_NAME.search(key):
        return not _REFERENCE.search(key)
    # An HTTP source's ``auth: {type: header|query, name, value}``: the value is the key.
    return parent.lower() == "auth" and key.lower() == "value"


# -- the walk over a settings model ------------------------------------------------


@functools.cache
def secret_paths(model: type[BaseModel]) -> frozenset[SecretPath]:
    """Every place in ``model`` (relative to it) that holds a ``SecretStr``."""
    return frozenset(_walk_model(model, frozenset())[0])


@functools.cache
def open_paths(model: type[BaseModel]) -> frozenset[SecretPath]:
    """Every free-form map in ``model``: its values' keys are not fields (``headers``)."""
    return frozenset(_walk_model(model, frozenset())[1])


def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` whose values are themselves secrets (``SecretStr``, or a
    list or map of them): what ``worker connectors`` marks "secret"."""
    return frozenset(
        path[0] for path in secret_paths(model) if all(part == ANY for part in path[1:])
    )


_Paths = tuple[set[SecretPath], set[SecretPath]]


def _walk_model(model: type[BaseModel], seen: frozenset[type[BaseModel]]) -> _Paths:
    secret: set[SecretPath] = set()
    free: set[SecretPath] = set()
    if model in seen:
        return secret, free  # a model that holds itself: its places are already counted
    for name, field in model.model_fields.items():
        key = field.alias or name
        inner_secret, inner_free = _walk(field.annotation, seen | {model})
        secret.update((key, *path) for path in inner_secret)
        free.update((key, *path) for path in inner_free)
    return secret, free


def _walk(annotation: Any, seen: frozenset[type[BaseModel]]) -> _Paths:
    """The secret and free-form places under one annotation, relative to it."""
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return {()}, set()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _walk_model(annotation, seen)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _walk(args[0], seen)
    if origin is Union or origin is UnionType:
        return _merge(_walk(arg, seen) for arg in args)
    if isinstance(origin, type) and issubclass(origin, Mapping) and len(args) == 2:
        secret, free = _walk(args[1], seen)
        if not secret and not free and not _holds_model(args[1]):
            return set(), {()}  # its values are data the model does not describe
        return _under_any(secret, free)
    if isinstance(origin, type) and issubclass(origin, (list, tuple, set, frozenset)):
        return _under_any(*_merge(_walk(arg, seen) for arg in args if arg is not Ellipsis))
    return set(), set()


def _merge(parts: Iterator[_Paths]) -> _Paths:
    secret: set[SecretPath] = set()
    free: set[SecretPath] = set()
    for inner_secret, inner_free in parts:
        secret |= inner_secret
        free |= inner_free
    return secret, free


def _under_any(secret: set[SecretPath], free: set[SecretPath]) -> _Paths:
    return {(ANY, *p) for p in secret}, {(ANY, *p) for p in free}


def _holds_model(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_model(arg) for arg in get_args(annotation))


# -- reading a raw config ----------------------------------------------------------


def settings_model(type_name: Any) -> type[BaseModel] | None:
    """The settings model of a source type, or None when its connector cannot load."""
    if not isinstance(type_name, str):
        return None
    try:
        return load(type_name).Settings
    except ConnectorMissing:
        return None


def config_secrets(document: Any) -> Iterator[Secret]:
    """Every secret string of a raw tenant config (module docstring)."""
    if not isinstance(document, Mapping):
        yield from _named(document, (), "")
        return
    for key, value in document.items():
        if key == "data_sources" and isinstance(value, list):
            for index, source in enumerate(value):
                yield from _source_secrets(source, ("data_sources", index))
        else:
            yield from _named(value, (key,), str(key))


def _source_secrets(source: Any, at: Location) -> Iterator[Secret]:
    if not isinstance(source, Mapping):
        yield from _named(source, at, "data_sources")
        return
    for key, value in source.items():
        if key == "connection":
            model = settings_model(source.get("type"))
            yield from connection_secrets(value, model, (*at, key))
        else:
            yield from _named(value, (*at, key), str(key), "data_sources")


def connection_secrets(
    connection: Any, model: type[BaseModel] | None, at: Location = ()
) -> Iterator[Secret]:
    """Every secret string of a raw ``connection`` block of ``model`` (None: its
    connector cannot load, so the name rule decides), in the order written."""
    if model is None:
        return _named(connection, at, "connection")
    return _along(connection, secret_paths(model), open_paths(model), at)


def _along(
    node: Any, secret: frozenset[SecretPath], free: frozenset[SecretPath], at: Location
) -> Iterator[Secret]:
    """The secrets in ``node``, whose secret and free-form places are ``secret`` and ``free``."""
    if () in secret and isinstance(node, str):
        if node:
            yield Secret(at, node, url="://" in node)
    elif () in secret or () in free:  # a secret written as a mapping, or a free-form map
        keys = [part for part in at if isinstance(part, str)]
        yield from _named(node, at, keys[-1] if keys else "connection")
    else:
        for key, child in _items(node):
            inner_secret, inner_free = _step(secret, key), _step(free, key)
            if inner_secret or inner_free:
                yield from _along(child, inner_secret, inner_free, (*at, key))


def _step(paths: frozenset[SecretPath], key: str | int) -> frozenset[SecretPath]:
    """The places one step down ``key``: a list's items and a map's values are `ANY`."""
    return frozenset(path[1:] for path in paths if path and path[0] in (ANY, key))


def _items(node: Any) -> list[tuple[str | int, Any]]:
    if isinstance(node, Mapping):
        return [(str(key), value) for key, value in node.items()]
    if isinstance(node, list):
        return list(enumerate(node))
    return []


def _named(node: Any, at: Location, key: str, parent: str = "") -> Iterator[Secret]:
    """The secrets of data no model describes: by `names_a_secret`, and URLs that carry
    credentials."""
    if isinstance(node, Mapping):
        for k, value in node.items():
            yield from _named(value, (*at, k), str(k), key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _named(value, (*at, index), key, parent)
    elif isinstance(node, str) and node:
        if names_a_secret(key, parent):
            yield Secret(at, node)
        elif "://" in node and "@" in node:
            yield Secret(at, node, url=True)
