"""A private PgBouncer in front of the machine's PostgreSQL (127.0.0.1:5432).

Each `run_pgbouncer` is its own process with its own ini and auth file, on a
free loopback port, pooling every database name (``* =``) to the local
server. The server trusts loopback, so PgBouncer does too (``auth_type =
trust``; the user must still be in the auth file). PgBouncer refuses to run as
root: as root it is started with ``-u nobody``, which it honours after
reading its files. Its admin console (database ``pgbouncer``) speaks only the
simple query protocol, so `PgBouncer.show` asks it through ``psql``.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import stop

__all__ = ["PGBOUNCER_BINARY", "PgBouncer", "run_pgbouncer"]

PGBOUNCER_BINARY = Path("/usr/sbin/pgbouncer")
SERVER = ("127.0.0.1", 5432)
USER = "postgres"


@dataclass(frozen=True)
class PgBouncer:
    host: str
    port: int
    pool_mode: str  # "session" or "transaction"
    pool_size: int  # server connections per database and user
    log: Path  # PgBouncer's own log, for a failing test's message

    def dsn(self, database: str) -> str:
        """A DSN for ``database`` on the local server, through this PgBouncer."""
        return f"postgresql://{USER}@{self.host}:{self.port}/{database}"

    def show(self, what: str) -> list[dict[str, str]]:
        """The admin console's ``SHOW what`` (``POOLS``, ``SERVERS``, ``CLIENTS``…) as rows."""
        done = subprocess.run(
            ["psql", "-X", "--csv", self.dsn("pgbouncer"), "-c", f"SHOW {what}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return list(csv.DictReader(io.StringIO(done.stdout)))

    def server_connections(self, database: str) -> int:
        """How many connections PgBouncer holds to the server for ``database``."""
        return sum(1 for row in self.show("SERVERS") if row["database"] == database)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ini(folder: Path, port: int, pool_mode: str, pool_size: int) -> Path:
    (folder / "userlist.txt").write_text(f'"{USER}" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={SERVER[0]} port={SERVER[1]}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {folder / 'userlist.txt'}",
                f"admin_users = {USER}",
                f"pool_mode = {pool_mode}",
                f"default_pool_size = {pool_size}",
                "max_client_conn = 1000",
                "",
            ]
        )
    )
    return ini


def _started(bouncer: PgBouncer, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the admin console answers; raise with PgBouncer's log if it does not."""
    deadline = time.monotonic() + 15
    while True:
        try:
            bouncer.show("VERSION")
            return
        except subprocess.CalledProcessError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = bouncer.log.read_text(errors="replace")
                raise RuntimeError(f"pgbouncer did not start:\n{log}") from None
            time.sleep(0.05)


@contextmanager
def run_pgbouncer(
    folder: Path, *, pool_mode: str = "session", pool_size: int = 20
) -> Iterator[PgBouncer]:
    """Start PgBouncer (``pool_mode``, ``pool_size`` server connections a database); stop it."""
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    ini = _ini(folder, port, pool_mode, pool_size)
    as_user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
    log = folder / "pgbouncer.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(PGBOUNCER_BINARY), *as_user, str(ini)], stdout=sink, stderr=subprocess.STDOUT
        )
    bouncer = PgBouncer("127.0.0.1", port, pool_mode, pool_size, log)
    try:
        _started(bouncer, proc)
        yield bouncer
    finally:
        stop(proc)
