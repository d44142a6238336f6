"""``worker config check --online``: what only the live sources can tell.

After the offline checks, each source is opened under the worker's own rules
(`worker.sources.Sources`: the tenant's reach, a circuit, a gate) and within a
deadline of its own. It answers its health check, then every SQL query is
prepared on the server without being run (`Describes`: PostgreSQL's describe,
MySQL's ``COM_STMT_PREPARE``, SQLite compiling it behind ``LIMIT 0``), which
gives the columns it returns, or the server's own word on a misspelt column
or table. Each lookup's template is then read for the row fields it uses
(`template_fields`), and a field the query does not return is named: it
would render empty in every reply.

Sources with no way to describe a query without running it (REST, Redis,
the SaaS APIs, files…) get their health check only, and the report says so.
Nothing here raises for a source: every outcome is a `Finding`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from jinja2 import Environment, FileSystemLoader, TemplateError, nodes

from connectors.base import PreparedQuery
from worker.config import Lookup, Source, Tenant
from worker.errors import InputRefused, SourceError, SourceTimeout, SourceUnavailable
from worker.redact import Redactor
from worker.sources import Sources

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Describes",
    "Finding",
    "Level",
    "OnlineReport",
    "TemplateFields",
    "check_online",
    "template_fields",
]

log = logging.getLogger(__name__)

#: each source's deadline for its health check and every prepare
DEFAULT_TIMEOUT_S = 10.0
#: templates included from templates, followed this deep
_MAX_INCLUDE_DEPTH = 8
#: filters that hand on the rows they were given (sorted, filtered): still rows
_ROW_LIST_FILTERS = frozenset({"sort", "reverse", "list", "unique", "selectattr", "rejectattr"})
#: filters that pick one row of a list
_ONE_ROW_FILTERS = frozenset({"first", "last", "random", "min", "max"})
#: filters over rows whose ``attribute=`` (or first argument) names a field
_FIELD_FILTERS = frozenset(
    {"map", "sort", "sum", "min", "max", "unique", "groupby", "selectattr", "rejectattr"}
)
_FIELD_BY_ARGUMENT = frozenset({"groupby", "selectattr", "rejectattr"})


@runtime_checkable
class Describes(Protocol):
    """A connector that can say which columns a query returns without running it."""

    async def describe(self, query: PreparedQuery, *, timeout_s: float) -> tuple[str, ...]: ...


class Level(enum.Enum):
    OK = "ok"
    NOTE = "note"
    PROBLEM = "problem"  # a check failed: exit 1
    UNREACHABLE = "unreachable"  # a server could not be reached: exit 4


@dataclass(frozen=True)
class Finding:
    level: Level
    #: where in the config, as the offline check names it (``lookups.x.template``)
    where: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


@dataclass
class OnlineReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """Contract §7: 4 when a server could not be reached, 1 when a check failed, else 0."""
        levels = {f.level for f in self.findings}
        if Level.UNREACHABLE in levels:
            return 4
        return 1 if Level.PROBLEM in levels else 0


async def check_online(tenant: Tenant, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> OnlineReport:
    """Check every usable source of ``tenant`` at once, each within ``timeout_s``."""
    sources = Sources(tenant)
    redactor = Redactor(tenant.secrets)
    usable = [s for s in tenant.sources.values() if s.problem is None]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    _check_source(sources, tenant, source, timeout_s), name=f"online:{source.id}"
                )
                for source in usable
            ]
    finally:
        await sources.close()
    report = OnlineReport()
    for task in tasks:
        for finding in task.result():
            report.findings.append(
                Finding(finding.level, finding.where, redactor.scrub(finding.text))
            )
    return report


@dataclass
class _Probe:
    """What one source's check has learnt so far (kept when a later step fails)."""

    #: whether the connector can describe a query (`Describes`)
    described: bool = False
    #: id(prepared query) -> the columns it returns
    columns: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: the queries the server refused to prepare
    findings: list[Finding] = field(default_factory=list)


