"""The elasticsearch connector: query checks, typed binding, errors, real sockets.

No Elasticsearch-API server runs on this machine, and none can be installed
here: Debian packages no Elasticsearch or OpenSearch, and the PyPI / npm
helpers either download the server at run time or drive an install that is
not there. So everything that needs no server is tested for real here —
`prepare`, binding (a parameter is a value, never a clause), error
translation with the client's own exception classes, and real HTTP
connection attempts to a closed and to a silent port — and the live tests
(the `ConnectorContract` suite and server-side checks) run only when
``ELASTICSEARCH_TEST_URL`` names a cluster (Elasticsearch 9 for the 9.x
client; ``ELASTICSEARCH_TEST_API_KEY`` if it needs one; the key must be able
to create and delete indices named ``lookup-test-*``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig, TlsError
from elastic_transport import ConnectionError as TransportConnectionError
from elasticsearch import (
    ApiError,
    AsyncElasticsearch,
    AuthenticationException,
    AuthorizationException,
    BadRequestError,
    ConnectionTimeout,
    NotFoundError,
    SerializationError,
    UnsupportedProductError,
)
from pydantic import ValidationError

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
from connectors.elasticsearch import (
    ElasticsearchConnector,
    ElasticsearchQuery,
    ElasticsearchSettings,
    SearchRequest,
    translate_error,
)
from connectors.registry import load
from connectors.testing import RawQuery
from tests.servers.es_search_app import es_search_app
from tests.servers.hostile import Recorder, serve
from tests.support.connectors import (
    ConnectorFactory,
    ContractCase,
    read_rows,
    refused_port,
    silent_listener,
)
from tests.support.connectors import read as agg_read
from worker.config import load_tenant
from worker.service import open_worker

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Pa55word"
LIVE_URL = os.environ.get("ELASTICSEARCH_TEST_URL")
LIVE_API_KEY = os.environ.get("ELASTICSEARCH_TEST_API_KEY")
NO_SERVER = (
    "no Elasticsearch server on this machine (Debian, PyPI and npm have none; PyPI's "
    "OpenSearch-compatible osmem-server is refused by the Elasticsearch 9 client); "
    "set ELASTICSEARCH_TEST_URL=http://… to run the live tests"
)
BY_SKU: dict[str, Any] = {"index": "products", "query": {"term": {"sku": "{sku}"}}, "size": 5}


def request(
    raw: RawQuery, max_rows: int = 100, timeout_s: float = 2.0, **params: Any
) -> SearchRequest:
    spec = ElasticsearchConnector.prepare(raw).spec
    assert isinstance(spec, ElasticsearchQuery)
    return spec.request(params, max_rows=max_rows, timeout_s=timeout_s)


# -- settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({"url": "https://search.local:9200", "api_key": SECRET}, id="api-key"),
        pytest.param(
            {"url": "http://127.0.0.1:9200", "username": "reader", "password": SECRET}, id="basic"
        ),
        pytest.param({"url": "http://127.0.0.1:9200"}, id="no-auth"),
        pytest.param(
            {"url": "https://h:9200", "api_key": SECRET, "verify_certs": False, "pool_size": 3},
            id="no-verify",
        ),
        pytest.param({"url": "https://h:9200", "ca_certs": "certs/ca.pem"}, id="ca"),
    ],
)
def test_settings__accept_the_contract_fields(connection: dict[str, Any]) -> None:
    settings = ElasticsearchSettings.model_validate(connection)

    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("connection", "problem"),
    [
        pytest.param({"url": "ftp://h"}, "http", id="scheme"),
        pytest.param({"url": "search.local:9200"}, "http", id="no-scheme"),
        pytest.param({"url": f"https://u:{SECRET}@h:9200"}, "credentials", id="creds-in-url"),
        pytest.param({"url": "https://h:9200/?x=1"}, "query string", id="url-query"),
        pytest.param(
            {"url": "https://h", "api_key": SECRET, "username": "u", "password": SECRET},
            "not both",
            id="key-and-basic",
        ),
        pytest.param({"url": "https://h", "username": "u"}, "go together", id="user-no-pw"),
        pytest.param({"url": "https://h", "password": SECRET}, "go together", id="pw-no-user"),
        pytest.param({"url": "http://h", "ca_certs": "ca.pem"}, "https", id="ca-on-http"),
        pytest.param({"url": "https://h", "pool_size": 0}, "pool_size", id="pool-0"),
        pytest.param({"url": "https://h", "hosts": ["h"]}, "hosts", id="unknown-key"),
    ],
)
def test_settings__refuse_bad_connections(connection: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        ElasticsearchSettings.model_validate(connection)

    assert SECRET not in str(caught.value)


def test_connector__is_found_by_its_type_name() -> None:
    cls = load("elasticsearch")

    assert cls is ElasticsearchConnector
    assert registry.driver_extra("elasticsearch") == "elasticsearch"


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ES_API_KEY", SECRET)

    tenant = load_tenant(REPO / "config" / "examples" / "elasticsearch.yaml")

    assert tenant.problems == []
    assert set(tenant.lookups) == {"check_stock", "find_product", "brand_count"}


# -- prepare ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param(BY_SKU, ("sku",), id="search"),
        pytest.param({"index": "products", "id": "{sku}"}, ("sku",), id="get"),
        pytest.param(
            {"index": "products", "id": "sku-{sku}", "_source": ["name"]}, ("sku",), id="get-source"
        ),
        pytest.param(
            {"index": "products", "count": True, "query": {"term": {"b": "{brand}"}}},
            ("brand",),
            id="count",
        ),
        pytest.param({"index": "products"}, (), id="match-all"),
        pytest.param(
            {
                "index": "products,archive-*",
                "query": {
                    "bool": {
                        "must": [{"match": {"name": "{name}"}}],
                        "filter": [{"range": {"p": {"lte": "{max}"}}}],
                    }
                },
                "sort": [{"price": "asc"}, "_score"],
                "_source": {"includes": ["name"], "excludes": ["secret"]},
                "size": 3,
            },
            ("name", "max"),
            id="full-search",
        ),
    ],
)
def test_prepare__accepts_the_query_shapes(raw: RawQuery, names: tuple[str, ...]) -> None:
    assert ElasticsearchConnector.prepare(raw).names == names


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"index": "products", "document": {"sku": "x"}}, id="index-document"),
        pytest.param({"index": "products", "id": "1", "doc": {"a": 1}}, id="update-doc"),
        pytest.param({"index": "products", "operations": []}, id="bulk"),
        pytest.param(
            {"index": "products", "script": {"source": "ctx._source.a = 1"}}, id="update-script"
        ),
        pytest.param({"index": "products", "dest": {"index": "copy"}}, id="reindex"),
        pytest.param({"index": "products", "op": "delete_by_query", "query": {}}, id="op-delete"),
        pytest.param({"index": "products", "method": "DELETE"}, id="method-delete"),
    ],
)
def test_prepare__refuses_writes(raw: RawQuery) -> None:
    with pytest.raises(NotARead):
        ElasticsearchConnector.prepare(raw)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        pytest.param(
            {"index": "p", "query": {"script": {"script": "1"}}}, "script", id="script-query"
        ),
        pytest.param(
            {
                "index": "p",
                "query": {"function_score": {"query": {}, "script_score": {"script": "x"}}},
            },
            "script_score",
            id="function-score",
        ),
        pytest.param(
            {"index": "p", "query": {"script_score": {"query": {}, "script": {}}}},
            "script_score",
            id="script-score",
        ),
        pytest.param(
            {"index": "p", "query": {"bool": {"filter": [{"script": {"script": "x"}}]}}},
            "script",
            id="nested",
        ),
        pytest.param(
            {"index": "p", "sort": [{"_script": {"type": "number"}}]}, "_script", id="sort-script"
        ),
        pytest.param(
            {"index": "p", "runtime_mappings": {"x": {}}}, "runtime_mappings", id="runtime-mappings"
        ),
        pytest.param(
            {"index": "p", "script_fields": {"x": {}}}, "script_fields", id="script-fields"
        ),
    ],
)
def test_prepare__refuses_scripts(raw: RawQuery, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ElasticsearchConnector.prepare(raw)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param('{"query": {}}', "is a mapping", id="text"),
        pytest.param({"query": {}}, "index", id="no-index"),
        pytest.param({"index": "p", "aggs": {}}, "aggs", id="aggregations"),
        pytest.param({"index": "p", "from": 10}, "from", id="unknown-from"),
        pytest.param({"index": "p", "source": ["a"]}, "source", id="source-without-underscore"),
        pytest.param({"index": "p", "op": "search"}, "drop 'op'", id="op-search"),
        pytest.param({"index": "{tenant}-orders"}, "fixed in the config", id="index-placeholder"),
        pytest.param({"index": "p", "id": "{x}", "query": {}}, "get", id="get-with-query"),
        pytest.param({"index": "p", "id": "{x}", "count": True}, "get", id="get-with-count"),
        pytest.param(
            {"index": "p", "id": "{x}", "_source": {"includes": []}},
            "list of fields",
            id="get-source-map",
        ),
        pytest.param({"index": "p", "count": True, "size": 1}, "count", id="count-with-size"),
        pytest.param({"index": "p", "size": 0}, "size", id="size-0"),
        pytest.param({"index": "p", "size": 10_001}, "size", id="size-huge"),
        pytest.param(
            {"index": "p", "sort": [{"{field}": "asc"}], "_source": ["{f}"]},
            "placeholders",
            id="source-ph",
        ),
    ],
)
def test_prepare__refuses_bad_shapes(raw: RawQuery, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ElasticsearchConnector.prepare(raw)


# -- binding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param("*", id="star"),
        pytest.param('{"match_all": {}}', id="match-all-json"),
        pytest.param("{'match_all': {}}", id="match-all-python"),
        pytest.param("sku:* OR 1", id="query-syntax"),
        pytest.param("{sku}", id="placeholder-text"),
    ],
)
def test_bind__a_parameter_is_a_typed_value_never_a_clause(evil: str) -> None:
    bound = request(BY_SKU, sku=evil)

    assert bound.kwargs["query"] == {"term": {"sku": evil}}


def test_bind__keeps_the_parameter_type_inside_the_query() -> None:
    raw = {
        "index": "p",
        "query": {
            "bool": {
                "filter": [
                    {"term": {"qty": "{qty}"}},
                    {"term": {"active": "{active}"}},
                    {"range": {"price": {"lte": "{price}", "gte": "{low}"}}},
                    {"terms": {"sku": "{skus}"}},
                    {"term": {"day": "{day}"}},
                    {"match": {"name": "name: {name}"}},
                ]
            }
        },
    }

    bound = request(
        raw,
        qty=3,
        active=True,
        price=decimal.Decimal("9.50"),
        low=None,
        skus=["A-1", "B-2"],
        day=dt.date(2025, 9, 12),
        name="*",
    )

    assert bound.kwargs["query"]["bool"]["filter"] == [
        {"term": {"qty": 3}},
        {"term": {"active": True}},
        {"range": {"price": {"lte": 9.5, "gte": None}}},
        {"terms": {"sku": ["A-1", "B-2"]}},
        {"term": {"day": "2025-09-12"}},
        {"match": {"name": "name: *"}},
    ]


@pytest.mark.parametrize(
    ("clause", "value", "expected"),
    [
        pytest.param(
            {"wildcard": {"sku": "{v}*"}}, "*", {"wildcard": {"sku": "\\**"}}, id="wildcard-star"
        ),
        pytest.param(
            {"wildcard": {"sku": {"value": "*{v}?"}}},
            "a?b\\",
            {"wildcard": {"sku": {"value": "*a\\?b\\\\?"}}},
            id="wildcard-long-form",
        ),
        pytest.param(
            {"regexp": {"sku": "{v}.*"}}, ".*|x", {"regexp": {"sku": "\\.\\*\\|x.*"}}, id="regexp"
        ),
        pytest.param(
            {"query_string": {"query": "sku:{v} AND active:true", "default_field": "name"}},
            '* OR "x',
            {"query_string": {"query": 'sku:"* OR \\"x" AND active:true', "default_field": "name"}},
            id="query-string-phrase",
        ),
        pytest.param(
            {"simple_query_string": {"query": "{v}"}},
            "-secret | *",
            {"simple_query_string": {"query": '"-secret | *"'}},
            id="simple-query-string",
        ),
        pytest.param(
            {"prefix": {"sku": "{v}"}}, "*", {"prefix": {"sku": "*"}}, id="prefix-literal"
        ),
        pytest.param(
            {"match": {"name": {"query": "{v}"}}},
            '"x" OR *',
            {"match": {"name": {"query": '"x" OR *'}}},
            id="match-query-key",
        ),
    ],
)
def test_bind__pattern_queries_take_a_parameter_literally(
    clause: dict[str, Any], value: str, expected: dict[str, Any]
) -> None:
    bound = request({"index": "p", "query": clause}, v=value)

    assert bound.kwargs["query"] == expected


def test_bind__refuses_a_mapping_parameter() -> None:
    with pytest.raises(ValueError, match="'sku' is a mapping"):
        request(BY_SKU, sku={"match_all": {}})


@pytest.mark.parametrize(
    ("raw", "max_rows", "expected"),
    [
        pytest.param(
            BY_SKU,
            100,
            SearchRequest(
                "search",
                {
                    "index": "products",
                    "query": {"term": {"sku": "A-1"}},
                    "size": 5,
                    "timeout": "1500ms",
                    "allow_partial_search_results": False,
                    "track_total_hits": False,
                },
            ),
            id="search",
        ),
        pytest.param(
            {"index": "p", "sort": [{"n": "desc"}], "_source": ["n"], "size": 50},
            3,
            SearchRequest(
                "search",
                {
                    "index": "p",
                    "query": {"match_all": {}},
                    "size": 3,
                    "timeout": "1500ms",
                    "allow_partial_search_results": False,
                    "track_total_hits": False,
                    "sort": [{"n": "desc"}],
                    "source": ["n"],
                },
            ),
            id="search-capped-by-max-rows",
        ),
        pytest.param(
            {"index": "p", "id": "{sku}", "_source": ["n"]},
            3,
            SearchRequest("get", {"index": "p", "id": "A-1", "source": ["n"]}),
            id="get",
        ),
        pytest.param(
            {"index": "p", "count": True, "query": {"term": {"s": "{sku}"}}},
            3,
            SearchRequest("count", {"index": "p", "query": {"term": {"s": "A-1"}}}),
            id="count",
        ),
    ],
)
def test_bind__builds_the_request(raw: RawQuery, max_rows: int, expected: SearchRequest) -> None:
    assert request(raw, max_rows=max_rows, timeout_s=1.5, sku="A-1") == expected


# -- errors ---------------------------------------------------------------------------


def meta(status: int) -> ApiResponseMeta:
    node = NodeConfig("https", "search.local", 9200)
    return ApiResponseMeta(
        status=status, http_version="1.1", headers=HttpHeaders(), duration=0.01, node=node
    )


def api_error(
    cls: type[ApiError], status: int, kind: str, reason: str, root: str | None = None
) -> ApiError:
    error: dict[str, Any] = {
        "type": kind,
        "reason": reason,
        "root_cause": [{"type": root or kind, "reason": reason}],
    }
    return cls(message=kind, meta=meta(status), body={"error": error, "status": status})


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        pytest.param(
            api_error(
                AuthenticationException,
                401,
                "security_exception",
                f"unable to authenticate {SECRET}",
            ),
            SourceAuthError,
            "authentication failed",
            id="401",
        ),
        pytest.param(
            api_error(AuthorizationException, 403, "security_exception", "action unauthorized"),
            SourceAuthError,
            "not authorized",
            id="403",
        ),
        pytest.param(
            ConnectionTimeout("Connection timed out"), SourceTimeout, "deadline", id="timeout"
        ),
        pytest.param(
            TransportConnectionError(f"refused https://u:{SECRET}@h"),
            SourceUnavailable,
            "cannot connect",
            id="refused",
        ),
        pytest.param(TlsError("certificate verify failed"), SourceUnavailable, "TLS", id="tls"),
        pytest.param(
            api_error(NotFoundError, 404, "index_not_found_exception", "no such index [products]"),
            SourceError,
            "does the index exist",
            id="index-404",
        ),
        pytest.param(
            api_error(
                BadRequestError,
                400,
                "search_phase_execution_exception",
                f"failed to create query: For input string: {SECRET}",
                root="query_shard_exception",
            ),
            SourceError,
            r"400: search_phase_execution_exception, caused by query_shard_exception",
            id="400-no-reason",
        ),
        pytest.param(
            UnsupportedProductError("not elasticsearch", meta(200), {}),
            SourceError,
            "not Elasticsearch",
            id="product",
        ),
        pytest.param(SerializationError("bad json"), SourceError, "decoded", id="serialization"),
        pytest.param(
            ApiError("teapot", meta(418), "I'm a teapot"),
            SourceError,
            r"418: no error type",
            id="odd-body",
        ),
    ],
)
def test_translate_error__maps_client_errors_without_secrets(
    exc: Exception, kind: type[SourceError], text: str
) -> None:
    error = translate_error("catalogue", exc)

    assert type(error) is kind
    assert re.search(text, str(error)), str(error)
    assert "catalogue" in str(error)
    assert SECRET not in str(error) and SECRET not in repr(error)


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
    factory = ConnectorFactory(ElasticsearchConnector, "catalogue", REPO)

    def make(url: str, *, limits: Limits | None = None, **more: Any) -> ElasticsearchConnector:
        return factory.make(limits, url=url, **more)

    yield make
    await factory.aclose()


READS = [
    pytest.param(BY_SKU, id="search"),
    pytest.param({"index": "products", "id": "{sku}"}, id="get"),
    pytest.param(
        {"index": "products", "count": True, "query": {"term": {"sku": "{sku}"}}}, id="count"
    ),
]


@pytest.mark.parametrize("raw", READS)
async def test_run__closed_port_is_unavailable_at_once(
    make_connector: Any, closed_port: int, raw: RawQuery
) -> None:
    connector = make_connector(
        f"http://127.0.0.1:{closed_port}", username="reader", password=SECRET
    )
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="cannot connect") as caught:
        await connector.run(
            ElasticsearchConnector.prepare(raw), Bound(params={"sku": "A-1"}), timeout_s=10
        )

    assert time.monotonic() - started < 5  # not the 10 s deadline
    assert "catalogue" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


async def test_health_check__closed_port_is_unavailable(
    make_connector: Any, closed_port: int
) -> None:
    connector = make_connector(f"https://127.0.0.1:{closed_port}", api_key=SECRET)

    with pytest.raises(SourceUnavailable):
        await connector.health_check()


@pytest.mark.parametrize("raw", READS)
async def test_run__silent_host_times_out_at_timeout_s(
    make_connector: Any, silent_port: int, raw: RawQuery
) -> None:
    connector = make_connector(f"http://127.0.0.1:{silent_port}")
    started = time.monotonic()

    with pytest.raises(SourceTimeout):
        await connector.run(
            ElasticsearchConnector.prepare(raw), Bound(params={"sku": "A-1"}), timeout_s=0.5
        )

    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 0.5 + 4, f"took {elapsed:.2f} s"  # the host never answers


async def test_run__cancelled_request_leaves_the_connector_usable_and_closable(
    make_connector: Any, silent_port: int
) -> None:
    connector = make_connector(f"http://127.0.0.1:{silent_port}")
    query = ElasticsearchConnector.prepare(BY_SKU)
    task = asyncio.create_task(connector.run(query, Bound(params={"sku": "A-1"}), timeout_s=10))
    await asyncio.sleep(0.2)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    with pytest.raises(SourceTimeout):
        await connector.run(query, Bound(params={"sku": "A-1"}), timeout_s=0.3)
    await connector.close()
    await connector.close()


@pytest.mark.parametrize("doc_id", ["", ".", "..", None])
async def test_run__an_id_that_is_no_document_is_not_found_without_a_request(
    make_connector: Any, closed_port: int, doc_id: str | None
) -> None:
    connector = make_connector(f"http://127.0.0.1:{closed_port}")

    result = await connector.run(
        ElasticsearchConnector.prepare({"index": "products", "id": "{sku}"}),
        Bound(params={"sku": doc_id}),
        timeout_s=5,
    )

    assert not result.found


async def test_run__refuses_a_mapping_parameter_before_any_request(
    make_connector: Any, closed_port: int
) -> None:
    connector = make_connector(f"http://127.0.0.1:{closed_port}")

    with pytest.raises(SourceError, match="'sku' is a mapping"):
        await connector.run(
            ElasticsearchConnector.prepare(BY_SKU),
            Bound(params={"sku": {"match_all": {}}}),
            timeout_s=5,
        )


async def test_close__without_open_and_twice_is_harmless(make_connector: Any) -> None:
    connector = make_connector("http://127.0.0.1:9")

    await connector.close()
    await connector.open()
    await connector.close()
    await connector.close()


# -- live server (only with ELASTICSEARCH_TEST_URL) ------------------------------------------

live = pytest.mark.skipif(LIVE_URL is None, reason=NO_SERVER)

PRODUCTS = [
    {"sku": "A-1", "name": "Blue mug", "quantity": 12, "price": 9.5, "active": True},
    {"sku": "B-2", "name": "Red mug", "quantity": 0, "price": 11.0, "active": True},
    {"sku": "C-3", "name": "Old mug", "quantity": 3, "price": 4.0, "active": False},
]


@pytest.fixture
async def live_index() -> AsyncIterator[str]:
    """A fresh index holding PRODUCTS (ids = skus) and filler documents, deleted afterwards."""
    assert LIVE_URL is not None
    name = f"lookup-test-{uuid.uuid4().hex[:8]}"
    async with AsyncElasticsearch(LIVE_URL, api_key=LIVE_API_KEY) as client:
        operations: list[dict[str, Any]] = []
        for product in PRODUCTS:
            operations += [{"index": {"_index": name, "_id": product["sku"]}}, product]
        for n in range(50):
            operations += [
                {"index": {"_index": name}},
                {"sku": f"F-{n}", "name": "filler", "active": True},
            ]
        await client.bulk(operations=operations, refresh=True)
        try:
            yield name
        finally:
            await client.indices.delete(index=name)


@pytest.fixture
async def live_connector(live_index: str, make_connector: Any) -> ElasticsearchConnector:
    assert LIVE_URL is not None
    auth = {"api_key": LIVE_API_KEY} if LIVE_API_KEY else {}
    connector: ElasticsearchConnector = make_connector(LIVE_URL, pool_size=4, **auth)
    return connector


@live
class TestElasticsearchContract(ContractCase):
    FOUND_PARAMS = Bound(params={"sku": "A-1"})
    MISSING_PARAMS = Bound(params={"sku": "*"})

    @pytest.fixture
    def connector(self, live_connector: ElasticsearchConnector) -> ElasticsearchConnector:
        return live_connector

    @pytest.fixture
    def found_query(self, live_index: str) -> RawQuery:
        return {**BY_SKU, "index": live_index}

    @pytest.fixture
    def write_query(self, live_index: str) -> RawQuery | None:
        return {"index": live_index, "document": {"sku": "X"}}


live_read = partial(read_rows, timeout_s=10)


@live
async def test_live_run__search_get_and_count(
    live_connector: ElasticsearchConnector, live_index: str
) -> None:
    assert await live_read(live_connector, {"index": live_index, "id": "{sku}"}, sku="A-1") == [
        {"_id": "A-1", **PRODUCTS[0]}
    ]
    assert await live_read(live_connector, {"index": live_index, "id": "{sku}"}, sku="nope") == []
    count = {"index": live_index, "count": True, "query": {"term": {"active": "{a}"}}}
    assert await live_read(live_connector, count, a=False) == [{"count": 1}]


@live
@pytest.mark.parametrize("evil", ["*", '{"match_all": {}}', "A-1 OR *"])
async def test_live_run__injection_text_finds_nothing(
    live_connector: ElasticsearchConnector, live_index: str, evil: str
) -> None:
    assert await live_read(live_connector, {**BY_SKU, "index": live_index}, sku=evil) == []
    wildcard = {"index": live_index, "query": {"wildcard": {"sku.keyword": "{sku}"}}}
    assert await live_read(live_connector, wildcard, sku=evil) == []


@live
async def test_live_run__caps_rows_at_max_rows(live_index: str, make_connector: Any) -> None:
    auth = {"api_key": LIVE_API_KEY} if LIVE_API_KEY else {}
    connector = make_connector(LIVE_URL, limits=Limits(max_rows=7), **auth)

    assert len(await live_read(connector, {"index": live_index, "size": 100})) == 7


@live
async def test_live_run__bad_credentials_name_the_source_without_the_secret(
    make_connector: Any, live_index: str
) -> None:
    connector = make_connector(LIVE_URL, username="nobody", password=SECRET)

    with pytest.raises(SourceAuthError) as caught:
        await live_read(connector, {**BY_SKU, "index": live_index}, sku="A-1")

    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


# -- aggregations ----------------------------------------------------------------------
#
# Checked for real: prepare's allow-list, the request body, and a round trip through the
# official client to `tests.servers.es_search_app`, a stand-in that answers the `_search`
# API's documented shapes over a few documents. Not run against a real Elasticsearch here.

BY_PHONE: dict[str, Any] = {"term": {"phone": "{phone}"}}
STATUS_AGGS: dict[str, Any] = {
    "index": "orders",
    "query": BY_PHONE,
    "aggs": {
        "by_status": {
            "terms": {"field": "status", "size": 5},
            "aggs": {"spent": {"sum": {"field": "total"}}},
        },
        "average": {"avg": {"field": "total"}},
    },
}


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        pytest.param(STATUS_AGGS, ("phone",), id="terms-with-metric"),
        pytest.param(
            {
                "index": "orders",
                "aggs": {
                    "mine": {
                        "filter": {"term": {"phone": "{phone}"}},
                        "aggs": {"latest": {"top_hits": {"size": 1, "_source": ["status"]}}},
                    },
                    "kinds": {"filters": {"filters": {"open": {"term": {"status": "{st}"}}}}},
                },
            },
            ("phone", "st"),
            id="filter-filters-top-hits",
        ),
        pytest.param(
            {
                "index": "orders",
                "rows": "by_day",
                "aggs": {
                    "by_total": {"range": {"field": "total", "ranges": [{"to": 10}, {"from": 10}]}},
                    "by_day": {"date_histogram": {"field": "at", "calendar_interval": "day"}},
                    "steps": {"histogram": {"field": "total", "interval": 10}},
                    "n": {"value_count": {"field": "order_id"}},
                    "phones": {"cardinality": {"field": "phone"}},
                    "low": {"min": {"field": "total"}},
                    "high": {"max": {"field": "total"}},
                },
            },
            (),
            id="every-bucket-type",
        ),
    ],
)
def test_aggs__prepare_accepts_the_allowed_types(raw: RawQuery, names: tuple[str, ...]) -> None:
    assert ElasticsearchConnector.prepare(raw).names == names


def _aggs(aggs: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"index": "orders", "aggs": aggs, **more}


TOO_DEEP: dict[str, Any] = {"d": {"sum": {"field": "d"}}}
for _name in "cba":
    TOO_DEEP = {_name: {"terms": {"field": _name}, "aggs": TOO_DEEP}}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(_aggs({"x": {"scripted_metric": {}}}), "scripted_metric", id="scripted"),
        pytest.param(_aggs({"x": {"significant_terms": {"field": "a"}}}), "not an allowed",
                     id="not-listed"),
        pytest.param(_aggs({"x": {"terms": {"script": {"source": "1"}}}}), "script", id="script"),
        pytest.param(_aggs({"x": {"avg": {"field": "a", "script": "1"}}}), "script",
                     id="metric-script"),
        pytest.param(_aggs({"x": {"terms": {"field": "a", "execution_hint": "map"}}}),
                     "'execution_hint' is not an option", id="unknown-option"),
        pytest.param(_aggs({"x": {"terms": {"field": "{field}"}}}), "fixed in the config",
                     id="field-parameter"),
        pytest.param(_aggs({"x": {"terms": {"field": "a", "size": "{n}"}}}),
                     "fixed in the config", id="size-parameter"),
        pytest.param(_aggs({"x": {"terms": {"field": "a", "size": 10_001}}}), "0 to 10000",
                     id="size-huge"),
        pytest.param(_aggs({"x": {"top_hits": {"size": True}}}), "whole number", id="size-bool"),
        pytest.param(_aggs({"x": {"terms": {"field": "a"}, "avg": {"field": "b"}}}),
                     "exactly one aggregation type", id="two-types"),
        pytest.param(_aggs({"x": {"avg": {"field": "a"}, "aggs": {"y": {"sum": {"field": "b"}}}}}),
                     "takes no sub-aggregations", id="metric-with-subs"),
        pytest.param(_aggs(TOO_DEEP), "at most 3 deep", id="too-deep"),
        pytest.param(_aggs({f"m{i}": {"sum": {"field": "a"}} for i in range(21)}), "aggs",
                     id="too-many"),
        pytest.param(_aggs({"m": {"sum": {"field": "a"}}}, rows="m"), "no top-level bucket",
                     id="rows-not-bucket"),
        pytest.param({"index": "orders", "rows": "x"}, "needs aggs", id="rows-without-aggs"),
        pytest.param({"index": "orders", "count": True, "aggs": {"m": {"sum": {"field": "a"}}}},
                     "not a get or a count", id="count-aggs"),
        pytest.param(_aggs({"x": "terms"}), "exactly one aggregation type", id="not-a-mapping"),
    ],
)  # fmt: skip
def test_aggs__prepare_refuses_what_is_not_a_cheap_read(raw: RawQuery, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        ElasticsearchConnector.prepare(raw)

    assert "bad elasticsearch query" in str(caught.value)


def test_aggs__the_request_caps_sizes_and_asks_for_no_hits() -> None:
    raw = _aggs(
        {
            "by_status": {"terms": {"field": "status", "size": 500, "shard_size": 20}},
            "plain": {"terms": {"field": "status"}},
            "latest": {"top_hits": {"size": 50}},
            "mine": {"filter": {"wildcard": {"phone": "{phone}*"}}},
        }
    )

    bound = request(raw, max_rows=8, phone="+1*?")

    assert bound.kwargs["size"] == 0
    assert bound.kwargs["aggs"] == {
        "by_status": {"terms": {"field": "status", "size": 8, "shard_size": 20}},
        "plain": {"terms": {"field": "status", "size": 8}},
        "latest": {"top_hits": {"size": 8}},
        "mine": {"filter": {"wildcard": {"phone": "+1\\*\\?*"}}},
    }
    assert request({**raw, "size": 3}, max_rows=8, phone="x").kwargs["size"] == 3


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    async with serve(es_search_app(recorder)) as url:
        yield url, recorder


async def test_aggs__buckets_are_the_rows_and_data_holds_every_aggregation(
    make_connector: Any, stand_in: tuple[str, Recorder]
) -> None:
    url, recorder = stand_in
    connector = make_connector(url)

    result = await agg_read(connector, STATUS_AGGS, phone="+1234567890")

    assert result.rows == [
        {"key": "shipped", "doc_count": 2, "spent": 59.5},
        {"key": "processing", "doc_count": 1, "spent": 5.0},
    ]
    assert result.data == {"aggs": {"by_status": result.rows, "average": 64.5 / 3}, "hits": []}
    sent = json.loads(recorder.seen[-1].body)
    assert sent["size"] == 0
    assert sent["query"] == {"term": {"phone": "+1234567890"}}
    assert sent["aggs"]["by_status"]["terms"] == {"field": "status", "size": 5}


async def test_aggs__metrics_only_is_one_row_and_nothing_matching_is_not_found(
    make_connector: Any, stand_in: tuple[str, Recorder]
) -> None:
    raw = {
        "index": "orders",
        "query": BY_PHONE,
        "aggs": {"spent": {"sum": {"field": "total"}}, "most": {"max": {"field": "total"}}},
    }
    connector = make_connector(stand_in[0])

    found = await agg_read(connector, raw, phone="+1999999999")
    missing = await agg_read(connector, STATUS_AGGS, phone="+0000")

    assert found.rows == [{"spent": 7.25, "most": 7.25}]
    assert not missing.found


async def test_aggs__filter_filters_range_histogram_and_top_hits(
    make_connector: Any, stand_in: tuple[str, Recorder]
) -> None:
    raw = _aggs(
        {
            "kinds": {
                "filters": {
                    "filters": {
                        "mine": {"term": {"phone": "{phone}"}},
                        "done": {"term": {"status": "delivered"}},
                    }
                }
            },
            "sizes": {"range": {"field": "total", "ranges": [{"to": 10}, {"from": 10}]}},
            "steps": {"histogram": {"field": "total", "interval": 20}},
            "shipped": {
                "filter": {"term": {"status": "shipped"}},
                "aggs": {"first": {"top_hits": {"size": 1}}},
            },
        },
        rows="sizes",
    )

    result = await agg_read(make_connector(stand_in[0]), raw, phone="+1234567890")

    assert result.rows == [
        {"key": "*-10.0", "to": 10.0, "doc_count": 2},
        {"key": "10.0-*", "from": 10.0, "doc_count": 2},
    ]
    aggs = result.data["aggs"]
    assert aggs["kinds"] == [{"key": "mine", "doc_count": 3}, {"key": "done", "doc_count": 1}]
    assert aggs["steps"] == [{"key": 0.0, "doc_count": 3}, {"key": 40.0, "doc_count": 1}]
    assert aggs["shipped"]["doc_count"] == 2
    assert aggs["shipped"]["first"][0]["order_id"] == "12345"
    assert aggs["shipped"]["first"][0]["_id"] == "1"


async def test_aggs__a_refusal_of_the_server_is_a_source_error_naming_its_type(
    make_connector: Any, stand_in: tuple[str, Recorder]
) -> None:
    raw = _aggs({"by_day": {"date_histogram": {"field": "at", "calendar_interval": "day"}}})

    with pytest.raises(SourceError, match=r"refused the read \(400: parsing_exception\)"):
        await agg_read(make_connector(stand_in[0]), raw)


async def test_aggs__render_through_the_pipeline(stand_in: tuple[str, Recorder]) -> None:
    tenant = load_tenant(
        document={
            "tenant_id": "es_shop",
            "data_sources": [
                {
                    "id": "search",
                    "type": "elasticsearch",
                    "connection": {"url": stand_in[0]},
                    "queries": {"orders_by_status": STATUS_AGGS},
                }
            ],
            "lookups": {
                "orders_by_status": {
                    "source": "search",
                    "params": {"phone": {"pattern": "[+0-9]{6,16}"}},
                    "template": "{% for b in rows %}{{ b.key }}: {{ b.doc_count }}"
                    "{% if not loop.last %}, {% endif %}{% endfor %}",
                    "not_found": "No orders.",
                }
            },
        },
        templates_dir=REPO / "templates",
    )

    async with open_worker(tenant, with_queue=False) as worker:
        answer = await worker.pipeline.lookup("orders_by_status", {"phone": "+1234567890"})
        nothing = await worker.pipeline.lookup("orders_by_status", {"phone": "+1000000"})

    assert (answer.outcome, answer.message) == ("ok", "shipped: 2, processing: 1")
    assert (nothing.outcome, nothing.message) == ("not_found", "No orders.")


@live
async def test_live_run__aggregations(
    live_connector: ElasticsearchConnector, live_index: str
) -> None:
    raw = {
        "index": live_index,
        "query": {"term": {"active": "{a}"}},
        "aggs": {
            "stock": {
                "range": {"field": "quantity", "ranges": [{"to": 1}, {"from": 1}]},
                "aggs": {"avg_price": {"avg": {"field": "price"}}},
            },
            "priced": {"value_count": {"field": "price"}},
        },
    }
    active = [p for p in PRODUCTS if p["active"]]

    rows = await live_read(live_connector, raw, a=True)

    assert [row["doc_count"] for row in rows] == [
        sum(1 for p in active if p["quantity"] < 1),
        sum(1 for p in active if p["quantity"] >= 1),
    ]
