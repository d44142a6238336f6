"""The ``worker`` CLI as real subprocesses against a real local engine over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "worker.cli"]
TOKEN = "acceptance-token"

# ~0.35 µs a row here: 6e6 rows ≈ 2 s of real work on the source; 1e12 never ends.
SLOW_LOOPS = "6000000"
ENDLESS_LOOPS = "1000000000000"

TENANT_YAML = """
tenant_id: shop
templates_dir: {templates}
data_sources:
  - id: shop_db
    type: sqlite
    connection: {{path: shop.db}}
    queries:
      order_status: SELECT status, tracking, estimated_delivery FROM orders WHERE order_id = $1
      slow_order: >-
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $2)
        SELECT o.status, o.tracking, o.estimated_delivery, (SELECT max(x) FROM c) AS counted
        FROM orders o WHERE o.order_id = $1
  - id: faq
    type: json
    connection: {{path: faq.json}}
    queries:
      faq: {{items: faqs, filter: {{topic: "{{topic}}"}}}}
  - id: broken_db
    type: sqlite
    connection: {{path: missing/nowhere.db}}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
lookups:
  faq:
    source: faq
    template: "{{{{ row.answer }}}}"
  order_status:
    source: shop_db
    args: [order_id]
    params:
      order_id: {{pattern: '[0-9]{{1,12}}', max_length: 12}}
    template: order_status.j2
    not_found: "No order #{{{{ params.order_id }}}} here."
    fallback: "Orders are offline; we'll write back about #{{{{ params.order_id }}}}."
    invalid_input: "Bad order number: {{{{ errors | join_and }}}}."
  slow_order:
    source: shop_db
    query: slow_order
    args: [order_id, loops]
    params:
      order_id: {{pattern: '[0-9]{{1,12}}'}}
      loops: {{type: integer}}
    template: order_status.j2
    timeout_s: 60
  hang_order:
    source: shop_db
    query: slow_order
    args: [order_id, loops]
    params:
      order_id: {{pattern: '[0-9]{{1,12}}'}}
      loops: {{type: integer}}
    timeout_s: 1
    fallback: "Timed out looking up #{{{{ params.order_id }}}}."
  broken_order:
    source: broken_db
    query: order_status
    args: [order_id]
    fallback: "Orders are offline; we'll write back about #{{{{ params.order_id }}}}."
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(url: str, token: str | None, body: Any = None, method: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))  # noqa: S310
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
        raw = resp.read()
    return json.loads(raw) if raw else None


def wait_until(check: Callable[[], bool], timeout_s: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Engine:
    url: str
    token: str
    db: Path
    proc: subprocess.Popen[bytes]

    def enqueue(self, payload: Any) -> str:
        return str(_request(f"{self.url}/queue/jobs", self.token, payload)["id"])

    def insert(self, payload_text: str) -> str:
        """As the seed does it: ``INSERT INTO jobs (payload) VALUES (…)``."""
        with sqlite3.connect(self.db) as db:
            cur = db.execute("INSERT INTO jobs (payload) VALUES (?)", (payload_text,))
            return str(cur.lastrowid)

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(_request(f"{self.url}/queue/jobs/{job_id}", self.token))

    def messages(self) -> list[dict[str, Any]]:
        return list(_request(f"{self.url}/messages", self.token))

    def curl_inbound(self, body: str) -> tuple[str, Any]:
        """The seed's ``curl -X POST …/webhook/inbound -d BODY``: status and answer."""
        done = subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", f"{self.url}/webhook/inbound",
             "-H", f"Authorization: Bearer {self.token}", "-d", body],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        text, _, status = done.stdout.rpartition("\n")
        return status, json.loads(text)

    def put_config(self, document: Any, tenant: str = "shop") -> tuple[int, Any]:
        """The seed's tenant-settings call; the status and the answer, errors included."""
        url = f"{self.url}/routes/tenants/{tenant}/data-sources"
        req = urllib.request.Request(url, data=json.dumps(document).encode(), method="PUT")  # noqa: S310
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())

    def replies(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for m in self.messages():
            out.setdefault(str(m["job_id"]), []).append(m["message"])
        return out


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WORKER_", "QUEUE_"))
    }
    env.update(extra)
    env["PYTHONPATH"] = str(REPO)
    return env


def answers(url: str) -> bool:
    """Whether an HTTP server answers ``url`` (its ``/healthz``, say) at all."""
    try:
        _request(url, None)
    except OSError:  # refused, reset, or an HTTP error status
        return False
    return True


@contextlib.contextmanager
def serve_engine(
    db: Path,
    config_dir: Path,
    *,
    token: str = TOKEN,
    lease_s: float | None = None,
    **env: str,
) -> Iterator[Engine]:
    """``worker engine serve`` on a free port, serving ``config_dir``; stopped afterwards."""
    port = free_port()
    cmd = [*WORKER, "engine", "serve", "--listen", f"127.0.0.1:{port}", "--db", str(db)]
    cmd += ["--token", token, "--config-dir", str(config_dir)]
    if lease_s is not None:
        cmd += ["--lease-s", f"{lease_s:g}"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/healthz"), what="the local engine to listen")
        yield Engine(url, token, db, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with serve_engine(tmp_path / "engine.db", REPO / "config" / "tenants", lease_s=2) as served:
        yield served


@pytest.fixture
def tenant_config(tmp_path: Path) -> Path:
    folder = tmp_path / "tenant"
    folder.mkdir()
    shutil.copy(REPO / "config" / "demo" / "shop.db", folder / "shop.db")
    shutil.copy(REPO / "config" / "demo" / "faq.json", folder / "faq.json")
    path = folder / "shop.yaml"
    path.write_text(TENANT_YAML.format(templates=REPO / "templates"), encoding="utf-8")
    return path


@dataclass
class WorkerProcs:
    engine: Engine
    config: Path
    log_dir: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> WorkerProcs:
        return self

    def __exit__(self, *exc: object) -> None:
        """Kill what is still running (a test that stops its workers checks their exit)."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """``worker run`` on the test tenant; its HTTP port is ``proc.http``."""
        log = self.log_dir / f"worker-{len(self.started)}.log"
        port = free_port()
        cmd = [
            *WORKER,
            "--log-json",
            "run",
            "--config",
            str(self.config),
            "--listen",
            f"127.0.0.1:{port}",
            *args,
        ]
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=_env(
                    **{"ENGINE_URL": self.engine.url, "ENGINE_TOKEN": self.engine.token, **env}
                ),
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        proc.log_path = log  # type: ignore[attr-defined]
        proc.http = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.log_path).read_text(encoding="utf-8")  # type: ignore[attr-defined]


@pytest.fixture
def workers(engine: Engine, tenant_config: Path, tmp_path: Path) -> Iterator[WorkerProcs]:
    with WorkerProcs(engine, tenant_config, tmp_path) as procs:
        yield procs


def job(query_type: str, tenant: str = "shop", **params: str) -> dict[str, Any]:
    return {
        "job_type": "data_lookup",
        "tenant_id": tenant,
        "query_type": query_type,
        "parameters": params,
        "customer_context": {"phone": "+1234567890", "name": "Ana", "locale": "en"},
    }