async def _check_source(
    sources: Sources, tenant: Tenant, source: Source, timeout_s: float
) -> list[Finding]:
    """One source: its health check, its queries prepared, its lookups' templates read."""
    where = f"data_sources.{source.id}"
    started = time.perf_counter()
    probe = _Probe()
    try:
        await _probe(sources, tenant, source, timeout_s, probe)
    except TimeoutError:
        message = f"no answer within {timeout_s:g} s"
        return [*probe.findings, Finding(Level.UNREACHABLE, where, message)]
    except (SourceUnavailable, SourceTimeout) as exc:
        return [*probe.findings, Finding(Level.UNREACHABLE, where, exc.message)]
    except SourceError as exc:
        return [*probe.findings, Finding(Level.PROBLEM, where, exc.message)]
    except Exception as exc:  # a connector that let a driver error through
        log.debug("online check of %s failed", source.id, exc_info=True, extra={"action": "check"})
        text = f"unexpected {type(exc).__name__} (--log-level DEBUG shows where)"
        return [*probe.findings, Finding(Level.PROBLEM, where, text)]
    elapsed = round((time.perf_counter() - started) * 1000)
    return _source_answered(tenant, source, probe, elapsed)


async def _probe(
    sources: Sources, tenant: Tenant, source: Source, timeout_s: float, probe: _Probe
) -> None:
    """The health check, then each query described, all before one deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with sources.reading(source.id, deadline) as connector:
        await connector.health_check()
        if isinstance(connector, Describes):
            probe.described = True
            for at, query in _queries(tenant, source):
                left = max(0.001, deadline - loop.time())
                described_as = await _describe(connector, query, at, left)
                if isinstance(described_as, Finding):
                    probe.findings.append(described_as)
                else:
                    probe.columns[id(query)] = described_as


def _source_answered(tenant: Tenant, source: Source, probe: _Probe, elapsed: int) -> list[Finding]:
    """The findings of a source that answered its health check in ``elapsed`` ms."""
    where = f"data_sources.{source.id}"
    if not probe.described:
        note = (
            "health check only: its queries and templates are not checked (the worker "
            f"cannot describe a {source.type_name} read without running it)"
        )
        return [
            Finding(Level.OK, where, f"answers ({elapsed} ms)"),
            Finding(Level.NOTE, where, note),
        ]
    count = len(probe.columns)
    summary = f"answers ({elapsed} ms); {count} quer{'y' if count == 1 else 'ies'} prepared"
    return [
        Finding(Level.OK, where, summary),
        *probe.findings,
        *_template_findings(tenant, source, probe.columns),
    ]


async def _describe(
    connector: Describes, query: PreparedQuery, at: str, timeout_s: float
) -> tuple[str, ...] | Finding:
    """The columns ``query`` returns, or the server's word on why it cannot prepare it.

    A source that stops answering is not the query's fault: that is raised, and
    the whole source is reported unreachable.
    """
    try:
        return await connector.describe(query, timeout_s=timeout_s)
    except (SourceUnavailable, SourceTimeout):
        raise
    except (SourceError, InputRefused) as exc:
        return Finding(Level.PROBLEM, at, exc.message)


def _queries(tenant: Tenant, source: Source) -> Iterator[tuple[str, PreparedQuery]]:
    """Each query of ``source`` once: its named reads, then its lookups' inline queries."""
    config = next(c for c in tenant.config.data_sources if c.id == source.id)
    seen: set[int] = set()
    for name, named in source.queries.items():
        key = "queries" if name in config.queries else "endpoints"
        seen.add(id(named.prepared))
        yield f"data_sources.{source.id}.{key}.{name}", named.prepared
    for lookup in tenant.lookups.values():
        if lookup.source_id == source.id and id(lookup.query) not in seen:
            seen.add(id(lookup.query))
            yield f"lookups.{lookup.name}.query", lookup.query


