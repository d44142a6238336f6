"""The tenant boundary on real servers (contract §5.0): where an engine-served config may reach.

A tenant config is loaded as it is written, then given an untrusted reach
(`dataclasses.replace`), and its sources point at the real local PostgreSQL,
MariaDB and Redis, at a REST API on loopback, and at files in and out of
``WORKER_DATA_DIR``. Refused: with the clear message, and nothing read. Let
through: with ``WORKER_ALLOW_NETWORKS`` naming loopback. Some cases build the
connector directly and skip `Sources`' early DNS check, to show the audit hook
alone stops each driver where it connects.
"""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from pydantic import SecretStr

from connectors.base import Bound, Connector, ReadResult, SourceError, SourceUnavailable
from connectors.egress import Reach, parse_networks, reaching, refusal_in
from connectors.elasticsearch import ElasticsearchConnector, ElasticsearchSettings
from connectors.mongodb import MongoDBConnector, MongoDBSettings
from connectors.mysql import MySQLConnector, MySQLSettings
from connectors.postgresql import PostgreSQLConnector, PostgreSQLSettings
from connectors.redis import RedisConnector, RedisSettings
from connectors.rest import RESTConnector, RESTSettings
from connectors.sqlserver import SQLServerConnector, SQLServerSettings
from tests.servers.hostile import Recorder, redirect, serve
from tests.servers.rest_app import API_KEY, rest_app
from tests.support.sshd import SSHD
from worker.config import Tenant, load_tenant
from worker.sources import Sources

REFUSED = r"is not a public address; the operator can allow it with WORKER_ALLOW_NETWORKS"
REDIS_KEY = "egress:test:greeting"


def untrusted(data_dir: Path | None = None, allow: str = "") -> Reach:
    return Reach(trusted=False, data_dir=data_dir, allow_networks=parse_networks(allow))


def tenant_of(sources: list[dict[str, Any]], reach: Reach, base_dir: Path) -> Tenant:
    """The config as the engine would serve it, with ``reach`` as the lead's loader sets it."""
    tenant = load_tenant(document={"tenant_id": "acme", "data_sources": sources})
    return dataclasses.replace(tenant, reach=reach, base_dir=base_dir)


async def read(sources: Sources, source_id: str, query: str, **params: Any) -> ReadResult:
    """One read as the pipeline makes it: inside `guarded`, the connector from `get`."""
    prepared = sources.tenant.sources[source_id].queries[query].prepared
    async with sources.guarded(source_id):
        connector = await sources.get(source_id)
        return await connector.run(prepared, Bound(params=params), timeout_s=5)


@pytest.fixture
async def redis_key() -> AsyncIterator[None]:
    client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    await client.set(REDIS_KEY, "hello")
    yield
    await client.delete(REDIS_KEY)
    await client.aclose()


SERVERS: list[dict[str, Any]] = [
    {
        "id": "pg",
        "type": "postgresql",
        "connection": {"host": "127.0.0.1", "database": "postgres", "username": "postgres"},
        "queries": {"q": "SELECT 'hello' AS greeting"},
    },
    {
        "id": "my",
        "type": "mysql",
        "connection": {"host": "127.0.0.1", "database": "mysql", "username": "root"},
        "queries": {"q": "SELECT 'hello' AS greeting"},
    },
    {
        "id": "rd",
        "type": "redis",
        "connection": {"host": "127.0.0.1"},
        "queries": {"q": {"command": "GET", "key": REDIS_KEY}},
    },
    {
        "id": "pg_by_name",
        "type": "postgresql",
        "connection": {"host": "localhost", "database": "postgres", "username": "postgres"},
        "queries": {"q": "SELECT 'hello' AS greeting"},
    },
]
SERVER_IDS = ["pg", "my", "rd", "pg_by_name"]


