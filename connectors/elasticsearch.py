"""Elasticsearch sources through the official asyncio client (`AsyncElasticsearch`).

A query is one of three reads, told apart by its keys::

    {"index": "products", "query": {"term": {"sku": "{sku}"}}, "size": 5, "_source": ["name"]}
    {"index": "products", "id": "{sku}"}                        # get one document by id
    {"index": "products", "query": {"term": {"brand": "{brand}"}}, "count": true}

A search answers its hits' ``_source`` as rows, each with its ``_id``; a get
answers the document (a 404 is ``not_found``); a count answers ``{"count": n}``.

A search may carry ``aggs`` (read-only aggregations, checked when the config
loads; see `AGG_TYPES`)::

    {"index": "orders", "query": {"term": {"customer_phone": "{customer_phone}"}},
     "aggs": {"by_status": {"terms": {"field": "status", "size": 5},
                            "aggs": {"spent": {"sum": {"field": "total"}}}},
              "average": {"avg": {"field": "total"}}}}

Only the types of `AGG_TYPES` with their listed options, at most
``_MAX_AGGS`` aggregations ``_MAX_DEPTH`` deep; a bucket aggregation's
``size`` is at most ``max_rows`` (terms asks for 10 when none is given), a
``top_hits`` ``size`` at most ``_MAX_TOP_HITS``; no scripts. ``{name}`` may
stand only in the query clauses of ``filter`` / ``filters`` (bound as in the
query); fields, sizes and bounds are fixed in the config. Without ``size`` an
aggregation search asks for no hits. The answer:

- ``data``: ``{"aggs": {name: value}, "hits": [rows]}``, where a metric's value
  is its number (or null), ``top_hits`` a list of hit rows, ``filter`` a
  mapping ``{"doc_count", sub-aggregations…}``, and a bucket aggregation
  (terms, histogram, date_histogram, range, filters) a list of buckets
  ``{"key", "key_as_string"?, "from"?, "to"?, "doc_count", sub-aggregations…}``
  (keyed answers come back as the same list);
- ``rows``: the buckets of the aggregation named by ``"rows"`` in the query,
  else of the first bucket aggregation; when there is none, one row of the
  top-level aggregations ``{name: value}``.

No bucket, no metric with a value, no top hit and no filter that matched
(nor any hit) is *not found*.

What is enforced, and where:

- Only ``search``, ``get`` and ``count`` are ever called. `prepare` refuses
  keys it does not know (``ConfigError``), keys that name a write
  (``document``, ``doc``, ``upsert``, ``operations``, ``script``, …:
  `NotARead`), and script-bearing clauses anywhere in the query or sort
  (``script``, ``script_score``, ``runtime_mappings``, ``script_fields``,
  ``_script``): reads stay cheap and run no code. The index is fixed in the
  config, never taken from a parameter. Elasticsearch has no read-only
  session: give the source an API key (or user) whose role has only the
  ``read`` (and ``view_index_metadata``) privilege on its indices.
- Parameters are typed values, never query clauses: a string that is exactly
  ``{name}`` becomes the parameter's JSON value, so ``*`` or
  ``{"match_all": {}}`` sent as a parameter is a string to match. Where a
  string is itself parsed as a pattern the parameter is made literal: inside
  ``wildcard`` its ``*``, ``?`` and ``\\`` are escaped, inside ``regexp`` every
  regex operator is, and in the ``query`` text of ``query_string`` /
  ``simple_query_string`` each parameter is inserted as one quoted phrase.
- The deadline reaches the server: each call has ``request_timeout =
  timeout_s`` and a search also sends ``timeout`` in its body (the shards stop
  collecting then); a search that timed out on a shard is `SourceTimeout`,
  not a partial answer (``allow_partial_search_results`` is off too). A get
  or count has no body timeout: when the caller gives up, the client closes
  the HTTP connection, and Elasticsearch cancels a search-type task whose
  client went away.
- At most ``max_rows`` hits are asked for (``size``), never all then sliced.

The client keeps a pool of ``pool_size`` HTTP connections per node and
reconnects by itself. Client 9.x speaks to Elasticsearch 9 (and 8.x clients to
8.x servers: pin ``elasticsearch<9`` for an 8.x cluster); it refuses servers
that are not Elasticsearch (OpenSearch among them).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import TlsError
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    ConnectionTimeout,
    NotFoundError,
    SerializationError,
    TransportError,
    UnsupportedProductError,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
    NotARead,
    PreparedQuery,
    ReadResult,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    bind_placeholders,
    jsonable,
    placeholder_names,
    validate_query,
)
from connectors.network import NetworkAccess, SSHSettings, TLSSettings

__all__ = [
    "AGG_TYPES",
    "ElasticsearchConnector",
    "ElasticsearchQuery",
    "ElasticsearchSettings",
    "SearchRequest",
    "translate_error",
]

_HEALTH_TIMEOUT_S = 10.0
_MAX_SIZE = 10_000

#: clauses that run scripts: refused anywhere in a query, sort or _source
_SCRIPT_KEYS = frozenset(
    {"script", "script_score", "runtime_mappings", "script_fields", "_script", "scripted_metric"}
)
#: top-level keys that belong to a write API (index, update, bulk, reindex…)
_WRITE_KEYS = frozenset(
    {"document", "doc", "upsert", "operations", "script", "dest", "doc_as_upsert", "refresh"}
)
#: top-level keys naming an API call: anything but a read is refused
_API_KEYS = frozenset({"op", "operation", "action", "api", "method"})
_READ_APIS = frozenset({"search", "get", "count"})

#: aggregation types a query may use, and the options each may take
AGG_TYPES: dict[str, frozenset[str]] = {
    "terms": frozenset(
        {"field", "size", "shard_size", "min_doc_count", "order", "missing", "include", "exclude"}
    ),
    **{
        metric: frozenset({"field", "missing", "format"})
        for metric in ("avg", "sum", "min", "max", "value_count")
    },
    "cardinality": frozenset({"field", "missing", "precision_threshold"}),
    "date_histogram": frozenset(
        {
            "field", "calendar_interval", "fixed_interval", "format", "time_zone",
            "min_doc_count", "extended_bounds", "hard_bounds", "order", "offset", "missing",
            "keyed",
        }
    ),
    "histogram": frozenset(
        {
            "field", "interval", "min_doc_count", "extended_bounds", "hard_bounds", "order",
            "offset", "missing", "keyed",
        }
    ),
    "range": frozenset({"field", "ranges", "keyed", "missing", "format"}),
    "filter": frozenset(),  # its body is a query clause
    "filters": frozenset({"filters", "other_bucket", "other_bucket_key"}),
    "top_hits": frozenset({"size", "from", "sort", "_source"}),
}  # fmt: skip
_METRICS = frozenset({"avg", "sum", "min", "max", "value_count", "cardinality"})
_BUCKETS = frozenset({"terms", "histogram", "date_histogram", "range", "filters"})
_MAX_AGGS = 20
_MAX_DEPTH = 3
_MAX_TOP_HITS = 10
_MAX_SHARD_SIZE = 1_000

_Context = Literal["value", "wildcard", "regexp", "query_string", "query_text"]
_REGEXP_OPERATORS = re.compile(r'([.?+*|{}\[\]()"\\#@&<>~])')


# -- settings and queries ----------------------------------------------------


class ElasticsearchSettings(ConnectionSettings):
    """``connection`` of an ``elasticsearch`` source."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: the cluster's address, ``https://host:9200``
    url: str = Field(min_length=1)
    #: an API key (the encoded form Kibana shows), or username and password
    api_key: SecretStr | None = None
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    #: check the server's certificate (https only)
    verify_certs: bool = True
    #: a CA bundle to check it with, relative to the tenant config's folder
    ca_certs: str | None = Field(default=None, min_length=1)
    #: TLS (instead of verify_certs/ca_certs) and an SSH bastion (connectors.network)
    ssl: TLSSettings | None = None
    ssh: SSHSettings | None = None
    #: HTTP connections kept per node
    pool_size: int = Field(default=10, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _is_http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, like https://search.local:9200")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not hold credentials: use username/password or api_key")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query string or fragment")
        return value.strip()

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> ElasticsearchSettings:
        if self.api_key is not None and (self.username is not None or self.password is not None):
            raise ValueError("give api_key, or username and password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.ca_certs is not None and not self.url.startswith("https://"):
            raise ValueError("ca_certs needs an https:// url")
        return self


class ElasticsearchQuery(BaseModel):
    """A configured read: a search, a get (``id``) or a count (``count: true``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: str = Field(min_length=1, max_length=1000)
    id: str | None = Field(default=None, min_length=1)
    query: dict[str, Any] | None = None
    size: int | None = Field(default=None, ge=1, le=_MAX_SIZE)
    sort: list[Any] | dict[str, Any] | str | None = None
    source: bool | list[str] | dict[str, Any] | None = Field(default=None, alias="_source")
    count: bool = False
    aggs: dict[str, Any] | None = Field(default=None, min_length=1, max_length=_MAX_AGGS)
    #: which bucket aggregation gives the rows (the first one when absent)
    rows: str | None = Field(default=None, min_length=1)

    @field_validator("index")
    @classmethod
    def _fixed_index(cls, value: str) -> str:
        if placeholder_names(value):
            raise ValueError("is fixed in the config: parameters go in the query, not here")
        return value

    @model_validator(mode="after")
    def _one_read(self) -> ElasticsearchQuery:
        if self.id is not None:
            extra = [k for k in ("query", "size", "sort") if getattr(self, k) is not None]
            if extra or self.count:
                raise ValueError(f"a get (id) takes no {', '.join(extra) or 'count'}")
            if isinstance(self.source, dict):
                raise ValueError("a get takes _source as true/false or a list of fields")
        if self.count and (self.size, self.sort, self.source) != (None, None, None):
            raise ValueError("a count takes only index and query")
        if self.aggs is not None and (self.id is not None or self.count):
            raise ValueError("aggs belong to a search, not a get or a count")
        if self.aggs is not None:
            _check_aggs(self.aggs, ("aggs",), depth=1, seen=[0])
            buckets = [name for name, body in self.aggs.items() if _agg_type(body) in _BUCKETS]
            if self.rows is not None and self.rows not in buckets:
                raise ValueError(
                    f"rows names no top-level bucket aggregation (there are: "
                    f"{', '.join(buckets) or 'none'})"
                )
        elif self.rows is not None:
            raise ValueError("rows names an aggregation: it needs aggs")
        return self

    def request(
        self, params: Mapping[str, Any], *, max_rows: int, timeout_s: float
    ) -> SearchRequest:
        """The API call to make, with parameters bound as typed values.

        Raises `ValueError` for a parameter that is not a plain value.
        """
        values = {name: _json_param(name, value) for name, value in params.items()}
        if self.id is not None:
            doc_id = bind_placeholders(self.id, values)
            kwargs: dict[str, Any] = {"index": self.index, "id": "" if doc_id is None else doc_id}
            if self.source is not None:
                kwargs["source"] = self.source
            return SearchRequest("get", kwargs)
        query = _bind(self.query or {"match_all": {}}, values, "value")
        if self.count:
            return SearchRequest("count", {"index": self.index, "query": query})
        default_size = 0 if self.aggs is not None else max_rows
        kwargs = {
            "index": self.index,
            "query": query,
            "size": min(default_size if self.size is None else self.size, max_rows),
            "timeout": f"{max(1, math.ceil(timeout_s * 1000))}ms",
            "allow_partial_search_results": False,
            "track_total_hits": False,
        }
        if self.sort is not None:
            kwargs["sort"] = self.sort
        if self.source is not None:
            kwargs["source"] = self.source
        if self.aggs is not None:
            kwargs["aggs"] = _bind_aggs(self.aggs, values, max_rows)
        return SearchRequest("search", kwargs)


@dataclass(frozen=True)
class SearchRequest:
    """One bound read: the client method and its keyword arguments."""

    api: Literal["search", "get", "count"]
    kwargs: dict[str, Any] = field(default_factory=dict)


# -- the connector -------------------------------------------------------------


class ElasticsearchConnector(Connector):
    """An Elasticsearch cluster, read with search, get and count."""

    type_name: ClassVar[str] = "elasticsearch"
    Settings: ClassVar[type[ConnectionSettings]] = ElasticsearchSettings
    query_shape: ClassVar[str] = (
        '{"index": "products", "query": {"term": {"sku": "{sku}"}}, "size": 5, '
        '"_source": [...]}, or {"index": …, "id": "{sku}"}, or {"index": …, "count": true, '
        '"query": …}'
    )

    settings: ElasticsearchSettings

    def setup(self) -> None:
        self._client: AsyncElasticsearch | None = None
        self._network = NetworkAccess(
            self.source_id, ssl=self.settings.ssl, ssh=self.settings.ssh, base_dir=self.base_dir
        )
        self._route: tuple[str, int] | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"an elasticsearch query is a mapping: {cls.query_shape}")
        _check_not_a_write(raw)
        spec = validate_query(ElasticsearchQuery, raw, cls)
        _check_no_scripts(spec.query)
        _check_no_scripts(spec.sort)
        _check_no_scripts(spec.source)
        if placeholder_names([spec.sort, spec.source]):
            raise ConfigError("sort and _source are fixed in the config: no {placeholders}")
        return PreparedQuery(spec=spec, names=placeholder_names([spec.id, spec.query, spec.aggs]))

    async def open(self) -> None:
        if self.settings.ssh is not None and self._route is None:
            node = urlsplit(self.settings.url)
            port = node.port or (443 if node.scheme == "https" else 9200)
            self._route = await self._network.route(node.hostname or "localhost", port)
        self._ensure_open()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        await self._network.close()
        self._route = None

    async def health_check(self) -> None:
        client = self._ensure_open()
        with self._translating():
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                try:
                    await client.options(request_timeout=_HEALTH_TIMEOUT_S).info()
                except AuthorizationException:
                    # Reached and logged in; a read-only key may not see cluster info.
                    return

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, ElasticsearchQuery):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        try:
            request = spec.request(bound.params, max_rows=self.limits.max_rows, timeout_s=timeout_s)
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        if request.api == "get" and str(request.kwargs["id"]).strip(".") == "":
            # "", "." and ".." are no document id, and would change the URL's path.
            return ReadResult(rows=[])
        client = self._ensure_open().options(request_timeout=timeout_s)
        with self._translating():
            async with asyncio.timeout(timeout_s):
                if request.api == "count":
                    counted = (await client.count(**request.kwargs))["count"]
                    return ReadResult(rows=[{"count": counted}], data=counted)
                if request.api == "get":
                    rows = await _get(client, request.kwargs)
                else:
                    answer = await self._search(client, request.kwargs)
                    rows = [_hit_row(hit) for hit in answer["hits"]["hits"]]
                    if spec.aggs is not None:
                        return self._aggregated(spec, answer, rows)
        return ReadResult.of_rows(self.cap_rows(rows))

    async def _search(self, client: AsyncElasticsearch, kwargs: dict[str, Any]) -> Any:
        answer = await client.search(**kwargs)
        if answer.get("timed_out"):
            raise SourceTimeout(self.source_id, "the search passed its deadline on the server")
        return answer

    def _aggregated(
        self, spec: ElasticsearchQuery, answer: Any, hits: list[dict[str, Any]]
    ) -> ReadResult:
        """An aggregation search's answer as ``data`` and ``rows`` (module docstring)."""
        aggs = spec.aggs or {}
        raw = answer.get("aggregations")
        if not isinstance(raw, Mapping):
            raise self.fail("the answer has no aggregations")
        try:
            values = _agg_values(aggs, raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise self.fail(f"the aggregations' answer has an unexpected shape ({exc!r})") from None
        data = jsonable({"aggs": values, "hits": hits})
        named = spec.rows or next((n for n, b in aggs.items() if _agg_type(b) in _BUCKETS), None)
        if named is not None:
            rows = self.cap_rows(data["aggs"][named])
        else:
            row = data["aggs"]
            rows = [row] if any(_has_value(v) for v in row.values()) else []
        if not rows and not hits:
            return ReadResult(rows=[])
        return ReadResult(rows=rows, data=data)

    def _ensure_open(self) -> AsyncElasticsearch:
        if self._client is None:
            self._client = AsyncElasticsearch(**self._client_options())
        return self._client

    def _client_options(self) -> dict[str, Any]:
        """Every option of the client: the one place the node, TLS, credentials
        and pool are decided (a tunnel, later, changes only this)."""
        settings = self.settings
        url = settings.url
        if self._route is not None:  # through the SSH tunnel's local end
            node = urlsplit(url)
            url = node._replace(netloc=f"{self._route[0]}:{self._route[1]}").geturl()
        options: dict[str, Any] = {
            "hosts": [url],
            "connections_per_node": settings.pool_size,
            "request_timeout": _HEALTH_TIMEOUT_S,
            # One retry: a pooled connection the server closed (a restart) is
            # replaced once; a timeout is final, the deadline has passed.
            "max_retries": 1,
            "retry_on_timeout": False,
            "retry_on_status": (),
        }
        tls = self._network.tls()
        if tls is not None and settings.url.startswith("https://"):
            options["ssl_context"] = tls
        elif settings.url.startswith("https://"):
            options["verify_certs"] = settings.verify_certs
            if settings.ca_certs is not None:
                options["ca_certs"] = str(self.resolve_path(settings.ca_certs))
        if settings.api_key is not None:
            options["api_key"] = settings.api_key.get_secret_value()
        elif settings.username is not None and settings.password is not None:
            options["basic_auth"] = (settings.username, settings.password.get_secret_value())
        return options

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place."""
        try:
            yield
        except TimeoutError as exc:
            message = "the read passed its deadline; the server was told the same timeout"
            raise SourceTimeout(self.source_id, message) from exc
        except (TransportError, ApiError, UnsupportedProductError) as exc:
            raise translate_error(self.source_id, exc) from exc


async def _get(client: AsyncElasticsearch, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        answer = await client.get(**kwargs)
    except NotFoundError as exc:
        if isinstance(exc.body, Mapping) and exc.body.get("found") is False:
            return []  # the index is there, the document is not
        raise
    return [_hit_row(answer.body)] if answer.get("found") else []


def _hit_row(hit: Mapping[str, Any]) -> dict[str, Any]:
    source = hit.get("_source")
    return {"_id": hit.get("_id"), **(source if isinstance(source, Mapping) else {})}


def translate_error(source_id: str, exc: Exception) -> SourceError:
    """A client error as a `SourceError` whose text holds no secret or value.

    Server reasons can quote the values a query compared with, so only the
    status and Elasticsearch's error types are kept.
    """
    if isinstance(exc, AuthenticationException):
        return SourceAuthError(
            source_id, "authentication failed (401): check api_key or username/password"
        )
    if isinstance(exc, AuthorizationException):
        return SourceAuthError(
            source_id, "not authorized (403): the credentials may not read this index"
        )
    if isinstance(exc, ConnectionTimeout):
        return SourceTimeout(source_id, "no answer within the deadline (request timeout)")
    if isinstance(exc, TlsError):
        return SourceUnavailable(
            source_id, "the TLS handshake failed: check the url, verify_certs and ca_certs"
        )
    if isinstance(exc, TransportConnectionError):
        return SourceUnavailable(
            source_id, "cannot connect to Elasticsearch (refused, DNS or unreachable)"
        )
    if isinstance(exc, UnsupportedProductError):
        return SourceError(source_id, "the server at url is not Elasticsearch")
    if isinstance(exc, ApiError):
        kind = _error_types(exc.body)
        if isinstance(exc, NotFoundError):
            return SourceError(source_id, f"not found (404: {kind}): does the index exist?")
        return SourceError(source_id, f"elasticsearch refused the read ({exc.meta.status}: {kind})")
    if isinstance(exc, SerializationError):
        return SourceError(source_id, "the answer could not be decoded")
    return SourceError(source_id, f"elasticsearch failed ({type(exc).__name__})")


def _error_types(body: Any) -> str:
    """``type`` and the root cause's ``type`` of an error body: no reasons, no values."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return "no error type"
    kind = str(error.get("type") or "no error type")
    causes = error.get("root_cause")
    if isinstance(causes, list) and causes and isinstance(causes[0], Mapping):
        root = causes[0].get("type")
        if root and root != kind:
            return f"{kind}, caused by {root}"
    return kind


# -- checks at load time ------------------------------------------------------------


def _check_not_a_write(raw: Mapping[str, Any]) -> None:
    writes = sorted(set(raw) & _WRITE_KEYS)
    if writes:
        raise NotARead(
            f"only reads are allowed: {writes[0]!r} belongs to a write; an elasticsearch "
            "query is a search, a get (id) or a count"
        )
    for key in sorted(set(raw) & _API_KEYS):
        api = str(raw[key]).strip().lower()
        if api not in _READ_APIS:
            raise NotARead(f"only search, get and count are allowed, not {raw[key]!r}")
        raise ConfigError(f"drop {key!r}: the query's keys say which read it is")


def _check_no_scripts(node: Any) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in _SCRIPT_KEYS:
                raise ConfigError(f"{key} runs a script and is not allowed in a lookup")
            _check_no_scripts(value)
    elif isinstance(node, list | tuple):
        for value in node:
            _check_no_scripts(value)


# -- binding ------------------------------------------------------------------------


def _json_param(name: str, value: Any) -> Any:
    """A parameter as a JSON value of its own type."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal | dt.date | dt.datetime | dt.time):
        return jsonable(value)
    if isinstance(value, Mapping):
        # Parameters are data: a mapping could be a query clause.
        raise ValueError(f"parameter {name!r} is a mapping; parameters must be plain values")
    if isinstance(value, list | tuple):
        return [_json_param(name, item) for item in value]
    return str(value)


def _escape_wildcard(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _escape_regexp(text: str) -> str:
    return _REGEXP_OPERATORS.sub(r"\\\1", text)


def _phrase(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TEXT_ESCAPES = {"wildcard": _escape_wildcard, "regexp": _escape_regexp, "query_text": _phrase}


def _bind(node: Any, params: Mapping[str, Any], context: _Context) -> Any:
    if isinstance(node, str):
        escape = _TEXT_ESCAPES.get(context)
        if escape is None or not placeholder_names(node):
            return bind_placeholders(node, params)
        texts = {k: escape("" if v is None else str(v)) for k, v in params.items()}
        return bind_placeholders(node, texts)
    if isinstance(node, Mapping):
        return {key: _bind(value, params, _child(context, key)) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_bind(value, params, context) for value in node]
    return node


def _child(context: _Context, key: str) -> _Context:
    """The binding context of a key's value inside ``context``."""
    if context in ("wildcard", "regexp", "query_text"):
        return context
    if key in ("wildcard", "regexp"):
        return "wildcard" if key == "wildcard" else "regexp"
    if key in ("query_string", "simple_query_string"):
        return "query_string"
    if context == "query_string":
        return "query_text" if key == "query" else "value"
    return "value"


# -- aggregations ---------------------------------------------------------------------


def _agg_type(body: Any) -> str | None:
    """The one aggregation type a body names (its other key may be ``aggs``)."""
    if not isinstance(body, Mapping):
        return None
    kinds = [key for key in body if key not in ("aggs", "aggregations")]
    return kinds[0] if len(kinds) == 1 else None


def _check_aggs(aggs: Any, at: tuple[str, ...], *, depth: int, seen: list[int]) -> None:
    """The allow-list of the module docstring; `ValueError` naming the aggregation's path."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"{'.'.join(at)}: aggregations nest at most {_MAX_DEPTH} deep")
    if not isinstance(aggs, Mapping) or not aggs:
        raise ValueError(f"{'.'.join(at)}: must map names to aggregations")
    for name, body in aggs.items():
        where = ".".join((*at, name))
        seen[0] += 1
        if seen[0] > _MAX_AGGS:
            raise ValueError(f"{where}: at most {_MAX_AGGS} aggregations in one query")
        if placeholder_names(name):
            raise ValueError(f"{where}: an aggregation's name is fixed in the config")
        kind = _agg_type(body)
        if kind is None:
            raise ValueError(f"{where}: must name exactly one aggregation type (and aggs)")
        if kind not in AGG_TYPES:
            raise ValueError(
                f"{where}: {kind!r} is not an allowed aggregation ({', '.join(sorted(AGG_TYPES))})"
            )
        _check_agg_options(kind, body[kind], where)
        subs = body.get("aggs", body.get("aggregations"))
        if "aggs" in body and "aggregations" in body:
            raise ValueError(f"{where}: give aggs or aggregations, not both")
        if subs is not None:
            if kind in _METRICS or kind == "top_hits":
                raise ValueError(f"{where}: a {kind} aggregation takes no sub-aggregations")
            _check_aggs(subs, (where, "aggs"), depth=depth + 1, seen=seen)


def _check_agg_options(kind: str, options: Any, where: str) -> None:
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}.{kind}: must be a mapping")
    try:
        _check_no_scripts(options)
    except ConfigError as exc:
        raise ValueError(f"{where}.{kind}: {exc}") from None
    if kind == "filter":
        return  # a query clause: placeholders allowed, scripts refused above
    unknown = sorted(set(options) - AGG_TYPES[kind])
    if unknown:
        raise ValueError(
            f"{where}.{kind}: {unknown[0]!r} is not an option it may take "
            f"({', '.join(sorted(AGG_TYPES[kind]))})"
        )
    fixed = {k: v for k, v in options.items() if not (kind == "filters" and k == "filters")}
    if placeholder_names(fixed):
        raise ValueError(
            f"{where}.{kind}: parameters go only in filter/filters queries; fields, sizes and "
            "bounds are fixed in the config"
        )
    for key, most in (("size", _MAX_SIZE), ("shard_size", _MAX_SHARD_SIZE), ("from", 100)):
        value = options.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most
        ):
            raise ValueError(f"{where}.{kind}.{key}: must be a whole number from 0 to {most}")


def _bind_aggs(aggs: Mapping[str, Any], values: Mapping[str, Any], max_rows: int) -> dict[str, Any]:
    """The aggregations as sent: parameters bound in filter queries, sizes capped."""
    out: dict[str, Any] = {}
    for name, body in aggs.items():
        kind = _agg_type(body) or ""
        options = dict(body[kind])
        if kind in ("filter", "filters"):
            options = _bind(options, values, "value")
        if kind == "terms":
            options["size"] = min(options.get("size", 10), max_rows)
            if "shard_size" in options:
                options["shard_size"] = max(options["shard_size"], options["size"])
        if kind == "top_hits":
            options["size"] = min(options.get("size", 3), _MAX_TOP_HITS, max_rows)
        sent: dict[str, Any] = {kind: options}
        subs = body.get("aggs", body.get("aggregations"))
        if subs is not None:
            sent["aggs"] = _bind_aggs(subs, values, max_rows)
        out[name] = sent
    return out


def _agg_values(aggs: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """Each aggregation's answer in the plain shape of the module docstring."""
    return {name: _agg_value(body, answer[name]) for name, body in aggs.items()}


def _agg_value(body: Mapping[str, Any], answer: Mapping[str, Any]) -> Any:
    kind = _agg_type(body)
    subs = body.get("aggs", body.get("aggregations")) or {}
    if kind in _METRICS:
        return answer.get("value")
    if kind == "top_hits":
        return [_hit_row(hit) for hit in answer["hits"]["hits"]]
    if kind == "filter":
        return {"doc_count": answer["doc_count"], **_agg_values(subs, answer)}
    buckets = answer["buckets"]
    if isinstance(buckets, Mapping):  # keyed, or named filters
        buckets = [{"key": key, **bucket} for key, bucket in buckets.items()]
    return [_bucket_row(bucket, subs) for bucket in buckets]


def _has_value(value: Any) -> bool:
    """A metric with a number, hits, or a filter that matched something."""
    if isinstance(value, Mapping):
        return bool(value.get("doc_count"))
    return value not in (None, [])


def _bucket_row(bucket: Mapping[str, Any], subs: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"key": bucket.get("key")}
    for extra in ("key_as_string", "from", "to"):
        if extra in bucket:
            row[extra] = bucket[extra]
    row["doc_count"] = bucket["doc_count"]
    row.update(_agg_values(subs, bucket))
    return row
