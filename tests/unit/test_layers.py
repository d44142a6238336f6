"""Imports run one way: from the command line down to the errors, never back up.

Every module of ``worker`` and ``connectors`` sits in one layer of `LAYERS`. A
module may import modules of its own layer or of a layer below it, never above:
at module level, inside a function, or only for type checking alike. Read the
table from the bottom:

    layer          what it holds                                   may use
    -------------  ----------------------------------------------  ----------------
    0 leaves       the errors, and pure helpers that import no     nothing of ours
                   module of ours (supervised tasks, the status
                   page, reply filters, the Jinja sandbox, a
                   customer's words, the audit table's rows)
    1 connectors   one plugin a source type, the registry, the     0: worker.errors
                   SQL read-only check, egress and TLS/SSH           only
    2 services     settings, retry, logs, metrics, circuits,       0-1
                   secrets and redaction, answers
    3 storage      the queue stores and the audit log              0-2
    4 the loop     the queue interface, the run loop, the engine   0-3
                   client and its queue, worker processes
    5 config       a tenant's config: its shape, reading,          0-4
                   resolving, preparing, templates, precedence
    6 a job        payloads, routing, sources, the pipeline,       0-5
                   the online check, the n8n import
    7 serving      HTTP, the local engine, reload, the service     0-6
    8 commands     the CLI                                         0-7

On top of the layers, the issue's own words (`NEVER`): the stores, the queues and
the run loop import nothing of jobs, config, pipeline, render or the engine
client, although the engine client shares their layer. Within a layer, the
imports a module runs when it is first imported (module level, type checking
included) form no cycle; a function may import a module of its layer lazily
(``connectors.sql`` loads its parser backends only for a query of their dialect).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "connectors")

LAYERS: dict[int, tuple[str, ...]] = {
    0: (
        "worker",
        "worker.errors",
        "worker.supervisor",
        "worker.status",
        "worker.filters",
        "worker.sandbox",
        "worker.words",
        "worker.audit_table",
    ),
    1: ("connectors", "connectors.*"),
    2: (
        "worker.settings",
        "worker.retry",
        "worker.logs",
        "worker.metrics",
        "worker.circuit",
        "worker.batching",
        "worker.http_guard",
        "worker.gc_tuning",
        "worker.secret_fields",
        "worker.redact",
        "worker.secrets",
        "worker.answers",
    ),
    3: ("worker.stores", "worker.stores.*", "worker.audit"),
    4: (
        "worker.queues",
        "worker.runtime",
        "worker.engine_client",
        "worker.engine_queue",
        "worker.processes",
    ),
    5: (
        "worker.config_source",
        "worker.shape_errors",
        "worker.render",
        "worker.reply_templates",
        "worker.config_model",
        "worker.tenant",
        "worker.prepare",
        "worker.lookups",
        "worker.trust",
        "worker.precedence",
        "worker.config",
        "worker.config_schema",
    ),
    6: (
        "worker.jobs",
        "worker.router",
        "worker.inbound",
        "worker.sources",
        "worker.pipeline",
        "worker.online_check",
        "worker.n8n_import",
    ),
    7: (
        "worker.http",
        "worker.local_engine",
        "worker.parts",
        "worker.serving",
        "worker.reload",
        "worker.service",
        "worker.demo",
    ),
    8: ("worker.cli",),
}

#: (importer, imported): edges the layers would allow but the issue rules out
_LOW = ("worker.stores.*", "worker.queues", "worker.runtime")
_HIGH = ("worker.jobs", "worker.config", "worker.pipeline", "worker.render", "worker.engine_client")
NEVER: tuple[tuple[str, str], ...] = (
    *((low, high) for low in _LOW for high in _HIGH),
    ("connectors.*", "worker.*"),
)

#: what a connector may import from the worker
CONNECTORS_MAY_USE = frozenset({"worker.errors"})


def _module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _module_files()


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return module.startswith(pattern[:-1])
    return module == pattern


def layer_of(module: str) -> int:
    for layer, patterns in LAYERS.items():
        if any(p == module for p in patterns):
            return layer
    for layer, patterns in LAYERS.items():  # a wildcard only where no name says
        if any(_matches(module, p) for p in patterns if p.endswith(".*")):
            return layer
    raise LookupError(module)


def _ours(name: str) -> str | None:
    """The module of ours an import names (``worker.config.Tenant`` → worker.config)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def _names(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    target = _absolute(module, node)
    yield target
    yield from (f"{target}.{alias.name}" for alias in node.names)


def _imports(module: str, *, module_level_only: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    nodes: list[ast.AST] = list(tree.body)
    found: set[str] = set()
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.update(filter(None, (_ours(n) for n in _names(module, node))))
        elif module_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        nodes.extend(ast.iter_child_nodes(node))
    found.discard(module)
    return found


EDGES = {m: _imports(m, module_level_only=False) for m in MODULES}


def test_layers__every_module_has_a_layer() -> None:
    placed = [m for m in MODULES if _layer_or_none(m) is None]
    assert not placed, f"put these modules in LAYERS (tests/unit/test_layers.py): {placed}"


def _layer_or_none(module: str) -> int | None:
    try:
        return layer_of(module)
    except LookupError:
        return None


def test_layers__no_name_in_the_table_is_stale() -> None:
    names = [p for patterns in LAYERS.values() for p in patterns if not p.endswith(".*")]
    assert sorted(set(names) - set(MODULES)) == []
    assert len(names) == len(set(names)), "a module is in two layers"


def test_layers__no_import_runs_upward() -> None:
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in sorted(EDGES.items())
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert upward == []


def test_layers__the_issues_own_edges_are_absent() -> None:
    found = [
        f"{m} imports {t}"
        for m, targets in sorted(EDGES.items())
        for t in sorted(targets)
        for low, high in NEVER
        if _matches(m, low) and _matches(t, high) and not _allowed_for_connectors(m, t)
    ]
    assert found == []


def _allowed_for_connectors(module: str, target: str) -> bool:
    return module.startswith("connectors") and target in CONNECTORS_MAY_USE


def test_layers__module_level_imports_form_no_cycle() -> None:
    graph = {m: _imports(m, module_level_only=True) for m in MODULES}
    cycles = [c for c in _cycles(graph) if len(c) > 1]
    assert cycles == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    out.append(_pop_component(node, stack, on_stack))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def _pop_component(node: str, stack: list[str], on_stack: set[str]) -> list[str]:
    component = []
    while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
            return sorted(component)


MAX_FUNCTION_LINES = 50


def test_shape__no_function_over_50_lines() -> None:
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert long == [], "split these into named pieces"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        pytest.param({"a": {"b"}, "b": {"a"}}, [["a", "b"]], id="two"),
        pytest.param({"a": {"b"}, "b": set()}, [], id="none"),
        pytest.param(
            {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]], id="three"
        ),
    ],
)
def test_cycles__finds_what_it_should(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert [c for c in _cycles(graph) if len(c) > 1] == expected


def test_layers__a_lazy_import_counts_too() -> None:
    # worker.runtime is layer 4; a function in it importing worker.pipeline would be caught
    assert layer_of("worker.pipeline") > layer_of("worker.runtime")
    assert "worker.stores.base" in EDGES["worker.runtime"]
