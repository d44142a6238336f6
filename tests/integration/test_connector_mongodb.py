"""The mongodb connector: query checks, typed binding, BSON values, errors, real sockets.

Everything that needs no server is tested first — `prepare`, binding, value
conversion, error translation with PyMongo's own exception classes, real
connection attempts to a closed and to a silent port. The live tests (the
`ConnectorContract` suite and the server-side checks) run against the
``mongo_server`` fixture: nx-27017, a MongoDB wire-protocol server on SQLite
started for the session (no MongoDB installs here; tests/support/mongo.py), or
the real MongoDB that ``MONGODB_TEST_URI`` names
(``mongodb://user:password@host:27017/?authSource=admin``; the user needs
readWrite on databases named ``lookup_test_*`` to seed and drop them). Where
nx-27017 lacks what a check needs, that one check skips, naming the gap
(`NX_GAPS`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import gc
import json
import re
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import bson
import pytest
from bson import DBRef, Decimal128, ObjectId
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.regex import Regex
from bson.timestamp import Timestamp
from pydantic import ValidationError
from pymongo import AsyncMongoClient, errors

from connectors import registry
from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    NotARead,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.mongodb import (
    MongoDBConnector,
    MongoDBQuery,
    MongoDBSettings,
    MongoOperation,
    bson_to_plain,
    translate_error,
)
from connectors.registry import load
from connectors.testing import RawQuery
from tests.support.connectors import (
    ConnectorFactory,
    ContractCase,
    read_rows,
    refused_port,
    silent_listener,
)
from tests.support.mongo import NX_GAPS, MongoServer
from worker.config import load_tenant

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Pa55word"
ORDER_STATUS: dict[str, Any] = {
    "collection": "orders",
    "filter": {"order_id": "{order_id}"},
    "projection": {"_id": 0, "status": 1, "tracking": 1},
    "limit": 1,
}


def prepare_spec(raw: RawQuery) -> MongoDBQuery:
    spec = MongoDBConnector.prepare(raw).spec
    assert isinstance(spec, MongoDBQuery)
    return spec


def bind(raw: RawQuery, max_rows: int = 100, **params: Any) -> MongoOperation:
    return prepare_spec(raw).bind(params, max_rows=max_rows)


# -- settings ---------------------------------------------------------------------


def test_settings__accept_the_contract_fields() -> None:
    settings = MongoDBSettings.model_validate(
        {"uri": f"mongodb://reader:{SECRET}@db:27017/?authSource=admin", "database": "shop"}
    )

    assert settings.database == "shop"
    assert settings.pool_size == 10
    assert settings.connect_timeout_s == 1.0
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("connection", "problem"),
    [
        pytest.param(
            {"uri": f"postgres://u:{SECRET}@h/db", "database": "x"}, "mongodb://", id="scheme"
        ),
        pytest.param({"uri": "mongodb://h", "database": "a/b"}, "database name", id="bad-db"),
        pytest.param({"uri": "mongodb://h"}, "database", id="no-database"),
        pytest.param(
            {"uri": "mongodb://h", "database": "x", "pool_size": 0}, "pool_size", id="pool-0"
        ),
        pytest.param(
            {"uri": "mongodb://h", "database": "x", "pool_size": 101}, "pool_size", id="pool-big"
        ),
        pytest.param(
            {"uri": "mongodb://h", "database": "x", "host": "h"}, "host", id="unknown-key"
        ),
        pytest.param(
            {"uri": "mongodb://h", "database": "x", "connect_timeout_s": 0},
            "connect_timeout_s",
            id="timeout-0",
        ),
    ],
)
def test_settings__refuse_bad_connections(connection: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        MongoDBSettings.model_validate(connection)

    assert SECRET not in str(caught.value)


def test_connector__is_found_by_its_type_name() -> None:
    cls = load("mongodb")

    assert cls is MongoDBConnector
    assert registry.driver_extra("mongodb") == "mongodb"


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGODB_URI", f"mongodb://reader:{SECRET}@localhost:27017/")

    tenant = load_tenant(REPO / "config" / "examples" / "mongodb.yaml")

    assert tenant.problems == []
    assert set(tenant.lookups) == {"order_status", "recent_orders", "open_orders"}


# -- prepare ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param(ORDER_STATUS, ("order_id",), id="find"),
        pytest.param(
            {"collection": "orders", "filter": {"a": "{x}"}, "sort": [["created", -1]], "limit": 2},
            ("x",),
            id="find-sorted",
        ),
        pytest.param(
            {
                "collection": "orders",
                "filter": {"a": 1},
                "sort": {"created": 1},
                "projection": ["a"],
            },
            (),
            id="sort-mapping-projection-list",
        ),
        pytest.param(
            {"collection": "orders", "pipeline": [{"$match": {"phone": "{phone}"}}, {"$limit": 5}]},
            ("phone",),
            id="aggregate",
        ),
        pytest.param(
            {"collection": "orders", "filter": {"p": "{p}"}, "count": True}, ("p",), id="count"
        ),
        pytest.param({"collection": "orders"}, (), id="no-filter"),
        pytest.param(
            {"collection": "p", "filter": {"brand": "{brand}"}, "distinct": "category"},
            ("brand",),
            id="distinct",
        ),
        pytest.param(
            {"collection": "p", "distinct": "items.sku", "limit": 5}, (), id="distinct-dotted"
        ),
        pytest.param(
            {"collection": "o", "filter": {"a": "{{ $json.a }}", "b": "{{b}}", "c": "x-{c}"}},
            ("a", "b", "c"),
            id="n8n-spellings",
        ),
    ],
)
def test_prepare__accepts_the_query_shapes(raw: RawQuery, names: tuple[str, ...]) -> None:
    assert MongoDBConnector.prepare(raw).names == names


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"collection": "orders", "insert": {"a": 1}}, id="insert"),
        pytest.param({"collection": "orders", "update_one": {}, "filter": {}}, id="update-one"),
        pytest.param({"collection": "orders", "deleteMany": {}}, id="delete-many"),
        pytest.param({"collection": "orders", "documents": [{"a": 1}]}, id="documents"),
        pytest.param({"collection": "orders", "pipeline": [{"$out": "copy"}]}, id="out"),
        pytest.param(
            {"collection": "orders", "pipeline": [{"$merge": {"into": "copy"}}]}, id="merge"
        ),
        pytest.param(
            {"collection": "o", "pipeline": [{"$facet": {"a": [{"$match": {}}, {"$out": "x"}]}}]},
            id="out-nested-in-facet",
        ),
        pytest.param(
            {
                "collection": "o",
                "pipeline": [{"$lookup": {"from": "x", "pipeline": [{"$merge": "y"}], "as": "z"}}],
            },
            id="merge-nested-in-lookup",
        ),
    ],
)
def test_prepare__refuses_writes(raw: RawQuery) -> None:
    with pytest.raises(NotARead, match="only reads"):
        MongoDBConnector.prepare(raw)


@pytest.mark.parametrize(
    ("raw", "operator"),
    [
        pytest.param({"collection": "o", "filter": {"$where": "sleep(100)"}}, "$where", id="where"),
        pytest.param(
            {
                "collection": "o",
                "filter": {"$expr": {"$function": {"body": "f", "args": [], "lang": "js"}}},
            },
            "$function",
            id="function-in-filter",
        ),
        pytest.param(
            {"collection": "o", "pipeline": [{"$group": {"_id": 1, "a": {"$accumulator": {}}}}]},
            "$accumulator",
            id="accumulator",
        ),
        pytest.param(
            {"collection": "o", "filter": {}, "projection": {"a": {"$function": {}}}},
            "$function",
            id="function-in-projection",
        ),
    ],
)
def test_prepare__refuses_server_side_javascript(raw: RawQuery, operator: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(operator) + " runs JavaScript"):
        MongoDBConnector.prepare(raw)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param("db.orders.find({})", "is a mapping", id="text"),
        pytest.param({"filter": {}}, "collection", id="no-collection"),
        pytest.param({"collection": "orders", "hint": "x"}, "hint", id="unknown-key"),
        pytest.param(
            {"collection": "orders-{tenant}"}, "fixed in the config", id="collection-placeholder"
        ),
        pytest.param({"collection": "a$b"}, "not a collection name", id="collection-dollar"),
        pytest.param(
            {"collection": "o", "filter": {}, "pipeline": [{"$match": {}}]}, "pipeline", id="both"
        ),
        pytest.param({"collection": "o", "pipeline": []}, "empty", id="empty-pipeline"),
        pytest.param(
            {"collection": "o", "pipeline": [{"$match": {}, "$limit": 1}]},
            "one operator",
            id="two-op",
        ),
        pytest.param({"collection": "o", "pipeline": [{"match": {}}]}, "one operator", id="not-op"),
        pytest.param(
            {"collection": "o", "count": True, "sort": [["a", 1]]}, "count", id="count-sort"
        ),
        pytest.param({"collection": "o", "limit": 0}, "limit", id="limit-0"),
        pytest.param({"collection": "o", "sort": [["a", 2]]}, "sort", id="sort-2"),
        pytest.param(
            {"collection": "o", "projection": {"a": "{field}"}, "filter": {}}, "no", id="proj-ph"
        ),
        pytest.param({"collection": "o", "sort": [["{field}", 1]]}, "placeholders", id="sort-ph"),
        pytest.param({"collection": "o", "distinct": "{field}"}, "fixed in the config", id="d-ph"),
        pytest.param({"collection": "o", "distinct": ""}, "distinct", id="distinct-empty"),
        pytest.param({"collection": "o", "distinct": "$a"}, "not a field path", id="distinct-op"),
        pytest.param({"collection": "o", "distinct": "a.$b"}, "not a field path", id="d-op-2"),
        pytest.param({"collection": "o", "distinct": "a..b"}, "not a field path", id="d-empty-2"),
        pytest.param({"collection": "o", "distinct": "a."}, "not a field path", id="d-trailing"),
        pytest.param({"collection": "o", "distinct": "a\x00"}, "not a field path", id="d-nul"),
        pytest.param({"collection": "o", "distinct": ["a"]}, "distinct", id="distinct-list"),
        pytest.param(
            {"collection": "o", "distinct": "a", "pipeline": [{"$match": {}}]},
            "pipeline query takes no distinct",
            id="distinct-pipeline",
        ),
        pytest.param(
            {"collection": "o", "distinct": "a", "count": True}, "only filter", id="distinct-count"
        ),
        pytest.param(
            {"collection": "o", "distinct": "a", "sort": [["a", 1]]}, "sorted", id="distinct-sort"
        ),
        pytest.param(
            {"collection": "o", "distinct": "a", "projection": ["a"]},
            "only filter",
            id="distinct-projection",
        ),
        pytest.param({"collection": "o", "distinct": "a", "skip": 1}, "only filter", id="d-skip"),
    ],
)
def test_prepare__refuses_bad_shapes(raw: RawQuery, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        MongoDBConnector.prepare(raw)


# -- binding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param('{"$ne": null}', id="ne-null-json"),
        pytest.param("{'$gt': ''}", id="gt-python"),
        pytest.param("*", id="star"),
        pytest.param("$where", id="dollar-word"),
        pytest.param("'; db.dropDatabase(); '", id="js-ish"),
        pytest.param("{order_id}", id="placeholder-text"),
    ],
)
def test_bind__a_parameter_is_a_typed_value_never_an_operator(evil: str) -> None:
    operation = bind(ORDER_STATUS, order_id=evil)

    assert operation.filter == {"order_id": evil}
    # What goes on the wire is the string, not a sub-document.
    assert bson.decode(bson.encode(operation.filter)) == {"order_id": evil}


def test_bind__keeps_the_parameter_type() -> None:
    raw = {
        "collection": "o",
        "filter": {"n": "{n}", "f": "{f}", "b": "{b}", "d": "{d}", "missing": "{m}"},
    }

    operation = bind(raw, n=42, f=1.5, b=True, d=decimal.Decimal("19.90"))

    assert operation.filter == {
        "n": 42,
        "f": 1.5,
        "b": True,
        "d": Decimal128("19.90"),
        "missing": None,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(2**70, Decimal128(str(2**70)), id="int-beyond-64-bits"),
        pytest.param(dt.date(2025, 9, 12), dt.datetime(2025, 9, 12, tzinfo=dt.UTC), id="date"),
        pytest.param(uuid.UUID(int=7), Binary.from_uuid(uuid.UUID(int=7)), id="uuid"),
        pytest.param(["a", 1], ["a", 1], id="list"),
    ],
)
def test_bind__turns_other_types_into_bson(value: Any, expected: Any) -> None:
    operation = bind({"collection": "o", "filter": {"x": "{x}"}}, x=value)

    assert operation.filter == {"x": expected}
    bson.encode(operation.filter)


def test_bind__inserts_text_inside_a_longer_string_and_never_touches_keys() -> None:
    raw = {"collection": "o", "filter": {"{key}": "order-{id}", "note": "{id} and {id}"}}

    operation = bind(raw, key="status", id='{"$ne": 1}')

    assert operation.filter == {"{key}": 'order-{"$ne": 1}', "note": '{"$ne": 1} and {"$ne": 1}'}


def test_bind__a_dollar_parameter_in_an_expression_is_a_literal() -> None:
    raw = {
        "collection": "o",
        "filter": {"$expr": {"$eq": ["$order_id", "{order_id}"]}, "phone": "{order_id}"},
    }

    operation = bind(raw, order_id="$customer_phone")

    assert operation.filter == {
        # In $expr, "$customer_phone" would be another field: it stays a value.
        "$expr": {"$eq": ["$order_id", {"$literal": "$customer_phone"}]},
        # In a query filter a string is always a value.
        "phone": "$customer_phone",
    }


def test_bind__a_dollar_parameter_in_pipeline_stages() -> None:
    raw = {
        "collection": "o",
        "pipeline": [
            {"$match": {"phone": "{p}"}},
            {"$addFields": {"asked": "{p}", "total": "$amount", "path": "$prices.{p}"}},
            {
                "$lookup": {
                    "from": "x",
                    "let": {"v": "{p}"},
                    "pipeline": [{"$match": {"a": "{p}"}}],
                    "as": "y",
                }
            },
            {"$facet": {"f": [{"$match": {"b": "{p}"}}, {"$project": {"c": "{p}"}}]}},
        ],
    }

    stages = bind(raw, p="$$ROOT").pipeline

    literal = {"$literal": "$$ROOT"}
    assert stages == [
        {"$match": {"phone": "$$ROOT"}},
        # A path the config wrote stays a path; only what the parameter brought is data.
        {"$addFields": {"asked": literal, "total": "$amount", "path": "$prices.$$ROOT"}},
        {
            "$lookup": {
                "from": "x",
                "let": {"v": literal},
                "pipeline": [{"$match": {"a": "$$ROOT"}}],
                "as": "y",
            }
        },
        {"$facet": {"f": [{"$match": {"b": "$$ROOT"}}, {"$project": {"c": literal}}]}},
        {"$limit": 100},
    ]


def test_bind__a_regex_parameter_matches_literally() -> None:
    raw = {"collection": "o", "filter": {"name": {"$regex": "^{prefix}", "$options": "i"}}}

    operation = bind(raw, prefix=".*|(a+)+$")

    assert operation.filter == {"name": {"$regex": "^" + re.escape(".*|(a+)+$"), "$options": "i"}}


def test_bind__refuses_a_mapping_parameter() -> None:
    with pytest.raises(ValueError, match="'order_id' is a mapping"):
        bind(ORDER_STATUS, order_id={"$ne": None})


@pytest.mark.parametrize(
    ("raw", "max_rows", "expected"),
    [
        pytest.param(
            ORDER_STATUS,
            100,
            MongoOperation(
                kind="find",
                collection="orders",
                filter={"order_id": "1"},
                projection={"_id": 0, "status": 1, "tracking": 1},
                limit=1,
            ),
            id="find-own-limit",
        ),
        pytest.param(
            {
                "collection": "o",
                "filter": {"a": "{order_id}"},
                "limit": 50,
                "skip": 3,
                "sort": {"t": -1},
            },
            5,
            MongoOperation(
                kind="find", collection="o", filter={"a": "1"}, sort=[("t", -1)], skip=3, limit=5
            ),
            id="find-capped-by-max-rows",
        ),
        pytest.param(
            {"collection": "o", "pipeline": [{"$match": {"a": "{order_id}"}}]},
            7,
            MongoOperation(
                kind="aggregate",
                collection="o",
                pipeline=[{"$match": {"a": "1"}}, {"$limit": 7}],
                limit=7,
            ),
            id="aggregate-ends-with-limit",
        ),
        pytest.param(
            {"collection": "o", "filter": {"a": "{order_id}"}, "count": True},
            7,
            MongoOperation(kind="count", collection="o", filter={"a": "1"}),
            id="count",
        ),
        pytest.param(
            {"collection": "o", "filter": {"a": "{order_id}"}, "distinct": "b.c", "limit": 50},
            7,
            MongoOperation(
                kind="distinct",
                collection="o",
                pipeline=[
                    {"$match": {"a": "1"}},
                    {"$project": {"_id": 0, "value": "$b.c"}},
                    {"$unwind": "$value"},
                    {"$group": {"_id": "$value"}},
                    {"$sort": {"_id": 1}},
                    {"$limit": 7},
                ],
                limit=7,
            ),
            id="distinct-capped-by-max-rows",
        ),
    ],
)
def test_bind__builds_the_operation_and_caps_rows(
    raw: RawQuery, max_rows: int, expected: MongoOperation
) -> None:
    assert bind(raw, max_rows=max_rows, order_id="1") == expected


# -- values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            ObjectId("64b7f0c2a1b2c3d4e5f60718"), "64b7f0c2a1b2c3d4e5f60718", id="objectid"
        ),
        pytest.param(Decimal128("19.90"), 19.9, id="decimal128"),
        pytest.param(Decimal128("12"), 12, id="decimal128-integral"),
        pytest.param(Decimal128("NaN"), "NaN", id="decimal128-nan"),
        pytest.param(Int64(2**40), 2**40, id="int64"),
        pytest.param(float("inf"), "inf", id="float-inf"),
        pytest.param(
            dt.datetime(2025, 9, 12, 8, 30, tzinfo=dt.UTC),
            "2025-09-12T08:30:00+00:00",
            id="datetime",
        ),
        pytest.param(
            dt.datetime(2025, 9, 12, 8, 30, tzinfo=dt.UTC).replace(tzinfo=None),
            "2025-09-12T08:30:00+00:00",
            id="naive-is-utc",
        ),
        pytest.param(DatetimeMS(-(10**15)), -(10**15), id="datetime-out-of-range"),
        pytest.param(Timestamp(1_700_000_000, 1), "2023-11-14T22:13:20+00:00", id="timestamp"),
        pytest.param(Binary(b"\x00\xff"), "AP8=", id="binary"),
        pytest.param(Binary(b"text"), "text", id="binary-utf8"),
        pytest.param(
            Binary.from_uuid(uuid.UUID(int=1)), "00000000-0000-0000-0000-000000000001", id="uuid"
        ),
        pytest.param(Regex("^a", "i"), "^a", id="regex"),
        pytest.param(re.compile("^b"), "^b", id="pattern"),
        pytest.param(Code("function () {}"), "function () {}", id="code"),
        pytest.param(MinKey(), "MinKey", id="minkey"),
        pytest.param(MaxKey(), "MaxKey", id="maxkey"),
        pytest.param(
            DBRef("customers", ObjectId("64b7f0c2a1b2c3d4e5f60718")),
            {"$ref": "customers", "$id": "64b7f0c2a1b2c3d4e5f60718"},
            id="dbref",
        ),
        pytest.param(decimal.Decimal("1.5"), 1.5, id="decimal"),
        pytest.param(None, None, id="null"),
    ],
)
def test_bson_to_plain__converts_driver_types(value: Any, expected: Any) -> None:
    assert bson_to_plain(value) == expected


def test_bson_to_plain__a_decoded_document_becomes_plain_json() -> None:
    oid = ObjectId()
    raw = bson.encode(
        {
            "_id": oid,
            "total": Decimal128("19.90"),
            "placed": dt.datetime(2025, 9, 12, 8, 30, tzinfo=dt.UTC),
            "items": [{"sku": "A-1", "qty": Int64(2), "label": Binary(b"\x00\xff")}],
            "customer": DBRef("customers", 7),
            "note": None,
        }
    )
    options: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True, tzinfo=dt.UTC)
    document = bson.decode(raw, codec_options=options)

    plain = bson_to_plain(document)

    assert plain == {
        "_id": str(oid),
        "total": 19.9,
        "placed": "2025-09-12T08:30:00+00:00",
        "items": [{"sku": "A-1", "qty": 2, "label": "AP8="}],
        "customer": {"$ref": "customers", "$id": 7},
        "note": None,
    }
    assert json.loads(json.dumps(plain)) == plain


# -- errors ---------------------------------------------------------------------------


def failure(code: int, name: str, message: str = "boom") -> errors.OperationFailure:
    return errors.OperationFailure(
        message, code=code, details={"ok": 0, "errmsg": message, "code": code, "codeName": name}
    )


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        pytest.param(
            failure(18, "AuthenticationFailed", "Authentication failed."),
            SourceAuthError,
            "authentication failed",
            id="auth-18",
        ),
        pytest.param(
            failure(13, "Unauthorized", f"not authorized on shop to execute {SECRET}"),
            SourceAuthError,
            "not authorized",
            id="unauthorized-13",
        ),
        pytest.param(
            errors.ExecutionTimeout("operation exceeded time limit", code=50),
            SourceTimeout,
            "maxTimeMS",
            id="max-time-50",
        ),
        pytest.param(
            errors.ServerSelectionTimeoutError(f"h:1: refused, mongodb://u:{SECRET}@h"),
            SourceUnavailable,
            "no MongoDB server",
            id="selection",
        ),
        pytest.param(
            errors.AutoReconnect("connection closed"),
            SourceUnavailable,
            "AutoReconnect",
            id="auto-reconnect",
        ),
        pytest.param(
            errors.NetworkTimeout("timed out"),
            SourceUnavailable,
            "NetworkTimeout",
            id="network-timeout",
        ),
        pytest.param(
            errors.ConnectionFailure("refused"),
            SourceUnavailable,
            "ConnectionFailure",
            id="connection-failure",
        ),
        pytest.param(
            errors.InvalidURI(f"bad uri mongodb://u:{SECRET}@"),
            SourceError,
            "not a valid MongoDB",
            id="invalid-uri",
        ),
        pytest.param(
            errors.ConfigurationError("The DNS query name does not exist"),
            SourceUnavailable,
            "did not resolve",
            id="srv-dns",
        ),
        pytest.param(
            failure(2, "BadValue", f"unknown operator: {SECRET}"),
            SourceError,
            r"error 2 \(BadValue\)",
            id="bad-value",
        ),
        pytest.param(
            bson.errors.InvalidDocument(f"cannot encode {SECRET}"),
            SourceError,
            "InvalidDocument",
            id="bson",
        ),
        pytest.param(
            errors.CursorNotFound("cursor id not found", code=43),
            SourceError,
            "error 43",
            id="cursor-not-found",
        ),
    ],
)
def test_translate_error__maps_driver_errors_without_secrets(
    exc: Exception, kind: type[SourceError], text: str
) -> None:
    error = translate_error("orders_db", exc)

    assert type(error) is kind
    assert re.search(text, str(error)), str(error)
    assert "orders_db" in str(error)
    assert SECRET not in str(error)
    assert SECRET not in repr(error)


# -- real connection attempts (no server needed) -----------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    return refused_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with silent_listener(16) as port:
        yield port


@pytest.fixture
async def make_connector() -> AsyncIterator[Any]:
    factory = ConnectorFactory(MongoDBConnector, "orders_db", REPO)

    def make(
        uri: Any, *, database: str = "shop", limits: Limits | None = None, **more: Any
    ) -> MongoDBConnector:
        return factory.make(limits, uri=uri, database=database, **more)

    yield make
    await factory.aclose()
    # PyMongo 4.20's async connect (pool_shared._async_create_connection) does not
    # close its socket when the monitor task is cancelled mid-connect, as
    # client.close() does while it retries a refused port: collect that garbage
    # here, so the warning neither fails a later test nor hides another leak.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        gc.collect()


async def test_run__closed_port_is_unavailable_within_connect_timeout(
    make_connector: Any, closed_port: int
) -> None:
    connector = make_connector(f"mongodb://reader:{SECRET}@127.0.0.1:{closed_port}/")
    query = MongoDBConnector.prepare(ORDER_STATUS)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="no MongoDB server answered") as caught:
        await connector.run(query, Bound(params={"order_id": "1"}), timeout_s=10)

    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + 4, f"took {elapsed:.2f} s"  # not the 10 s deadline
    assert "orders_db" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


@pytest.mark.parametrize("timeout_s", [0.3, 2.0], ids=["short", "long"])
async def test_health_check__closed_port_fails_fast(
    make_connector: Any, closed_port: int, timeout_s: float
) -> None:
    connector = make_connector(f"mongodb://127.0.0.1:{closed_port}/", connect_timeout_s=timeout_s)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable):
        await connector.health_check()

    assert time.monotonic() - started < timeout_s + 4  # refused: no server selection wait


async def test_run__silent_host_is_unavailable_within_connect_timeout(
    make_connector: Any, silent_port: int
) -> None:
    connector = make_connector(f"mongodb://127.0.0.1:{silent_port}/", connect_timeout_s=0.5)
    query = MongoDBConnector.prepare({"collection": "o", "pipeline": [{"$match": {"a": "{a}"}}]})
    started = time.monotonic()

    with pytest.raises(SourceUnavailable):
        await connector.run(query, Bound(params={"a": "x"}), timeout_s=10)

    assert time.monotonic() - started < 0.5 + 4  # not the 10 s deadline


async def test_run__deadline_shorter_than_connect_timeout_is_a_source_timeout(
    make_connector: Any, silent_port: int
) -> None:
    connector = make_connector(f"mongodb://127.0.0.1:{silent_port}/", connect_timeout_s=30)
    query = MongoDBConnector.prepare(
        {**ORDER_STATUS, "count": True, "projection": None, "limit": None}
    )
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await connector.run(query, Bound(params={"order_id": "1"}), timeout_s=0.3)

    assert time.monotonic() - started < 0.3 + 4  # not the 30 s connect timeout


async def test_run__cancelled_while_connecting_leaves_the_connector_closable(
    make_connector: Any, silent_port: int
) -> None:
    connector = make_connector(f"mongodb://127.0.0.1:{silent_port}/", connect_timeout_s=5)
    query = MongoDBConnector.prepare(ORDER_STATUS)
    task = asyncio.create_task(connector.run(query, Bound(params={"order_id": "1"}), timeout_s=10))
    await asyncio.sleep(0.2)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await connector.close()
    await connector.close()


async def test_run__refuses_a_mapping_parameter_before_any_connection(
    make_connector: Any, closed_port: int
) -> None:
    connector = make_connector(f"mongodb://127.0.0.1:{closed_port}/")
    query = MongoDBConnector.prepare(ORDER_STATUS)

    with pytest.raises(SourceError, match="'order_id' is a mapping"):
        await connector.run(query, Bound(params={"order_id": {"$ne": None}}), timeout_s=5)


async def test_close__without_open_and_twice_is_harmless(make_connector: Any) -> None:
    connector = make_connector("mongodb://127.0.0.1:1/")

    await connector.close()
    await connector.open()
    await connector.close()
    await connector.close()


# -- live server (nx-27017, or the MongoDB of MONGODB_TEST_URI) ---------------------------

ORDERS: list[dict[str, Any]] = [
    {
        "order_id": "12345",
        "customer_phone": "+1234567890",
        "status": "shipped",
        "tracking": "TRK-1",
        "placed": dt.datetime(2025, 9, 12, 8, 30, tzinfo=dt.UTC),
        "label": Binary(b"\x00\xff"),
        "tags": ["gift", "express"],
        "items": [{"sku": "A-1"}, {"sku": "B-2"}],
    },
    {
        "order_id": "12346",
        "customer_phone": "+1234567890",
        "status": "processing",
        "tracking": None,
        "tags": "express",
        "items": [{"sku": "B-2"}],
    },
    {
        "order_id": "20000",
        "customer_phone": "+1999999999",
        "status": "delivered",
        "tracking": "TRK-3",
        "tags": [],
    },
]
#: ``k`` puts the 400 filler documents in 8 groups of 50 (`SLOW_NX` joins on it).
FILLER = [{"n": i, "k": i % 8} for i in range(400)]


def skip_on_nx(server: MongoServer, gap: str) -> None:
    if server.is_nx:
        pytest.skip(NX_GAPS[gap])


@pytest.fixture
async def live_database(mongo_server: MongoServer) -> AsyncIterator[str]:
    """A fresh database with the ORDERS (and many filler documents), dropped afterwards."""
    name = f"lookup_test_{uuid.uuid4().hex[:8]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_server.uri, serverSelectionTimeoutMS=5000
    )
    try:
        await client[name]["orders"].insert_many([dict(order) for order in ORDERS])
        await client[name]["filler"].insert_many([dict(doc) for doc in FILLER])
        yield name
    finally:
        await client.drop_database(name)
        await client.close()


@pytest.fixture
async def live_connector(
    mongo_server: MongoServer, live_database: str, make_connector: Any
) -> MongoDBConnector:
    connector: MongoDBConnector = make_connector(
        mongo_server.uri, database=live_database, pool_size=4
    )
    return connector


#: A read that takes far longer than a second on MongoDB: 400 x 400 x 400 documents compared.
SLOW = {
    "collection": "filler",
    "pipeline": [
        {
            "$lookup": {
                "from": "filler",
                "pipeline": [
                    {
                        "$lookup": {
                            "from": "filler",
                            "pipeline": [{"$match": {"$expr": {"$eq": [1, 2]}}}],
                            "as": "c",
                        }
                    }
                ],
                "as": "b",
            }
        },
        {"$count": "n"},
    ],
}
#: The same for nx-27017, which has no $lookup pipeline form: 20,000 joined documents
#: unwound take it about two seconds. It stops a query at no deadline, and the next
#: read of the same database waits for it: the contract's "usable afterwards" read
#: (10 s) then waits too, so this must not be much slower either.
SLOW_NX = {
    "collection": "filler",
    "pipeline": [
        {"$lookup": {"from": "filler", "localField": "k", "foreignField": "k", "as": "b"}},
        {"$unwind": "$b"},
        {"$count": "n"},
    ],
}


class TestMongoDBContract(ContractCase):
    FOUND_QUERY = ORDER_STATUS
    FOUND_PARAMS = Bound(params={"order_id": "12345"})
    MISSING_PARAMS = Bound(params={"order_id": "99999"})
    WRITE_QUERY: ClassVar[RawQuery] = {
        "collection": "orders",
        "pipeline": [{"$match": {}}, {"$out": "stolen"}],
    }

    @pytest.fixture
    def connector(self, live_connector: MongoDBConnector) -> MongoDBConnector:
        return live_connector

    @pytest.fixture
    def slow_query(self, mongo_server: MongoServer) -> RawQuery | None:
        return SLOW_NX if mongo_server.is_nx else SLOW


live_read = partial(read_rows, timeout_s=10)


@pytest.mark.parametrize("evil", ['{"$ne": null}', "*", "$where", "' || '1'=='1"])
async def test_live_run__injection_text_finds_nothing_and_changes_nothing(
    live_connector: MongoDBConnector, evil: str
) -> None:
    assert await live_read(live_connector, ORDER_STATUS, order_id=evil) == []
    rows = await live_read(live_connector, {"collection": "orders", "count": True})
    assert rows == [{"count": len(ORDERS)}]


async def test_live_run__finds_with_projection_sort_and_count(
    live_connector: MongoDBConnector,
) -> None:
    by_phone = {"customer_phone": "{phone}"}
    query = {"collection": "orders", "filter": by_phone, "projection": ["order_id"]}

    rows = await live_read(
        live_connector, {**query, "sort": [["order_id", -1]]}, phone="+1234567890"
    )
    counted = await live_read(
        live_connector,
        {"collection": "orders", "filter": by_phone, "count": True},
        phone="+1234567890",
    )

    assert [row["order_id"] for row in rows] == ["12346", "12345"]
    assert set(rows[0]) == {"_id", "order_id"}
    assert counted == [{"count": 2}]


async def test_live_run__aggregates_with_a_bound_match(live_connector: MongoDBConnector) -> None:
    pipeline = [
        {"$match": {"customer_phone": "{phone}"}},
        {"$group": {"_id": "$customer_phone", "orders": {"$sum": 1}}},
    ]

    rows = await live_read(
        live_connector, {"collection": "orders", "pipeline": pipeline}, phone="+1234567890"
    )

    assert rows == [{"_id": "+1234567890", "orders": 2}]


async def test_live_run__converts_bson_values(live_connector: MongoDBConnector) -> None:
    rows = await live_read(
        live_connector, {"collection": "orders", "filter": {"order_id": "{id}"}}, id="12345"
    )

    assert rows[0]["placed"] == "2025-09-12T08:30:00+00:00"
    assert rows[0]["label"] == "AP8="
    assert isinstance(rows[0]["_id"], str)


async def test_live_run__converts_decimal128(
    mongo_server: MongoServer, live_database: str, live_connector: MongoDBConnector
) -> None:
    skip_on_nx(mongo_server, "decimal128")
    client: AsyncMongoClient[dict[str, Any]]
    async with AsyncMongoClient(mongo_server.uri) as client:
        await client[live_database]["prices"].insert_one(
            {"sku": "A-1", "total": Decimal128("19.90")}
        )

    rows = await live_read(live_connector, {"collection": "prices", "projection": {"_id": 0}})

    assert rows == [{"sku": "A-1", "total": 19.9}]


async def test_live_run__caps_rows_at_max_rows(
    mongo_server: MongoServer, live_database: str, make_connector: Any
) -> None:
    connector = make_connector(mongo_server.uri, database=live_database, limits=Limits(max_rows=7))

    assert len(await live_read(connector, {"collection": "filler"})) == 7
    assert (
        len(await live_read(connector, {"collection": "filler", "pipeline": [{"$match": {}}]})) == 7
    )
    assert len(await live_read(connector, {"collection": "filler", "distinct": "n"})) == 7


@pytest.mark.parametrize(
    ("field", "phone", "expected"),
    [
        pytest.param("status", None, ["delivered", "processing", "shipped"], id="all"),
        pytest.param("status", "+1234567890", ["processing", "shipped"], id="filtered"),
        pytest.param("tags", None, ["express", "gift"], id="array-elements"),
        pytest.param("tracking", None, ["TRK-1", "TRK-3"], id="null-left-out"),
        pytest.param("nowhere", None, [], id="missing-field"),
        pytest.param("status", "+1000000000", [], id="no-document"),
    ],
)
async def test_live_distinct__sorted_values_of_the_matching_documents(
    live_connector: MongoDBConnector, field: str, phone: str | None, expected: list[str]
) -> None:
    raw: dict[str, Any] = {"collection": "orders", "distinct": field}
    if phone is not None:
        raw["filter"] = {"customer_phone": "{phone}"}
    query = MongoDBConnector.prepare(raw)

    result = await live_connector.run(query, Bound(params={"phone": phone}), timeout_s=10)

    assert result.data == expected
    assert result.rows == [{"value": value} for value in expected]
    assert result.found is bool(expected)


async def test_live_distinct__through_an_array_of_documents(
    mongo_server: MongoServer, live_connector: MongoDBConnector
) -> None:
    skip_on_nx(mongo_server, "array_paths")

    rows = await live_read(live_connector, {"collection": "orders", "distinct": "items.sku"})

    assert rows == [{"value": "A-1"}, {"value": "B-2"}]


async def test_live_distinct__caps_values_at_the_query_limit(
    live_connector: MongoDBConnector,
) -> None:
    rows = await live_read(live_connector, {"collection": "filler", "distinct": "k", "limit": 3})

    assert rows == [{"value": 0}, {"value": 1}, {"value": 2}]


async def test_live_distinct__injection_text_is_a_value(live_connector: MongoDBConnector) -> None:
    raw = {"collection": "orders", "filter": {"status": "{status}"}, "distinct": "order_id"}

    assert await live_read(live_connector, raw, status='{"$ne": null}') == []
    assert await live_read(live_connector, raw, status="shipped") == [{"value": "12345"}]


async def test_live_run__deadline_stops_the_server_query(
    mongo_server: MongoServer, live_connector: MongoDBConnector, live_database: str
) -> None:
    skip_on_nx(mongo_server, "max_time_ms")
    query = MongoDBConnector.prepare(SLOW)

    with pytest.raises(SourceTimeout):
        await live_connector.run(query, Bound(), timeout_s=0.5)

    admin: AsyncMongoClient[dict[str, Any]]
    async with AsyncMongoClient(mongo_server.uri) as admin:
        await asyncio.sleep(0.5)
        ops = await admin.admin.command(
            {"currentOp": True, "ns": {"$regex": f"^{live_database}\\."}}
        )
    assert [op for op in ops["inprog"] if op.get("op") == "command"] == []


async def test_live_run__bad_credentials_name_the_source_without_the_secret(
    mongo_server: MongoServer, make_connector: Any, live_database: str
) -> None:
    skip_on_nx(mongo_server, "auth")
    uri = mongo_server.uri
    bad = (
        re.sub(r"//[^@/]*@", f"//nobody:{SECRET}@", uri)
        if "@" in uri
        else uri.replace("//", f"//nobody:{SECRET}@", 1)
    )
    connector = make_connector(bad, database=live_database)

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await live_read(connector, ORDER_STATUS, order_id="12345")

    assert "orders_db" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
