"""Loading a tenant config (contract §5): examples, errors with file and line, secrets."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from worker import secrets
from worker.config import DEFAULT_TIMEOUT_S, Tenant, load_tenant
from worker.errors import ConfigError, ConfigErrors

REPO = Path(__file__).resolve().parents[2]
TENANTS = REPO / "config" / "tenants"

KEYS_ENV = "WORKER_SECRET_KEYS"

#: A small valid tenant: one SQLite source (the file need not exist to load).
BASE = """\
tenant_id: acme
data_sources:
  - id: db
    type: sqlite
    connection:
      path: shop.db
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
"""


def _write(tmp_path: Path, *parts: str, name: str = "acme.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent("".join(parts)), encoding="utf-8")
    return path


def _errors(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        load_tenant(path)
    return info.value.errors


def _only_error(path: Path) -> ConfigError:
    errors = _errors(path)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


# --- the shipped examples ---------------------------------------------------------


def test_load__demo_config() -> None:
    tenant = load_tenant(TENANTS / "demo.yaml")

    assert tenant.tenant_id == "demo"
    assert set(tenant.sources) == {"shop_db", "inventory", "faq"}
    assert set(tenant.lookups) == {"order_status", "check_stock", "customer_lookup", "faq"}
    assert tenant.problems == []
    assert tenant.warnings == []
    order_status = tenant.lookups["order_status"]
    assert order_status.source_id == "shop_db"
    assert order_status.args == ("order_id",)
    assert order_status.query.positional == 1
    assert order_status.timeout_s == 5
    assert order_status.params["order_id"].pattern == "[0-9]{1,12}"
    assert tenant.lookups["check_stock"].query.names == ("sku",)
    assert tenant.lookups["customer_lookup"].params["customer_phone"].type == "phone"


def test_load__seed_json_config_as_written() -> None:
    tenant = load_tenant(TENANTS / "whappstream.json")

    assert tenant.tenant_id == "whappstream"  # from the file name: the seed has none
    assert set(tenant.sources) == {"primary_crm", "inventory_api"}
    assert set(tenant.sources["primary_crm"].queries) == {"order_status", "customer_orders"}
    assert set(tenant.sources["inventory_api"].queries) == {"check_stock", "product_details"}
    assert tenant.lookups == {}


def test_load__unbuilt_source_types_load_with_a_problem(tmp_path: Path) -> None:
    """A known type whose connector is not installed loads, unusable, with a clear problem."""
    path = tmp_path / "t.json"
    path.write_text(
        '{"data_sources": [{"id": "crm", "type": "salesforce", "connection": {},'
        ' "queries": {"q": {"soql": "SELECT Id FROM Order"}}}]}'
    )
    from connectors import registry

    if "salesforce" in {i.type_name for i in registry.available() if i.cls is not None}:
        pytest.skip("every type has a connector now; nothing is unbuilt")
    tenant = load_tenant(path)
    source = tenant.sources["crm"]
    assert source.connector_cls is None
    assert source.problem is not None and "salesforce" in source.problem
    assert any(p.startswith("data_sources.crm:") for p in tenant.problems)
    with pytest.raises(ConfigError, match="salesforce"):
        source.make_connector(tenant.base_dir)


def test_load__seed_sources_have_a_connector_or_say_why_not() -> None:
    tenant = load_tenant(TENANTS / "whappstream.json")

    for source_id, type_name in (("primary_crm", "postgresql"), ("inventory_api", "rest_api")):
        source = tenant.sources[source_id]
        assert source.type_name == type_name
        if source.connector_cls is None:
            assert source.problem is not None and type_name in source.problem


def test_load__seed_plaintext_secrets_warn_without_the_value() -> None:
    tenant = load_tenant(TENANTS / "whappstream.json")

    joined = "\n".join(tenant.warnings)
    assert "data_sources[0].connection.password" in joined
    assert "data_sources[1].connection.api_key" in joined
    assert "encrypted_password" not in joined
    assert "encrypted_api_key" not in joined
    assert "headers" not in joined  # "Bearer {api_key}" names a field, it is no secret


# --- errors name the file, the line and the path --------------------------------------


def test_load__yaml_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE,
        """\
