"""`worker import-n8n`: n8n workflow exports turned into one tenant config (contract §7).

Each workflow becomes one lookup, named from its Webhook node's path
(``/data/order-status`` → ``order_status``). The data path is followed through
``connections`` from the webhook (the seed's simplified exports have none: then the
node list's order). The first database, HTTP, GraphQL, Sheets, SaaS or file node on
it is the lookup's read; its source is named after the node's credential and every
connection setting the credential held is left as ``${env:N8N_<SOURCE>_<FIELD>}``
for the operator: no secret is ever written. n8n expressions that read the
webhook's data (``{{ $json.body.order_id }}``, ``$('Webhook').item.json.query.x``…)
become job parameters: ``$n`` in SQL (bound by the driver, never spliced), ``{name}``
elsewhere. A Code or Function node after the read becomes a reply template listing
the row's fields, with its JavaScript kept in a Jinja comment. The reply step (an
HTTP Request to the engine's ``/messages/send``, Respond to Webhook) is dropped: the
worker sends the reply itself. Anything else is reported, never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml

from worker.errors import WorkerError

__all__ = [
    "MAX_WORKFLOW_BYTES",
    "ImportResult",
    "InvalidWorkflow",
    "Note",
    "import_documents",
    "import_files",
]

#: an export bigger than this is refused (n8n's own exports are kilobytes)
MAX_WORKFLOW_BYTES = 5_000_000
_MAX_NODES = 1_000
_MAX_CODE_CHARS = 4_000

_ENV_MARK = re.compile(r"\x00ENV:([A-Z0-9_]+)\x00")
_RESOLVABLE = re.compile(r"\{\{(.*?)\}\}", re.S)
_PICK = r"(?:item|first\(\)|last\(\)|all\(\)\[\d+\])"
_QUOTED = r"""(?:'[^'\n]*'|"[^"\n]*")"""
_ROOT = (
    rf"(?:\$json|\$input\.{_PICK}\.json|\$\(\s*{_QUOTED}\s*\)\.{_PICK}\.json"
    rf"|\$node\[\s*{_QUOTED}\s*\]\.json|\$items\(\s*{_QUOTED}\s*\)\[\d+\]\.json"
    rf"|\$item\(\d+\)\.\$node\[\s*{_QUOTED}\s*\]\.json)"
)
_ACCESS = r"""(?:\.[A-Za-z_$][\w$]*|\[\s*(?:'[^'\n]*'|"[^"\n]*"|\d+)\s*\])"""
_REF = re.compile(rf"\s*{_ROOT}(?P<path>{_ACCESS}*)\s*")
_SEGMENT = re.compile(r"""\.([A-Za-z_$][\w$]*)|\[\s*(?:'([^']*)'|"([^"]*)"|(\d+))\s*\]""")
_CREDENTIAL = re.compile(r"\s*\$credentials\.([A-Za-z_]\w*)\s*")
_ENV_REF = re.compile(r"""\s*\$env(?:\.([A-Za-z_]\w*)|\[\s*['"]([A-Za-z_]\w*)['"]\s*\])\s*""")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

#: n8n node types (lower-cased, without the package prefix, ``_`` removed) by role
_ALIASES = {"postgresql": "postgres", "httprequest": "httprequest", "readwritefile": "readfile"}
_READERS = {
    "postgres",
    "mysql",
    "microsoftsql",
    "mongodb",
    "redis",
    "elasticsearch",
    "httprequest",
    "graphql",
    "googlesheets",
    "airtable",
    "salesforce",
    "hubspot",
    "spreadsheetfile",
    "extractfromfile",
}
_CODE = {"code", "function", "functionitem"}
_QUIET = {"noop", "stickynote"}
_REPLY = {"respondtowebhook"}
_FILE_READ = {"readbinaryfile", "readfile"}


class InvalidWorkflow(WorkerError):
    """An input file is not an n8n workflow export (exit 3); the message names the file."""


class _Untranslatable(Exception):
    """This node (or expression) has no faithful equivalent; the reason says why."""


@dataclass(frozen=True)
class Note:
    """One line of the import's report.

    ``kind``: ``todo`` (the operator fills something in), ``dropped`` (the reply
    step, left out on purpose), ``untranslated`` (behaviour lost: exit 1).
    """

    file: str
    workflow: str
    kind: Literal["todo", "dropped", "untranslated"]
    text: str

    def __str__(self) -> str:
        label = {"todo": "to do", "dropped": "dropped", "untranslated": "NOT TRANSLATED"}
        return f"{self.file}: {self.workflow}: {label[self.kind]}: {self.text}"


@dataclass
class ImportResult:
    """The config (None when no workflow gave a lookup), the report, the exit code."""

    config: str | None
    notes: list[Note]
    lookups: dict[str, str]  # lookup name → source id
    env: list[str]

    @property
    def exit_code(self) -> int:
        untranslated = any(n.kind == "untranslated" for n in self.notes)
        return 1 if untranslated or self.config is None else 0

    def report(self) -> Iterator[str]:
        yield from (str(note) for note in self.notes)
        for name, source in self.lookups.items():
            yield f"lookup {name} reads source {source}"
        if self.env:
            yield "set these environment variables (the n8n credentials' values):"
            yield from (f"  {name}" for name in self.env)
        if self.config is None:
            yield "no workflow could be turned into a lookup: nothing written"


# -- reading -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    name: str
    kind: str  # normalised type
    version: float
    parameters: Mapping[str, Any]
    credential: str | None  # the credential's name
    credential_type: str | None


@dataclass(frozen=True)
class _Workflow:
    file: str
    name: str
    nodes: list[_Node]
    links: dict[str, list[str]] | None  # node name → next node names; None: list order


def _kind(raw: str) -> str:
    short = raw.rsplit(".", 1)[-1].replace("_", "").lower()
    return _ALIASES.get(short, short)


def _node(raw: Any, index: int, file: str) -> _Node:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
        raise InvalidWorkflow(f"{file}: node #{index + 1} is not an object with a 'type'")
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, Mapping):
        raise InvalidWorkflow(f"{file}: node #{index + 1}: 'parameters' is not an object")
    name = raw.get("name")
    credential = credential_type = None
    credentials = raw.get("credentials")
    if isinstance(credentials, Mapping) and credentials:
        credential_type, value = next(iter(credentials.items()))
        named = value.get("name") if isinstance(value, Mapping) else value
        credential = named if isinstance(named, str) and named.strip() else str(credential_type)
    version = raw.get("typeVersion", 1)
    return _Node(
        name=name if isinstance(name, str) and name else f"{raw['type']} #{index + 1}",
        kind=_kind(raw["type"]),
        version=float(version) if isinstance(version, int | float) else 1.0,
        parameters=parameters,
        credential=credential,
        credential_type=str(credential_type) if credential_type else None,
    )


