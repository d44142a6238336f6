"""Fixtures for reaching sources the way tenants do: TLS on PostgreSQL, an SSH bastion,
a MongoDB wire-protocol server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.mongo import NX_BINARY, MongoServer, run_nx_27017
from tests.support.sshd import SSHD, SSHD_BINARY, run_sshd
from tests.support.tls import Certs, enable_postgres_tls, make_certs


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A test CA with server (localhost, 127.0.0.1) and client certificates."""
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def postgres_tls(tls_certs: Certs) -> Certs:
    """The local PostgreSQL serving TLS with `tls_certs` (plain connections keep working)."""
    enable_postgres_tls(tls_certs)
    return tls_certs


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHD]:
    """A real OpenSSH server on a free loopback port."""
    if not SSHD_BINARY.exists():
        message = "openssh-server is not installed: ./scripts/test.sh installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with run_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """The MongoDB named by ``MONGODB_TEST_URI``, else an nx-27017 started for the session."""
    uri = os.environ.get("MONGODB_TEST_URI")
    if uri:
        yield MongoServer(uri, "mongodb")
        return
    if not NX_BINARY.exists():
        message = "nx-27017 is not installed: pip install -e '.[test]' installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with run_nx_27017(tmp_path_factory.mktemp("nx-27017")) as server:
        yield server
