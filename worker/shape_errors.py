"""Pydantic's validation errors, said for a config: each at the path the document
spells (union branch tags left out), an unknown key with the key that was meant."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from worker.config_source import DocPath, Problems

__all__ = ["shape_errors"]


def shape_errors(
    exc: ValidationError, root: type[BaseModel], at: DocPath, errors: Problems
) -> None:
    """Pydantic's errors as config errors at ``at``, each path as the document spells it
    (pydantic's names for union branches left out); an unknown key says which was meant."""
    found = exc.errors()
    for err in found:
        loc = tuple(err["loc"])
        if _beside_the_point(err, loc, found):
            continue
        if err["type"] != "extra_forbidden" or not loc:
            errors.add((*at, *_keys_at(root, loc)[0]), err["msg"])
            continue
        key = loc[-1]
        parent, known = _keys_at(root, loc[:-1])
        line = errors.line((*at, *parent, key))
        errors.add((*at, *parent), _unknown_key(str(key), known), line=line)


def _beside_the_point(err: Any, loc: DocPath, found: list[Any]) -> bool:
    """A mapping given where ``text | Model`` is allowed fails as text too; only the
    model's own errors say what is wrong with it."""
    if err["type"] != "string_type" or loc[-1:] != ("str",):
        return False
    if not isinstance(err.get("input"), Mapping):
        return False
    parent = loc[:-1]
    return any(tuple(o["loc"])[: len(parent)] == parent and tuple(o["loc"]) != loc for o in found)


def _unknown_key(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r} — did you mean {close[0]!r}?"
    if known:
        return f"unknown key {key!r}; the keys here are: {', '.join(sorted(known))}"
    return f"unknown key {key!r}"


def _keys_at(root: type[BaseModel], loc: DocPath) -> tuple[DocPath, set[str]]:
    """The path to ``loc`` as the document spells it (union branch tags left out) and
    the keys the model there accepts (empty where it cannot be told)."""
    annotation: Any = root
    path: list[str | int] = []
    for part in loc:
        step = _step(annotation, part)
        if step is None:
            return (*path, *loc[len(path) :]), set()
        annotation, is_tag = step
        if not is_tag:
            path.append(part)
    return tuple(path), set().union(*(_model_keys(m) for m in _members(annotation)))


def _step(annotation: Any, part: str | int) -> tuple[Any, bool] | None:
    """The annotation one step down ``part``, and whether ``part`` was a union branch's tag."""
    members = _members(annotation)
    for member in members:
        if _is_model(member) and isinstance(part, str):
            for name, info in member.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation, False
        origin = get_origin(member)
        if origin in (list, tuple) and isinstance(part, int):
            return get_args(member)[0], False
        if origin in (dict, Mapping) and isinstance(part, str):
            return get_args(member)[1], False
    for member in members:
        if part == getattr(member, "__name__", None) or _tags(member, part):
            return member, True
    return None


def _tags(member: Any, part: str | int) -> bool:
    """Whether ``part`` is a discriminator value of ``member`` (``auth: {type: basic}``)."""
    if not _is_model(member):
        return False
    return any(
        get_origin(info.annotation) is Literal and part in get_args(info.annotation)
        for info in member.model_fields.values()
    )


def _members(annotation: Any) -> list[Any]:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _is_model(value: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _model_keys(member: Any) -> set[str]:
    if not _is_model(member):
        return set()
    by_name = bool(member.model_config.get("populate_by_name"))
    keys = set()
    for name, info in member.model_fields.items():
        keys.add(info.alias or name)
        if by_name or info.alias is None:
            keys.add(name)
    return keys
