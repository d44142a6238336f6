"""`connectors.egress`: which addresses and files a tenant's config may reach (contract §5.0).

The audit hook is exercised on real sockets: a listener on loopback (or a unix
socket in ``tmp_path``) that a refused connection never reaches.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.base import SourceUnavailable
from connectors.egress import (
    UNRESTRICTED,
    EgressRefused,
    Reach,
    current,
    parse_networks,
    reaching,
    refusal_in,
    targets_of,
    tunnel_end,
)
from connectors.files import CSVConnector, CSVSettings
from connectors.mongodb import MongoDBSettings
from connectors.network import SSHSettings, TLSSettings
from connectors.postgresql import PostgreSQLSettings
from connectors.rest import RESTSettings

UNTRUSTED = Reach(trusted=False)
LOOPBACK = Reach(trusted=False, allow_networks=parse_networks("127.0.0.0/8"))


# -- parse_networks and allows_ip ------------------------------------------------------


def test_parse_networks__cidrs_and_bare_addresses() -> None:
    assert parse_networks(" 10.0.0.0/8, 192.168.1.5 ,fd00::/8,") == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.5/32"),
        ipaddress.ip_network("fd00::/8"),
    )


def test_parse_networks__empty_is_none() -> None:
    assert parse_networks("") == ()
    assert parse_networks(" , ") == ()


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "intranet", "10.0.0.0/8;"])
def test_parse_networks__names_the_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"^'{re.escape(bad)}' is not an address or a network"):
        parse_networks(f"192.168.0.0/16, {bad}")


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        pytest.param("8.8.8.8", True, id="public-v4"),
        pytest.param("1.1.1.1", True, id="public-v4-2"),
        pytest.param("2606:4700:4700::1111", True, id="public-v6"),
        pytest.param("127.0.0.1", False, id="loopback"),
        pytest.param("127.9.9.9", False, id="loopback-range"),
        pytest.param("::1", False, id="loopback-v6"),
        pytest.param("10.1.2.3", False, id="10/8"),
        pytest.param("172.16.0.1", False, id="172.16/12"),
        pytest.param("172.31.255.254", False, id="172.16/12-end"),
        pytest.param("192.168.1.1", False, id="192.168/16"),
        pytest.param("169.254.169.254", False, id="metadata"),
        pytest.param("fd00::1", False, id="unique-local"),
        pytest.param("fe80::1%eth0", False, id="link-local-v6-zone"),
        pytest.param("::ffff:127.0.0.1", False, id="v4-mapped-loopback"),
        pytest.param("::ffff:169.254.169.254", False, id="v4-mapped-metadata"),
        pytest.param("::ffff:8.8.8.8", True, id="v4-mapped-public"),
        pytest.param("2002:7f00:1::1", False, id="6to4-loopback"),
        pytest.param("64:ff9b::a9fe:a9fe", False, id="nat64-metadata"),
        pytest.param("100.64.0.1", False, id="shared-100.64/10"),
        pytest.param("0.0.0.0", False, id="this-host"),  # noqa: S104,
        pytest.param("::", False, id="unspecified-v6"),
        pytest.param("224.0.0.1", False, id="multicast"),
        pytest.param("240.0.0.1", False, id="reserved"),
        pytest.param("255.255.255.255", False, id="broadcast"),
        pytest.param("localhost", False, id="a-name-is-not-an-address"),
    ],
)
def test_allows_ip__public_only(ip: str, allowed: bool) -> None:
    assert UNTRUSTED.allows_ip(ip) is allowed
    assert UNRESTRICTED.allows_ip(ip) is True


@pytest.mark.parametrize(
    ("networks", "ip", "allowed"),
    [
        pytest.param("10.0.0.0/8", "10.0.0.5", True, id="inside"),
        pytest.param("10.0.0.0/8", "11.0.0.5", True, id="public-anyway"),
        pytest.param("10.0.0.0/8", "192.168.0.1", False, id="other-private"),
        pytest.param("10.0.0.5", "10.0.0.6", False, id="single-address"),
        pytest.param("127.0.0.0/8", "::ffff:127.0.0.1", True, id="mapped-into-v4-allow"),
        pytest.param("fd00::/8", "fd12::1", True, id="v6"),
    ],
)
def test_allows_ip__operator_networks(networks: str, ip: str, allowed: bool) -> None:
    reach = Reach(trusted=False, allow_networks=parse_networks(networks))
    assert reach.allows_ip(ip) is allowed


# -- the audit hook on real sockets ---------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        yield server


def _accepted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


def test_hook__refuses_loopback_only_inside_an_untrusted_reach(listener: socket.socket) -> None:
    address = listener.getsockname()
    with (
        reaching(UNTRUSTED),
        pytest.raises(EgressRefused, match=r"127\.0\.0\.1:\d+ is not a public"),
    ):
        socket.create_connection(address, timeout=2)
    assert not _accepted(listener)
    socket.create_connection(address, timeout=2).close()  # outside: the worker's own
    assert _accepted(listener)
    with reaching(UNRESTRICTED):
        socket.create_connection(address, timeout=2).close()
    assert _accepted(listener)


def test_hook__allow_networks_lets_it_through(listener: socket.socket) -> None:
    with reaching(LOOPBACK):
        socket.create_connection(listener.getsockname(), timeout=2).close()
    assert _accepted(listener)


def test_hook__a_name_is_checked_by_what_it_resolves_to(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with reaching(UNTRUSTED), socket.socket() as sock, pytest.raises(EgressRefused):
        sock.connect(("localhost", port))  # connect() resolves the name itself
    assert not _accepted(listener)


def test_hook__unix_sockets_are_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        with (
            reaching(LOOPBACK),
            socket.socket(socket.AF_UNIX) as client,
            pytest.raises(EgressRefused, match="AF_UNIX"),
        ):
            client.connect(path)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # outside: fine


def test_hook__udp_to_port_53_is_name_resolution(listener: socket.socket) -> None:
    with reaching(UNTRUSTED), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", 53))
        with pytest.raises(EgressRefused):
            sock.connect(("127.0.0.1", 54))


def test_hook__a_tunnel_end_is_let_through_while_open(listener: socket.socket) -> None:
    host, port = listener.getsockname()
    with reaching(UNTRUSTED):
        with tunnel_end(host, port):
            socket.create_connection((host, port), timeout=2).close()
        with pytest.raises(EgressRefused):
            socket.create_connection((host, port), timeout=2)


async def test_hook__tasks_and_threads_inherit_the_reach(listener: socket.socket) -> None:
    address = listener.getsockname()

    def connect() -> None:
        socket.create_connection(address, timeout=2).close()

    async def open_stream() -> None:
        _, writer = await asyncio.open_connection(*address)
        writer.close()
        await writer.wait_closed()

    with reaching(UNTRUSTED):
        task = asyncio.create_task(open_stream())
        with pytest.raises(EgressRefused):
            await asyncio.to_thread(connect)
        with pytest.raises(EgressRefused):
            await task
    assert current() is UNRESTRICTED
    await asyncio.to_thread(connect)  # the worker's own context again


def test_refusal_in__finds_it_behind_wrappers() -> None:
    refused = EgressRefused("refused by the worker: 10.0.0.1:80 is not a public address")
    wrapped = RuntimeError("driver failed")
    wrapped.__cause__ = OSError("connect failed")
    wrapped.__cause__.__context__ = refused
    assert refusal_in(wrapped) is refused
    folded = OSError(f"Multiple exceptions: [Errno 111] refused, {refused}")
    assert "10.0.0.1" in str(refusal_in(folded))
    assert refusal_in(ValueError("other")) is None


# -- check_host ------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "169.254.169.254"])
async def test_check_host__refuses_private_addresses_with_a_clear_message(host: str) -> None:
    with pytest.raises(SourceUnavailable, match=r"not a public address.*WORKER_ALLOW_NETWORKS"):
        await UNTRUSTED.check_host("crm", host, 5432)


async def test_check_host__allowed_networks_and_trusted_configs() -> None:
    assert await LOOPBACK.check_host("crm", "127.0.0.1", 5432) == ["127.0.0.1"]
    assert await UNRESTRICTED.check_host("crm", "127.0.0.1", 5432) == []


async def test_check_host__refuses_a_unix_socket_path() -> None:
    with pytest.raises(SourceUnavailable, match="local socket"):
        await LOOPBACK.check_host("crm", "/var/run/postgresql", 5432)


# -- targets_of ------------------------------------------------------------------------


def test_targets_of__host_and_port_fields() -> None:
    settings = PostgreSQLSettings(host="db.example.com", port=5433, database="crm", username="u")
    assert targets_of(settings) == [("db.example.com", 5433)]


def test_targets_of__urls_and_multi_host_dsns() -> None:
    rest = RESTSettings.model_validate({"base_url": "https://api.example.com/v1"})
    assert targets_of(rest) == [("api.example.com", 443)]
    mongo = MongoDBSettings(
        uri=SecretStr("mongodb://u:p@a.example.com:27017,[fd00::5]:27018/?rs=x"), database="d"
    )
    assert targets_of(mongo) == [("a.example.com", 27017), ("fd00::5", 27018)]
    srv = MongoDBSettings(uri=SecretStr("mongodb+srv://u:p@cluster.example.com/"), database="d")
    assert targets_of(srv) == []


def test_targets_of__only_the_bastion_behind_ssh() -> None:
    ssh = SSHSettings(
        host="bastion.example.com",
        username="t",
        password=SecretStr("x"),
        known_host_key="ssh-ed25519 AAAA",
    )
    settings = PostgreSQLSettings(host="10.0.0.5", database="crm", username="u", ssh=ssh)
    assert targets_of(settings) == [("bastion.example.com", 22)]


# -- files -------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "stock.csv").write_text("sku,qty\nA,1\n", encoding="utf-8")
    (tmp_path / "secret.csv").write_text("sku,qty\nS,9\n", encoding="utf-8")
    (folder / "out.csv").symlink_to(tmp_path / "secret.csv")
    (folder / "sub").mkdir()
    return folder


def test_file__relative_paths_are_below_the_data_dir(data_dir: Path, tmp_path: Path) -> None:
    reach = Reach(trusted=False, data_dir=data_dir)
    assert reach.file("stock.csv", tmp_path / "elsewhere") == (data_dir / "stock.csv").resolve()
    assert reach.file("sub/../stock.csv", tmp_path) == (data_dir / "stock.csv").resolve()
    assert reach.file(str(data_dir / "stock.csv"), tmp_path) == (data_dir / "stock.csv").resolve()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("../secret.csv", id="dot-dot"),
        pytest.param("sub/../../secret.csv", id="dot-dot-deeper"),
        pytest.param("out.csv", id="symlink-out"),
        pytest.param("~/.ssh/id_rsa", id="home-is-not-expanded"),
    ],
)
def test_file__leaving_the_data_dir_is_refused(data_dir: Path, raw: str) -> None:
    reach = Reach(trusted=False, data_dir=data_dir)
    if raw.startswith("~"):
        assert reach.file(raw, data_dir).is_relative_to(data_dir.resolve())
        return
    with pytest.raises(EgressRefused, match="only below WORKER_DATA_DIR"):
        reach.file(raw, data_dir)


def test_file__no_data_dir_means_no_files(data_dir: Path) -> None:
    with pytest.raises(EgressRefused, match="no WORKER_DATA_DIR"):
        Reach(trusted=False).file("stock.csv", data_dir)


def test_file__trusted_configs_read_anywhere(data_dir: Path, tmp_path: Path) -> None:
    assert UNRESTRICTED.file("../secret.csv", data_dir) == data_dir / "../secret.csv"
    assert UNRESTRICTED.file("/etc/passwd", data_dir) == Path("/etc/passwd")


def test_resolve_path__a_connector_refuses_as_source_unavailable(data_dir: Path) -> None:
    reach = Reach(trusted=False, data_dir=data_dir)
    connector = CSVConnector(
        "stock", CSVSettings(path="/etc/passwd"), base_dir=data_dir, reach=reach
    )
    with pytest.raises(SourceUnavailable, match=r"source 'stock'.*only below WORKER_DATA_DIR"):
        connector.resolve_path(connector.settings.path)
    old_style = CSVConnector("stock", CSVSettings(path="stock.csv"), base_dir=data_dir)
    assert old_style.reach is UNRESTRICTED


def test_tls_files_follow_the_reach(data_dir: Path) -> None:
    tls = TLSSettings(mode="verify-full", ca_file="/etc/ssl/certs/ca-certificates.crt")
    with reaching(Reach(trusted=False, data_dir=data_dir)), pytest.raises(EgressRefused):
        tls.context(data_dir)
