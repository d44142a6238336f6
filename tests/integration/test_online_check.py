"""``worker config check --online`` (worker.online_check) against live sources.

PostgreSQL in a fresh database of its own, MariaDB (root on 127.0.0.1:3306) in
a database of its own, SQLite files, and a loopback REST API. Queries are
prepared, never run: a query that would fail on its first row still describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pymysql
import pytest

from tests.servers.hostile import Recorder, serve
from tests.servers.rest_app import API_KEY, rest_app
from tests.support.databases import fresh_postgres
from worker.config import Tenant, load_tenant
from worker.online_check import Level, OnlineReport, check_online, template_fields

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-online-check-7f3a"
SEED_TEMPLATE = (
    "Your order #{{ params.order_id }} has been {{ row.status }}! 📦\n"
    "Tracking: {{ row.tracking }}\n"
    "Expected delivery: {{ row.estimated_delivery | date }}"
)
MISSING_TRACKING = (
    "lookups.order_status.template: reads 'tracking', which query order_status does not "
    "return (it returns status, tracking_number, estimated_delivery)"
)


def tenant_of(tmp_path: Path, document: dict[str, Any]) -> Tenant:
    path = tmp_path / "shop.json"
    path.write_text(json.dumps({"tenant_id": "shop", **document}), encoding="utf-8")
    tenant = load_tenant(path, templates_dir=REPO / "templates")
    assert not tenant.problems
    return tenant


def sql_source(source_type: str, connection: dict[str, Any], order_status: str) -> dict[str, Any]:
    return {
        "id": "crm",
        "type": source_type,
        "connection": connection,
        "queries": {"order_status": order_status},
    }


def order_lookup(template: str = SEED_TEMPLATE, **more: Any) -> dict[str, Any]:
    return {"order_status": {"source": "crm", "args": ["order_id"], "template": template, **more}}


def order_tenant(
    tmp_path: Path,
    source_type: str,
    connection: dict[str, Any],
    sql: str,
    template: str = SEED_TEMPLATE,
) -> Tenant:
    """A tenant with one SQL source, ``crm``, and the order lookup on its ``sql``."""
    source = sql_source(source_type, connection, sql)
    return tenant_of(tmp_path, {"data_sources": [source], "lookups": order_lookup(template)})


def nobody_listening(database: str) -> dict[str, Any]:
    """A connection block for a port nothing listens on, with a password to keep secret."""
    return {
        "host": "127.0.0.1",
        "port": closed_port(),
        "database": database,
        "username": "reader",
        "password": PASSWORD,
    }


def lines(report: OnlineReport, level: Level) -> list[str]:
    return [str(f) for f in report.findings if f.level is level]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SEED_SQL = "SELECT status, tracking_number, estimated_delivery FROM orders WHERE order_id = $1"


# -- PostgreSQL ---------------------------------------------------------------------


@pytest.fixture
async def crm() -> AsyncIterator[dict[str, Any]]:
    """The seed's orders table in a fresh database; its connection block."""
    async with fresh_postgres("online_check") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE orders (order_id text PRIMARY KEY, status text, "
                "tracking_number text, estimated_delivery date)"
            )
            await conn.execute("INSERT INTO orders VALUES ('12345', 'shipped', 'UPS1', NULL)")
        finally:
            await conn.close()
        yield {
            "host": "127.0.0.1",
            "port": 5432,
            "database": dsn.rsplit("/", 1)[1],
            "username": "postgres",
            "password": PASSWORD,  # trust auth: ignored, but it must never be printed
        }


async def test_postgresql__names_the_template_field_the_query_does_not_return(
    tmp_path: Path, crm: dict[str, Any]
) -> None:
    tenant = order_tenant(tmp_path, "postgresql", crm, SEED_SQL)

    report = await check_online(tenant)

    assert lines(report, Level.PROBLEM) == [MISSING_TRACKING]
    assert lines(report, Level.OK) == [next(str(f) for f in report.findings if f.level is Level.OK)]
    assert "1 query prepared" in lines(report, Level.OK)[0]
    assert report.exit_code == 1