@pytest.mark.usefixtures("redis_key")
@pytest.mark.parametrize("source_id", SERVER_IDS)
async def test_servers__loopback_refused_for_an_untrusted_config(
    source_id: str, tmp_path: Path
) -> None:
    sources = Sources(tenant_of(SERVERS, untrusted(), tmp_path))
    try:
        with pytest.raises(SourceUnavailable, match=REFUSED) as caught:
            await read(sources, source_id, "q")
        assert "127.0.0.1" in caught.value.message or "::1" in caught.value.message
        report = await sources.check(source_id)
        assert not report.ok
        assert report.error is not None and "WORKER_ALLOW_NETWORKS" in report.error
    finally:
        await sources.close()


@pytest.mark.usefixtures("redis_key")
@pytest.mark.parametrize("source_id", SERVER_IDS)
async def test_servers__reached_when_the_operator_allows_loopback(
    source_id: str, tmp_path: Path
) -> None:
    sources = Sources(tenant_of(SERVERS, untrusted(allow="127.0.0.0/8, ::1"), tmp_path))
    try:
        result = await read(sources, source_id, "q")
        assert "hello" in str(result.data)
        assert (await sources.check(source_id)).ok
    finally:
        await sources.close()


@pytest.mark.usefixtures("redis_key")
async def test_servers__a_trusted_config_reaches_loopback(tmp_path: Path) -> None:
    tenant = load_tenant(document={"tenant_id": "acme", "data_sources": SERVERS})
    sources = Sources(tenant)
    try:
        for source_id in SERVER_IDS:
            assert "hello" in str((await read(sources, source_id, "q")).data)
    finally:
        await sources.close()


# -- the audit hook alone stops each driver where it connects ---------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain TCP listener on loopback: what a refused driver must never reach."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.3)
        yield server


def never_reached(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


def direct(kind: str, port: int, tmp_path: Path) -> Connector:
    if kind == "postgresql":
        pg = PostgreSQLSettings(
            host="127.0.0.1", port=port, database="x", username="x", password=SecretStr("pw")
        )
        return PostgreSQLConnector("db", pg, base_dir=tmp_path, reach=untrusted())
    if kind == "mysql":
        my = MySQLSettings(
            host="127.0.0.1", port=port, database="x", username="x", password=SecretStr("pw")
        )
        return MySQLConnector("db", my, base_dir=tmp_path, reach=untrusted())
    if kind == "redis":
        rd = RedisSettings(host="127.0.0.1", port=port)
        return RedisConnector("db", rd, base_dir=tmp_path, reach=untrusted())
    if kind == "elasticsearch":
        es = ElasticsearchSettings(url=f"http://127.0.0.1:{port}")
        return ElasticsearchConnector("db", es, base_dir=tmp_path, reach=untrusted())
    mongo = MongoDBSettings.model_validate(
        {"uri": f"mongodb://127.0.0.1:{port}/", "database": "x", "connect_timeout_s": 1}
    )
    return MongoDBConnector("db", mongo, base_dir=tmp_path, reach=untrusted())


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "redis", "mongodb", "elasticsearch"])
async def test_hook__each_driver_is_stopped_at_connect(
    kind: str, listener: socket.socket, tmp_path: Path
) -> None:
    connector = direct(kind, listener.getsockname()[1], tmp_path)

    async def connect() -> None:
        await connector.open()
        await connector.health_check()

    try:
        with reaching(connector.reach), pytest.raises(SourceError) as caught:
            await connect()
    finally:
        with reaching(connector.reach):
            await connector.close()
    assert never_reached(listener)
    assert refusal_in(caught.value) is not None, repr(caught.value)


# -- HTTP: loopback, redirects -------------------------------------------------------


def rest_source(base_url: str) -> dict[str, Any]:
    return {
        "id": "inventory_api",
        "type": "rest_api",
        "connection": {
            "base_url": base_url,
            "api_key": API_KEY,
            "headers": {"Authorization": "Bearer {api_key}"},
        },
        "endpoints": {"check_stock": "/products/{sku}/stock"},
    }