def _links(raw: Any, file: str) -> dict[str, list[str]] | None:
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidWorkflow(f"{file}: 'connections' is not an object")
    links: dict[str, list[str]] = {}
    for source, outputs in raw.items():
        main = outputs.get("main", []) if isinstance(outputs, Mapping) else None
        if not isinstance(main, list):
            raise InvalidWorkflow(f"{file}: connections of {source!r} are not n8n's shape")
        for branch in main:
            for target in branch or []:
                if not isinstance(target, Mapping) or not isinstance(target.get("node"), str):
                    raise InvalidWorkflow(f"{file}: a connection of {source!r} names no node")
                links.setdefault(str(source), []).append(target["node"])
    return links


def _workflows(document: Any, file: str) -> list[_Workflow]:
    items = document if isinstance(document, list) else [document]
    found = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("nodes"), list):
            raise InvalidWorkflow(f"{file}: not an n8n workflow export (no 'nodes' list)")
        if len(item["nodes"]) > _MAX_NODES:
            raise InvalidWorkflow(f"{file}: more than {_MAX_NODES} nodes")
        nodes = [_node(raw, i, file) for i, raw in enumerate(item["nodes"])]
        name = item.get("name")
        found.append(
            _Workflow(
                file=file,
                name=name if isinstance(name, str) and name else Path(file).stem,
                nodes=nodes,
                links=_links(item.get("connections"), file),
            )
        )
    return found


