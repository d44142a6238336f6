"""The tenant boundary (issue 10, contract §5.0), tried as a hostile tenant would.

A tenant writes its config through the engine's tenant settings
(``PUT /routes/tenants/{id}/data-sources``); a worker whose config comes from
the engine treats it as untrusted. Each attack here runs against a real
``worker engine serve`` and a real ``worker run``: the engine refuses what the
document shows (422, with the path), the worker refuses at connect time what
only DNS shows, and no canary (the platform's token, the secret key, a host
file, another tenant's data) shows up in a reply, a job row, a log line,
``/metrics`` or the audit log.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import (
    REPO,
    WORKER,
    Engine,
    _env,
    _request,
    free_port,
    serve_engine,
    wait_until,
)
from worker import secrets

pytestmark = pytest.mark.slow

PLATFORM_TOKEN = "platform-canary-token-7c1f"
KEY = secrets.keygen()
SECRET = "tenant-canary-password-93"
PHONE = "+15550001234"


def shop(data_dir: Path, **lookup: Any) -> dict[str, Any]:
    """A fair config: the shop database below the operator's data folder."""
    return {
        "tenant_id": "shop",
        "data_sources": [
            {
                "id": "db",
                "type": "sqlite",
                "connection": {"path": "shop.db"},
                "queries": {"order_status": "SELECT status FROM orders WHERE order_id = $1"},
            }
        ],
        "lookups": {
            "order_status": {
                "source": "db",
                "args": ["order_id"],
                "template": "Order {{ params.order_id }}: {{ row.status }}",
                **lookup,
            }
        },
    }


def with_source(document: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    document["data_sources"].append(source)
    name = next(iter(source.get("queries") or source.get("endpoints")))
    document["lookups"]["probe"] = {"source": source["id"], "query": name}
    return document


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(REPO / "config" / "demo" / "shop.db", folder / "shop.db")
    return folder


@pytest.fixture
def engine(tmp_path: Path, data_dir: Path) -> Iterator[Engine]:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "shop.json").write_text(json.dumps(shop(data_dir)), encoding="utf-8")
    with serve_engine(
        tmp_path / "engine.db",
        configs,
        token=PLATFORM_TOKEN,
        WORKER_DATA_DIR=str(data_dir),
        WORKER_SECRET_KEYS=KEY,
    ) as served:
        yield served


def _attacks(engine_db: Path, engine_port: int) -> list[Any]:
    ciphertext = secrets.encrypt(SECRET, keys=KEY, tenant="shop")
    rest = {"id": "api", "type": "rest_api", "endpoints": {"read": "/x"}}
    return [
        pytest.param(
            {"template": "leak ${env:ENGINE_TOKEN}"},
            None,
            "lookups.order_status.template",
            id="env-in-template",
        ),
        pytest.param(
            {"fallback": "${env:WORKER_SECRET_KEYS}"},
            None,
            "lookups.order_status.fallback",
            id="key-in-fallback",
        ),
        pytest.param(
            {"template": f"leak {ciphertext}"},
            None,
            "lookups.order_status.template",
            id="ciphertext-in-template",
        ),
        pytest.param(
            {"template": "{% include 'etc/passwd' %}"},
            None,
            "lookups.order_status.template",
            id="include-host-file",
        ),
        pytest.param({"template": "etc/passwd"}, "/", "templates_dir", id="templates-dir-root"),
        pytest.param(
            {},
            {"id": "f", "type": "csv", "connection": {"path": "/etc/passwd"}, "queries": {"q": {}}},
            "data_sources[1].connection.path",
            id="csv-host-file",
        ),
        pytest.param(
            {},
            {
                "id": "jobs",
                "type": "sqlite",
                "connection": {"path": str(engine_db)},
                "queries": {"q": "SELECT payload FROM jobs"},
            },
            "data_sources[1].connection.path",
            id="sqlite-engine-db",
        ),
        pytest.param(
            {},
            {**rest, "connection": {"base_url": "http://169.254.169.254/latest"}},
            "data_sources[1].connection.base_url",
            id="cloud-metadata",
        ),
        pytest.param(
            {},
            {**rest, "connection": {"base_url": f"http://127.0.0.1:{engine_port}"}},
            "data_sources[1].connection.base_url",
            id="engine-on-loopback",
        ),
        pytest.param(
            {},
            {
                "id": "pg",
                "type": "postgresql",
                "connection": {"host": "localhost", "database": "postgres", "username": "x"},
                "queries": {"q": "SELECT 1"},
            },
            "data_sources[1].connection.host",
            id="database-on-localhost",
        ),
    ]