async def test_postgresql__a_template_reading_what_the_query_returns_passes(
    tmp_path: Path, crm: dict[str, Any]
) -> None:
    template = (
        "{{ row.status }} {{ row['tracking_number'] }}"
        "{% for r in rows %}{{ r.estimated_delivery }}{% endfor %}"
    )
    tenant = order_tenant(tmp_path, "postgresql", crm, SEED_SQL, template)

    report = await check_online(tenant)

    assert report.exit_code == 0, report.findings
    assert lines(report, Level.PROBLEM) == []


async def test_postgresql__a_misspelt_column_is_the_servers_word(
    tmp_path: Path, crm: dict[str, Any]
) -> None:
    sql = "SELECT statuss FROM orders WHERE order_id = $1"
    tenant = order_tenant(tmp_path, "postgresql", crm, sql)

    report = await check_online(tenant)

    assert lines(report, Level.PROBLEM) == [
        'data_sources.crm.queries.order_status: postgresql: column "statuss" does not exist'
    ]
    assert report.exit_code == 1


async def test_postgresql__queries_are_prepared_not_run(
    tmp_path: Path, crm: dict[str, Any]
) -> None:
    # Run, this divides by zero on order 12345 whatever $1 is; prepared, it only says
    # what it returns.
    sql = (
        "SELECT status, 1 / (length(order_id) - 5) AS boom FROM orders WHERE order_id = $1 OR true"
    )
    inline = "SELECT tracking_number FROM orders WHERE order_id = $1"
    tenant = tenant_of(
        tmp_path,
        {
            "data_sources": [sql_source("postgresql", crm, sql)],
            "lookups": {
                **order_lookup("{{ row.status }}{{ row.boom }}"),
                "tracking": {
                    "source": "crm",
                    "query": inline,
                    "args": ["order_id"],
                    "template": "{{ row.tracking }}",
                },
            },
        },
    )

    report = await check_online(tenant)

    assert lines(report, Level.PROBLEM) == [
        "lookups.tracking.template: reads 'tracking', which the lookup's query does not "
        "return (it returns tracking_number)"
    ]
    assert "2 queries prepared" in lines(report, Level.OK)[0]


async def test_postgresql__an_unreachable_server_is_exit_4_without_the_password(
    tmp_path: Path,
) -> None:
    connection = nobody_listening("crm")
    tenant = order_tenant(tmp_path, "postgresql", connection, SEED_SQL)

    report = await check_online(tenant)

    assert report.exit_code == 4
    [unreachable] = lines(report, Level.UNREACHABLE)
    assert unreachable.startswith("data_sources.crm: cannot connect to 127.0.0.1:")
    assert PASSWORD not in " ".join(map(str, report.findings))