def _read_file(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_WORKFLOW_BYTES + 1)
    except OSError as exc:
        raise InvalidWorkflow(f"{path}: cannot read it: {exc.strerror}") from None
    if len(raw) > MAX_WORKFLOW_BYTES:
        raise InvalidWorkflow(f"{path}: larger than {MAX_WORKFLOW_BYTES:,} bytes")
    try:
        document = json.loads(raw.decode("utf-8-sig"))
        # JSON's "\\ud800" escapes decode to lone surrogates, which no UTF-8 output can hold
        json.dumps(document, ensure_ascii=False).encode("utf-8")
        return document
    except UnicodeError:
        raise InvalidWorkflow(f"{path}: not UTF-8 text (or a lone surrogate escape)") from None
    except json.JSONDecodeError as exc:
        raise InvalidWorkflow(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise InvalidWorkflow(f"{path}: JSON nested too deeply") from None


# -- expressions -------------------------------------------------------------------


def _block(parameters: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A nested parameter collection, or an empty one when it is absent or not an object."""
    value = parameters.get(key)
    return value if isinstance(value, Mapping) else {}


def _strip_eq(value: str) -> str:
    """n8n marks an expression-mode value with a leading ``=``."""
    return value[1:] if value.startswith("=") else value


def _param_name(expression: str) -> str:
    """The job parameter a plain n8n reference to an item's field stands for."""
    match = _REF.fullmatch(expression)
    if not match:
        raise _Untranslatable(
            f"the expression {{{{{expression.strip()[:80]}}}}} is not a plain reference to "
            "the webhook's data ($json.body.x, $('Webhook').item.json.query.x, …)"
        )
    names = [next(g for g in m.groups() if g is not None) for m in _SEGMENT.finditer(match["path"])]
    names = [n for n in names if not n.isdigit()]
    if not names or names[-1] in {"body", "query", "params", "headers"}:
        raise _Untranslatable(f"{{{{{expression.strip()[:80]}}}}} names no single field")
    name = names[-1]
    if not _IDENT.match(name):
        name = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:64] or "value"
        name = name if name[0].isalpha() else f"p_{name}"
    return name


def _guess_type(name: str) -> str:
    words = set(_slug(name).split("_"))
    for word in ("phone", "email", "date"):
        if word in words or f"{word}s" in words:
            return word
    if words & {"limit", "count", "quantity", "qty", "page", "size"}:
        return "integer"
    return "string"


def _plain(text: str) -> str:
    """Free text from a workflow, kept from reading as ``${env:…}`` or ``enc:v1:`` values."""
    return text.replace("${env:", "$ {env:").replace("enc:v1:", "enc: v1:")


@dataclass
class _Params:
    """The job parameters a workflow's expressions read, in order of first use."""

    names: dict[str, None] = field(default_factory=dict)

    def ref(self, expression: str) -> str:
        name = _param_name(expression)
        self.names.setdefault(name)
        return name

    def text(self, value: str, *, where: str) -> str:
        """A string with ``{{ … }}`` expressions as the worker's ``{name}`` placeholders."""
        value = _strip_eq(value)
        if "{" in _RESOLVABLE.sub("", value) or "}" in _RESOLVABLE.sub("", value):
            raise _Untranslatable(f"{where}: a literal brace would read as a {{parameter}}")
        return _RESOLVABLE.sub(lambda m: "{" + self.ref(m.group(1)) + "}", value)

    def structure(self, value: Any, *, where: str) -> Any:
        """Strings inside a JSON-like value converted with `text`, the rest as it is."""
        if isinstance(value, str):
            return self.text(value, where=where)
        if isinstance(value, list):
            return [self.structure(v, where=where) for v in value]
        if isinstance(value, Mapping):
            return {str(k): self.structure(v, where=where) for k, v in value.items()}
        return value

    def json_text(self, raw: Any, *, where: str) -> Any:
        """A JSON parameter (text with expressions in it, or already parsed)."""
        if not isinstance(raw, str):
            return self.structure(raw, where=where)
        marks: list[str] = []

        def mark(match: re.Match[str]) -> str:
            marks.append(match.group(1))
            return f"\ue000{len(marks) - 1}\ue000"

        text = _RESOLVABLE.sub(mark, _strip_eq(raw).strip() or "{}")
        text = re.sub(r'(?<!")\ue000(\d+)\ue000(?!")', lambda m: f'"{m[0]}"', text)
        try:
            parsed = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise _Untranslatable(f"{where} is not JSON with expressions in it") from None

        def back(value: Any) -> Any:
            if isinstance(value, str):
                if "{" in value or "}" in value:
                    raise _Untranslatable(f"{where}: a literal brace would read as a {{parameter}}")
                return re.sub(
                    r"\ue000(\d+)\ue000", lambda m: "{" + self.ref(marks[int(m[1])]) + "}", value
                )
            if isinstance(value, list):
                return [back(v) for v in value]
            if isinstance(value, Mapping):
                return {str(k): back(v) for k, v in value.items()}
            return value

        return back(parsed)


# -- SQL ----------------------------------------------------------------------------


@dataclass
class _SQL:
    """An n8n SQL query rewritten with ``$n`` placeholders bound to job parameters."""

    params: _Params
    args: list[str] = field(default_factory=list)

    def placeholder(self, expression: str) -> str:
        name = self.params.ref(expression)
        if name not in self.args:
            self.args.append(name)
        return f"${self.args.index(name) + 1}"

    def rewrite(self, sql: str) -> str:
        """Every ``{{ … }}`` becomes a ``$n``: a quoted ``'{{ x }}'`` whole, quotes and all."""
        out: list[str] = []
        i = 0
        while i < len(sql):
            if sql.startswith("{{", i):
                end = sql.find("}}", i + 2)
                if end < 0:
                    raise _Untranslatable("the query has an unclosed {{")
                out.append(self.placeholder(sql[i + 2 : end]))
                i = end + 2
            elif sql[i] in "'\"`":
                end = _literal_end(sql, i)
                out.append(self._literal(sql[i : end + 1]))
                i = end + 1
            elif sql.startswith(("--", "/*"), i):
                end = sql.find("\n" if sql[i] == "-" else "*/", i + 2)
                end = len(sql) if end < 0 else end + (0 if sql[i] == "-" else 2)
                if "{{" in sql[i:end]:
                    raise _Untranslatable("an expression inside an SQL comment")
                out.append(sql[i:end])
                i = end
            else:
                out.append(sql[i])
                i += 1
        return "".join(out)

    def _literal(self, literal: str) -> str:
        inner = literal[1:-1]
        if "{{" not in inner:
            return literal
        whole = re.fullmatch(r"\s*\{\{(.*?)\}\}\s*", inner, re.S)
        if literal[0] == "'" and whole and "{{" not in whole.group(1):
            return self.placeholder(whole.group(1))
        raise _Untranslatable(
            f"the expression in {literal[:60]} is part of a longer SQL string or a quoted "
            "name; write that query by hand with a $n placeholder"
        )


def _literal_end(sql: str, start: int) -> int:
    """Index of the quote closing the literal at ``start`` (``{{ … }}`` skipped whole)."""
    quote, i = sql[start], start + 1
    while i < len(sql):
        if sql.startswith("{{", i):
            end = sql.find("}}", i + 2)
            i = len(sql) if end < 0 else end + 2
            continue
        if sql[i] == quote:
            if sql.startswith(quote * 2, i):
                i += 2
                continue
            return i
        i += 1
    raise _Untranslatable("the query has an unclosed quote")


def _placeholders(sql: str) -> set[int]:
    bare = re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"|--[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)
    return {int(n) for n in re.findall(r"\$(\d+)", bare)}


def _replacement_exprs(raw: Any) -> list[str]:
    """``options.queryReplacement`` (or the seed's ``values``) as one expression each."""
    if raw in (None, "", []):
        return []
    entries: list[Any]
    if isinstance(raw, str):
        text = raw.lstrip("=").strip()
        whole = re.fullmatch(r"\{\{\s*\[(.*)\]\s*\}\}", text, re.S)
        if whole:  # ={{ [$json.a, $json.b] }}
            return [e for e in _split_top(whole.group(1)) if e.strip()]
        entries = [e.strip() for e in text.split(",") if e.strip()]
    elif isinstance(raw, list):
        entries = raw
    else:
        raise _Untranslatable("query parameters are neither a list nor comma-separated text")
    found = []
    for entry in entries:
        text = _strip_eq(str(entry)).strip()
        inner = re.fullmatch(r"\{\{(.*?)\}\}", text, re.S)
        if not inner:
            raise _Untranslatable(
                f"the query parameter {text[:60]!r} is a constant, not the webhook's data: "
                "write it into the query"
            )
        found.append(inner.group(1))
    return found


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _select_columns(sql: str) -> list[str] | None:
    """The names a SELECT list gives its columns, or None (``*``, or not one SELECT)."""
    match = re.match(r"\s*select\s+(?:distinct\s+)?(.*?)\s+from\s", sql, re.I | re.S)
    if not match:
        return None
    names = []
    for item in _split_top(match.group(1)):
        item = item.strip()
        if item.endswith("*"):
            return None
        alias = re.search(r"""(?:\s+as)?\s+["`]?(\w+)["`]?$""", item, re.I)
        plain = re.fullmatch(r"""(?:["`]?\w+["`]?\.)*["`]?(\w+)["`]?""", item)
        if plain:
            names.append(plain.group(1))
        elif alias:
            names.append(alias.group(1))
    return names or None


# -- the reads ----------------------------------------------------------------------


@dataclass
class _Read:
    """What one reading node becomes: a source (before it has an id) and its query."""

    type: str
    connection: dict[str, Any]
    query: Any
    args: list[str] | None = None
    columns: list[str] | None = None
    origin: str = ""  # for HTTP sources: scheme://host:port, part of the source's identity
    hint: str = ""  # the source's id when the node has no credential
    todo: list[str] = field(default_factory=list)


def _env(suffix: str) -> str:
    return f"\x00ENV:{suffix}\x00"


_SQL_TYPES = {"postgres": "postgresql", "mysql": "mysql", "microsoftsql": "sqlserver"}
_SQL_CONNECTION = {
    "host": _env("HOST"),
    "port": _env("PORT"),
    "database": _env("DATABASE"),
    "username": _env("USER"),
    "password": _env("PASSWORD"),
}


def _sql_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    operation = p.get("operation", "executeQuery" if "query" in p else None)
    sql = _SQL(params)
    if operation == "select":
        query = _sql_select(node, sql)
    elif operation == "executeQuery" and isinstance(p.get("query"), str):
        options = _block(p, "options")
        fields = _block(p, "additionalFields")
        for expression in _replacement_exprs(options.get("queryReplacement", p.get("values"))):
            sql.args.append(params.ref(expression))
        if isinstance(fields.get("queryParams"), str):  # Postgres v1: item property names
            for prop in filter(None, (s.strip() for s in fields["queryParams"].split(","))):
                sql.args.append(params.ref("$json." + prop.rsplit(".", 1)[-1]))
        query = sql.rewrite(_strip_eq(p["query"]).strip())
    else:
        raise _Untranslatable(f"operation {operation!r} is not a read (only queries and selects)")
    used = _placeholders(query)
    if used and max(used) > len(sql.args):
        raise _Untranslatable(f"the query uses ${max(used)} but has {len(sql.args)} parameter(s)")
    del sql.args[max(used, default=0) :]
    return _Read(
        type=_SQL_TYPES[node.kind],
        connection=dict(_SQL_CONNECTION),
        query=query,
        args=list(sql.args),
        columns=_select_columns(query),
        hint=_SQL_TYPES[node.kind],
    )


_CONDITIONS = {"equal": "=", "!=": "<>", "LIKE": "LIKE", ">": ">", "<": "<", ">=": ">=", "<=": "<="}


def _sql_select(node: _Node, sql: _SQL) -> str:
    p = node.parameters
    quote = "`" if node.kind == "mysql" else '"'

    def name(value: Any) -> str:
        text = value.get("value") if isinstance(value, Mapping) else value
        if not isinstance(text, str) or not text or text.startswith("=") or "{{" in text:
            raise _Untranslatable("the table or column is not a fixed name")
        return quote + text.replace(quote, quote * 2) + quote

    table = name(p.get("table"))
    if node.kind != "mysql" and p.get("schema"):
        table = f"{name(p['schema'])}.{table}"
    where = p.get("where", {}).get("values", []) if isinstance(p.get("where"), Mapping) else []
    options = _block(p, "options")
    clauses = []
    for condition in where:
        op = _CONDITIONS.get(condition.get("condition", "equal"))
        value = str(condition.get("value", ""))
        inner = re.fullmatch(r"=?\s*\{\{(.*?)\}\}\s*", value, re.S)
        if op is None or not inner:
            raise _Untranslatable("a select condition is not 'column <op> {{ expression }}'")
        clauses.append(f"{name(condition.get('column'))} {op} {sql.placeholder(inner.group(1))}")
    columns = options.get("outputColumns")
    listed = ", ".join(name(c) for c in columns) if isinstance(columns, list) and columns else "*"
    # names quoted and doubled, values only as $n: nothing from a job reaches the text
    text = f"SELECT {listed} FROM {table}"  # noqa: S608
    if clauses:
        joiner = " OR " if options.get("combineConditions") == "OR" else " AND "
        text += " WHERE " + joiner.join(clauses)
    if not p.get("returnAll") and isinstance(p.get("limit", 50), int):
        text += f" LIMIT {int(p.get('limit', 50))}"
    return text


def _mongodb_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    operation = p.get("operation", "find")
    collection = p.get("collection")
    if (
        operation not in {"find", "aggregate"}
        or not isinstance(collection, str)
        or "{{" in collection
    ):
        raise _Untranslatable(f"operation {operation!r} on a fixed collection is not a read")
    body = params.json_text(p.get("query", "{}"), where="the query")
    query: dict[str, Any] = {"collection": _strip_eq(collection)}
    if operation == "aggregate":
        query["pipeline"] = body
    else:
        query["filter"] = body
        options = _block(p, "options")
        if isinstance(options.get("limit"), int) and options["limit"] > 0:
            query["limit"] = options["limit"]
        if options.get("projection"):
            query["projection"] = params.json_text(options["projection"], where="the projection")
    connection = {"uri": _env("CONNECTION_STRING"), "database": _env("DATABASE")}
    return _Read("mongodb", connection, query, hint="mongodb")


_REDIS_TYPES = {
    "automatic": "GET",
    "string": "GET",
    "hash": "HGETALL",
    "list": "LRANGE",
    "sets": "SMEMBERS",
}


def _redis_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    key = p.get("key")
    if p.get("operation") != "get" or not isinstance(key, str):
        raise _Untranslatable(f"operation {p.get('operation')!r} is not a get")
    kind = str(p.get("keyType", "automatic"))
    query: dict[str, Any] = {
        "command": _REDIS_TYPES.get(kind, "GET"),
        "key": params.text(key, where="the key"),
    }
    if kind == "list":
        query["args"] = [0, -1]
    read = _Read(
        "redis",
        {
            "host": _env("HOST"),
            "port": _env("PORT"),
            "password": _env("PASSWORD"),
            "db": _env("DATABASE"),
        },
        query,
        hint="redis",
    )
    if kind == "automatic":
        read.todo.append("n8n found the key's type itself; GET assumed (HGETALL for a hash)")
    return read


def _elasticsearch_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    index = p.get("indexId")
    operation = p.get("operation", "get")
    if not isinstance(index, str):
        raise _Untranslatable("no index")
    query: dict[str, Any] = {"index": params.text(index, where="the index")}
    if operation == "get" and isinstance(p.get("documentId"), str):
        query["id"] = params.text(p["documentId"], where="the document id")
    elif operation == "getAll":
        options = _block(p, "options")
        body = params.json_text(options.get("query", "{}"), where="the query")
        query["query"] = body.get("query", body) if isinstance(body, Mapping) else body
        query["size"] = 100 if p.get("returnAll") else int(p.get("limit", 50))
    else:
        raise _Untranslatable(f"operation {operation!r} is not a read")
    connection = {
        "url": _env("BASE_URL"),
        "username": _env("USERNAME"),
        "password": _env("PASSWORD"),
    }
    return _Read("elasticsearch", connection, query, hint="elasticsearch")


def _pairs(p: Mapping[str, Any], *keys: str) -> list[tuple[str, Any]]:
    """n8n's name/value lists (``queryParameters.parameters``, ``…Ui.parameter``)."""
    for key in keys:
        outer, _, inner = key.partition(".")
        block = p.get(outer)
        rows = block.get(inner) if isinstance(block, Mapping) else None
        if isinstance(rows, list):
            return [
                (str(r.get("name", "")), r.get("value", ""))
                for r in rows
                if isinstance(r, Mapping) and r.get("name")
            ]
    return []


_REST_AUTH: dict[str, dict[str, str]] = {
    "httpBearerAuth": {"type": "bearer", "token": _env("TOKEN")},
    "headerAuth": {"type": "header", "name": _env("HEADER_NAME"), "value": _env("HEADER_VALUE")},
    "basicAuth": {"type": "basic", "username": _env("USER"), "password": _env("PASSWORD")},
    "queryAuth": {"type": "query", "name": _env("QUERY_NAME"), "value": _env("QUERY_VALUE")},
    "oAuth2Api": {
        "type": "oauth2_client_credentials",
        "token_url": _env("TOKEN_URL"),
        "client_id": _env("CLIENT_ID"),
        "client_secret": _env("CLIENT_SECRET"),
    },
}


def _auth_kind(p: Mapping[str, Any]) -> str:
    """n8n's credential kind, v1/v2 names (``headerAuth``) and v3+ (``httpHeaderAuth``) alike."""
    auth = str(p.get("authentication", "none"))
    if auth == "genericCredentialType":
        auth = str(p.get("genericAuthType", ""))
    elif auth == "predefinedCredentialType":
        auth = str(p.get("nodeCredentialType", ""))
    generic = {
        "httpHeaderAuth": "headerAuth",
        "httpBasicAuth": "basicAuth",
        "httpQueryAuth": "queryAuth",
        "oAuth2": "oAuth2Api",
    }
    return generic.get(auth, auth)


def _http_auth(node: _Node, read: _Read) -> None:
    """The node's credential as connection settings the operator fills from the environment.

    A ``rest_api`` source takes it as its ``auth`` block; a ``graphql`` one, which has
    no ``auth``, as a fixed ``Authorization`` header.
    """
    auth = _auth_kind(node.parameters)
    headers = read.connection.setdefault("headers", {})
    if auth in {"none", ""}:
        return
    if read.type == "rest_api" and auth in _REST_AUTH:
        read.connection["auth"] = dict(_REST_AUTH[auth])
        if auth == "oAuth2Api":
            read.todo.append("OAuth2: the worker uses the client-credentials grant only")
    elif auth == "headerAuth":
        headers["Authorization"] = _env("HEADER_VALUE")
        read.todo.append(
            f"n8n's Header Auth credential {node.credential!r} names its header: Authorization "
            "is assumed; rename it in the source's headers if the API wants another"
        )
    elif auth == "httpBearerAuth":
        headers["Authorization"] = "Bearer " + _env("TOKEN")
    elif auth == "basicAuth":
        headers["Authorization"] = "Basic " + _env("BASIC_AUTH")
        read.todo.append("the Basic auth variable holds base64 of 'user:password'")
    else:
        raise _Untranslatable(f"authentication {auth!r}: set the source's credentials by hand")


def _connection_text(value: str, read: _Read, params: _Params) -> str:
    """A header value: ``$credentials.x`` → ``{x}`` (a connection field), ``$env.X`` kept."""

    def one(match: re.Match[str]) -> str:
        expression = match.group(1)
        if credential := _CREDENTIAL.fullmatch(expression):
            fieldname = credential.group(1)
            read.connection[fieldname] = _env(fieldname.upper())
            return "{" + fieldname + "}"
        if env := _ENV_REF.fullmatch(expression):
            return "${env:" + (env.group(1) or env.group(2)) + "}"
        raise _Untranslatable("a header takes a job parameter: the worker's headers are fixed")

    return _RESOLVABLE.sub(one, _strip_eq(value))


def _split_url(node: _Node, url: str, params: _Params) -> tuple[str, str, dict[str, Any]]:
    """``(origin, path with {name}s, query-string params)``; the host must be fixed."""
    url = _strip_eq(url).strip()
    marks: list[str] = []

    def mark(match: re.Match[str]) -> str:
        marks.append(match.group(1))
        return f"N8NEXPR{len(marks) - 1}X"

    parts = urlsplit(_RESOLVABLE.sub(mark, url))
    if parts.scheme not in {"http", "https"} or not parts.hostname or "N8NEXPR" in parts.netloc:
        raise _Untranslatable(f"the URL {url[:80]!r} has no fixed http(s) host")

    def back(text: str) -> str:
        return re.sub(r"N8NEXPR(\d+)X", lambda m: "{{" + marks[int(m[1])] + "}}", text)

    path = params.text(back(parts.path or "/"), where="the URL")
    query = {k: params.text(back(v), where="the URL") for k, v in parse_qsl(parts.query)}
    return f"{parts.scheme}://{parts.netloc}", path, query


def _http_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    method = str(p.get("method", p.get("requestMethod", "GET"))).upper()
    if method not in {"GET", "HEAD", "POST"}:
        raise _Untranslatable(f"method {method} is not a read")
    if not isinstance(p.get("url"), str):
        raise _Untranslatable("no URL")
    origin, path, query_params = _split_url(node, p["url"], params)
    read = _Read(
        "rest_api",
        {"base_url": origin},
        None,
        origin=origin,
        hint=_slug(urlsplit(origin).hostname or "api"),
    )
    _http_auth(node, read)
    for name, value in _pairs(p, "queryParameters.parameters", "queryParametersUi.parameter"):
        query_params[name] = params.text(str(value), where=f"query parameter {name}")
    headers = read.connection["headers"]
    seed_headers = _block(p, "headers")
    pairs = [
        *seed_headers.items(),
        *_pairs(p, "headerParameters.parameters", "headerParametersUi.parameter"),
    ]
    for name, value in pairs:
        headers[str(name)] = _connection_text(str(value), read, params)
    if not headers:
        del read.connection["headers"]
    query: dict[str, Any] = {"path": path}
    if method != "GET":
        query["method"] = method
    if query_params:
        query["params"] = query_params
    if method == "POST" and p.get("sendBody"):
        if p.get("specifyBody") == "json":
            query["body"] = params.json_text(p.get("jsonBody", "{}"), where="the JSON body")
        else:
            query["body"] = {
                n: params.structure(v, where=f"body field {n}")
                for n, v in _pairs(p, "bodyParameters.parameters")
            }
    read.query = query
    return read


def _graphql_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    document = p.get("query")
    if not isinstance(p.get("endpoint"), str) or not isinstance(document, str):
        raise _Untranslatable("no endpoint or no query")
    if re.match(r"\s*mutation\b", _strip_eq(document)):
        raise _Untranslatable("a mutation is not a read")
    if "{{" in document:
        raise _Untranslatable("the GraphQL document holds expressions: use variables")
    origin, path, query_params = _split_url(node, p["endpoint"], params)
    if "{" in path or query_params:
        raise _Untranslatable("the endpoint URL takes job parameters")
    read = _Read(
        "graphql",
        {"url": origin + path},
        None,
        origin=origin + path,
        hint=_slug(urlsplit(origin).hostname or "graphql"),
    )
    _http_auth(node, read)
    for name, value in _pairs(p, "headerParametersUi.parameter"):
        read.connection["headers"][name] = _connection_text(str(value), read, params)
    if not read.connection["headers"]:
        del read.connection["headers"]
    query: dict[str, Any] = {"document": _strip_eq(document).strip()}
    if p.get("variables"):
        query["variables"] = params.json_text(p["variables"], where="the variables")
    read.query = query
    return read


def _locator(value: Any) -> str | None:
    """n8n's resource locator (``{"__rl": true, "value": …, "mode": …}``) or a plain value."""
    if isinstance(value, Mapping):
        text = value.get("value")
        if value.get("mode") == "url" and isinstance(text, str):
            found = re.search(r"/d/([A-Za-z0-9_-]+)", text)
            return found.group(1) if found else None
        if isinstance(value.get("cachedResultName"), str) and str(text).startswith("gid="):
            return str(value["cachedResultName"])
        return text if isinstance(text, str) else None
    return value if isinstance(value, str) else None


def _sheets_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    operation = p.get("operation", "read")
    if operation not in {"read", "lookup"}:
        raise _Untranslatable(f"operation {operation!r} is not a read")
    connection: dict[str, Any] = {"service_account": _env("SERVICE_ACCOUNT")}
    read = _Read("google_sheets", connection, None, hint="google_sheets")
    sheet_id = _locator(p.get("documentId", p.get("sheetId", p.get("spreadsheet_id"))))
    if sheet_id and re.fullmatch(r"[A-Za-z0-9_-]{1,200}", sheet_id):
        connection["spreadsheet_id"] = sheet_id
    else:
        connection["spreadsheet_id"] = _env("SPREADSHEET_ID")
    if node.credential_type and "oauth" in node.credential_type.lower():
        read.todo.append("the worker reads Sheets as a service account: share the sheet with it")
    sheet = _locator(p.get("sheetName"))
    options = _block(p, "options")
    a1 = _block(_block(options, "dataLocationOnSheet"), "values").get("range") or p.get("range")
    if a1 is not None and (not isinstance(a1, str) or "{{" in a1):
        raise _Untranslatable("the range is not a fixed A1 range")
    if sheet and "{{" not in sheet:
        name = "'" + sheet.replace("'", "''") + "'" if re.search(r"\W", sheet) else sheet
        range_ = f"{name}!{a1}" if a1 else name
    elif a1:
        range_ = a1
    else:
        raise _Untranslatable("no fixed sheet or range")
    query: dict[str, Any] = {"range": range_}
    filters: dict[str, Any] = {}
    ui = p.get("filtersUI")
    for row in ui.get("values", []) if isinstance(ui, Mapping) else []:
        filters[str(row.get("lookupColumn"))] = _value(str(row.get("lookupValue", "")), params)
    if isinstance(p.get("lookupColumn"), str):
        filters[p["lookupColumn"]] = _value(str(p.get("lookupValue", "")), params)
    # n8n's default is OR before version 4.3 (and exports leave defaults out), AND after
    combine = p.get("combineFilters", "OR" if node.version < 4.3 else "AND")
    if isinstance(p.get("filter"), str):  # the seed's "phone = {{$json.customer_phone}}"
        query["filter"] = params.text(p["filter"], where="the filter")
    elif len(filters) > 1 and combine == "OR":
        query["filter"] = [{column: value} for column, value in filters.items()]
    elif filters:
        query["filter"] = filters
    first_only = options.get("returnAllMatches", "returnFirstMatch") == "returnFirstMatch"
    if filters and (options.get("returnFirstMatch") or (node.version < 4.5 and first_only)):
        query["limit"] = 1
    read.query = query
    return read


def _value(value: str, params: _Params) -> Any:
    """A filter value: ``{name}`` for an expression, else the literal."""
    return params.text(value, where="a filter value")


def _airtable_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    operation = p.get("operation", "search" if node.version >= 2 else "list")
    base = _locator(p.get("base", p.get("application")))
    table = p.get("table")
    table_name = (
        table.get("cachedResultName") or table.get("value") if isinstance(table, Mapping) else table
    )
    if operation not in {"search", "list"} or not base or not isinstance(table_name, str):
        raise _Untranslatable(f"operation {operation!r} on a fixed base and table is not a search")
    extra = _block(p, "additionalOptions")
    formula = p.get("filterByFormula", extra.get("filterByFormula", ""))
    query: dict[str, Any] = {"table": table_name}
    if formula:
        try:
            query["filter"] = _airtable_filter(str(formula), params)
        except _Untranslatable:
            query["formula"] = _airtable_formula(str(formula), params)
    connection = {"token": _env("TOKEN"), "base_id": _strip_eq(base)}
    return _Read("airtable", connection, query, hint="airtable")


_QUOTED_VALUE = r"""'((?:[^'{]|\{\{.*?\}\})*)'|"((?:[^"{]|\{\{.*?\}\})*)\""""
_EQUALITY = rf"\s*\{{([^{{}}]+)\}}\s*=\s*(?:{_QUOTED_VALUE}|(\{{\{{.*\}}\}})|(-?\d+(?:\.\d+)?))\s*"


def _airtable_filter(formula: str, params: _Params) -> dict[str, Any]:
    """``{Field} = '{{ x }}'`` clauses, alone or inside ``AND(…)``, as an equality map."""
    text = _strip_eq(formula).strip()
    inner = re.fullmatch(r"AND\((.*)\)", text, re.S | re.I)
    clauses = _split_top(inner.group(1)) if inner else [text]
    found: dict[str, Any] = {}
    for clause in clauses:
        match = re.fullmatch(
            _EQUALITY,
            clause,
            re.S,
        )
        if not match:
            raise _Untranslatable(f"the formula {text[:80]!r} is not '{{Field}} = value' clauses")
        field_name, *values = match.groups()
        value = next(v for v in values if v is not None)
        found[field_name] = (
            float(value)
            if match.group(5) and "." in value
            else (int(value) if match.group(5) else params.text(value, where="the formula"))
        )
    return found


def _airtable_formula(formula: str, params: _Params) -> str:
    """Any other formula as the worker's ``formula``: each expression a bare ``{{name}}``.

    The worker writes the parameter there as an escaped Airtable literal, so n8n's
    quotes around a whole expression go; an expression inside a longer quoted
    string (``'ORD-{{ … }}'``) has no such form and is reported.
    """
    exact = r"""'\s*\{\{((?:(?!\}\}).)*)\}\}\s*'|"\s*\{\{((?:(?!\}\}).)*)\}\}\s*"|\{\{(.*?)\}\}"""

    def one(match: re.Match[str]) -> str:
        expression = next(g for g in match.groups() if g is not None)
        return "{{" + params.ref(expression) + "}}"

    text = re.sub(exact, one, _strip_eq(formula).strip(), flags=re.S)
    quote = ""
    for i, char in enumerate(text):
        if quote and text.startswith("{{", i):
            raise _Untranslatable("an expression inside a longer quoted string in the formula")
        if char in "'\"" and (not quote or char == quote) and text[i - 1 : i] != "\\":
            quote = "" if quote else char
    return text


_HUBSPOT_OBJECTS = {
    "contact": "contacts",
    "company": "companies",
    "deal": "deals",
    "ticket": "tickets",
}


def _hubspot_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    resource = _HUBSPOT_OBJECTS.get(str(p.get("resource", "deal")))
    if p.get("operation") != "search" or resource is None:
        raise _Untranslatable(f"{p.get('resource')} {p.get('operation')!r} is not a search")
    groups = _block(p, "filterGroupsUi").get("filterGroupsValues", [])
    filters = [
        [_hubspot_filter(row, params) for row in _block(g, "filtersUi").get("filterValues", [])]
        for g in groups
    ]
    query: dict[str, Any] = {"object": resource}
    if len(filters) > 1:  # n8n's groups are ORed, as HubSpot's filterGroups
        query["filterGroups"] = [{"filters": group} for group in filters if group]
    elif filters and filters[0]:
        equal = {f["propertyName"]: f["value"] for f in filters[0] if f["operator"] == "EQ"}
        rest = [f for f in filters[0] if f["operator"] != "EQ"]
        if len(equal) == sum(f["operator"] == "EQ" for f in filters[0]):
            query["filter"] = equal
        else:
            rest = filters[0]
        if rest:
            query["filters"] = rest
    properties = _block(p, "additionalFields").get("properties")
    if isinstance(properties, list):
        query["properties"] = [str(x).split("|", 1)[0] for x in properties]
    return _Read("hubspot", {"token": _env("TOKEN")}, query, hint="hubspot")


def _hubspot_filter(row: Mapping[str, Any], params: _Params) -> dict[str, Any]:
    """One n8n filter row (``propertyName`` as ``name|type``) as a HubSpot filter."""
    found: dict[str, Any] = {
        "propertyName": str(row["propertyName"]).split("|", 1)[0],
        "operator": str(row.get("operator", "EQ")),
    }
    if found["operator"] not in {"HAS_PROPERTY", "NOT_HAS_PROPERTY"}:
        found["value"] = params.text(str(row.get("value", "")), where="a filter value")
    if found["operator"] == "BETWEEN":
        found["highValue"] = params.text(str(row.get("highValue", "")), where="a filter value")
    return found


def _salesforce_read(node: _Node, params: _Params) -> _Read:
    p = node.parameters
    soql = p.get("query")
    if p.get("resource") != "search" or not isinstance(soql, str):
        raise _Untranslatable("only the SOQL query (resource 'search') is a read here")
    text = re.sub(r"'\s*(\{\{.*?\}\})\s*'", r"\1", _strip_eq(soql), flags=re.S)
    connection = {
        "username": _env("USERNAME"),
        "password": _env("PASSWORD"),
        "security_token": _env("SECURITY_TOKEN"),
    }
    read = _Read(
        "salesforce", connection, {"soql": params.text(text, where="the SOQL")}, hint="salesforce"
    )
    read.todo.append(
        "n8n signs in to Salesforce with OAuth; the worker with username, password and token"
    )
    return read


_FILE_TYPES = {"csv": "csv", "xlsx": "excel", "xls": "excel", "fromJson": "json", "json": "json"}


def _file_read(node: _Node, params: _Params, path: str | None) -> _Read:
    p = node.parameters
    fmt = str(
        p.get("fileFormat", "csv") if node.kind == "spreadsheetfile" else p.get("operation", "csv")
    )
    kind = _FILE_TYPES.get(fmt)
    if kind is None or (
        node.kind == "spreadsheetfile" and p.get("operation", "fromFile") != "fromFile"
    ):
        raise _Untranslatable(f"format {fmt!r} is not csv, xlsx or json")
    if not path or "{{" in path:
        raise _Untranslatable("no fixed file path before it (Read Binary File / Read Files)")
    read = _Read(kind, {"path": path}, {"filter": {}}, hint=_slug(Path(path).stem) or kind)
    read.todo.append(f"copy {path} beside the config (paths are read from the config's folder)")
    read.todo.append('n8n matched rows in later nodes: add a filter ({"column": "{param}"})')
    return read


# -- one workflow -------------------------------------------------------------------


@dataclass
class _Translation:
    lookup: str
    read: _Read | None = None
    credential: str | None = None
    params: _Params = field(default_factory=_Params)
    template: str | None = None
    file_path: str | None = None  # what a Read Binary File node before the parser read
    notes: list[tuple[Literal["todo", "dropped", "untranslated"], str]] = field(
        default_factory=list
    )


def _path_nodes(workflow: _Workflow, start: _Node) -> list[_Node]:
    """The nodes after the webhook: through ``connections`` breadth first, else in list order."""
    if workflow.links is None:
        index = workflow.nodes.index(start)
        return workflow.nodes[index + 1 :]
    by_name = {node.name: node for node in workflow.nodes}
    order, seen, todo = [], {start.name}, list(workflow.links.get(start.name, []))
    while todo:
        name = todo.pop(0)
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        order.append(by_name[name])
        todo.extend(workflow.links.get(name, []))
    return order


def _lookup_name(webhook: _Node, workflow: _Workflow) -> str:
    raw = webhook.parameters.get("path")
    path = _strip_eq(raw).strip("/ ") if isinstance(raw, str) and "{{" not in raw else ""
    path = re.sub(r"^(?:webhook/)?data/", "", path)
    path = "/".join(s for s in path.split("/") if not s.startswith(":"))
    if not path or _UUID.match(path):
        path = workflow.name
    return _slug(path) or "lookup"


def _slug(text: str) -> str:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:64]
    return f"n_{slug}" if slug[:1].isdigit() else slug