def test_put__each_hostile_config_is_refused_with_its_path(engine: Engine, data_dir: Path) -> None:
    port = int(engine.url.rsplit(":", 1)[1])
    before = _request(f"{engine.url}/routes/tenants/shop/data-sources", engine.token)
    for case in _attacks(engine.db, port):
        lookup, extra, where = case.values
        document = shop(data_dir, **lookup)
        if isinstance(extra, dict):
            document = with_source(document, extra)
        elif extra is not None:
            document["templates_dir"] = extra
        status, answer = engine.put_config(document)
        assert status == 422, (case.id, answer)
        problems = " ".join(answer["problems"])
        assert where in problems, (case.id, problems)
        body = json.dumps(answer)
        for canary in (PLATFORM_TOKEN, KEY, SECRET, "root:x:0:0"):
            assert canary not in body, case.id
    after = _request(f"{engine.url}/routes/tenants/shop/data-sources", engine.token)
    assert after == before  # every refusal kept the old config


class _Canary(BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b'{"secret": "internal-canary-4411"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def internal_service() -> Iterator[tuple[int, list[str]]]:
    """A service on the worker's own network (loopback) that must never be read."""
    hits: list[str] = []
    handler = type("Handler", (_Canary,), {"hits": hits})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()


def _loopback_name() -> str:
    """A host name (not `localhost`, which the engine refuses on sight) that DNS sends to 127/8."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = ""
    if not address.startswith("127."):
        pytest.skip(f"no name here resolves to loopback ({name} is {address or 'unknown'})")
    return name


def test_run__an_engine_served_config_reaches_only_what_it_may(
    engine: Engine, data_dir: Path, tmp_path: Path, internal_service: tuple[int, list[str]]
) -> None:
    port, hits = internal_service
    name = _loopback_name()
    document = with_source(
        shop(data_dir),
        {
            "id": "api",
            "type": "rest_api",
            "connection": {"base_url": f"http://{name}:{port}", "api_key": "k-00000000"},
            "endpoints": {"read": "/messages"},
        },
    )
    status, answer = engine.put_config(document)
    assert status == 200, answer  # a name: only DNS says where it goes

    audit = tmp_path / "audit.db"
    log = tmp_path / "worker.log"
    http = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*WORKER, "--log-json", "run", "--tenant", "shop", "--listen", f"127.0.0.1:{http}"],
            cwd=REPO,
            env=_env(
                ENGINE_URL=engine.url,
                ENGINE_TOKEN=PLATFORM_TOKEN,
                WORKER_SECRET_KEYS=KEY,
                WORKER_DATA_DIR=str(data_dir),
                WORKER_CONFIG_DIR=str(tmp_path / "none"),
                WORKER_LOG_LEVEL="DEBUG",
                AUDIT_DSN=str(audit),
            ),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        customer = {"phone": PHONE}
        ids = [
            engine.enqueue(
                {
                    "job_type": "data_lookup",
                    "tenant_id": "shop",
                    "query_type": query,
                    "parameters": params,
                    "customer_context": customer,
                }
            )
            for query, params in (
                ("order_status", {"order_id": "12345"}),
                ("probe", {}),
                ("order_status", {"order_id": "12346"}),
            )
        ]

        def done() -> bool:
            return all(engine.job(i)["status"] in ("done", "failed") for i in ids)

        wait_until(done, timeout_s=60, what="the jobs")
        jobs = [engine.job(i) for i in ids]
        assert [j["outcome"] for j in jobs] == ["ok", "fallback", "ok"]
        assert "not a public address" in json.dumps(jobs[1]["result"])
        assert hits == []  # the internal service never saw a request
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    replies = json.dumps(engine.messages())
    everything = [
        replies,
        json.dumps(jobs),
        log.read_text(encoding="utf-8"),
        metrics.decode(),
        audit.read_bytes().decode("utf-8", "replace") if audit.exists() else "",
    ]
    for canary in (PLATFORM_TOKEN, KEY, "internal-canary-4411", "root:x:0:0"):
        for text in everything:
            assert canary not in text
