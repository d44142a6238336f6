"""MongoDB sources through PyMongo's native asyncio client (`AsyncMongoClient`).

A query is a small document: ``find`` with a filter, ``aggregate`` with a
pipeline, ``count_documents``, or the distinct values of one field::

    {"collection": "orders", "filter": {"order_id": "{order_id}"},
     "projection": {"_id": 0, "status": 1}, "sort": [["created_at", -1]], "limit": 1}
    {"collection": "orders", "pipeline": [{"$match": {"phone": "{customer_phone}"}}, …]}
    {"collection": "orders", "filter": {"phone": "{customer_phone}"}, "count": true}
    {"collection": "products", "filter": {"brand": "{brand}"}, "distinct": "category"}

A ``distinct`` read answers the field's values in ascending order, one row
``{"value": …}`` each, and ``data`` the list of them. Like MongoDB's
``distinct`` command it counts each element of an array as a value; unlike it,
it leaves out null (and missing), and it runs as an aggregation (``$match``,
``$project``, ``$unwind``, ``$group``, ``$sort``, ``$limit``) so that the
server sends at most ``max_rows`` values instead of the whole list.

What is enforced, and where:

- Reads only, by allow-list: the connector calls ``find``, ``aggregate`` and
  ``count_documents`` and nothing else (``distinct`` is an aggregation).
  `prepare` refuses a query that names a write (``insert``, ``update``…), a
  pipeline with ``$out`` or ``$merge`` anywhere in it (both write), and
  ``$where``, ``$function`` and ``$accumulator`` anywhere (they run JavaScript
  on the server). MongoDB has no read-only session flag: give the source a
  user with only the ``read`` role so the server refuses writes too.
- Parameters are typed values, never operators: a string that is exactly
  ``{name}`` becomes the parameter's value (``{"$ne": null}`` sent as a
  parameter is the string ``'{"$ne": null}'``). Where a string would be read
  as a field path (aggregation expressions: ``$expr``, ``$project``,
  ``$group``… — anywhere outside a query filter) a parameter starting with
  ``$`` is bound as ``{"$literal": …}``; inside ``$regex`` a parameter is
  matched literally (regex metacharacters escaped).
- The deadline reaches the server: every operation carries
  ``maxTimeMS = timeout_s``, so MongoDB itself stops the query when it passes
  (error 50, `SourceTimeout`); the worker stops waiting at the same moment.
  When the caller gives up earlier than ``timeout_s`` (its own deadline, a
  cancellation) PyMongo drops that connection, and the server's own
  ``maxTimeMS`` still bounds the work left behind.
- An unreachable server fails fast: server selection and connecting wait at
  most ``connect_timeout_s`` (1 s by default), then `SourceUnavailable`.
- At most ``max_rows`` documents (or distinct values) are fetched (``limit`` /
  a final ``$limit`` stage and a matching batch size), never all then sliced.

The client keeps its own pool (``maxPoolSize = pool_size``), discovers the
server again after a restart, and retries a read once on a network error
(``retryReads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from bson import DBRef, Decimal128, ObjectId
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.errors import BSONError
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.regex import Regex
from bson.timestamp import Timestamp
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pymongo import AsyncMongoClient, errors
from pymongo.asynchronous.collection import AsyncCollection

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
    "MongoDBConnector",
    "MongoDBQuery",
    "MongoDBSettings",
    "MongoOperation",
    "bson_to_plain",
    "translate_error",
]

_HEALTH_TIMEOUT_S = 10.0
_APP_NAME = "data-lookup-worker"

#: operators that write
_WRITE_STAGES = frozenset({"$out", "$merge"})
#: operators that run JavaScript on the server
_JS_OPERATORS = frozenset({"$where", "$function", "$accumulator"})
#: query keys that name a write operation: refused as `NotARead`
_WRITE_KEYS = frozenset(
    {
        "insert",
        "insert_one",
        "insert_many",
        "insertOne",
        "insertMany",
        "update",
        "update_one",
        "update_many",
        "updateOne",
        "updateMany",
        "replace",
        "replace_one",
        "replaceOne",
        "delete",
        "delete_one",
        "delete_many",
        "deleteOne",
        "deleteMany",
        "find_one_and_update",
        "find_one_and_replace",
        "find_one_and_delete",
        "findAndModify",
        "upsert",
        "documents",
        "document",
        "bulk_write",
        "bulkWrite",
        "drop",
        "create_index",
        "createIndex",
    }
)
# Pipeline stages whose value is a query filter (strings there are values, not paths).
_QUERY_STAGES = frozenset({"$match"})
# Stages whose values are plain options (numbers, names), never expressions.
_OPTION_STAGES = frozenset({"$limit", "$skip", "$sort", "$count", "$sample"})
# Keys whose value is a nested pipeline.
_NESTED_PIPELINES = {"$lookup": "pipeline", "$unionWith": "pipeline"}

_Context = Literal["query", "expr", "regex"]
# A field path: dotted names, none empty or starting with "$" (an operator).
_FIELD_PATH = re.compile(r"[^.$\x00][^.\x00]*(?:\.[^.$\x00][^.\x00]*)*")


# -- settings and queries ----------------------------------------------------


class MongoDBSettings(ConnectionSettings):
    """``connection`` of a ``mongodb`` source."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: ``mongodb://user:password@host:27017/?authSource=admin`` or ``mongodb+srv://…``
    uri: SecretStr
    #: the database the queries' collections live in
    database: str = Field(min_length=1, max_length=63)
    #: connections kept per server (``maxPoolSize``)
    pool_size: int = Field(default=10, ge=1, le=100)
    #: how long to look for a server, and to open a connection, before giving up
    connect_timeout_s: float = Field(default=1.0, gt=0, le=30)
    #: TLS options (tls, tlsCAFile, tlsCertificateKeyFile) from an ssl block, and an
    #: SSH bastion in front of a single server (connectors.network)
    ssl: TLSSettings | None = None
    ssh: SSHSettings | None = None

    @field_validator("uri")
    @classmethod
    def _is_mongodb_uri(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if not text.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must be a MongoDB connection string: mongodb://… or mongodb+srv://…")
        return SecretStr(text)

    @field_validator("database")
    @classmethod
    def _is_database_name(cls, value: str) -> str:
        if re.search(r'[/\\. "$*<>:|?\x00]', value):
            raise ValueError("is not a MongoDB database name")
        return value


class MongoDBQuery(BaseModel):
    """A configured read: ``filter`` (find), ``pipeline`` (aggregate), ``count`` or ``distinct``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    collection: str = Field(min_length=1, max_length=255)
    filter: dict[str, Any] | None = None
    pipeline: list[dict[str, Any]] | None = None
    projection: dict[str, Any] | list[str] | None = None
    sort: list[tuple[str, Literal[1, -1]]] | dict[str, Literal[1, -1]] | None = None
    limit: int | None = Field(default=None, ge=1)
    skip: int = Field(default=0, ge=0)
    count: bool = False
    #: the field whose distinct values are read (a dotted path), fixed in the config
    distinct: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("collection")
    @classmethod
    def _fixed_collection(cls, value: str) -> str:
        if placeholder_names(value):
            raise ValueError("is fixed in the config: parameters go in the filter, not here")
        if "$" in value or "\x00" in value:
            raise ValueError("is not a collection name")
        return value

    @field_validator("distinct")
    @classmethod
    def _is_field_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if placeholder_names(value):
            raise ValueError("is fixed in the config: parameters go in the filter, not here")
        if not _FIELD_PATH.fullmatch(value):
            raise ValueError(
                "is not a field path: dotted field names, none empty or starting with '$'"
            )
        return value

    def bind(self, params: Mapping[str, Any], *, max_rows: int) -> MongoOperation:
        """The operation to run, with parameters bound as typed values.

        Raises `ValueError` for a parameter that is not a plain value.
        """
        values = {name: _bson_param(name, value) for name, value in params.items()}
        cap = min(self.limit or max_rows, max_rows)
        if self.pipeline is not None:
            stages = _bind_pipeline(self.pipeline, values)
            if self.skip:
                stages.append({"$skip": self.skip})
            return MongoOperation(
                kind="aggregate",
                collection=self.collection,
                pipeline=[*stages, {"$limit": cap}],
                limit=cap,
            )
        query = _bind(self.filter or {}, values, "query")
        if self.distinct is not None:
            return MongoOperation(
                kind="distinct",
                collection=self.collection,
                pipeline=_distinct_pipeline(self.distinct, query, cap),
                limit=cap,
            )
        if self.count:
            return MongoOperation(
                kind="count", collection=self.collection, filter=query, limit=self.limit or 0
            )
        sort = list(self.sort.items()) if isinstance(self.sort, dict) else self.sort
        return MongoOperation(
            kind="find",
            collection=self.collection,
            filter=query,
            projection=self.projection,
            sort=[(field, direction) for field, direction in sort] if sort else None,
            skip=self.skip,
            limit=cap,
        )


@dataclass(frozen=True)
class MongoOperation:
    """One bound read: what `MongoDBConnector.run` sends to the server."""

    kind: Literal["find", "aggregate", "count", "distinct"]
    collection: str
    filter: dict[str, Any] | None = None
    pipeline: list[dict[str, Any]] | None = None
    projection: dict[str, Any] | list[str] | None = None
    sort: list[tuple[str, int]] | None = None
    skip: int = 0
    #: at most this many documents (0 for ``count``: no limit)
    limit: int = 0


# -- the connector -------------------------------------------------------------


class MongoDBConnector(Connector):
    """A MongoDB database, read with ``find``, ``aggregate`` and ``count_documents``."""

    type_name: ClassVar[str] = "mongodb"
    Settings: ClassVar[type[ConnectionSettings]] = MongoDBSettings
    query_shape: ClassVar[str] = (
        '{"collection": "orders", "filter": {"order_id": "{order_id}"}, "projection": {…}, '
        '"sort": [["field", 1]], "limit": 1}, or "pipeline": […] instead of filter, '
        'or "count": true, or "distinct": "field"'
    )

    settings: MongoDBSettings

    def setup(self) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._network = NetworkAccess(
            self.source_id, ssl=self.settings.ssl, ssh=self.settings.ssh, base_dir=self.base_dir
        )
        self._route: tuple[str, int] | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a mongodb query is a mapping: {cls.query_shape}")
        writes = sorted(set(raw) & _WRITE_KEYS)
        if writes:
            raise NotARead(
                f"only reads are allowed: {writes[0]!r} writes; a mongodb query is a find "
                "(filter), an aggregate (pipeline), a count or a distinct"
            )
        spec = validate_query(MongoDBQuery, raw, cls)
        _check_shape(spec)
        for part in (spec.filter, spec.pipeline, spec.projection):
            _check_operators(part)
        if placeholder_names([spec.projection, spec.sort]):
            raise ConfigError("projection and sort are fixed in the config: no {placeholders}")
        names = placeholder_names(spec.pipeline if spec.pipeline is not None else spec.filter)
        return PreparedQuery(spec=spec, names=names)

    async def open(self) -> None:
        if self.settings.ssh is not None and self._route is None:
            host, port = _single_server(self.settings.uri.get_secret_value())
            self._route = await self._network.route(host, port)
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
                await client.admin.command("ping", maxTimeMS=int(_HEALTH_TIMEOUT_S * 1000))

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if not isinstance(spec, MongoDBQuery):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        try:
            operation = spec.bind(bound.params, max_rows=self.limits.max_rows)
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        collection = self._ensure_open()[self.settings.database][operation.collection]
        max_time_ms = max(1, math.ceil(timeout_s * 1000))
        with self._translating():
            async with asyncio.timeout(timeout_s):
                if operation.kind == "count":
                    options: dict[str, Any] = {"maxTimeMS": max_time_ms}
                    if operation.limit:
                        options["limit"] = operation.limit
                    counted = await collection.count_documents(operation.filter or {}, **options)
                    return ReadResult(rows=[{"count": counted}], data=counted)
                documents = await _fetch(collection, operation, max_time_ms)
        if operation.kind == "distinct":
            values = [bson_to_plain(d.get("_id")) for d in documents][: self.limits.max_rows]
            return ReadResult(rows=[{"value": value} for value in values], data=values)
        return ReadResult.of_rows(self.cap_rows([bson_to_plain(d) for d in documents]))

    def _ensure_open(self) -> AsyncMongoClient[dict[str, Any]]:
        if self._client is None:
            with self._translating():
                uri = self.settings.uri.get_secret_value()
                if self._route is not None:  # the tunnel's local end, that one server only
                    uri = _rehost(uri, *self._route)
                self._client = AsyncMongoClient(uri, **self._client_options())
        return self._client

    def _client_options(self) -> dict[str, Any]:
        """Every option of the client but the URI: the one place pool, timeouts
        (and, later, TLS and a tunnel's local address) are decided."""
        timeout_ms = max(1, math.ceil(self.settings.connect_timeout_s * 1000))
        options: dict[str, Any] = {}
        if self._route is not None:  # the tunnel's local end, straight to that one server
            options["directConnection"] = True
        tls = self.settings.ssl
        if tls is not None and tls.mode != "disable":
            options["tls"] = True
            options["tlsAllowInvalidCertificates"] = tls.mode == "require"
            options["tlsAllowInvalidHostnames"] = tls.mode != "verify-full"
            if tls.ca_file:
                options["tlsCAFile"] = str(self.resolve_path(tls.ca_file))
            if tls.cert_file:
                options["tlsCertificateKeyFile"] = str(self.resolve_path(tls.cert_file))
        return options | {
            "maxPoolSize": self.settings.pool_size,
            "serverSelectionTimeoutMS": timeout_ms,
            "connectTimeoutMS": timeout_ms,
            "appname": _APP_NAME,
            "retryReads": True,
            "retryWrites": False,
            "tz_aware": True,
            "tzinfo": dt.UTC,
            "uuidRepresentation": "standard",
            "datetime_conversion": DatetimeConversion.DATETIME_AUTO,
        }

    @contextlib.contextmanager
    def _translating(self) -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place."""
        try:
            yield
        except TimeoutError as exc:
            message = "the query passed its deadline; the server stops it there too (maxTimeMS)"
            raise SourceTimeout(self.source_id, message) from exc
        except (errors.PyMongoError, BSONError) as exc:
            raise translate_error(self.source_id, exc) from exc


async def _fetch(
    collection: AsyncCollection[dict[str, Any]], operation: MongoOperation, max_time_ms: int
) -> list[dict[str, Any]]:
    """The documents of a find, aggregate or distinct: at most ``operation.limit``."""
    if operation.kind in ("aggregate", "distinct"):
        cursor: Any = await collection.aggregate(
            operation.pipeline or [], maxTimeMS=max_time_ms, batchSize=operation.limit
        )
    else:
        cursor = collection.find(
            operation.filter,
            operation.projection,
            sort=operation.sort,
            skip=operation.skip,
            limit=operation.limit,
            batch_size=operation.limit,
            max_time_ms=max_time_ms,
        )
    async with cursor:
        documents: list[dict[str, Any]] = await cursor.to_list(operation.limit)
    return documents


def _single_server(uri: str) -> tuple[str, int]:
    """The one host of a ``mongodb://`` URI (an SSH tunnel reaches one server, not a set)."""
    if uri.startswith("mongodb+srv://"):
        raise ConfigError("an ssh tunnel needs a mongodb:// URI naming one server, not +srv")
    hosts = uri.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    if "," in hosts:
        raise ConfigError("an ssh tunnel reaches one server: name one host in the URI")
    host, _, port = hosts.rpartition(":") if hosts.count(":") == 1 else (hosts, "", "")
    return (host or hosts), int(port or 27017)


def _rehost(uri: str, host: str, port: int) -> str:
    """``uri`` pointed at ``host:port`` instead of its own one server."""
    scheme, rest = uri.split("://", 1)
    hosts, slash, tail = rest.partition("/")
    credentials, at, _ = hosts.rpartition("@")
    return f"{scheme}://{credentials}{at}{host}:{port}{slash}{tail}"


def translate_error(source_id: str, exc: Exception) -> SourceError:
    """A PyMongo or BSON error as a `SourceError` whose text holds no secret or value.

    Server messages can quote the values a query compared with, and connection
    errors the host list, so only codes and class names are kept.
    """
    if isinstance(exc, errors.ExecutionTimeout):
        return SourceTimeout(source_id, "the server stopped the query at its deadline (maxTimeMS)")
    if isinstance(exc, errors.OperationFailure):
        code = exc.code
        name = (exc.details or {}).get("codeName") or "no code name"
        if code == 18:
            return SourceAuthError(source_id, "authentication failed: check the uri's credentials")
        if code == 13:
            return SourceAuthError(
                source_id, "not authorized: the user may not read this database or collection"
            )
        return SourceError(source_id, f"mongodb refused the query: error {code} ({name})")
    if isinstance(exc, errors.ServerSelectionTimeoutError):
        return SourceUnavailable(
            source_id,
            "no MongoDB server answered within connect_timeout_s (refused or unreachable)",
        )
    if isinstance(exc, errors.ConnectionFailure):
        return SourceUnavailable(
            source_id, f"the connection to MongoDB failed ({type(exc).__name__})"
        )
    if isinstance(exc, errors.InvalidURI):
        return SourceError(source_id, "the uri is not a valid MongoDB connection string")
    if isinstance(exc, errors.ConfigurationError):
        # DNS (mongodb+srv) lookups and option checks fail here.
        return SourceUnavailable(
            source_id, "the uri cannot be used: its host did not resolve or an option is wrong"
        )
    if isinstance(exc, BSONError | errors.InvalidOperation):
        return SourceError(source_id, f"the query cannot be sent ({type(exc).__name__})")
    return SourceError(source_id, f"mongodb failed ({type(exc).__name__})")


# -- checks at load time ------------------------------------------------------------


def _check_shape(spec: MongoDBQuery) -> None:
    if spec.pipeline is not None:
        extra = [
            name
            for name, used in (
                ("filter", spec.filter is not None),
                ("projection", spec.projection is not None),
                ("sort", spec.sort is not None),
                ("count", spec.count),
                ("distinct", spec.distinct is not None),
            )
            if used
        ]
        if extra:
            raise ConfigError(
                f"a pipeline query takes no {', '.join(extra)}: use $match, $project, "
                "$sort or $count stages in the pipeline"
            )
        if not spec.pipeline:
            raise ConfigError("the pipeline is empty")
        for stage in spec.pipeline:
            if len(stage) != 1 or not next(iter(stage)).startswith("$"):
                raise ConfigError("each pipeline stage is one operator, like {'$match': {…}}")
    if spec.count and (spec.projection is not None or spec.sort is not None or spec.skip):
        raise ConfigError("a count query takes only filter and limit")
    if spec.distinct is not None and (
        spec.count or spec.projection is not None or spec.sort is not None or spec.skip
    ):
        raise ConfigError(
            "a distinct query takes only filter and limit (its values come sorted, ascending)"
        )


def _check_operators(node: Any) -> None:
    """Refuse writes and server-side JavaScript anywhere in a document."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in _WRITE_STAGES:
                raise NotARead(f"only reads are allowed: {key} writes to a collection")
            if key in _JS_OPERATORS:
                raise ConfigError(f"{key} runs JavaScript on the server and is not allowed")
            _check_operators(value)
    elif isinstance(node, list | tuple):
        for value in node:
            _check_operators(value)


# -- binding ------------------------------------------------------------------------


def _bson_param(name: str, value: Any) -> Any:
    """A parameter as a BSON value of its own type."""
    if value is None or isinstance(value, bool | str | float | dt.datetime):
        return value
    if isinstance(value, int):
        # BSON integers are 64-bit; a larger number is compared as a decimal.
        return value if -(2**63) <= value < 2**63 else Decimal128(str(value))
    if isinstance(value, Decimal128):
        return value
    if isinstance(value, decimal.Decimal):
        return Decimal128(value)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, uuid.UUID):
        return Binary.from_uuid(value)
    if isinstance(value, Mapping):
        # Parameters are data: a mapping could carry query operators.
        raise ValueError(f"parameter {name!r} is a mapping; parameters must be plain values")
    if isinstance(value, list | tuple):
        return [_bson_param(name, item) for item in value]
    return str(value)


def _bind(node: Any, params: Mapping[str, Any], context: _Context) -> Any:
    if isinstance(node, str):
        if not placeholder_names(node):
            return node
        if context == "regex":
            escaped = {k: re.escape("" if v is None else str(v)) for k, v in params.items()}
            return bind_placeholders(node, escaped)
        value = bind_placeholders(node, params)
        if context == "expr" and isinstance(value, str) and value.startswith("$"):
            if not node.startswith("$"):
                # In an expression "$x" is a field path and "$$x" a variable.
                return {"$literal": value}
        return value
    if isinstance(node, Mapping):
        bound: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$expr":
                bound[key] = _bind(value, params, "expr")
            elif key == "$regex":
                bound[key] = _bind(value, params, "regex")
            else:
                bound[key] = _bind(value, params, context)
        return bound
    if isinstance(node, list | tuple):
        return [_bind(value, params, context) for value in node]
    return node


def _distinct_pipeline(field: str, query: dict[str, Any], cap: int) -> list[dict[str, Any]]:
    """The distinct values of ``field`` in the documents ``query`` matches, sorted, ``cap`` at most.

    ``$project`` reads the path through arrays of documents as ``distinct`` does,
    ``$unwind`` makes each array element a value (and drops null and missing).
    """
    return [
        {"$match": query},
        {"$project": {"_id": 0, "value": f"${field}"}},
        {"$unwind": "$value"},
        {"$group": {"_id": "$value"}},
        {"$sort": {"_id": 1}},
        {"$limit": cap},
    ]


def _bind_pipeline(stages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> list[Any]:
    return [_bind_stage(stage, params) for stage in stages]


def _bind_stage(stage: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    for name, body in stage.items():
        if name in _QUERY_STAGES:
            bound[name] = _bind(body, params, "query")
        elif name in _OPTION_STAGES:
            bound[name] = _bind(body, params, "expr")
        elif name == "$facet" and isinstance(body, Mapping):
            bound[name] = {
                key: _bind_pipeline(value, params)
                if isinstance(value, list)
                else _bind(value, params, "expr")
                for key, value in body.items()
            }
        elif name in _NESTED_PIPELINES and isinstance(body, Mapping):
            nested = _NESTED_PIPELINES[name]
            bound[name] = {
                key: _bind_pipeline(value, params)
                if key == nested and isinstance(value, list)
                else _bind(value, params, "expr")
                for key, value in body.items()
            }
        else:
            bound[name] = _bind(body, params, "expr")
    return bound


# -- values -------------------------------------------------------------------------


def bson_to_plain(value: Any) -> Any:
    """A BSON value as what a template and JSON take (ObjectId → str, Decimal128 → number…)."""
    if isinstance(value, Mapping):
        return {str(k): bson_to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bson_to_plain(v) for v in value]
    for kind, convert in _CONVERTERS:
        if isinstance(value, kind):
            return convert(value)
    return jsonable(value)


def _datetime(value: dt.datetime) -> str:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return aware.isoformat()


def _dbref(value: DBRef) -> dict[str, Any]:
    ref = {"$ref": value.collection, "$id": bson_to_plain(value.id)}
    return ref if value.database is None else {**ref, "$db": value.database}


def _binary(value: Binary) -> Any:
    if value.subtype in (3, 4) and len(value) == 16:
        with contextlib.suppress(ValueError):
            return str(value.as_uuid(value.subtype))
    return jsonable(bytes(value))


# In order: the first matching type converts (Code is a str, Binary bytes, Int64 an int).
_CONVERTERS: tuple[tuple[type[Any] | tuple[type[Any], ...], Any], ...] = (
    (ObjectId, str),
    (Decimal128, lambda v: jsonable(v.to_decimal())),
    (Int64, int),
    (float, lambda v: v if math.isfinite(v) else str(v)),
    # Outside Python's datetime range: milliseconds since the epoch.
    (DatetimeMS, int),
    (dt.datetime, _datetime),
    (Timestamp, lambda v: v.as_datetime().isoformat()),
    (Binary, _binary),
    ((Regex, re.Pattern), lambda v: str(v.pattern)),
    (Code, str),
    ((MinKey, MaxKey), lambda v: type(v).__name__),
    (DBRef, _dbref),
)