def _is_reply(node: _Node) -> bool:
    if node.kind in _REPLY:
        return True
    url = node.parameters.get("url")
    return (
        node.kind == "httprequest"
        and isinstance(url, str)
        and bool(re.search(r"/messages/send/?(?:\?|$)", _strip_eq(url).strip()))
    )


def _translate(workflow: _Workflow) -> _Translation:
    webhooks = [n for n in workflow.nodes if n.kind == "webhook"]
    if not webhooks:
        result = _Translation(lookup=_slug(workflow.name) or "lookup")
        result.notes.append(("untranslated", "no Webhook trigger: a lookup starts from one"))
        return result
    result = _Translation(lookup=_lookup_name(webhooks[0], workflow))
    for node in _path_nodes(workflow, webhooks[0]):
        label = f"node {_plain(node.name)!r} ({node.kind})"
        try:
            _step(result, node, label)
            continue
        except _Untranslatable as exc:
            result.notes.append(("untranslated", f"{label}: {exc}"))
        except (AttributeError, TypeError, ValueError, KeyError, IndexError):
            result.notes.append(("untranslated", f"{label}: its parameters are not n8n's shape"))
        if node.kind in _READERS:  # the lookup cannot read what the workflow read
            result.read = None
            break
    if result.read is None and not any(k == "untranslated" for k, _ in result.notes):
        result.notes.append(("untranslated", "no node reads data after the webhook"))
    return result


