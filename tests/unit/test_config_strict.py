"""A config is read strictly: duplicate keys are errors, unknown keys say what was meant,
relative paths start at the config's folder, and the JSON Schema matches the models."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from worker.config import load_tenant, parse_document
from worker.config_schema import tenant_schema
from worker.errors import ConfigError, ConfigErrors

REPO = Path(__file__).resolve().parents[2]

#: one SQLite source; its file need not exist to load
SOURCE = """\
tenant_id: acme
data_sources:
  - id: db
    type: sqlite
    connection:
      path: shop.db
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
"""


def _write(folder: Path, text: str, name: str = "acme.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_tenant(path)
    return [str(e) for e in info.value.errors]


# --- duplicate keys ---------------------------------------------------------------


def test_duplicate_key__yaml_names_file_line_and_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        SOURCE + "      order_status: SELECT 2 WHERE 1 = $1\n",
    )

    assert _problems(path) == [
        f"{path}:9: data_sources[0].queries: duplicate key 'order_status' (first at line 8): "
        "give each key once"
    ]


def test_duplicate_key__yaml_top_level_and_nested_reported_together(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        SOURCE
        + "lookups:\n  order_status: {source: db, args: [order_id], source: db}\n"
        + "tenant_id: other\n",
    )

    problems = _problems(path)

    assert f"{path}:11: duplicate key 'tenant_id' (first at line 1): give each key once" in (
        problems
    )
    assert any(
        p.startswith(f"{path}:10: lookups.order_status: duplicate key 'source'") for p in problems
    )
    assert len(problems) == 2


def test_duplicate_key__yaml_merge_may_be_overridden(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        SOURCE
        + "lookups:\n"
        + "  order_status: &base {source: db, args: [order_id], timeout_s: 3}\n"
        + "  second:\n    <<: *base\n    timeout_s: 4\n    query: order_status\n",
    )

    tenant = load_tenant(path)

    assert tenant.lookups["second"].timeout_s == 4
    assert tenant.lookups["order_status"].timeout_s == 3


def test_duplicate_key__yaml_keys_compared_as_loaded(tmp_path: Path) -> None:
    # 1 and 0x1 are the same integer key once loaded: PyYAML would keep the last
    with pytest.raises(ConfigErrors, match="duplicate key '0x1'"):
        parse_document("a:\n  1: x\n  0x1: y\n", name=str(tmp_path / "a.yaml"))


def test_duplicate_key__json_names_file_line_and_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        {"tenant_id": "acme",
         "data_sources": [{"id": "db", "type": "sqlite", "connection": {"path": "shop.db"},
            "queries": {"q": "SELECT 1",
                        "q": "SELECT 2"}}],
         "tenant_id": "acme"}
        """,
        name="acme.json",
    )

    assert _problems(path) == [
        f"{path}:4: data_sources[0].queries: duplicate key 'q' (first at line 3): "
        "give each key once",
        f"{path}:5: duplicate key 'tenant_id' (first at line 1): give each key once",
    ]


def test_duplicate_key__json_without_lines_still_names_the_path(tmp_path: Path) -> None:
    # a tab before a key: fine for JSON, not for YAML's composer, so no line numbers
    text = '{"a": {"b": 1,\n\t"b": 2}}'

    with pytest.raises(ConfigErrors) as info:
        parse_document(text, name="t.json")

    assert [str(e) for e in info.value.errors] == [
        "t.json: a: duplicate key 'b': give each key once"
    ]