async def test_rest__loopback_refused_and_nothing_sent(tmp_path: Path) -> None:
    recorder = Recorder()
    async with serve(rest_app(recorder)) as url:
        sources = Sources(tenant_of([rest_source(f"{url}/api")], untrusted(), tmp_path))
        try:
            with pytest.raises(SourceUnavailable, match=REFUSED):
                await read(sources, "inventory_api", "check_stock", sku="SKU-789")
        finally:
            await sources.close()
    assert recorder.seen == []


async def test_rest__allowed_network_is_read(tmp_path: Path) -> None:
    recorder = Recorder()
    async with serve(rest_app(recorder)) as url:
        reach = untrusted(allow="127.0.0.1/32")
        sources = Sources(tenant_of([rest_source(f"{url}/api")], reach, tmp_path))
        try:
            result = await read(sources, "inventory_api", "check_stock", sku="SKU-789")
        finally:
            await sources.close()
    assert result.rows[0]["quantity"] == 42


async def test_rest__the_hook_refuses_what_dns_did_not_show(tmp_path: Path) -> None:
    """A connector used straight (no early check), as after a DNS change: refused at connect."""
    recorder = Recorder()
    async with serve(rest_app(recorder)) as url:
        settings = RESTSettings.model_validate(
            {"base_url": f"{url}/api", "api_key": API_KEY, "retries": 0}
        )
        connector = RESTConnector("inventory_api", settings, base_dir=tmp_path, reach=untrusted())
        query = RESTConnector.prepare("/products/{sku}/stock")
        try:
            with reaching(connector.reach), pytest.raises(SourceUnavailable):
                await connector.run(query, Bound(params={"sku": "SKU-789"}), timeout_s=5)
        finally:
            await connector.close()
    assert recorder.seen == []


async def test_rest__a_redirect_to_a_host_not_allowed_is_refused(tmp_path: Path) -> None:
    """Allowed: 127.0.0.2 only. It redirects to 127.0.0.3 (another loopback server): not read."""
    target = Recorder()
    async with serve(rest_app(target), host="127.0.0.3") as target_url:
        first = Recorder()
        first.misbehave = redirect(f"{target_url}/api/products/SKU-789/stock")
        async with serve(rest_app(first), host="127.0.0.2") as url:
            reach = untrusted(allow="127.0.0.2/32")
            sources = Sources(tenant_of([rest_source(f"{url}/api")], reach, tmp_path))
            try:
                with pytest.raises(SourceError, match="redirected to another host"):
                    await read(sources, "inventory_api", "check_stock", sku="SKU-789")
            finally:
                await sources.close()
    assert len(first.seen) == 1
    assert target.seen == []


# -- files -------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "stock.csv").write_text("sku,quantity\nSKU-1,7\n", encoding="utf-8")
    (tmp_path / "private.csv").write_text("sku,quantity\nSKU-1,999\n", encoding="utf-8")
    (folder / "escape.csv").symlink_to(tmp_path / "private.csv")
    return folder


@pytest.fixture
def engine_db(tmp_path: Path) -> Path:
    """A stand-in for the local engine's database, outside the data folder."""
    path = tmp_path / "engine.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE outbound_messages (tenant_id TEXT, message TEXT)")
        conn.execute("INSERT INTO outbound_messages VALUES ('other', 'their secret')")
    conn.close()
    return path


def csv_source(path: str) -> dict[str, Any]:
    return {
        "id": "stock",
        "type": "csv",
        "connection": {"path": path},
        "queries": {"q": {"filter": {"sku": "{sku}"}}},
    }


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/etc/passwd", id="etc-passwd"),
        pytest.param("../private.csv", id="dot-dot"),
        pytest.param("escape.csv", id="symlink-out"),
    ],
)
async def test_files__outside_the_data_dir_refused(
    path: str, data_dir: Path, tmp_path: Path
) -> None:
    sources = Sources(tenant_of([csv_source(path)], untrusted(data_dir), tmp_path))
    try:
        with pytest.raises(SourceUnavailable, match="only below WORKER_DATA_DIR"):
            await read(sources, "stock", "q", sku="SKU-1")
    finally:
        await sources.close()