def _step(result: _Translation, node: _Node, label: str) -> None:
    """What one node on the data path adds to the lookup (or to the report)."""
    if _is_reply(node):
        result.notes.append(("dropped", f"{label}: the reply step; the worker sends the reply"))
    elif node.kind in _FILE_READ:
        raw = node.parameters.get("filePath", node.parameters.get("fileSelector"))
        result.file_path = _strip_eq(raw) if isinstance(raw, str) else None
    elif node.kind in _READERS and result.read is None:
        result.read = _reader(node, result.params, result.file_path)
        result.credential = node.credential
    elif node.kind in _READERS:
        why = "a lookup reads one source; this second read is left out"
        result.notes.append(("untranslated", f"{label}: {why}"))
    elif node.kind in _CODE and result.read is not None and result.template is None:
        result.template = _template(node, result.read.columns)
        why = "write the reply template from its code (kept in a comment)"
        result.notes.append(("todo", f"{label}: {why}"))
    elif node.kind not in _QUIET:
        why = "no equivalent in a lookup; its logic is left out"
        result.notes.append(("untranslated", f"{label}: {why}"))


def _reader(node: _Node, params: _Params, file_path: str | None) -> _Read:
    if node.kind in _SQL_TYPES:
        return _sql_read(node, params)
    if node.kind in {"spreadsheetfile", "extractfromfile"}:
        return _file_read(node, params, file_path)
    readers = {
        "mongodb": _mongodb_read,
        "redis": _redis_read,
        "elasticsearch": _elasticsearch_read,
        "httprequest": _http_read,
        "graphql": _graphql_read,
        "googlesheets": _sheets_read,
        "airtable": _airtable_read,
        "hubspot": _hubspot_read,
        "salesforce": _salesforce_read,
    }
    return readers[node.kind](node, params)


