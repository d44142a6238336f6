"""A MongoDB wire-protocol server for the tests: nx-27017, or a real MongoDB.

No MongoDB package installs here (Debian has none, and the PyPI / npm
helpers download the server binary at run time), so the tests start
nx-27017 (PyPI, the ``test`` extra): a MongoDB wire-protocol server written
in Python that keeps each database in an SQLite file (NeoSQLite). PyMongo's
``AsyncMongoClient`` talks to it over a real socket with the real protocol
(hello, OP_MSG, cursors, ``getMore``). ``run_nx_27017`` starts one on a free
loopback port with its data, log and pid file in a private folder, waits
until it answers ``ping`` and stops it on the way out.

It runs with ``--threaded`` (a thread a connection): its default asyncio
server answers every connection from one thread, so one slow query would
hold up every other client, which no MongoDB does. nx-27017 differs from a
MongoDB server in ways the tests name where they meet them (`NX_GAPS`).

``MONGODB_TEST_URI`` names a real server instead (the user needs readWrite on
databases named ``lookup_test_*`` to seed and drop them).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support.processes import stop

__all__ = ["NX_BINARY", "NX_GAPS", "MongoServer", "run_nx_27017"]

NX_BINARY = Path(sys.executable).parent / "nx-27017"
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0

#: What nx-27017 (0.8) does not do that MongoDB does: the reason a live test skips a check.
NX_GAPS = {
    "auth": "nx-27017 has no authentication: it accepts any user and password",
    "decimal128": "nx-27017 cannot store Decimal128 values (its SQLite encoding is JSON)",
    "max_time_ms": (
        "nx-27017 does not enforce maxTimeMS (a query runs to its end) and currentOp lists nothing"
    ),
    "lookup_pipeline": "nx-27017's $lookup needs localField/foreignField (no pipeline form)",
    "array_paths": (
        "nx-27017 does not follow a dotted path through an array of documents "
        "(items.sku finds nothing)"
    ),
}


@dataclass(frozen=True)
class MongoServer:
    uri: str  # mongodb://host:port/ (with credentials for a real server)
    kind: Literal["nx-27017", "mongodb"]
    log: Path | None = None  # nx-27017's log, for a failing test's message

    @property
    def is_nx(self) -> bool:
        return self.kind == "nx-27017"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers_ping(uri: str) -> bool:
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _started(server: MongoServer, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the server answers ``ping``; raise with its log if it does not."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers_ping(server.uri):
        if proc.poll() is not None or time.monotonic() > deadline:
            log = server.log.read_text(errors="replace") if server.log else ""
            raise RuntimeError(f"nx-27017 did not start:\n{log}")
        time.sleep(0.1)


@contextmanager
def run_nx_27017(folder: Path) -> Iterator[MongoServer]:
    """Start nx-27017 with its files in ``folder`` (one SQLite file a database); stop it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    port = _free_port()
    log = folder / "nx-27017.log"
    command = [
        str(NX_BINARY),
        "--threaded",
        "--host",
        HOST,
        "-p",
        str(port),
        "--data-dir",
        str(folder / "data"),
        "--log-file",
        str(log),
        "--pid-file",
        str(folder / "nx-27017.pid"),
    ]
    with (folder / "stdout.log").open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=folder)
    server = MongoServer(f"mongodb://{HOST}:{port}/", "nx-27017", log)
    try:
        _started(server, proc)
        yield server
    finally:
        stop(proc)
