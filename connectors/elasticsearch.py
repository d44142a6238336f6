"""Elasticsearch sources through the official asyncio client (`AsyncElasticsearch`).

A query is one of three reads, told apart by its keys::

    {"index": "products", "query": {"term": {"sku": "{sku}"}}, "size": 5, "_source": ["name"]}
    {"index": "products", "id": "{sku}"}                        # get one document by id
    {"index": "products", "query": {"term": {"brand": "{brand}"}}, "count": true}

A search answers its hits' ``_source`` as rows, each with its ``_id``; a get
answers the document (a 404 is ``not_found``); a count answers ``{"count": n}``.

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
        kwargs = {
            "index": self.index,
            "query": query,
            "size": min(self.size or max_rows, max_rows),
            "timeout": f"{max(1, math.ceil(timeout_s * 1000))}ms",
            "allow_partial_search_results": False,
            "track_total_hits": False,
        }
        if self.sort is not None:
            kwargs["sort"] = self.sort
        if self.source is not None:
            kwargs["source"] = self.source
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
    extra: ClassVar[str | None] = "elasticsearch"

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
        return PreparedQuery(spec=spec, names=placeholder_names([spec.id, spec.query]))

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
                    rows = await self._search(client, request.kwargs)
        return ReadResult.of_rows(self.cap_rows(rows))

    async def _search(
        self, client: AsyncElasticsearch, kwargs: dict[str, Any]
    ) -> list[dict[str, Any]]:
        answer = await client.search(**kwargs)
        if answer.get("timed_out"):
            raise SourceTimeout(self.source_id, "the search passed its deadline on the server")
        return [_hit_row(hit) for hit in answer["hits"]["hits"]]

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