def _template(node: _Node, columns: list[str] | None) -> str:
    p = node.parameters
    code = p.get("jsCode", p.get("functionCode", p.get("pythonCode", p.get("code", ""))))
    code = _plain(str(code)[:_MAX_CODE_CHARS]).replace("#}", "# }")
    lines = "\n".join(f"    {line}" for line in code.splitlines())
    head = (
        f"{{#- From n8n: the {node.kind} node {_plain(node.name).replace('#}', '# }')!r} "
        "wrote the reply with this code.\n"
        "    Turn it into this template (row: the first row, rows: all, params: the job's):\n"
        f"{lines}\n-#}}\n"
    )
    if columns:
        body = "\n".join(
            f"{c.replace('_', ' ').capitalize()}: {{{{ {_row(c)} }}}}" for c in columns
        )
    else:
        body = "{% for key, value in row.items() %}{{ key }}: {{ value }}\n{% endfor %}"
    return head + body + "\n"


def _row(column: str) -> str:
    """``row.status``; ``row["items"]`` where the name is also a dict method in Jinja."""
    return f'row["{column}"]' if hasattr(dict, column) else f"row.{column}"


# -- the config ---------------------------------------------------------------------


@dataclass
class _Source:
    id: str
    read: _Read
    queries: dict[str, Any] = field(default_factory=dict)


