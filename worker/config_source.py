"""Reading a config's text: YAML or JSON, every path's line, keys given twice.

`parse_document` reads the text and indexes the line of every path in it, so each
problem found later can name its file and line; `Problems` collects those
problems (file, dotted path, line) until they are raised together as one
`ConfigErrors`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from worker.errors import ConfigError, ConfigErrors

__all__ = ["DocPath", "Problems", "parse_document"]


DocPath = tuple[str | int, ...]


_MERGE_TAG = "tag:yaml.org,2002:merge"


def parse_document(text: str, *, name: str) -> tuple[Any, dict[DocPath, int]]:
    """Parse YAML or JSON; also return the 1-based line of every path in it.

    A key given twice in one mapping is an error (`ConfigErrors`, each naming its
    file, line and path): PyYAML and ``json`` would both keep the last one silently.
    """
    pairs = _JSONPairs()
    loader: _StrictLoader | None = None
    try:
        if name.endswith(".json"):
            data = json.loads(text, object_pairs_hook=pairs)
        else:
            loader = _StrictLoader(text)
            try:
                node = loader.get_single_node()
                data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg}", where=f"{name}:{exc.lineno}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML: {exc}", where=f"{name}{line}") from exc
    if loader is None:
        try:
            node = yaml.compose(text)
        except yaml.YAMLError:
            node = None  # JSON that YAML 1.1 cannot read: errors go without lines
    index = _Index()
    if node is not None:
        _index_lines(node, (), index)
    errors = Problems(name, index.lines)
    if loader is not None:
        for mapping, key_node, first in loader.repeated:
            at = index.mappings.get(id(mapping), ())
            first_line = first.start_mark.line + 1
            errors.add(at, _repeat(key_node.value, first_line), line=key_node.start_mark.line + 1)
    else:
        _report_json_repeats(pairs.repeated, data, index, errors)
    if errors.items:
        raise ConfigErrors(errors.items)
    return data, index.lines


def _repeat(key: object, first_line: int | None) -> str:
    first = f" (first at line {first_line})" if first_line else ""
    return f"duplicate key {key!r}{first}: give each key once"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key a mapping gives twice (a key may still
    override one that a ``<<`` merge brings in: that is what merges are for)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        #: (the mapping, the repeated key's node, the node of its first occurrence)
        self.repeated: list[tuple[yaml.MappingNode, yaml.Node, yaml.Node]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for position, (key_node, _) in enumerate(node.value):
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, position)
            except TypeError:
                continue  # an unhashable key: the base class says so
            if first != position:
                self.repeated.append((node, key_node, node.value[first][0]))
        return super().construct_mapping(node, deep=deep)


class _JSONPairs:
    """An ``object_pairs_hook`` that builds dicts as ``json`` does, noting repeated keys."""

    def __init__(self) -> None:
        #: (the object, a key it was given more than once)
        self.repeated: list[tuple[dict[str, Any], str]] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                self.repeated.append((result, key))
            result[key] = value
        return result


def _report_json_repeats(
    repeated: list[tuple[dict[str, Any], str]], data: Any, index: _Index, errors: Problems
) -> None:
    paths: dict[int, DocPath] = {}
    _container_paths(data, (), paths)
    for obj, key in dict.fromkeys((id(obj), key) for obj, key in repeated):
        at = paths.get(obj, ())
        seen = index.keys.get((*at, key), [])
        line = seen[1] if len(seen) > 1 else None
        errors.add(at, _repeat(key, seen[0] if seen else None), line=line)


def _container_paths(value: Any, path: DocPath, out: dict[int, DocPath]) -> None:
    if isinstance(value, dict):
        out.setdefault(id(value), path)
        for key, item in value.items():
            _container_paths(item, (*path, key), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _container_paths(item, (*path, i), out)


@dataclass
class _Index:
    """What a walk over the composed document learns: each path's line, each key's
    lines (all of them, when a key repeats), and each mapping node's path."""

    lines: dict[DocPath, int] = field(default_factory=dict)
    keys: dict[DocPath, list[int]] = field(default_factory=dict)
    mappings: dict[int, DocPath] = field(default_factory=dict)


def _index_lines(node: yaml.Node, path: DocPath, index: _Index) -> None:
    index.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        index.mappings.setdefault(id(node), path)
        for key, value in node.value:
            line = key.start_mark.line + 1
            index.keys.setdefault((*path, key.value), []).append(line)
            _index_lines(value, (*path, key.value), index)
            index.lines[(*path, key.value)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), index)


class Problems:
    """Collects problems with their file, path and line."""

    def __init__(self, name: str, lines: Mapping[DocPath, int]) -> None:
        self.name = name
        self.lines = lines
        self.items: list[ConfigError] = []
        #: places whose value could not be resolved: the empty value left there is not
        #: a second problem (an unset ${env:PORT} is not also "not an integer")
        self._explained: set[str] = set()

    def explained(self) -> None:
        """Every place with a problem so far needs no other message."""
        self._explained.update(e.where for e in self.items)

    def where(self, path: DocPath, *, line: int | None = None) -> str:
        """``file:line: dotted.path``; the line is the path's own unless given."""
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path)
        dotted = dotted.replace(".[", "[")
        if line is None:
            line = self.line(path)
        head = f"{self.name}:{line}" if line else self.name
        return f"{head}: {dotted}" if dotted else head

    def line(self, path: DocPath) -> int | None:
        """The line of ``path``, else of the nearest enclosing path the document has."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return self.lines.get(probe)

    def add(self, path: DocPath, message: str, *, line: int | None = None) -> None:
        where = self.where(path, line=line)
        if where not in self._explained:
            self.items.append(ConfigError(message, where=where))