def _template_findings(
    tenant: Tenant, source: Source, columns: dict[int, tuple[str, ...]]
) -> Iterator[Finding]:
    """A finding for each row field a lookup's template reads that its query does not return."""
    for lookup in tenant.lookups.values():
        returned = columns.get(id(lookup.query))
        if lookup.source_id != source.id or returned is None:
            continue  # a query that failed to prepare is reported already
        where = f"lookups.{lookup.name}.template"
        try:
            template = _template_text(tenant, lookup)
            if template is None:
                continue
            fields = template_fields(template, tenant.renderer.templates_dir)
        except (TemplateError, OSError) as exc:
            yield Finding(Level.PROBLEM, where, f"cannot read it again: {exc}")
            continue
        query = next(
            (f"query {n}" for n, q in source.queries.items() if q.prepared is lookup.query),
            "the lookup's query",
        )
        listed = ", ".join(returned) or "no column"
        for name in fields.missing(returned):
            text = f"reads {name!r}, which {query} does not return (it returns {listed})"
            yield Finding(Level.PROBLEM, where, text)


def _template_text(tenant: Tenant, lookup: Lookup) -> str | None:
    """The lookup's own template text (a file's content), or None when it has none."""
    spec = tenant.config.lookups.get(lookup.name)
    if spec is None or spec.template is None:
        return None  # the default template reads whatever the row has
    name = lookup.template.name
    directory = tenant.renderer.templates_dir
    if name is None or directory is None:
        return spec.template
    text, _, _ = FileSystemLoader(directory).get_source(_ENV, name)
    return text


# -- which row fields a template reads --------------------------------------------

#: parses only (nothing is compiled or rendered with it): the reply's filters need not exist
_ENV = Environment(autoescape=False)  # noqa: S701 - replies are plain text, never HTML


@dataclass
class TemplateFields:
    """The row fields a template reads, and which of them it treats as optional."""

    #: in order of first use
    reads: list[str] = field(default_factory=list)
    #: tested with ``is defined`` / ``is undefined``: the author expects them to be absent
    optional: set[str] = field(default_factory=set)
    #: read in the ``else`` of ``a if a is defined else b``: b -> {a}, needed only without a
    fallback_for: dict[str, set[str]] = field(default_factory=dict)

    def missing(self, columns: Collection[str]) -> list[str]:
        """The fields that would render empty in every reply of a query returning ``columns``."""
        return [
            name
            for name in self.reads
            if name not in columns
            and name not in self.optional
            and not self.fallback_for.get(name, set()) & set(columns)
        ]


def template_fields(text: str, templates_dir: Path | None = None) -> TemplateFields:
    """The row fields ``text`` reads.

    As the renderer exposes them (contract §5.2): ``row.x``, ``row["x"]``,
    ``row.get("x")``, the same on ``rows[0]`` / ``rows | first``, on a loop
    variable over ``rows`` (sorted, sliced or filtered), on a ``{% set %}`` name
    for one of those, and fields named by ``attribute=`` of ``map``, ``sort``…
    on ``rows``. Templates it includes (from ``templates_dir``) count too.
    """
    found = TemplateFields()
    _collect(_ENV.parse(text), templates_dir, found, depth=0)
    return found


def _collect(
    tree: nodes.Template, templates_dir: Path | None, found: TemplateFields, *, depth: int
) -> None:
    names = _Names({"row"}, {"rows"})
    names.learn(tree)
    for name in names.fields_in(tree):
        if name not in found.reads:
            found.reads.append(name)
    for test in tree.find_all(nodes.Test):
        if test.name in ("defined", "undefined"):
            found.optional.update(names.fields_in(test.node))
    for choice in tree.find_all(nodes.CondExpr):
        tested = {
            name
            for test in _walk(choice.test, nodes.Test)
            if test.name in ("defined", "undefined")
            for name in names.fields_in(test.node)
        }
        if tested and choice.expr2 is not None:
            for name in names.fields_in(choice.expr2):
                found.fallback_for.setdefault(name, set()).update(tested)
    if templates_dir is None or depth >= _MAX_INCLUDE_DEPTH:
        return
    loader = FileSystemLoader(templates_dir)
    for include in tree.find_all((nodes.Include, nodes.Extends)):
        target = getattr(include, "template", None)
        if isinstance(target, nodes.Const) and isinstance(target.value, str):
            source, _, _ = loader.get_source(_ENV, target.value)
            _collect(_ENV.parse(source), templates_dir, found, depth=depth + 1)


