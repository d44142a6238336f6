"""Fixtures for reaching sources the way tenants do: TLS on PostgreSQL, an SSH bastion."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

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