class _Sources:
    """Sources by credential: the same credential (and type, and host) gives one source."""

    def __init__(self) -> None:
        self.by_id: dict[str, _Source] = {}

    def add(self, credential: str | None, read: _Read, lookup: str) -> _Source:
        base = _slug(credential) if credential else read.hint
        base = base or read.type
        identity = (read.type, read.origin, json.dumps(read.connection, sort_keys=True))
        candidate, n = base, 1
        while candidate in self.by_id:
            existing = self.by_id[candidate].read
            if (
                existing.type,
                existing.origin,
                json.dumps(existing.connection, sort_keys=True),
            ) == identity:
                break
            n += 1
            candidate = f"{base}_{n}"
        source = self.by_id.setdefault(candidate, _Source(candidate, read))
        source.queries[lookup] = read.query
        return source

    def documents(self) -> tuple[list[dict[str, Any]], list[str]]:
        env: list[str] = []
        out = []
        for source in self.by_id.values():
            prefix = "N8N_" + source.id.upper() + "_"

            def fill(value: Any, prefix: str = prefix) -> Any:
                if isinstance(value, str):
                    for name in _ENV_MARK.findall(value):
                        if prefix + name not in env:
                            env.append(prefix + name)
                    return _ENV_MARK.sub(lambda m: "${env:" + prefix + m.group(1) + "}", value)
                if isinstance(value, Mapping):
                    return {k: fill(v) for k, v in value.items()}
                return value

            connection = fill(dict(source.read.connection))
            queries = source.queries
            if source.read.type == "rest_api":
                connection["base_url"], queries = _rebase(connection["base_url"], queries)
            out.append(
                {
                    "id": source.id,
                    "type": source.read.type,
                    "connection": connection,
                    "queries": queries,
                }
            )
        return out, env


