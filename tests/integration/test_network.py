"""TLS settings and the SSH tunnel, for real: PostgreSQL behind TLS, an OpenSSH bastion."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from connectors.network import SSHSettings, SSHTunnel, TLSSettings
from tests.support.sshd import SSHD
from tests.support.tls import Certs
from worker.errors import SourceAuthError, SourceUnavailable


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def pg_ssl_in_use(
    ctx: ssl.SSLContext | None, host: str = "127.0.0.1", port: int = 5432
) -> bool:
    conn = await asyncpg.connect(
        host=host, port=port, user="postgres", database="postgres", ssl=ctx
    )
    try:
        return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await conn.close()


# -- TLS ---------------------------------------------------------------------


async def test_tls__verify_full_with_the_ca_connects_encrypted(postgres_tls: Certs) -> None:
    ctx = TLSSettings(mode="verify-full", ca_file=str(postgres_tls.ca)).context(Path("/"))
    assert await pg_ssl_in_use(ctx) is True


async def test_tls__a_certificate_from_another_ca_is_refused(postgres_tls: Certs) -> None:
    ctx = TLSSettings(ca_file="other-ca.pem").context(postgres_tls.folder)
    with pytest.raises(ssl.SSLCertVerificationError):
        await pg_ssl_in_use(ctx)


async def test_tls__verified_by_default_against_the_system_store(postgres_tls: Certs) -> None:
    ctx = TLSSettings().context(Path("/"))
    with pytest.raises(ssl.SSLCertVerificationError):
        await pg_ssl_in_use(ctx)


async def test_tls__require_encrypts_without_verifying(postgres_tls: Certs) -> None:
    ctx = TLSSettings(mode="require").context(Path("/"))
    assert await pg_ssl_in_use(ctx) is True


async def test_tls__client_certificate_loads_relative_to_the_config(postgres_tls: Certs) -> None:
    settings = TLSSettings(ca_file="ca.pem", cert_file="client.pem", key_file="client.key")
    ctx = settings.context(postgres_tls.folder)
    assert await pg_ssl_in_use(ctx) is True


def test_tls__disable_means_no_context() -> None:
    assert TLSSettings(mode="disable").context(Path("/")) is None


def test_tls__cert_without_key_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        TLSSettings(cert_file="client.pem")


# -- SSH tunnel ----------------------------------------------------------------


def bastion(sshd: SSHD, **overrides: object) -> SSHSettings:
    fields: dict[str, object] = {
        "host": sshd.host,
        "port": sshd.port,
        "username": sshd.username,
        "private_key": sshd.private_key,
        "known_host_key": sshd.host_key_line,
    }
    fields.update(overrides)
    return SSHSettings.model_validate(fields)


async def test_ssh__tunnel_reaches_postgres_through_the_bastion(sshd: SSHD) -> None:
    tunnel = SSHTunnel(bastion(sshd), source_id="crm", base_dir=Path("/"))
    host, port = await tunnel.open("127.0.0.1", 5432)
    try:
        assert port != 5432
        conn = await asyncpg.connect(host=host, port=port, user="postgres", database="postgres")
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await conn.close()
    finally:
        await tunnel.close()
        await tunnel.close()  # idempotent


async def test_ssh__tunnel_and_tls_together(sshd: SSHD, postgres_tls: Certs) -> None:
    tunnel = SSHTunnel(bastion(sshd), source_id="crm", base_dir=Path("/"))
    host, port = await tunnel.open("127.0.0.1", 5432)
    try:
        ctx = TLSSettings(ca_file=str(postgres_tls.ca)).context(Path("/"))
        assert await pg_ssl_in_use(ctx, host, port) is True
    finally:
        await tunnel.close()


async def test_ssh__a_different_host_key_is_refused(sshd: SSHD) -> None:
    other = sshd.wrong_key  # any other key's public half will do: derive it
    import asyncssh

    wrong_line = asyncssh.import_private_key(other).export_public_key().decode().strip()
    tunnel = SSHTunnel(
        bastion(sshd, known_host_key=wrong_line), source_id="crm", base_dir=Path("/")
    )
    with pytest.raises(SourceAuthError, match="host key does not match") as caught:
        await tunnel.open("127.0.0.1", 5432)
    assert sshd.private_key not in str(caught.value)


async def test_ssh__a_key_the_bastion_does_not_accept_is_refused(sshd: SSHD) -> None:
    tunnel = SSHTunnel(
        bastion(sshd, private_key=sshd.wrong_key), source_id="crm", base_dir=Path("/")
    )
    with pytest.raises(SourceAuthError, match="refused the credentials") as caught:
        await tunnel.open("127.0.0.1", 5432)
    assert "PRIVATE KEY" not in str(caught.value)


async def test_ssh__an_unreachable_bastion_fails_fast(sshd: SSHD) -> None:
    settings = bastion(sshd, port=closed_port(), connect_timeout_s=30)
    tunnel = SSHTunnel(settings, source_id="crm", base_dir=Path("/"))
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="cannot open the SSH tunnel"):
        await tunnel.open("127.0.0.1", 5432)
    assert time.monotonic() - started < 5  # refused at once, not the 30 s connect timeout


def test_ssh__host_key_check_cannot_be_left_out() -> None:
    with pytest.raises(ValidationError, match="host key is always checked"):
        SSHSettings(host="b", username="u", password="p")  # type: ignore[arg-type]


# -- connectors through the tunnel --------------------------------------------


def ssh_block(sshd: SSHD) -> dict[str, object]:
    return {
        "host": sshd.host,
        "port": sshd.port,
        "username": sshd.username,
        "private_key": sshd.private_key,
        "known_host_key": sshd.host_key_line,
    }


async def test_mysql_connector__reads_through_the_bastion(sshd: SSHD) -> None:
    from connectors.base import Bound
    from connectors.mysql import MySQLConnector

    settings = MySQLConnector.Settings.model_validate(
        {"host": "127.0.0.1", "database": "mysql", "username": "root", "ssh": ssh_block(sshd)}
    )
    connector = MySQLConnector("crm", settings, base_dir=Path("/"))
    try:
        await connector.open()
        host, port, _ = connector._connect_target()
        assert (host, port != 3306) == ("127.0.0.1", True)  # the tunnel's local end
        result = await connector.run(
            MySQLConnector.prepare("SELECT $1 + 1 AS n"), Bound(args=(41,)), timeout_s=5
        )
        assert result.rows == [{"n": 42}]
    finally:
        await connector.close()


async def test_redis_connector__reads_through_the_bastion(sshd: SSHD) -> None:
    from connectors.base import Bound
    from connectors.redis import RedisConnector

    settings = RedisConnector.Settings.model_validate(
        {"host": "127.0.0.1", "port": 6379, "ssh": ssh_block(sshd)}
    )
    connector = RedisConnector("cache", settings, base_dir=Path("/"))
    try:
        await connector.open()
        await connector.health_check()
        query = RedisConnector.prepare({"command": "EXISTS", "key": "lookup:{k}"})
        result = await connector.run(query, Bound(params={"k": "nothing-here"}), timeout_s=5)
        assert result.data in (0, None)
    finally:
        await connector.close()


async def test_postgresql_connector__tls_verified_and_through_the_bastion(
    sshd: SSHD, postgres_tls: Certs
) -> None:
    from connectors.base import Bound
    from connectors.postgresql import PostgreSQLConnector

    settings = PostgreSQLConnector.Settings.model_validate(
        {
            "host": "127.0.0.1",
            "database": "postgres",
            "username": "postgres",
            "ssl": {"mode": "verify-full", "ca_file": "ca.pem"},
            "ssh": ssh_block(sshd),
        }
    )
    connector = PostgreSQLConnector("crm", settings, base_dir=postgres_tls.folder)
    try:
        await connector.open()
        query = PostgreSQLConnector.prepare(
            "SELECT ssl, inet_server_port() AS port FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            " AND $1::int = 1"
        )
        result = await connector.run(query, Bound(args=(1,)), timeout_s=5)
        assert result.rows == [{"ssl": True, "port": 5432}]
        assert connector._connect_target().port != 5432  # the tunnel's local end
    finally:
        await connector.close()


async def test_postgresql_connector__wrong_ca_is_a_clear_source_error(postgres_tls: Certs) -> None:
    from connectors.postgresql import PostgreSQLConnector
    from worker.errors import SourceError

    settings = PostgreSQLConnector.Settings.model_validate(
        {
            "host": "127.0.0.1",
            "database": "postgres",
            "username": "postgres",
            "ssl": {"ca_file": "other-ca.pem"},
        }
    )
    connector = PostgreSQLConnector("crm", settings, base_dir=postgres_tls.folder)
    try:
        with pytest.raises(SourceError):
            await connector.health_check()
    finally:
        await connector.close()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("mongodb", id="mongodb"),
        pytest.param("elasticsearch", id="elasticsearch"),
        pytest.param("sqlserver", id="sqlserver"),
    ],
)
async def test_serverless_connectors__open_their_tunnel_through_the_bastion(
    sshd: SSHD, kind: str
) -> None:
    """No server of these kinds runs here: the tunnel is real, the port behind it is closed."""
    from connectors.registry import load
    from worker.errors import SourceError

    port = closed_port()
    connection: dict[str, object] = {
        "mongodb": {"uri": f"mongodb://127.0.0.1:{port}/", "database": "shop"},
        "elasticsearch": {"url": f"http://127.0.0.1:{port}"},
        "sqlserver": {
            "host": "127.0.0.1",
            "port": port,
            "database": "shop",
            "username": "reader",
            "password": "x",
        },
    }[kind]
    cls = load(kind)
    settings = cls.Settings.model_validate({**connection, "ssh": ssh_block(sshd)})
    connector = cls("src", settings, base_dir=Path("/"))
    try:
        await connector.open()
        assert connector._route is not None  # type: ignore[attr-defined]
        assert connector._route[1] != port  # type: ignore[attr-defined]
        with pytest.raises(SourceError):
            async with asyncio.timeout(15):
                await connector.health_check()
    finally:
        await connector.close()
    import asyncssh

    other = asyncssh.import_private_key(sshd.wrong_key).export_public_key().decode().strip()
    wrong = ssh_block(sshd) | {"known_host_key": other}
    refused = cls(
        "src", cls.Settings.model_validate({**connection, "ssh": wrong}), base_dir=Path("/")
    )
    try:
        with pytest.raises(SourceError):
            await refused.open()
    finally:
        await refused.close()
    if kind == "mongodb":
        # PyMongo 4.20 leaves a socket unclosed when close() cancels a connection
        # attempt (a known driver bug): collect it here, not in another test.
        import gc
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.mark.parametrize(
    ("ssl_block", "dsn_query", "encrypted"),
    [
        pytest.param(None, "", False, id="loopback-plain-first"),
        pytest.param({"mode": "require"}, "", True, id="ssl-block-require"),
        pytest.param({"mode": "disable"}, "", False, id="ssl-block-disable"),
        pytest.param(None, "?sslmode=require", True, id="dsn-names-its-sslmode"),
    ],
)
async def test_postgresql_connector__tls_to_a_server_on_this_machine(
    postgres_tls: Certs, ssl_block: dict[str, str] | None, dsn_query: str, encrypted: bool
) -> None:
    """A server on loopback that offers TLS is read in plain TCP unless the config asks."""
    from connectors.base import Bound
    from connectors.postgresql import PostgreSQLConnector

    dsn = "postgresql://postgres@127.0.0.1:5432/postgres" + dsn_query
    connection: dict[str, object] = {"dsn": dsn}
    if ssl_block is not None:
        connection["ssl"] = ssl_block
    settings = PostgreSQLConnector.Settings.model_validate(connection)
    connector = PostgreSQLConnector("crm", settings, base_dir=postgres_tls.folder)
    try:
        query = PostgreSQLConnector.prepare(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND $1::int = 1"
        )
        result = await connector.run(query, Bound(args=(1,)), timeout_s=5)
        assert result.rows == [{"ssl": encrypted}]
    finally:
        await connector.close()


@pytest.mark.parametrize(
    ("dsn_query", "encrypted"),
    [
        pytest.param("", False, id="loopback-plain-first"),
        pytest.param("?sslmode=require", True, id="dsn-names-its-sslmode"),
    ],
)
async def test_queue_store__tls_to_a_queue_database_on_this_machine(
    postgres_tls: Certs, dsn_query: str, encrypted: bool
) -> None:
    """The queue's pool and its LISTEN session follow the same rule as a source."""
    from worker.stores.postgres import PostgresStore

    store = PostgresStore("postgresql://postgres@127.0.0.1:5432/postgres" + dsn_query)
    try:
        await store.open()
        await store.wait_for_jobs(0.01, "tls-probe")  # opens the LISTEN session
        async with store._conn() as conn:
            rows = await conn.fetch(
                """SELECT s.ssl FROM pg_stat_ssl AS s JOIN pg_stat_activity AS a USING (pid)
                    WHERE a.application_name LIKE 'data-lookup-worker %'
                      AND a.datname = 'postgres'"""
            )
        assert len(rows) >= 2
        assert {r["ssl"] for r in rows} == {encrypted}
    finally:
        await store.close()