async def test_files__below_the_data_dir_read(data_dir: Path, tmp_path: Path) -> None:
    # The config's own folder (tmp_path) is not where relative paths start: data_dir is.
    sources = Sources(tenant_of([csv_source("stock.csv")], untrusted(data_dir), tmp_path))
    try:
        result = await read(sources, "stock", "q", sku="SKU-1")
    finally:
        await sources.close()
    assert result.rows == [{"sku": "SKU-1", "quantity": "7"}]


async def test_files__none_without_a_data_dir(data_dir: Path) -> None:
    sources = Sources(tenant_of([csv_source("stock.csv")], untrusted(None), data_dir))
    try:
        with pytest.raises(SourceUnavailable, match="no WORKER_DATA_DIR"):
            await read(sources, "stock", "q", sku="SKU-1")
    finally:
        await sources.close()


async def test_sqlite__the_engine_database_is_refused(
    engine_db: Path, data_dir: Path, tmp_path: Path
) -> None:
    source = {
        "id": "engine",
        "type": "sqlite",
        "connection": {"path": str(engine_db)},
        "queries": {"q": "SELECT message FROM outbound_messages"},
    }
    sources = Sources(tenant_of([source], untrusted(data_dir), tmp_path))
    try:
        with pytest.raises(SourceUnavailable, match="only below WORKER_DATA_DIR"):
            await read(sources, "engine", "q")
        report = await sources.check("engine")
        assert not report.ok and "WORKER_DATA_DIR" in (report.error or "")
    finally:
        await sources.close()


# -- SQL Server: FreeTDS connects from C, so the address is checked and pinned -----------


async def test_sqlserver__loopback_refused_before_freetds_connects(tmp_path: Path) -> None:
    settings = SQLServerSettings(
        host="localhost", database="x", username="x", password=SecretStr("pw")
    )
    connector = SQLServerConnector("mssql", settings, base_dir=tmp_path, reach=untrusted())
    with pytest.raises(SourceUnavailable, match=REFUSED):
        await connector.open()
    await connector.close()


async def test_sqlserver__connects_to_the_address_it_checked(tmp_path: Path) -> None:
    settings = SQLServerSettings(
        host="localhost", port=1499, database="x", username="x", password=SecretStr("pw")
    )
    reach = untrusted(allow="127.0.0.0/8, ::1")
    connector = SQLServerConnector("mssql", settings, base_dir=tmp_path, reach=reach)
    await connector.open()
    try:
        args = connector._connect_args(timeout_s=5)
    finally:
        await connector.close()
    assert args["server"] in ("127.0.0.1", "::1")  # pinned: FreeTDS resolves nothing
    assert args["port"] == "1499"


# -- an SSH tunnel: its bastion is checked ---------------------------------------------


def tunnelled_mysql(sshd: SSHD) -> list[dict[str, Any]]:
    ssh = {
        "host": sshd.host,
        "port": sshd.port,
        "username": sshd.username,
        "private_key": sshd.private_key,
        "known_host_key": sshd.host_key_line,
    }
    connection = {"host": "127.0.0.1", "database": "mysql", "username": "root", "ssh": ssh}
    return [{**SERVERS[1], "connection": connection}]


async def test_ssh__a_loopback_bastion_is_refused(sshd: SSHD, tmp_path: Path) -> None:
    sources = Sources(tenant_of(tunnelled_mysql(sshd), untrusted(), tmp_path))
    try:
        with pytest.raises(SourceUnavailable, match=REFUSED) as caught:
            await read(sources, "my", "q")
        assert f"{sshd.host}" in caught.value.message
    finally:
        await sources.close()


async def test_ssh__an_allowed_bastion_tunnels_to_the_source(sshd: SSHD, tmp_path: Path) -> None:
    # Only the bastion is checked: what it reaches beyond is the tenant's own network.
    reach = untrusted(allow=f"{sshd.host}/32")
    sources = Sources(tenant_of(tunnelled_mysql(sshd), reach, tmp_path))
    try:
        assert (await read(sources, "my", "q")).rows == [{"greeting": "hello"}]
    finally:
        await sources.close()
