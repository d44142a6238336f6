"""Where a config came from decides what it may reach (contract §5.0, worker/trust.py)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from worker import secrets
from worker.config import load_tenant
from worker.errors import ConfigErrors

KEY = secrets.keygen()
SECRET = "canary-Pa55word"


@pytest.fixture(autouse=True)
def _operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_SECRET_KEYS", KEY)
    monkeypatch.setenv("OPERATOR_ONLY", "operator-canary")
    for name in ("WORKER_DATA_DIR", "WORKER_ALLOW_NETWORKS", "WORKER_TEMPLATES_DIR"):
        monkeypatch.delenv(name, raising=False)


def rest_config(**lookup: Any) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "data_sources": [
            {
                "id": "api",
                "type": "rest_api",
                "connection": {"base_url": "https://api.example.com", "api_key": "k-123456"},
                "endpoints": {"stock": "/stock/{sku}"},
            }
        ],
        "lookups": {"stock": {"source": "api", **lookup}},
    }


def problems(document: dict[str, Any], *, origin: str = "engine", decrypt: bool = True) -> str:
    with pytest.raises(ConfigErrors) as caught:
        load_tenant(document=document, tenant_id="acme", origin=origin, decrypt=decrypt)  # type: ignore[arg-type]
    text = str(caught.value)
    assert SECRET not in text and "operator-canary" not in text
    return text


@pytest.mark.parametrize("origin", ["file", "engine"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("template", "token: ${env:OPERATOR_ONLY}", id="env-in-template"),
        pytest.param("fallback", "${env:WORKER_SECRET_KEYS}", id="env-in-fallback"),
        pytest.param("template", "ENC", id="ciphertext-in-template"),
        pytest.param("not_found", "ENC", id="ciphertext-in-not-found"),
    ],
)
def test_secret_values__resolve_only_in_connection_settings(
    origin: str, field: str, value: str
) -> None:
    value = value.replace("ENC", secrets.encrypt(SECRET, tenant="acme"))
    text = problems(rest_config(**{field: value}), origin=origin)
    assert f"lookups.stock.{field}" in text


def test_file_config__env_and_secrets_resolve_in_connection(tmp_path: Path) -> None:
    document = rest_config()
    document["data_sources"][0]["connection"]["api_key"] = "${env:OPERATOR_ONLY}"
    path = tmp_path / "acme.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    tenant = load_tenant(path)
    settings = tenant.sources["api"].settings
    assert settings is not None
    assert "operator-canary" in tenant.secrets


def test_engine_config__refuses_env_even_in_connection() -> None:
    document = rest_config()
    document["data_sources"][0]["connection"]["api_key"] = "${env:OPERATOR_ONLY}"
    assert "data_sources[0].connection.api_key" in problems(document)


def test_engine_config__tenant_bound_secret_decrypts_in_connection() -> None:
    document = rest_config()
    document["data_sources"][0]["connection"]["api_key"] = secrets.encrypt(SECRET, tenant="acme")
    tenant = load_tenant(document=document, tenant_id="acme", origin="engine")
    assert SECRET in tenant.secrets


def test_engine_config__another_tenants_secret_does_not_decrypt() -> None:
    document = rest_config()
    theirs = secrets.encrypt(SECRET, tenant="rival")
    for value in (theirs, theirs.replace(":rival:", ":acme:")):
        document["data_sources"][0]["connection"]["api_key"] = value
        assert "data_sources[0].connection.api_key" in problems(document)


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        pytest.param("templates_dir", "/", "templates_dir", id="templates-dir"),
        pytest.param("engine", {"url": "http://evil.example"}, "engine", id="engine-block"),
        pytest.param("queue", {"sqlite": {"path": "q.db"}}, "queue", id="queue-block"),
        pytest.param("audit", {"dsn": "postgresql://x@y/z"}, "audit.dsn", id="audit-dsn"),
    ],
)
def test_engine_config__operator_settings_are_refused(key: str, value: Any, where: str) -> None:
    document = rest_config()
    document[key] = value
    assert where in problems(document)


def test_engine_config__templates_come_from_the_workers_own_folder() -> None:
    tenant = load_tenant(
        document=rest_config(template="order_status.j2"), tenant_id="acme", origin="engine"
    )
    assert tenant.renderer.templates_dir == Path(__file__).resolve().parents[2] / "templates"
    text = problems(rest_config(template="{% include 'etc/passwd' %}"))
    assert "etc/passwd" in text


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080",
        "http://10.1.2.3",
        "http://user:pw@192.168.0.1/",
    ],
)
def test_engine_config__private_address_literals_are_refused(base_url: str) -> None:
    document = rest_config()
    document["data_sources"][0]["connection"]["base_url"] = base_url
    text = problems(document)
    assert "data_sources[0].connection.base_url" in text
    assert "WORKER_ALLOW_NETWORKS" in text


def test_engine_config__private_hosts_of_database_sources_are_refused() -> None:
    document = {
        "tenant_id": "acme",
        "data_sources": [
            {
                "id": "db",
                "type": "postgresql",
                "connection": {"host": "127.0.0.1", "database": "d", "username": "u"},
                "queries": {"q": "SELECT 1"},
            },
            {
                "id": "cache",
                "type": "redis",
                "connection": {"url": "redis://10.0.0.7:6379/0"},
                "queries": {"r": {"command": "GET", "key": "k"}},
            },
            {
                "id": "docs",
                "type": "mongodb",
                "connection": {"uri": "mongodb://db1.example.com,127.0.0.1:27017/x"},
                "queries": {"m": {"collection": "c", "filter": {}}},
            },
        ],
    }
    text = problems(document)
    assert "data_sources[0].connection.host" in text
    assert "data_sources[1].connection.url" in text
    assert "data_sources[2].connection.uri" in text


def test_engine_config__allow_networks_lets_the_operator_widen_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_ALLOW_NETWORKS", "127.0.0.0/8, 10.0.0.0/8")
    document = rest_config()
    document["data_sources"][0]["connection"]["base_url"] = "http://127.0.0.1:8000"
    tenant = load_tenant(document=document, tenant_id="acme", origin="engine")
    assert not tenant.reach.trusted
    assert ipaddress.ip_network("10.0.0.0/8") in tenant.reach.allow_networks


def test_engine_config__bad_allow_networks_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_ALLOW_NETWORKS", "10.0.0.0/8, nonsense")
    with pytest.raises(Exception, match="WORKER_ALLOW_NETWORKS"):
        load_tenant(document=rest_config(), tenant_id="acme", origin="engine")


def csv_config(path: str) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "data_sources": [
            {"id": "f", "type": "csv", "connection": {"path": path}, "queries": {"q": {}}}
        ],
    }


def test_engine_config__file_sources_need_the_operators_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert "WORKER_DATA_DIR is not set" in problems(csv_config("stock.csv"))
    monkeypatch.setenv("WORKER_DATA_DIR", str(tmp_path))
    for escape in ("/etc/passwd", "../../etc/passwd", "sub/../../x.csv"):
        assert "below WORKER_DATA_DIR" in problems(csv_config(escape)), escape
    tenant = load_tenant(document=csv_config("stock.csv"), tenant_id="acme", origin="engine")
    assert tenant.reach.data_dir == tmp_path.resolve()


def test_file_config__is_the_operators_and_reaches_anything(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        "data_sources:\n  - id: f\n    type: csv\n    connection: {path: /etc/passwd}\n"
        "    queries: {q: {}}\ntemplates_dir: /\n",
        encoding="utf-8",
    )
    tenant = load_tenant(path)
    assert tenant.reach.trusted


def test_engine_check_without_keys__still_checks_places() -> None:
    """The engine's PUT holds no key: values are not decrypted, but their places are checked."""
    document = rest_config(template=secrets.encrypt(SECRET, tenant="acme"))
    assert "lookups.stock.template" in problems(document, decrypt=False)
    fine = rest_config()
    fine["data_sources"][0]["connection"]["api_key"] = "enc:v1:acme:not-even-a-token"
    load_tenant(document=fine, tenant_id="acme", origin="engine", decrypt=False)