lookups:
  order_status:
    source: db
    args: [order_id]
    timeout_s: -3
""",
    )

    error = _only_error(path)

    assert error.where == f"{path}:13: lookups.order_status.timeout_s"
    assert "greater than 0" in error.message
    assert f"{path}:13: lookups.order_status.timeout_s" in str(error)


def test_load__json_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        {
          "tenant_id": "acme",
          "data_sources": [
            {"id": "db", "type": "sqlite", "connection": {"path": "shop.db"},
             "queries": {"wipe": "DELETE FROM orders"}}
          ]
        }
        """,
        name="acme.json",
    )

    error = _only_error(path)

    assert error.where == f"{path}:5: data_sources[0].queries.wipe"


def test_load__yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "tenant_id: acme\ndata_sources:\n  - id: a\n    type: [unclosed\n")

    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_tenant(path)

    assert info.value.where.startswith(f"{path}:")
    assert int(info.value.where.rsplit(":", 1)[1]) >= 4


def test_load__json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n "tenant_id": "acme",\n "data_sources": [,]\n}\n', name="acme.json")

    with pytest.raises(ConfigError, match="not valid JSON") as info:
        load_tenant(path)

    assert info.value.where == f"{path}:3"


def test_load__several_shape_problems_reported_together(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE,
        """\
    max_rows: 0
lookups:
  order_status:
    source: db
    args: [order_id]
    timeout_s: -3
    colour: blue
""",
    )

    wheres = [e.where for e in _errors(path)]

    assert f"{path}:9: data_sources[0].max_rows" in wheres
    assert f"{path}:14: lookups.order_status.timeout_s" in wheres
    assert f"{path}:15: lookups.order_status" in wheres  # colour: an unknown key


def test_load__several_checked_problems_reported_together(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE,
        """\
      wipe: DELETE FROM orders
  - id: odd
    type: oracle
lookups:
  other:
    source: nowhere
  bad_template:
    source: db
    query: order_status
    args: [order_id]
    template: "{% if %}"
""",
    )

    with pytest.raises(ConfigErrors, match=r"4 problem\(s\)") as info:
        load_tenant(path)

    wheres = [e.where for e in info.value.errors]
    assert wheres == [
        f"{path}:9: data_sources[0].queries.wipe",
        f"{path}:11: data_sources[1].type",
        f"{path}:14: lookups.other.source",
        f"{path}:19: lookups.bad_template.template",
    ]
    text = str(info.value)
    assert all(where in text for where in wheres)


# --- queries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        pytest.param("DELETE FROM orders", "only reads are allowed.*DELETE", id="delete"),
        pytest.param(
            "INSERT INTO orders VALUES (1)", "only reads are allowed.*INSERT", id="insert"
        ),
        pytest.param("UPDATE orders SET status = 'x'", "only reads are allowed", id="update"),
        pytest.param("SELECT 1; DROP TABLE orders", "exactly one statement", id="select-drop"),
        pytest.param(
            "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
            "only reads are allowed.*DELETE",
            id="cte-delete",
        ),
    ],
)
def test_load__write_query_refused(tmp_path: Path, sql: str, match: str) -> None:
    path = _write(tmp_path, BASE, f"      bad: {sql}\n")

    error = _only_error(path)

    assert error.where == f"{path}:9: data_sources[0].queries.bad"
    assert re.search(match, error.message)


def test_load__inline_write_query_in_lookup_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE,
        """\
lookups:
  wipe:
    source: db
    query: DELETE FROM orders WHERE order_id = $1
    args: [order_id]
""",
    )

    error = _only_error(path)

    assert error.where == f"{path}:12: lookups.wipe.query"
    assert "only reads are allowed" in error.message