@dataclass
class _Names:
    """The names that stand for one row, and for the list of rows, in one template."""

    row: set[str]
    rows: set[str]

    def learn(self, tree: nodes.Template) -> None:
        """Loop variables and ``{% set %}`` names bound to a row or to rows."""
        changed = True
        while changed:  # `{% set r = rows[0] %}{% for x in [r] %}`… until nothing new
            before = len(self.row) + len(self.rows)
            for loop in tree.find_all(nodes.For):
                if isinstance(loop.target, nodes.Name) and self.is_rows(loop.iter):
                    self.row.add(loop.target.name)
            for assign in tree.find_all(nodes.Assign):
                if isinstance(assign.target, nodes.Name):
                    if self.is_row(assign.node):
                        self.row.add(assign.target.name)
                    elif self.is_rows(assign.node):
                        self.rows.add(assign.target.name)
            changed = len(self.row) + len(self.rows) != before

    def fields_in(self, tree: nodes.Node) -> list[str]:
        """The row fields read in ``tree`` (itself included), in order."""
        calls = {id(call.node) for call in _walk(tree, nodes.Call)}
        found = []
        for node in _walk(tree, (nodes.Getattr, nodes.Getitem, nodes.Call, nodes.Filter)):
            name = self.field_of(node, method=id(node) in calls)
            if name is not None:
                found.append(name)
        return found

    def is_rows(self, node: nodes.Node) -> bool:
        if isinstance(node, nodes.Name):
            return node.name in self.rows
        if isinstance(node, nodes.Filter):
            return (
                node.name in _ROW_LIST_FILTERS and node.node is not None and self.is_rows(node.node)
            )
        if isinstance(node, nodes.Getitem):
            return isinstance(node.arg, nodes.Slice) and self.is_rows(node.node)
        return False

    def is_row(self, node: nodes.Node) -> bool:
        if isinstance(node, nodes.Name):
            return node.name in self.row
        if isinstance(node, nodes.Getitem):
            index = node.arg
            return (
                isinstance(index, nodes.Const)
                and type(index.value) is int
                and self.is_rows(node.node)
            )
        if isinstance(node, nodes.Filter):
            return (
                node.name in _ONE_ROW_FILTERS and node.node is not None and self.is_rows(node.node)
            )
        return False

    def field_of(self, node: nodes.Node, *, method: bool) -> str | None:
        """The field ``node`` reads of a row, if it reads one."""
        if isinstance(node, nodes.Getattr):
            # `row.items()`, `row.get(…)`: a method of the mapping, not a field
            return None if method or not self.is_row(node.node) else node.attr
        if isinstance(node, nodes.Getitem):
            key = node.arg
            if (
                isinstance(key, nodes.Const)
                and isinstance(key.value, str)
                and self.is_row(node.node)
            ):
                return key.value
            return None
        if isinstance(node, nodes.Call):
            return self._got(node)
        if isinstance(node, nodes.Filter):
            return self._attribute(node)
        return None

    def _got(self, call: nodes.Call) -> str | None:
        """``row.get("x")``."""
        target = call.node
        if not (isinstance(target, nodes.Getattr) and target.attr == "get"):
            return None
        if not (call.args and isinstance(call.args[0], nodes.Const) and self.is_row(target.node)):
            return None
        value = call.args[0].value
        return value if isinstance(value, str) else None

    def _attribute(self, node: nodes.Filter) -> str | None:
        """``rows | map(attribute="x")``, ``rows | selectattr("x")``…"""
        if node.name not in _FIELD_FILTERS or node.node is None or not self.is_rows(node.node):
            return None
        named = [k.value for k in node.kwargs if k.key == "attribute"]
        if not named and node.name in _FIELD_BY_ARGUMENT and node.args:
            named = [node.args[0]]
        if named and isinstance(named[0], nodes.Const) and isinstance(named[0].value, str):
            # `attribute="a.b"` reads field a; Jinja also takes a number there (an index)
            return named[0].value.split(".", 1)[0]
        return None


_Kinds = type[nodes.Node] | tuple[type[nodes.Node], ...]


def _walk(tree: nodes.Node, kinds: _Kinds) -> Iterator[Any]:
    """``tree`` itself if it is of ``kinds``, then its descendants that are."""
    if isinstance(tree, kinds):
        yield tree
    yield from tree.find_all(kinds)