def _rebase(origin: str, queries: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The paths' shared fixed segments move into ``base_url``; each keeps one at least."""
    splits = [q["path"].strip("/").split("/") for q in queries.values()]
    common: list[str] = []
    for parts in zip(*(s[:-1] for s in splits), strict=False):
        if (
            len(set(parts)) != 1
            or "{" in parts[0]
            or len(common) >= min(len(s) - 1 for s in splits)
        ):
            break
        common.append(parts[0])
    rebased = {}
    for (name, query), parts in zip(queries.items(), splits, strict=True):
        rest = dict(query)
        rest["path"] = "/" + "/".join(parts[len(common) :])
        rebased[name] = rest
    return origin + "".join("/" + c for c in common), rebased


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def import_documents(documents: Sequence[tuple[str, Any]], tenant_id: str) -> ImportResult:
    """Parsed exports (``(file name, JSON)``) as one tenant config and a report."""
    workflows = [wf for file, document in documents for wf in _workflows(document, file)]
    sources = _Sources()
    lookups: dict[str, Any] = {}
    notes: list[Note] = []
    used: dict[str, str] = {}
    for workflow in workflows:
        translation = _translate(workflow)
        title = f"workflow {workflow.name!r}"
        notes.extend(Note(workflow.file, title, kind, text) for kind, text in translation.notes)
        if translation.read is None:
            continue
        name, n = translation.lookup, 1
        while name in lookups:
            n += 1
            name = f"{translation.lookup}_{n}"
        if n > 1:
            notes.append(
                Note(workflow.file, title, "todo", f"lookup renamed {name}: its path was taken")
            )
        source = sources.add(translation.credential, translation.read, name)
        notes.extend(Note(workflow.file, title, "todo", t) for t in translation.read.todo)
        about = _plain(f"imported from n8n: {workflow.name} ({Path(workflow.file).name})")
        lookup: dict[str, Any] = {"description": about}
        lookup.update(source=source.id, query=name)
        if translation.read.args is not None:
            lookup["args"] = translation.read.args
        if translation.params.names:
            lookup["params"] = {p: {"type": _guess_type(p)} for p in translation.params.names}
        if translation.template:
            lookup["template"] = translation.template
        lookups[name] = lookup
        used[name] = source.id
    if not lookups:
        return ImportResult(None, notes, {}, [])
    data_sources, env = sources.documents()
    document = {"tenant_id": tenant_id, "data_sources": data_sources, "lookups": lookups}
    files = ", ".join(dict.fromkeys(Path(f).name for f, _ in documents))
    header = [f"# Imported from n8n by `worker import-n8n` ({files}).", "#"]
    header += ["# Set before `worker config check`:"] + [f"#   {e}" for e in env]
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000)
    return ImportResult("\n".join(header) + "\n" + text, notes, used, env)


def import_files(paths: Sequence[Path], tenant_id: str) -> ImportResult:
    """`import_documents` on files; an unreadable or non-workflow file is `InvalidWorkflow`."""
    return import_documents([(str(path), _read_file(path)) for path in paths], tenant_id)