async def test_postgresql__a_server_that_never_answers_ends_at_the_sources_deadline(
    tmp_path: Path,
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepted, never answered

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connection = {"host": "127.0.0.1", "port": port, "database": "crm", "username": "reader"}
    tenant = order_tenant(tmp_path, "postgresql", connection, SEED_SQL)
    try:
        async with asyncio.timeout(30):  # a generous bound: the check's own is 1 s
            report = await check_online(tenant, timeout_s=1)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()

    assert report.exit_code == 4
    [unreachable] = lines(report, Level.UNREACHABLE)
    assert "in time" in unreachable or "no answer" in unreachable


async def test_postgresql__an_engine_config_reaches_no_private_address(
    crm: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKER_ALLOW_NETWORKS", raising=False)
    # A name, not an address: the config loads, and the reach is checked where it resolves.
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    if not address.startswith("127."):
        pytest.skip(f"this machine's name {name!r} is not a loopback name here")
    document = {
        "tenant_id": "shop",
        "data_sources": [sql_source("postgresql", {**crm, "host": name}, SEED_SQL)],
        "lookups": order_lookup("{{ row.status }}"),
    }
    tenant = load_tenant(document=document, name="engine config of shop", origin="engine")

    report = await check_online(tenant)

    assert report.exit_code == 4
    [refused] = lines(report, Level.UNREACHABLE)
    assert "WORKER_ALLOW_NETWORKS" in refused


# -- MariaDB / MySQL ----------------------------------------------------------------


def _admin(database: str | None = None) -> pymysql.Connection[Any]:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", database=database)


@pytest.fixture
def shop_mysql() -> Iterator[dict[str, Any]]:
    """The seed's orders table in a MariaDB database of its own; its connection block."""
    name = f"lookup_oc_{uuid.uuid4().hex[:10]}"
    admin = _admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
            cursor.execute(
                f"CREATE TABLE `{name}`.orders (order_id VARCHAR(20) PRIMARY KEY, "
                "status VARCHAR(20), tracking_number VARCHAR(40), estimated_delivery DATE)"
            )
        admin.commit()
        yield {"host": "127.0.0.1", "port": 3306, "database": name, "username": "root"}
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


async def test_mysql__names_the_template_field_the_query_does_not_return(
    tmp_path: Path, shop_mysql: dict[str, Any]
) -> None:
    # `%` in a literal must reach the server as itself: the driver writes it `%%`.
    sql = (
        "SELECT status, tracking_number, estimated_delivery FROM orders "
        "WHERE order_id = $1 AND status NOT LIKE 'x%'"
    )
    tenant = order_tenant(tmp_path, "mysql", shop_mysql, sql)

    report = await check_online(tenant)

    assert lines(report, Level.PROBLEM) == [MISSING_TRACKING]
    assert report.exit_code == 1


async def test_mysql__a_misspelt_column_is_the_servers_word(
    tmp_path: Path, shop_mysql: dict[str, Any]
) -> None:
    sql = "SELECT statuss FROM orders WHERE order_id = $1"
    tenant = order_tenant(tmp_path, "mysql", shop_mysql, sql)

    report = await check_online(tenant)

    [problem] = lines(report, Level.PROBLEM)
    assert problem.startswith("data_sources.crm.queries.order_status: MySQL error 1054: ")
    assert "Unknown column 'statuss'" in problem
    assert report.exit_code == 1


async def test_mysql__the_connection_is_usable_after_a_refused_prepare(
    tmp_path: Path, shop_mysql: dict[str, Any]
) -> None:
    source = sql_source("mysql", {**shop_mysql, "pool_size": 1}, "SELECT nope FROM orders")
    source["queries"]["fine"] = "SELECT order_id, status FROM orders WHERE order_id = $1"
    source["queries"]["also_fine"] = "SELECT 1 AS one"
    tenant = tenant_of(tmp_path, {"data_sources": [source]})

    report = await check_online(tenant)

    assert len(lines(report, Level.PROBLEM)) == 1
    assert "3 queries prepared" not in lines(report, Level.OK)[0]  # one failed
    assert "2 queries prepared" in lines(report, Level.OK)[0]


async def test_mysql__refused_credentials_are_a_failed_check_not_exit_4(
    tmp_path: Path, shop_mysql: dict[str, Any]
) -> None:
    connection = {**shop_mysql, "username": f"nobody_{uuid.uuid4().hex[:8]}", "password": PASSWORD}
    tenant = order_tenant(tmp_path, "mysql", connection, SEED_SQL)

    report = await check_online(tenant)

    assert report.exit_code == 1
    [problem] = lines(report, Level.PROBLEM)
    assert problem.startswith("data_sources.crm: authentication failed for user 'nobody_")
    assert PASSWORD not in problem


async def test_mysql__an_unreachable_server_is_exit_4(tmp_path: Path) -> None:
    connection = nobody_listening("shop")
    tenant = order_tenant(tmp_path, "mysql", connection, SEED_SQL)

    report = await check_online(tenant)

    assert report.exit_code == 4
    assert PASSWORD not in " ".join(map(str, report.findings))


# -- SQLite -------------------------------------------------------------------------


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TABLE orders (order_id TEXT, status TEXT, tracking_number TEXT, "
            "estimated_delivery TEXT)"
        )
        conn.execute("INSERT INTO orders VALUES ('12345', 'shipped', 'UPS1', NULL)")
        conn.commit()
    return path


async def test_sqlite__names_the_field_and_the_misspelt_column(
    tmp_path: Path, shop_db: Path
) -> None:
    source = sql_source("sqlite", {"path": shop_db.name}, SEED_SQL)
    source["queries"]["typo"] = "SELECT statuss FROM orders -- a trailing comment"
    tenant = tenant_of(tmp_path, {"data_sources": [source], "lookups": order_lookup()})

    report = await check_online(tenant)

    assert lines(report, Level.PROBLEM) == [
        "data_sources.crm.queries.typo: sqlite: no such column: statuss",
        MISSING_TRACKING,
    ]
    assert report.exit_code == 1
    assert shop_db.read_bytes().count(b"UPS1") == 1  # read-only: the file is as it was


async def test_sqlite__a_missing_file_is_exit_4(tmp_path: Path) -> None:
    source = sql_source("sqlite", {"path": "nowhere.db"}, SEED_SQL)
    tenant = tenant_of(tmp_path, {"data_sources": [source], "lookups": order_lookup()})

    report = await check_online(tenant)

    assert report.exit_code == 4
    [unreachable] = lines(report, Level.UNREACHABLE)
    assert "nowhere.db" in unreachable
    assert not (tmp_path / "nowhere.db").exists()


# -- HTTP sources: their health check only ------------------------------------------


async def test_rest__health_check_only_and_says_so(tmp_path: Path) -> None:
    async with serve(rest_app(Recorder())) as url:
        source = {
            "id": "inventory",
            "type": "rest_api",
            "connection": {
                "base_url": f"{url}/api",
                "api_key": API_KEY,
                "headers": {"Authorization": "Bearer {api_key}"},
            },
            "endpoints": {"check_stock": "/products/{sku}/stock"},
        }
        tenant = tenant_of(
            tmp_path,
            {"data_sources": [source], "lookups": {"check_stock": {"template": "{{ row.nope }}"}}},
        )
        report = await check_online(tenant)

    assert report.exit_code == 0, report.findings
    assert lines(report, Level.NOTE) == [
        "data_sources.inventory: health check only: its queries and templates are not "
        "checked (the worker cannot describe a rest_api read without running it)"
    ]


async def test_rest__a_server_that_is_down_is_exit_4(tmp_path: Path) -> None:
    source = {
        "id": "inventory",
        "type": "rest_api",
        "connection": {"base_url": f"http://127.0.0.1:{closed_port()}/api"},
        "endpoints": {"check_stock": "/products/{sku}/stock"},
    }
    tenant = tenant_of(tmp_path, {"data_sources": [source]})

    report = await check_online(tenant)

    assert report.exit_code == 4
    assert [f.where for f in report.findings] == ["data_sources.inventory"]


# -- which fields a template reads ----------------------------------------------------


@pytest.mark.parametrize(
    ("template", "reads"),
    [
        pytest.param("{{ row.a }} {{ row['b'] }} {{ row.get('c') }}", ["a", "b", "c"], id="row"),
        pytest.param("{% for k, v in row.items() %}{{ k }}{% endfor %}", [], id="methods"),
        pytest.param(
            "{% for r in rows | sort(attribute='d') %}{{ r.e }}{% endfor %}", ["d", "e"], id="loop"
        ),
        pytest.param("{% for r in rows[:3] %}{{ r.f }}{% endfor %}", ["f"], id="slice"),
        pytest.param("{{ rows[0].g }} {{ (rows | first).h }}", ["g", "h"], id="one-row"),
        pytest.param("{% set r = row %}{{ r.i | date }}", ["i"], id="set"),
        pytest.param("{{ rows | map(attribute='j') | join_and }}", ["j"], id="map"),
        pytest.param("{{ params.k }} {{ customer.name }} {{ data.l }}", [], id="not-row"),
        pytest.param("{{ row.m.deeper }}", ["m"], id="nested"),
    ],
)
def test_template_fields__as_the_renderer_exposes_them(template: str, reads: list[str]) -> None:
    assert template_fields(template).reads == reads


def test_template_fields__optional_ones_are_not_missing() -> None:
    fields = template_fields(
        "{{ row.a if row.a is defined else row.b }} {% if row.c is defined %}{{ row.c }}{% endif %}"
    )

    assert fields.missing(["a"]) == []
    assert fields.missing(["b"]) == []
    assert fields.missing([]) == ["b"]


def test_template_fields__included_templates_count(tmp_path: Path) -> None:
    (tmp_path / "part.j2").write_text("{{ row.inner }}", encoding="utf-8")

    fields = template_fields('{{ row.outer }}{% include "part.j2" %}', tmp_path)

    assert fields.reads == ["outer", "inner"]