def test_load__write_query_refused_on_unbuilt_sql_type(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        {"data_sources": [{"id": "crm", "type": "postgresql",
          "connection": {"host": "db", "database": "crm"},
          "queries": {"wipe": "DELETE FROM orders WHERE order_id = $1"}}]}
        """,
        name="acme.json",
    )

    with pytest.raises(ConfigErrors, match="only reads are allowed"):
        load_tenant(path)


@pytest.mark.parametrize(
    ("lookup", "line"),
    [
        pytest.param("    args: [order_id, customer_phone]\n", 12, id="too-many"),
        pytest.param("    args: []\n", 12, id="too-few"),
        pytest.param("    query: SELECT 1 WHERE lower(a) = $1\n", 10, id="unnamed-inline-query"),
    ],
)
def test_load__args_count_must_match_placeholders(tmp_path: Path, lookup: str, line: int) -> None:
    path = _write(tmp_path, BASE, "lookups:\n  order_status:\n    source: db\n" + lookup)

    error = _only_error(path)

    assert error.where == f"{path}:{line}: lookups.order_status.args"
    assert "args" in error.message


def test_load__long_hand_query_args_checked(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE,
        '      pair: {query: "SELECT 1 WHERE a = $1 AND b = $2", args: [a]}\n',
    )

    error = _only_error(path)

    assert error.where == f"{path}:9: data_sources[0].queries.pair"
    assert "args names 1 parameter(s) but the query has 2" in error.message


def test_load__unknown_source_type_lists_known_types(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, "  - id: erp\n    type: oracle\n")

    error = _only_error(path)

    assert error.where == f"{path}:10: data_sources[1].type"
    assert "unknown source type 'oracle'" in error.message
    for known in ("postgresql", "sqlite", "rest_api", "csv", "json", "google_sheets"):
        assert known in error.message


def test_load__unknown_lookup_source_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, "lookups:\n  order_status:\n    source: nowhere\n")

    error = _only_error(path)

    assert error.where == f"{path}:11: lookups.order_status.source"
    assert "nowhere" in error.message


def test_load__lookup_naming_missing_query_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, "lookups:\n  track_parcel:\n    source: db\n")

    error = _only_error(path)

    assert "has no query named 'track_parcel'" in error.message


def test_load__duplicate_source_id_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, "  - id: db\n    type: sqlite\n    connection: {path: b.db}\n")

    error = _only_error(path)

    assert error.where == f"{path}:9: data_sources[1].id"
    assert "duplicate" in error.message


def test_load__template_syntax_error_reports_its_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        BASE,
        """\
lookups:
  order_status:
    source: db
    args: [order_id]
    template: |
      Your order {{ params.order_id }}
      is {% if %}
""",
    )

    error = _only_error(path)

    assert error.where == f"{path}:13: lookups.order_status.template"
    assert "line 2" in error.message


def test_load__template_file_syntax_error_reports_its_line(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "broken.j2").write_text("one\ntwo\nthree {{ oops \n", encoding="utf-8")
    path = _write(
        tmp_path,
        BASE,
        "lookups:\n  order_status:\n    args: [order_id]\n    template: broken.j2\n",
    )

    error = _only_error(path)

    assert error.where == f"{path}:12: lookups.order_status.template"
    assert "broken.j2" in error.message
    assert "line 3" in error.message


# --- ${env:NAME} and secrets ---------------------------------------------------------

PG_SOURCE = """\
  - id: crm
    type: postgresql
    connection:
      host: db.internal
      database: crm
      username: reader
      password: {password}
"""


def test_load__env_reference_expands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_DB_PATH", "orders.db")
    monkeypatch.setenv("ACME_DB_PASSWORD", "hunter2")
    path = _write(
        tmp_path,
        BASE.replace("shop.db", "data/${env:ACME_DB_PATH}")
        + PG_SOURCE.format(password="${env:ACME_DB_PASSWORD}"),
    )

    tenant = load_tenant(path)

    settings = tenant.sources["db"].settings
    assert settings is not None
    assert getattr(settings, "path", None) == "data/orders.db"
    assert tenant.config.data_sources[1].connection["password"] == "hunter2"
    assert tenant.warnings == []  # an env reference is not a plaintext secret


def test_load__missing_env_var_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACME_NOT_SET", raising=False)
    path = _write(tmp_path, BASE, PG_SOURCE.format(password="${env:ACME_NOT_SET}"))

    error = _only_error(path)

    assert error.where == f"{path}:15: data_sources[1].connection.password"
    assert "ACME_NOT_SET" in error.message


def test_load__encrypted_value_decrypts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.keygen()
    token = secrets.encrypt("s3cr3t-Pa55", keys=key)
    monkeypatch.setenv(KEYS_ENV, key)
    path = _write(tmp_path, BASE, PG_SOURCE.format(password=token))

    tenant = load_tenant(path)

    assert tenant.config.data_sources[1].connection["password"] == "s3cr3t-Pa55"
    assert tenant.warnings == []


def test_load__encrypted_value_decrypts_with_an_older_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = secrets.keygen(), secrets.keygen()
    token = secrets.encrypt("s3cr3t-Pa55", keys=old)
    monkeypatch.setenv(KEYS_ENV, f"{new},{old}")
    path = _write(tmp_path, BASE, PG_SOURCE.format(password=token))

    tenant = load_tenant(path)

    assert tenant.config.data_sources[1].connection["password"] == "s3cr3t-Pa55"


def test_load__wrong_key_names_the_path_never_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.encrypt("s3cr3t-Pa55", keys=secrets.keygen())
    monkeypatch.setenv(KEYS_ENV, secrets.keygen())
    path = _write(tmp_path, BASE, PG_SOURCE.format(password=token))

    with pytest.raises(ConfigErrors, match="does not decrypt") as info:
        load_tenant(path)

    [error] = info.value.errors
    assert error.where == f"{path}:15: data_sources[1].connection.password"
    text = str(info.value)
    assert "s3cr3t-Pa55" not in text
    assert token not in text
    assert token.removeprefix(secrets.PREFIX)[:20] not in text


def test_load__encrypted_value_without_keys_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.encrypt("s3cr3t-Pa55", keys=secrets.keygen())
    monkeypatch.delenv(KEYS_ENV, raising=False)
    path = _write(tmp_path, BASE, PG_SOURCE.format(password=token))

    error = _only_error(path)

    assert error.where == f"{path}:15: data_sources[1].connection.password"
    assert KEYS_ENV in error.message
    assert token not in str(error)


def test_load__plaintext_secret_warns(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, PG_SOURCE.format(password="hunter2"))

    tenant = load_tenant(path)

    assert len(tenant.warnings) == 1
    assert "data_sources[1].connection.password" in tenant.warnings[0]
    assert "plaintext" in tenant.warnings[0]
    assert "hunter2" not in tenant.warnings[0]


# --- tenant_id ----------------------------------------------------------------------


def test_load__tenant_id_defaults_to_file_stem(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("tenant_id: acme\n", ""), name="globex.yaml")

    assert load_tenant(path).tenant_id == "globex"


def test_load__tenant_id_in_file_wins_over_stem(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, name="globex.yaml")

    assert load_tenant(path).tenant_id == "acme"


def test_load__lookup_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, "lookups:\n  order_status:\n    args: [order_id]\n")

    lookup = load_tenant(path).lookups["order_status"]

    assert lookup.source_id == "db"  # the only source
    assert lookup.timeout_s == DEFAULT_TIMEOUT_S == 10
    assert lookup.params["order_id"].type == "string"
    assert lookup.params["order_id"].required is True


# --- the contract's implicit lookup: a query named on a data source ----------------------

IMPLICIT = """\
tenant_id: acme
data_sources:
  - id: db
    type: sqlite
    connection: {path: shop.db}
    queries:
      bare: SELECT status FROM orders WHERE order_id = $1
      ordered:
        query: SELECT name FROM customers WHERE phone = $1 AND plan = $2
        args: [customer_phone, plan]
  - id: stock
    type: csv
    connection: {path: stock.csv}
    queries:
      check_stock: {filter: {sku: "{sku}", warehouse: "{{$json.warehouse}}"}}
"""


@pytest.fixture
def implicit(tmp_path: Path) -> Tenant:
    return load_tenant(_write(tmp_path, IMPLICIT))


def test_source_lookup__named_placeholders(implicit: Tenant) -> None:
    lookup = implicit.source_lookup("check_stock", "stock")

    assert lookup is not None
    assert lookup.name == "check_stock"
    assert lookup.source_id == "stock"
    assert lookup.args == ()
    assert set(lookup.params) == {"sku", "warehouse"}
    assert all(rule.type == "string" and rule.required for rule in lookup.params.values())
    assert lookup.timeout_s == DEFAULT_TIMEOUT_S


def test_source_lookup__dollar_binds_the_column_it_is_compared_with(implicit: Tenant) -> None:
    lookup = implicit.source_lookup("bare", "db")

    assert lookup is not None
    assert lookup.query.positional == 1
    assert lookup.args == ("order_id",)  # WHERE order_id = $1
    assert set(lookup.params) == {"order_id"}


def test_source_lookup__unnamed_dollar_has_empty_args_and_a_warning(tmp_path: Path) -> None:
    tenant = load_tenant(
        _write(tmp_path, BASE, "      by_name: SELECT status FROM orders WHERE lower(name) = $1\n")
    )

    lookup = tenant.source_lookup("by_name", "db")

    assert lookup is not None
    assert lookup.args == ()  # the order is unknown: the job is answered invalid_input
    assert len(tenant.warnings) == 1
    assert "data_sources.db: query 'by_name' takes 1 value(s)" in tenant.warnings[0]


def test_lookup__named_query_without_args_binds_by_column(tmp_path: Path) -> None:
    tenant = load_tenant(_write(tmp_path, BASE, "lookups:\n  order_status: {source: db}\n"))

    assert tenant.lookups["order_status"].args == ("order_id",)
    assert tenant.warnings == []


def test_find_query__every_source_with_that_query(tmp_path: Path) -> None:
    tenant = load_tenant(
        _write(
            tmp_path,
            IMPLICIT,
            "  - id: db2\n    type: sqlite\n    connection: {path: b.db}\n",
            "    queries: {bare: 'SELECT 1 FROM t WHERE order_id = $1'}\n",
        )
    )

    assert tenant.find_query("bare") == ("db", "db2")
    assert tenant.find_query("check_stock") == ("stock",)
    assert tenant.find_query("nothing") == ()


def test_source_lookup__dollar_query_with_args(implicit: Tenant) -> None:
    lookup = implicit.source_lookup("ordered", "db")

    assert lookup is not None
    assert lookup.args == ("customer_phone", "plan")
    assert set(lookup.params) == {"customer_phone", "plan"}


@pytest.mark.parametrize(
    ("query_type", "source_id"),
    [
        pytest.param("check_stock", "db", id="query-on-another-source"),
        pytest.param("nothing", "db", id="unknown-query"),
        pytest.param("bare", "nowhere", id="unknown-source"),
    ],
)
def test_source_lookup__none_when_not_configured(
    implicit: Tenant, query_type: str, source_id: str
) -> None:
    assert implicit.source_lookup(query_type, source_id) is None


def test_source_lookup__seed_query_on_unbuilt_source() -> None:
    tenant = load_tenant(TENANTS / "whappstream.json")

    lookup = tenant.source_lookup("order_status", "primary_crm")

    assert lookup is not None
    assert lookup.source_id == "primary_crm"
    assert lookup.args == ("order_id",)


def test_load__an_unset_variable_is_one_problem_not_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The empty value an unset ``${env:…}`` leaves is not also "not an integer"."""
    monkeypatch.delenv("NO_SUCH_PORT_VAR", raising=False)
    path = tmp_path / "t.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            tenant_id: t
            data_sources:
              - id: db
                type: postgresql
                connection:
                  host: db.example.com
                  port: ${env:NO_SUCH_PORT_VAR}
                  database: shop
                queries:
                  q: SELECT 1 AS one
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigErrors) as caught:
        load_tenant(path)
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:7: data_sources[0].connection.port: "
        "environment variable NO_SUCH_PORT_VAR is not set"
    ]
