"""`worker import-n8n` (worker.n8n_import): n8n exports in, a tenant config and a report out.

Every produced config is loaded back with the worker's own loader (`load_tenant`,
the connectors' query checks included), so "it imports" means "it would run".
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.cli import cli
from worker.config import Tenant, load_tenant
from worker.n8n_import import (
    MAX_WORKFLOW_BYTES,
    ImportResult,
    InvalidWorkflow,
    import_documents,
    import_files,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "n8n"
SEED = sorted(FIXTURES.glob("seed_*.json"))
SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def webhook(path: str = "data/order-status", name: str = "Webhook") -> dict[str, Any]:
    return {
        "parameters": {"httpMethod": "POST", "path": path, "options": {}},
        "id": "0b6b3c6e-6f0d-4d0e-9a53-8f6c1f1f2a01",
        "name": name,
        "type": "n8n-nodes-base.webhook",
        "typeVersion": 2,
        "position": [0, 0],
    }


def node(kind: str, parameters: dict[str, Any], name: str | None = None, **extra: Any) -> dict:
    return {
        "parameters": parameters,
        "name": name or kind,
        "type": f"n8n-nodes-base.{kind}",
        "typeVersion": extra.pop("typeVersion", 2),
        "position": [200, 0],
        **extra,
    }


def pg(query: str, replacement: Any = None, credential: str = "Prod DB") -> dict[str, Any]:
    options = {} if replacement is None else {"queryReplacement": replacement}
    return node(
        "postgres",
        {"operation": "executeQuery", "query": query, "options": options},
        name="Postgres",
        credentials={"postgres": {"id": "Yq8rT2kLmN4pQs6v", "name": credential}},
        typeVersion=2.5,
    )


def workflow(*nodes: dict[str, Any], name: str = "Lookup", chain: bool = True) -> dict:
    """An n8n 1.x export: the nodes, connected one after another."""
    connections = {
        a["name"]: {"main": [[{"node": b["name"], "type": "main", "index": 0}]]}
        for a, b in itertools.pairwise(nodes)
    }
    return {
        "name": name,
        "nodes": list(nodes),
        "connections": connections if chain else {},
        "settings": {"executionOrder": "v1"},
        "pinData": {},
        "active": False,
    }


def run(*documents: Any, tenant: str = "acme") -> ImportResult:
    return import_documents([(f"wf{i}.json", d) for i, d in enumerate(documents)], tenant)


def config(result: ImportResult) -> dict[str, Any]:
    assert result.config is not None, list(result.report())
    document = yaml.safe_load(result.config)
    assert isinstance(document, dict)
    return document


#: harmless values of the right shape for the ``${env:…}`` a config names
STAND_INS = {
    "_PORT": "5432",
    "_DATABASE": "0",
    "_SERVICE_ACCOUNT": '{"type": "service_account", "client_email": "x@y", "private_key": "k"}',
    "_BASE_URL": "http://127.0.0.1:9200",
    "_CONNECTION_STRING": "mongodb://127.0.0.1:27017",
}


def loaded(
    result: ImportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: str
) -> Tenant:
    """The config as the worker loads it, each ``${env:…}`` set to a harmless value."""
    for name in result.env:
        kind = next((v for k, v in STAND_INS.items() if name.endswith(k)), "x")
        monkeypatch.setenv(name, values.get(name, kind))
    path = tmp_path / "acme.yaml"
    path.write_text(result.config or "", encoding="utf-8")
    return load_tenant(path)


def untranslated(result: ImportResult) -> list[str]:
    return [n.text for n in result.notes if n.kind == "untranslated"]


# -- the seed's three workflows -----------------------------------------------------


def test_seed__three_workflows_become_three_lookups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = import_files(SEED, "seedshop")
    document = config(result)

    assert result.exit_code == 0, list(result.report())
    sources = {s["id"]: s for s in document["data_sources"]}
    assert sources["postgresql"]["queries"]["order_status"] == (
        "SELECT status, tracking FROM orders WHERE order_id = $1"
    )
    assert document["lookups"]["order_status"]["args"] == ["order_id"]
    assert sources["api_tenant_com"]["connection"] == {
        "base_url": "https://api.tenant.com/inventory",
        "headers": {"Authorization": "Bearer {api_key}"},
        "api_key": "${env:N8N_API_TENANT_COM_API_KEY}",
    }
    assert sources["api_tenant_com"]["queries"]["inventory_check"] == {"path": "/{sku}"}
    assert sources["google_sheets"]["queries"]["customer_lookup"] == {
        "range": "Customers!A:E",
        "filter": "phone = {customer_phone}",
    }
    assert sources["google_sheets"]["connection"]["spreadsheet_id"] == (
        "${env:N8N_GOOGLE_SHEETS_SPREADSHEET_ID}"
    )
    assert document["lookups"]["customer_lookup"]["params"] == {"customer_phone": {"type": "phone"}}
    tenant = loaded(result, tmp_path, monkeypatch)
    assert set(tenant.lookups) == {"order_status", "inventory_check", "customer_lookup"}


def test_seed__function_node_becomes_a_template_naming_the_select_columns() -> None:
    template = config(import_files(SEED, "t"))["lookups"]["order_status"]["template"]

    assert "return formatOrderStatus(items[0].json);" in template
    assert template.startswith("{#-")
    assert template.endswith("Status: {{ row.status }}\nTracking: {{ row.tracking }}\n")


def test_seed__reply_step_is_dropped_and_reported() -> None:
    result = import_files(SEED, "t")

    dropped = [n for n in result.notes if n.kind == "dropped"]
    assert len(dropped) == 3
    assert all("reply step" in n.text for n in dropped)
    assert "messages/send" not in (result.config or "")


# -- real n8n exports ---------------------------------------------------------------


def test_export__query_replacement_binds_in_order_and_credential_names_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = import_files([FIXTURES / "order_status.json"], "shop")
    document = config(result)

    assert result.exit_code == 0
    (source,) = document["data_sources"]
    assert source["id"] == "prod_db"
    assert source["connection"] == {
        "host": "${env:N8N_PROD_DB_HOST}",
        "port": "${env:N8N_PROD_DB_PORT}",
        "database": "${env:N8N_PROD_DB_DATABASE}",
        "username": "${env:N8N_PROD_DB_USER}",
        "password": "${env:N8N_PROD_DB_PASSWORD}",
    }
    lookup = document["lookups"]["order_status"]
    assert lookup["args"] == ["order_id", "customer_phone"]
    assert lookup["params"] == {"order_id": {"type": "string"}, "customer_phone": {"type": "phone"}}
    assert "# }" in lookup["template"]  # the JavaScript's "#}" cannot close the comment
    assert "Estimated delivery: {{ row.estimated_delivery }}" in lookup["template"]
    loaded(result, tmp_path, monkeypatch)


def test_export__two_workflows_on_one_credential_share_one_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = import_files([FIXTURES / "order_status.json", FIXTURES / "recent_orders.json"], "shop")
    document = config(result)

    assert [s["id"] for s in document["data_sources"]] == ["prod_db"]
    assert document["data_sources"][0]["queries"]["recent_orders"] == (
        "SELECT order_id, status FROM orders WHERE customer_phone = $1 ORDER BY order_id LIMIT 5"
    )
    assert document["lookups"]["recent_orders"]["args"] == ["phone"]
    assert result.lookups == {"order_status": "prod_db", "recent_orders": "prod_db"}
    tenant = loaded(result, tmp_path, monkeypatch)
    assert set(tenant.lookups) == {"order_status", "recent_orders"}


def test_export__http_bearer_credential_and_path_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = import_files([FIXTURES / "stock_check.json"], "shop")
    (source,) = config(result)["data_sources"]

    assert result.exit_code == 0
    assert source["id"] == "inventory_api"
    assert source["connection"] == {
        "base_url": "https://inventory.example.com/api/products",
        "headers": {"Accept": "application/json"},
        "auth": {"type": "bearer", "token": "${env:N8N_INVENTORY_API_TOKEN}"},
    }
    assert source["queries"] == {"check_stock": {"path": "/{sku}/stock"}}
    loaded(result, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    "replacement",
    [
        pytest.param("={{ $json.body.order_id }}", id="body"),
        pytest.param("={{ $json.query.order_id }}", id="query-string"),
        pytest.param("={{ [$json.body.order_id] }}", id="array-expression"),
        pytest.param(["={{ $json.order_id }}"], id="array"),
        pytest.param("={{ $('Webhook').item.json.body.order_id }}", id="named-node"),
        pytest.param('={{ $node["Webhook"].json["body"]["order_id"] }}', id="old-node-syntax"),
        pytest.param("={{ $input.first().json.body.order_id }}", id="input-first"),
        pytest.param("={{$json.body.order_id}}", id="no-spaces"),
    ],
)
def test_expression__plain_references_become_the_parameter(replacement: Any) -> None:
    result = run(
        workflow(webhook(), pg("SELECT status FROM orders WHERE order_id = $1", replacement))
    )

    assert config(result)["lookups"]["order_status"]["args"] == ["order_id"]


def test_expression__inline_expressions_become_placeholders_after_the_replacements() -> None:
    query = (
        "SELECT status FROM orders WHERE order_id = $1 "
        "AND customer_phone = '{{ $json.body.customer_phone }}' "
        "AND region = {{ $json.body.region }} AND 'x{{' = 'x{{'"
    )
    result = run(workflow(webhook(), pg(query, "={{ $json.body.order_id }}")))

    assert untranslated(result)  # the last literal holds '{{' with no expression: refused
    fine = query.rsplit(" AND 'x", 1)[0]
    result = run(workflow(webhook(), pg(fine, "={{ $json.body.order_id }}")))
    document = config(result)
    assert document["data_sources"][0]["queries"]["order_status"] == (
        "SELECT status FROM orders WHERE order_id = $1 AND customer_phone = $2 AND region = $3"
    )
    assert document["lookups"]["order_status"]["args"] == ["order_id", "customer_phone", "region"]


def test_expression__same_parameter_twice_reuses_its_placeholder() -> None:
    query = "SELECT * FROM t WHERE a = {{ $json.body.id }} OR b = '{{ $json.body.id }}'"
    document = config(run(workflow(webhook(), pg(query))))

    assert document["data_sources"][0]["queries"]["order_status"].endswith("a = $1 OR b = $1")
    assert document["lookups"]["order_status"]["args"] == ["id"]


# -- hostile workflows --------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("SELECT * FROM t WHERE a = {{ \"1' OR '1'='1\" }}", id="string-constant"),
        pytest.param(
            'SELECT * FROM t WHERE a = {{ $json.body.a + "\'; DROP TABLE t; --" }}', id="concat"
        ),
        pytest.param("SELECT * FROM t WHERE a LIKE '%{{ $json.body.q }}%'", id="inside-literal"),
        pytest.param('SELECT * FROM "{{ $json.body.table }}"', id="quoted-identifier"),
        pytest.param("SELECT * FROM t -- {{ $json.body.a }}\nWHERE 1 = 1", id="in-comment"),
        pytest.param("SELECT * FROM t WHERE a = {{ $json.body.a", id="unclosed"),
        pytest.param("SELECT * FROM t WHERE a = '{{ $json.body.a }}", id="unclosed-quote"),
        pytest.param("SELECT * FROM t WHERE a = {{ $json.body.a.toString() }}", id="method-call"),
        pytest.param("SELECT * FROM t WHERE a = {{ $env.SECRET }}", id="environment"),
        pytest.param("SELECT * FROM t WHERE a = $2", id="placeholder-without-value"),
    ],
)
def test_hostile__expression_that_would_splice_into_sql_gives_no_lookup(query: str) -> None:
    result = run(workflow(webhook(), pg(query, "={{ $json.body.id }}")))

    assert result.config is None
    assert result.exit_code == 1
    assert untranslated(result)


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_hostile__no_expression_text_ever_reaches_the_sql(expression: str) -> None:
    query = f"SELECT status FROM orders WHERE order_id = {{{{{expression}}}}}"
    result = run(workflow(webhook(), pg(query)))

    if result.config is not None:
        document = config(result)
        sql = document["data_sources"][0]["queries"]["order_status"]
        assert sql == "SELECT status FROM orders WHERE order_id = $1"
        assert all(SAFE_NAME.match(a) for a in document["lookups"]["order_status"]["args"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(b"\xff\xfe\x00", "not UTF-8", id="binary"),
        pytest.param(b'{"name": "\\ud800", "nodes": []}', "not UTF-8", id="lone-surrogate"),
        pytest.param(b'{"name": "x"}', "no 'nodes' list", id="no-nodes"),
        pytest.param(b"[1, 2]", "no 'nodes' list", id="list-of-numbers"),
        pytest.param(b'{"nodes": [{"name": "a"}]}', "node #1", id="node-without-type"),
        pytest.param(
            b'{"nodes": [{"type": "n8n-nodes-base.webhook", "parameters": []}]}',
            "'parameters' is not an object",
            id="parameters-list",
        ),
        pytest.param(
            b'{"nodes": [], "connections": {"A": {"main": "x"}}}', "connections", id="connections"
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep"),
    ],
)
def test_hostile__invalid_file_is_refused_naming_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(content)

    with pytest.raises(InvalidWorkflow, match=re.escape(message)) as info:
        import_files([path], "t")
    assert str(path) in str(info.value)


def test_hostile__huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_bytes(b" " * (MAX_WORKFLOW_BYTES + 1))

    with pytest.raises(InvalidWorkflow, match="larger than"):
        import_files([path], "t")


def test_hostile__missing_file_is_an_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidWorkflow, match="cannot read it"):
        import_files([tmp_path / "nowhere.json"], "t")


def test_hostile__names_and_free_text_cannot_reach_secrets_or_the_yaml_structure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = node("code", {"jsCode": "// ${env:WORKER_SECRET_KEYS} enc:v1:abc #} {% raw %}"})
    hostile = workflow(
        webhook("../../etc/passwd: {x}"),
        pg(
            "SELECT status FROM orders WHERE order_id = $1",
            '={{ $json.body["id\'; DROP"] }}',
            credential="${env:HOME}\n- id: evil",
        ),
        code,
        name="${env:WORKER_SECRET_KEYS}\nlookups: {}",
    )
    result = run(hostile)
    document = config(result)

    (source,) = document["data_sources"]
    assert SAFE_NAME.match(source["id"])
    (name,) = document["lookups"]
    assert SAFE_NAME.match(name)
    assert document["lookups"][name]["args"] == ["id_drop"]
    template = document["lookups"][name]["template"]
    assert "${env:" not in template
    assert "enc:v1:" not in template
    assert "{% raw %}" in template.split("-#}")[0]  # inside the comment, inert
    loaded(result, tmp_path, monkeypatch)  # a ${env:…} outside a connection would not load


# -- what is and is not translated --------------------------------------------------


def test_report__no_webhook_is_not_a_lookup() -> None:
    result = run(workflow(pg("SELECT 1")))

    assert result.config is None
    assert result.exit_code == 1
    assert "no Webhook trigger" in untranslated(result)[0]


def test_report__webhook_alone_reads_nothing() -> None:
    result = run(workflow(webhook()))

    assert result.exit_code == 1
    assert untranslated(result) == ["no node reads data after the webhook"]


def test_report__if_node_is_reported_and_the_read_still_imports() -> None:
    check = node("if", {"conditions": {"conditions": []}}, name="Found?")
    result = run(
        workflow(webhook(), pg("SELECT status FROM orders WHERE id = $1", "={{ $json.id }}"), check)
    )

    assert result.exit_code == 1
    assert "Found?" in untranslated(result)[0]
    assert "order_status" in config(result)["lookups"]


def test_report__write_operations_are_not_reads() -> None:
    insert = node("postgres", {"operation": "insert", "table": {"value": "orders"}})
    result = run(workflow(webhook(), insert))

    assert result.config is None
    assert "not a read" in untranslated(result)[0]


def test_report__a_second_read_is_left_out() -> None:
    second = pg("SELECT 2", credential="Other")
    second["name"] = "Postgres 2"
    result = run(workflow(webhook(), pg("SELECT 1"), second))

    assert "second read" in untranslated(result)[0]
    assert [s["id"] for s in config(result)["data_sources"]] == ["prod_db"]


def test_report__no_secret_value_is_ever_written() -> None:
    raw = json.dumps(_load("order_status.json"))
    result = run(json.loads(raw))

    assert "Yq8rT2kLmN4pQs6v" not in (result.config or "")  # credential ids stay behind
    assert all(
        v.startswith("${env:N8N_") for v in config(result)["data_sources"][0]["connection"].values()
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        pytest.param("order-status", "order_status", id="plain"),
        pytest.param("/data/order-status", "order_status", id="seed"),
        pytest.param("data/orders/:id", "orders", id="path-parameter"),
        pytest.param("shop/Check Stock", "shop_check_stock", id="spaces"),
        pytest.param("7d1f4a52-2c55-4f0e-8f55-2b9e8f3c7a10", "my_lookup", id="n8n-default-uuid"),
        pytest.param("={{ $json.x }}", "my_lookup", id="expression"),
    ],
)
def test_naming__lookup_named_from_the_webhook_path(path: str, name: str) -> None:
    result = run(workflow(webhook(path), pg("SELECT 1"), name="My Lookup"))

    assert list(config(result)["lookups"]) == [name]


def test_naming__same_path_twice_gets_a_suffix_and_a_note() -> None:
    one = workflow(webhook(), pg("SELECT 1"))
    result = run(one, one)

    assert list(config(result)["lookups"]) == ["order_status", "order_status_2"]
    assert any("renamed order_status_2" in n.text for n in result.notes)


def test_naming__without_connections_the_node_list_order_is_the_path() -> None:
    result = run(workflow(webhook(), pg("SELECT 1"), chain=False))

    assert config(result)["lookups"]["order_status"]["source"] == "prod_db"


# -- every source node --------------------------------------------------------------

SHEETS_V4 = {
    "documentId": {
        "__rl": True,
        "value": "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms",
        "mode": "list",
    },
    "sheetName": {"__rl": True, "value": "gid=0", "mode": "list", "cachedResultName": "Customers"},
    "filtersUI": {
        "values": [{"lookupColumn": "phone", "lookupValue": "={{ $json.body.customer_phone }}"}]
    },
    "options": {},
}

NODES: list[Any] = [
    pytest.param(
        "mySql",
        {
            "operation": "executeQuery",
            "query": "SELECT name FROM c WHERE id = $1",
            "options": {"queryReplacement": "={{ $json.body.id }}"},
        },
        "mysql",
        "SELECT name FROM c WHERE id = $1",
        id="mysql",
    ),
    pytest.param(
        "microsoftSql",
        {
            "operation": "executeQuery",
            "query": "SELECT name FROM c WHERE id = '{{ $json.body.id }}'",
        },
        "sqlserver",
        "SELECT name FROM c WHERE id = $1",
        id="sqlserver",
    ),
    pytest.param(
        "postgres",
        {
            "operation": "select",
            "schema": {"__rl": True, "value": "public"},
            "table": {"__rl": True, "value": "orders"},
            "where": {"values": [{"column": "order_id", "value": "={{ $json.body.id }}"}]},
            "options": {"outputColumns": ["status"]},
        },
        "postgresql",
        'SELECT "status" FROM "public"."orders" WHERE "order_id" = $1 LIMIT 50',
        id="postgres-select",
    ),
    pytest.param(
        "mongoDb",
        {
            "operation": "find",
            "collection": "orders",
            "query": '={"order_id": "{{ $json.body.id }}", "n": {{ $json.body.n }}}',
        },
        "mongodb",
        {"collection": "orders", "filter": {"order_id": "{id}", "n": "{n}"}},
        id="mongodb",
    ),
    pytest.param(
        "redis",
        {"operation": "get", "key": "=order:{{ $json.body.id }}", "keyType": "hash"},
        "redis",
        {"command": "HGETALL", "key": "order:{id}"},
        id="redis",
    ),
    pytest.param(
        "elasticsearch",
        {"operation": "get", "indexId": "products", "documentId": "={{ $json.body.sku }}"},
        "elasticsearch",
        {"index": "products", "id": "{sku}"},
        id="elasticsearch",
    ),
    pytest.param(
        "graphql",
        {
            "endpoint": "https://api.shop.example/graphql",
            "query": "query ($id: ID!) { order(id: $id) { status } }",
            "variables": '={"id": "{{ $json.body.id }}"}',
        },
        "graphql",
        {"document": "query ($id: ID!) { order(id: $id) { status } }", "variables": {"id": "{id}"}},
        id="graphql",
    ),
    pytest.param(
        "googleSheets",
        SHEETS_V4,
        "google_sheets",
        {"range": "Customers", "filter": {"phone": "{customer_phone}"}, "limit": 1},
        id="sheets-v4",
    ),
    pytest.param(
        "airtable",
        {
            "operation": "search",
            "base": {"__rl": True, "value": "appA1b2C3d4E5f6G7"},
            "table": {"__rl": True, "value": "tblX", "cachedResultName": "Orders"},
            "filterByFormula": "={Order ID} = '{{ $json.body.id }}'",
        },
        "airtable",
        {"table": "Orders", "filter": {"Order ID": "{id}"}},
        id="airtable",
    ),
    pytest.param(
        "hubspot",
        {
            "resource": "contact",
            "operation": "search",
            "filterGroupsUi": {
                "filterGroupsValues": [
                    {
                        "filtersUi": {
                            "filterValues": [
                                {
                                    "propertyName": "phone|string",
                                    "value": "={{ $json.body.customer_phone }}",
                                }
                            ]
                        }
                    }
                ]
            },
            "additionalFields": {"properties": ["firstname|string"]},
        },
        "hubspot",
        {
            "object": "contacts",
            "filter": {"phone": "{customer_phone}"},
            "properties": ["firstname"],
        },
        id="hubspot",
    ),
    pytest.param(
        "salesforce",
        {
            "resource": "search",
            "operation": "query",
            "query": "=SELECT Status FROM Order WHERE OrderNumber = '{{ $json.body.id }}'",
        },
        "salesforce",
        {"soql": "SELECT Status FROM Order WHERE OrderNumber = {id}"},
        id="salesforce",
    ),
]


@pytest.mark.parametrize(("kind", "parameters", "source_type", "query"), NODES)
def test_nodes__each_source_node_maps_to_its_type_and_loads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    parameters: dict[str, Any],
    source_type: str,
    query: Any,
) -> None:
    read = node(kind, parameters, name="Read", credentials={"x": {"id": "1", "name": "Main"}})
    result = run(workflow(webhook(), read))
    document = config(result)

    (source,) = document["data_sources"]
    assert (source["id"], source["type"]) == ("main", source_type)
    assert source["queries"]["order_status"] == query
    assert result.exit_code == 0, list(result.report())
    assert all(
        "${env:N8N_MAIN_" in str(v) or k in {"url", "base_id", "spreadsheet_id"}
        for k, v in source["connection"].items()
    )
    loaded(result, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("version", "combine", "expected"),
    [
        pytest.param(4.2, None, [{"phone": "{phone}"}, {"email": "{email}"}], id="v4.2-default-or"),
        pytest.param(4.5, None, {"phone": "{phone}", "email": "{email}"}, id="v4.5-default-and"),
        pytest.param(4.5, "OR", [{"phone": "{phone}"}, {"email": "{email}"}], id="v4.5-or"),
    ],
)
def test_nodes__sheets_filters_combine_as_n8n_defaults_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: float, combine: Any, expected: Any
) -> None:
    values = [
        {"lookupColumn": "phone", "lookupValue": "={{ $json.body.phone }}"},
        {"lookupColumn": "email", "lookupValue": "={{ $json.body.email }}"},
    ]
    parameters = {**SHEETS_V4, "filtersUI": {"values": values}}
    if combine:
        parameters["combineFilters"] = combine
    read = node("googleSheets", parameters, typeVersion=version)
    result = run(workflow(webhook(), read))
    query = config(result)["data_sources"][0]["queries"]["order_status"]

    assert query["filter"] == expected
    assert ("limit" in query) == (version < 4.5)  # before 4.5 n8n returned the first match
    loaded(result, tmp_path, monkeypatch)


def test_nodes__airtable_formula_beyond_equality_keeps_the_formula(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameters = {
        "operation": "search",
        "base": {"__rl": True, "value": "appA1b2C3d4E5f6G7"},
        "table": {"__rl": True, "value": "tblX", "cachedResultName": "Orders"},
        "filterByFormula": "=AND({Total} >= {{ $json.body.min_total }}, "
        "{Status} != 'closed', {Phone} = '{{ $json.body.customer_phone }}')",
    }
    result = run(workflow(webhook(), node("airtable", parameters)))
    query = config(result)["data_sources"][0]["queries"]["order_status"]

    assert query == {
        "table": "Orders",
        "formula": "AND({Total} >= {{min_total}}, {Status} != 'closed', "
        "{Phone} = {{customer_phone}})",
    }
    loaded(result, tmp_path, monkeypatch)
    inside = {**parameters, "filterByFormula": "={Order} = 'ORD-{{ $json.body.id }}' & ''"}
    assert (
        "longer quoted string"
        in untranslated(run(workflow(webhook(), node("airtable", inside))))[0]
    )


def test_nodes__hubspot_operators_and_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def group(*rows: dict[str, Any]) -> dict[str, Any]:
        return {"filtersUi": {"filterValues": list(rows)}}

    phone = {"propertyName": "phone|string", "value": "={{ $json.body.customer_phone }}"}
    amount = {"propertyName": "amount|number", "operator": "GT", "value": "={{ $json.body.min }}"}
    email = {"propertyName": "email|string", "operator": "EQ", "value": "={{ $json.body.email }}"}
    parameters = {"resource": "deal", "operation": "search",
                  "filterGroupsUi": {"filterGroupsValues": [group(phone, amount)]}}  # fmt: skip
    result = run(workflow(webhook(), node("hubspot", parameters)))
    query = config(result)["data_sources"][0]["queries"]["order_status"]

    assert query == {
        "object": "deals",
        "filter": {"phone": "{customer_phone}"},
        "filters": [{"propertyName": "amount", "operator": "GT", "value": "{min}"}],
    }
    loaded(result, tmp_path, monkeypatch)
    parameters["filterGroupsUi"] = {"filterGroupsValues": [group(phone), group(email)]}
    result = run(workflow(webhook(), node("hubspot", parameters)))
    query = config(result)["data_sources"][0]["queries"]["order_status"]
    assert [g["filters"][0]["propertyName"] for g in query["filterGroups"]] == ["phone", "email"]
    loaded(result, tmp_path, monkeypatch)


def test_nodes__file_read_then_spreadsheet_becomes_a_csv_source() -> None:
    read = node("readBinaryFile", {"filePath": "/data/stock.csv"}, name="Read file")
    parse = node("spreadsheetFile", {"fileFormat": "csv"}, name="Parse", typeVersion=2)
    result = run(workflow(webhook(), read, parse))
    (source,) = config(result)["data_sources"]

    assert (source["type"], source["connection"]) == ("csv", {"path": "/data/stock.csv"})
    assert any("add a filter" in n.text for n in result.notes if n.kind == "todo")


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        pytest.param({"method": "PUT", "url": "https://a.example/x"}, "not a read", id="put"),
        pytest.param({"url": "=https://{{ $json.body.host }}/x"}, "fixed http", id="host-param"),
        pytest.param({"url": "file:///etc/passwd"}, "fixed http", id="file-url"),
        pytest.param(
            {
                "url": "https://a.example/x",
                "authentication": "predefinedCredentialType",
                "nodeCredentialType": "shopifyAccessTokenApi",
            },
            "by hand",
            id="predefined-credential",
        ),
        pytest.param(
            {
                "url": "https://a.example/x",
                "sendHeaders": True,
                "headerParameters": {
                    "parameters": [{"name": "X-Phone", "value": "={{ $json.body.phone }}"}]
                },
            },
            "headers are fixed",
            id="header-param",
        ),
    ],
)
def test_nodes__http_requests_with_no_safe_equivalent_are_reported(
    parameters: dict[str, Any], reason: str
) -> None:
    result = run(workflow(webhook(), node("httpRequest", parameters, typeVersion=4.2)))

    assert result.config is None
    assert reason in untranslated(result)[0]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        pytest.param("httpBasicAuth", {"type": "basic", "username": "${env:N8N_API_USER}",
                                       "password": "${env:N8N_API_PASSWORD}"}, id="basic"),
        pytest.param("httpQueryAuth", {"type": "query", "name": "${env:N8N_API_QUERY_NAME}",
                                       "value": "${env:N8N_API_QUERY_VALUE}"}, id="query"),
        pytest.param("oAuth2Api", {"type": "oauth2_client_credentials",
                                   "token_url": "${env:N8N_API_TOKEN_URL}",
                                   "client_id": "${env:N8N_API_CLIENT_ID}",
                                   "client_secret": "${env:N8N_API_CLIENT_SECRET}"}, id="oauth2"),
    ],
)  # fmt: skip
def test_nodes__http_credentials_become_the_sources_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str, expected: dict[str, str]
) -> None:
    parameters = {"url": "https://a.example/x", "authentication": "genericCredentialType",
                  "genericAuthType": auth}  # fmt: skip
    read = node("httpRequest", parameters, credentials={auth: {"id": "1", "name": "API"}})
    result = run(workflow(webhook(), read))

    assert config(result)["data_sources"][0]["connection"]["auth"] == expected
    values = {"N8N_API_TOKEN_URL": "https://auth.a.example/token", "N8N_API_QUERY_NAME": "key"}
    loaded(result, tmp_path, monkeypatch, **values)


def test_nodes__http_query_parameters_and_header_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameters = {
        "url": "https://api.example/v1/orders",
        "authentication": "genericCredentialType",
        "genericAuthType": "httpHeaderAuth",
        "sendQuery": True,
        "queryParameters": {
            "parameters": [
                {"name": "phone", "value": "={{ $json.body.customer_phone }}"},
                {"name": "limit", "value": "5"},
            ]
        },
    }
    read = node(
        "httpRequest", parameters, credentials={"httpHeaderAuth": {"id": "1", "name": "Shop API"}}
    )
    result = run(workflow(webhook(), read))
    (source,) = config(result)["data_sources"]

    assert source["connection"]["auth"] == {
        "type": "header",
        "name": "${env:N8N_SHOP_API_HEADER_NAME}",
        "value": "${env:N8N_SHOP_API_HEADER_VALUE}",
    }
    assert source["queries"]["order_status"] == {
        "path": "/orders",
        "params": {"phone": "{customer_phone}", "limit": "5"},
    }
    assert source["connection"]["base_url"] == "https://api.example/v1"
    assert "N8N_SHOP_API_HEADER_NAME" in result.env
    loaded(result, tmp_path, monkeypatch, N8N_SHOP_API_HEADER_NAME="X-Api-Key")


# -- the command --------------------------------------------------------------------


def test_cli__writes_the_config_and_reports_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "seed.yaml"
    runner = CliRunner()
    done = runner.invoke(
        cli, ["import-n8n", *map(str, SEED), "--tenant", "seed", "--out", str(out)]
    )

    assert done.exit_code == 0, done.output
    assert yaml.safe_load(out.read_text(encoding="utf-8"))["tenant_id"] == "seed"
    assert "N8N_POSTGRESQL_PASSWORD" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        pytest.param(["--tenant", "t"], 2, id="no-file"),
        pytest.param([str(SEED[0])], 2, id="no-tenant"),
        pytest.param([str(SEED[0]), "--tenant", "../x"], 2, id="bad-tenant"),
        pytest.param(["missing.json", "--tenant", "t"], 3, id="missing-file"),
    ],
)
def test_cli__exit_codes(args: list[str], code: int) -> None:
    done = CliRunner().invoke(cli, ["import-n8n", *args])

    assert done.exit_code == code, done.output
    assert "Traceback" not in done.output


def test_cli__not_json_exits_3_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text("{", encoding="utf-8")
    done = CliRunner().invoke(cli, ["import-n8n", str(SEED[0]), str(bad), "--tenant", "t"])

    assert done.exit_code == 3
    assert f"{bad}:1: not valid JSON" in done.stderr
    assert done.stdout == ""  # nothing half-written


KINDS = [
    "postgres", "mySql", "microsoftSql", "mongoDb", "redis", "elasticsearch", "httpRequest",
    "graphql", "googleSheets", "airtable", "hubspot", "salesforce", "spreadsheetFile",
    "readBinaryFile", "code", "if", "respondToWebhook",
]  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
PARAMETERS = st.dictionaries(
    st.sampled_from(["operation", "query", "url", "options", "key", "documentId", "sheetName",
                     "filtersUI", "table", "base", "filterByFormula", "filterGroupsUi", "resource",
                     "collection", "indexId", "endpoint", "variables", "values", "method",
                     "authentication", "genericAuthType", "headers", "where", "path"]),
    JSON, max_size=6,
)  # fmt: skip


@given(st.sampled_from(KINDS), PARAMETERS, st.floats(min_value=1, max_value=5))
@settings(max_examples=300, deadline=None)
def test_hostile__any_parameters_give_a_report_never_an_exception(
    kind: str, parameters: dict[str, Any], version: float
) -> None:
    result = run(workflow(webhook(), node(kind, parameters, typeVersion=version)))

    assert result.exit_code in {0, 1}
    if result.config is not None:
        assert isinstance(yaml.safe_load(result.config), dict)


@given(st.sampled_from(["order_status.json", "stock_check.json", "seed_customer_lookup.json"]),
       st.integers(0, 3), st.integers(0, 10), JSON)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_hostile__a_real_export_with_one_value_changed_never_raises(
    name: str, index: int, which: int, value: Any
) -> None:
    export = _load(name)
    parameters = export["nodes"][index % len(export["nodes"])]["parameters"]
    keys = sorted(parameters) or ["query"]
    parameters[keys[which % len(keys)]] = value

    result = run(export)
    assert result.exit_code in {0, 1}