# PyYAML does not read back every control character it writes (NEL, U+0085): left out
_text = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"))
_keys = st.text(_text, max_size=8)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(_text, max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


@given(document=st.dictionaries(_keys, _values, max_size=5))
def test_parse_document__what_a_dumper_writes_reads_back(document: dict[str, Any]) -> None:
    # no dumper writes a key twice: nothing valid is taken for a duplicate
    as_json, _ = parse_document(json.dumps(document), name="t.json")
    as_yaml, _ = parse_document(yaml.safe_dump(document, allow_unicode=True), name="t.yaml")

    assert as_json == document
    assert as_yaml == document


# --- unknown keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        pytest.param(
            SOURCE.replace("queries:", "querys:"),
            ":7: data_sources[0]",
            "unknown key 'querys' — did you mean 'queries'?",
            id="source",
        ),
        pytest.param(
            SOURCE + "lookup: {}\n",
            ":9",
            "unknown key 'lookup' — did you mean 'lookups'?",
            id="top-level",
        ),
        pytest.param(
            SOURCE.replace("path: shop.db", "paht: shop.db\n      path: shop.db"),
            ":6: data_sources[0].connection",
            "unknown key 'paht' — did you mean 'path'?",
            id="connection",
        ),
        pytest.param(
            SOURCE + "lookups:\n  order_status:\n    args: [order_id]\n"
            "    params:\n      order_id: {tipe: string}\n",
            ":13: lookups.order_status.params.order_id",
            "unknown key 'tipe' — did you mean 'type'?",
            id="param-rule",
        ),
        pytest.param(
            SOURCE + "defaults:\n  fallback: {source: db, query: order_status, args: [x],\n"
            "             txt: Sorry}\n",
            ":11: defaults.fallback",
            "unknown key 'txt' — did you mean 'text'?",
            id="union-branch",
        ),
        pytest.param(
            SOURCE + "lookups:\n  order_status:\n    args: [order_id]\n"
            "    route: {keywords: [order], colour: blue}\n",
            ":12: lookups.order_status.route",
            "unknown key 'colour'; the keys here are: extract, keywords",
            id="no-close-match",
        ),
    ],
)
def test_unknown_key__says_what_was_meant(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = _write(tmp_path, text)

    assert _problems(path) == [f"{path}{where}: {message}"]


def test_unknown_key__in_a_tagged_union_of_settings(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        tenant_id: acme
        data_sources:
          - id: api
            type: rest_api
            connection:
              base_url: https://api.example.com
              auth: {type: basic, username: u,
                     pasword: x}
        """,
    )

    problems = _problems(path)

    assert (
        f"{path}:8: data_sources[0].connection.auth: unknown key 'pasword' — did you mean "
        "'password'?" in problems
    )
    # the missing field is named where the document has it, without pydantic's branch name
    assert f"{path}:7: data_sources[0].connection.auth.password: Field required" in problems


# --- paths from the config's folder, not the current directory --------------------


def _templated(folder: Path) -> Path:
    return _write(
        folder,
        SOURCE + "lookups:\n  order_status: {args: [order_id], template: reply.j2}\n",
    )


def test_templates__found_above_the_config_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "reply.j2").write_text("{{ row.status }}", encoding="utf-8")
    (tmp_path / "tenants").mkdir()
    path = _templated(tmp_path / "tenants")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    for cwd in (tmp_path, elsewhere, REPO):
        monkeypatch.chdir(cwd)
        tenant = load_tenant(path)
        assert tenant.renderer.templates_dir == tmp_path / "templates"


def test_templates__the_current_directory_is_never_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    (here / "templates").mkdir(parents=True)
    (here / "templates" / "reply.j2").write_text("{{ row.status }}", encoding="utf-8")
    (tmp_path / "config").mkdir()
    path = _templated(tmp_path / "config")
    monkeypatch.chdir(here)

    with pytest.raises(ConfigError, match=r"reply\.j2"):
        load_tenant(path)


def test_relative_paths__start_at_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    path = _write(tmp_path / "config", SOURCE + "templates_dir: ../tmpl\n")
    monkeypatch.chdir(REPO)

    tenant = load_tenant(path)

    assert tenant.base_dir == tmp_path / "config"
    assert tenant.renderer.templates_dir == tmp_path / "tmpl"


# --- the JSON Schema ---------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = tenant_schema()
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def _document(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


SHIPPED = sorted(
    [*(REPO / "config" / "examples").glob("*.yaml"), *(REPO / "config" / "tenants").glob("*.*")]
)
SHIPPED = [p for p in SHIPPED if p.suffix in (".yaml", ".yml", ".json")]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_schema__shipped_configs_validate(validator: Draft7Validator, path: Path) -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_document(path))
    ]

    assert errors == []


def test_schema__contract_seed_example_validates(validator: Draft7Validator) -> None:
    seed = {
        "data_sources": [
            {
                "id": "primary_crm",
                "name": "Customer Database",
                "type": "postgresql",
                "connection": {
                    "host": "db.example.com",
                    "database": "crm_prod",
                    "username": "flomastr_readonly",
                    "password": "enc:v1:abc",
                },
                "queries": {"order_status": "SELECT status FROM orders WHERE order_id = $1"},
            },
            {
                "id": "inventory_api",
                "type": "rest_api",
                "connection": {
                    "base_url": "https://inventory.company.com/api",
                    "api_key": "${env:INVENTORY_KEY}",
                    "headers": {"Authorization": "Bearer {api_key}"},
                },
                "endpoints": {"check_stock": "/products/{sku}/stock"},
            },
        ]
    }

    assert list(validator.iter_errors(seed)) == []


@pytest.mark.parametrize(
    ("change", "path"),
    [
        pytest.param(lambda d: d.update(querys={}), [], id="top-level"),
        pytest.param(
            lambda d: d["data_sources"][0].update(querys={}), ["data_sources", 0], id="source"
        ),
        pytest.param(
            lambda d: d["data_sources"][0]["connection"].update(pth="x"),
            ["data_sources", 0, "connection"],
            id="connection-by-type",
        ),
        pytest.param(
            lambda d: d["data_sources"][0]["connection"].update(port="many"),
            ["data_sources", 0, "connection", "port"],
            id="connection-value",
        ),
        pytest.param(
            lambda d: d["data_sources"][0].update(type="postgres"),
            ["data_sources", 0, "type"],
            id="unknown-type",
        ),
    ],
)
def test_schema__rejects_a_misspelt_config(
    validator: Draft7Validator, change: Any, path: list[str | int]
) -> None:
    document = {
        "tenant_id": "acme",
        "data_sources": [
            {"id": "db", "type": "postgresql", "connection": {"host": "h", "port": 5432}}
        ],
    }
    change(document)

    paths = [list(e.absolute_path) for e in validator.iter_errors(document)]

    assert path in paths


def test_schema__secret_references_stand_for_any_connection_value(
    validator: Draft7Validator,
) -> None:
    document = {
        "data_sources": [
            {
                "id": "db",
                "type": "postgresql",
                "connection": {"host": "${env:DB_HOST}", "port": "${env:DB_PORT}"},
            }
        ]
    }
    assert list(validator.iter_errors(document)) == []

    document["data_sources"][0]["connection"]["port"] = "5432; not a port"
    assert list(validator.iter_errors(document)) != []
