"""The connector registry: entry points name the types, their extras and (by class) dialects."""

from __future__ import annotations

import re
from importlib.metadata import EntryPoint, entry_points, metadata
from pathlib import Path

import pytest

from connectors import registry
from connectors.base import PreparedQuery
from worker.config import load_tenant
from worker.errors import ConfigErrors, ConnectorMissing, NotARead

SQL_TYPES = ("mysql", "postgresql", "sqlite", "sqlserver")


def _missing_driver(type_name: str, extra: str | None) -> EntryPoint:
    extras = f" [{extra}]" if extra else ""
    value = f"tests.no_such_driver_module:Connector{extras}"
    return EntryPoint(name=type_name, value=value, group=registry.ENTRY_POINT_GROUP)


@pytest.fixture
def without_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The postgresql and csv entry points point at a module that cannot import."""
    points = dict(registry._entry_points())
    points["postgresql"] = _missing_driver("postgresql", "postgresql")
    points["csv"] = _missing_driver("csv", None)
    monkeypatch.setattr(registry, "_entry_points", lambda: points)


def test_available__lists_exactly_the_entry_points() -> None:
    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}

    assert [info.type_name for info in registry.available()] == sorted(names)


def test_available__origin_is_the_class_without_the_extra() -> None:
    info = {i.type_name: i for i in registry.available()}["postgresql"]

    assert info.origin == "connectors.postgresql:PostgreSQLConnector"


def test_load__unknown_type_names_the_known_ones() -> None:
    with pytest.raises(ConnectorMissing, match=r"unknown source type 'oracle'; known types: .*csv"):
        registry.load("oracle")


@pytest.mark.usefixtures("without_driver")
@pytest.mark.parametrize(
    ("type_name", "hint"),
    [
        pytest.param("postgresql", "pip install 'data-lookup-worker[postgresql]'", id="extra"),
        pytest.param("csv", "install the package that provides it", id="no-extra"),
    ],
)
def test_load__missing_driver_says_what_to_install(type_name: str, hint: str) -> None:
    with pytest.raises(ConnectorMissing, match="cannot load its driver") as caught:
        registry.load(type_name)

    assert caught.value.message.endswith(hint)
    assert registry.is_known(type_name)


@pytest.mark.parametrize("type_name", SQL_TYPES)
def test_sql_dialect__each_sql_connector_names_its_type(type_name: str) -> None:
    """What `sql_dialect` falls back on when a driver is missing: dialect = type name."""
    assert registry.load(type_name).sql_dialect == type_name
    assert registry.sql_dialect(type_name) == type_name


@pytest.mark.parametrize("type_name", ["csv", "redis", "rest_api", "oracle"])
def test_sql_dialect__none_for_other_types(type_name: str) -> None:
    assert registry.sql_dialect(type_name) is None


@pytest.mark.usefixtures("without_driver")
def test_prepare_unloaded__sql_still_checked_without_the_driver() -> None:
    assert registry.sql_dialect("postgresql") == "postgresql"
    prepared = registry.prepare_unloaded("postgresql", "SELECT 1 WHERE a = $1")
    assert prepared.positional == 1
    with pytest.raises(NotARead):
        registry.prepare_unloaded("postgresql", "DELETE FROM orders")


@pytest.mark.usefixtures("without_driver")
def test_prepare_unloaded__other_queries_kept_as_written() -> None:
    spec = {"filter": {"sku": "$1"}}

    assert registry.prepare_unloaded("csv", spec) == PreparedQuery(spec=spec)
    assert registry.prepare_unloaded("postgresql", spec) == PreparedQuery(spec=spec)


@pytest.mark.usefixtures("without_driver")
def test_load_tenant__unbuilt_sql_source_refuses_a_write(tmp_path: Path) -> None:
    path = tmp_path / "acme.json"
    path.write_text(
        '{"data_sources": [{"id": "crm", "type": "postgresql", "connection": {},'
        ' "queries": {"wipe": "DELETE FROM orders WHERE order_id = $1"}}]}'
    )

    with pytest.raises(ConfigErrors, match="only reads are allowed"):
        load_tenant(path)


@pytest.mark.usefixtures("without_driver")
def test_load_tenant__unbuilt_sql_source_loads_with_its_problem(tmp_path: Path) -> None:
    path = tmp_path / "acme.json"
    path.write_text(
        '{"data_sources": [{"id": "crm", "type": "postgresql", "connection": {},'
        ' "queries": {"order_status": "SELECT status FROM orders WHERE order_id = $1"}}]}'
    )

    tenant = load_tenant(path)

    source = tenant.sources["crm"]
    assert source.connector_cls is None
    assert source.problem is not None and "data-lookup-worker[postgresql]" in source.problem
    assert source.queries["order_status"].args == ("order_id",)


def _extra_name(extra: str) -> str:
    """An extra's name as the package metadata writes it (PEP 685)."""
    return re.sub(r"[-_.]+", "-", extra).lower()


def test_entry_points__each_extra_is_one_the_package_declares() -> None:
    """The registry's extras are the entry points' own: each names a declared extra."""
    declared = set(metadata("data-lookup-worker").get_all("Provides-Extra") or [])
    for ep in entry_points(group=registry.ENTRY_POINT_GROUP):
        assert registry.driver_extra(ep.name) == (ep.extras[0] if ep.extras else None), ep.name
        assert {_extra_name(e) for e in ep.extras} <= declared, ep.name
    assert registry.driver_extra("postgresql") == "postgresql"
    assert registry.driver_extra("sqlite") is None
    assert registry.driver_extra("no-such-type") is None
