"""The local engine's tenant boundary (issue 10), over real HTTP, on SQLite and PostgreSQL.

A token from ``worker engine token --tenant T`` sees and changes only tenant T's jobs,
messages and config; idempotency keys are per tenant, so another tenant's key never
suppresses a job's reply.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ENGINE_TOKEN
from tests.support.databases import fresh_postgres
from worker.local_engine import LocalEngine, issue_token, serve_engine, token_digest
from worker.stores import Store, open_store

REPO = Path(__file__).resolve().parents[2]
A, B = "acme", "intruder"


def payload(tenant: str) -> dict[str, Any]:
    return {
        "job_type": "data_lookup",
        "tenant_id": tenant,
        "query_type": "order_status",
        "parameters": {"order_id": "12345", "customer_phone": "+1234567890"},
    }


def next_job(tenant: str) -> dict[str, Any]:
    return {"tenant_id": tenant, "job_types": ["data_lookup"], "max_jobs": 10, "wait_s": 0}


@dataclass
class Engine:
    url: str
    store: Store
    target: str  # what `--db` names
    http: aiohttp.ClientSession

    async def call(
        self, token: str, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any]:
        async with self.http.request(
            method,
            self.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}", **headers},
        ) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def send(self, token: str, body: dict[str, Any], key: str) -> tuple[int, Any]:
        return await self.call(token, "POST", "/messages/send", body, **{"Idempotency-Key": key})

    async def enqueue(self, tenant: str) -> str:
        status, answer = await self.call(ENGINE_TOKEN, "POST", "/queue/jobs", payload(tenant))
        assert status == 201
        return str(answer["id"])


@pytest.fixture(params=["sqlite", "postgres"])
async def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """What ``--db`` names: a SQLite file, or a fresh PostgreSQL database's DSN."""
    if request.param == "sqlite":
        yield str(tmp_path / "engine.db")
        return
    async with fresh_postgres("lookup_tenancy") as dsn:
        yield dsn


@pytest.fixture
async def engine(store_target: str, tmp_path: Path) -> AsyncIterator[Engine]:
    target = store_target
    store = open_store(target)
    configs = tmp_path / "tenants"
    configs.mkdir()
    for tenant in (A, B):
        (configs / f"{tenant}.json").write_text(json.dumps({"tenant_id": tenant}))
    async with store, aiohttp.ClientSession() as http:
        stop = asyncio.Event()
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve_engine(
                LocalEngine(store, token=ENGINE_TOKEN, config_dir=configs),
                "127.0.0.1",
                0,
                stop,
                ready=bound.set_result,
            ),
            name="local-engine",
        )
        try:
            await asyncio.wait([server, bound], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            yield Engine(f"http://127.0.0.1:{bound.result()}", store, target, http)
        finally:
            stop.set()
            await server


# --- idempotency keys are per tenant -------------------------------------------------------------


async def test_send__another_tenants_key_never_suppresses_a_jobs_reply(engine: Engine) -> None:
    job_id = await engine.enqueue(A)
    a_token, b_token = await issue_token(engine.store, A), await issue_token(engine.store, B)
    status, answer = await engine.call(a_token, "POST", "/queue/next-job", next_job(A))
    assert (status, [j["id"] for j in answer["jobs"]]) == (200, [job_id])

    # Tenant B pushes A's job id as its idempotency key first.
    b_send = {"tenant_id": B, "to": "+1999", "message": "gotcha", "job_id": job_id}
    assert await engine.send(b_token, b_send, job_id) == (200, {"status": "sent"})

    a_send = {
        "tenant_id": A,
        "to": "+1234567890",
        "message": "Your order shipped",
        "job_id": job_id,
    }
    sent = await engine.send(a_token, a_send, job_id)
    again = await engine.send(a_token, a_send, job_id)
    done = await engine.call(a_token, "POST", f"/queue/jobs/{job_id}/complete", {"outcome": "ok"})

    assert (sent, again[1], done[0]) == ((200, {"status": "sent"}), {"status": "duplicate"}, 200)
    status, mine = await engine.call(a_token, "GET", "/messages")
    assert [(m["job_id"], m["message"]) for m in mine] == [(int(job_id), "Your order shipped")]
    status, theirs = await engine.call(b_token, "GET", "/messages")
    assert [(m["job_id"], m["message"]) for m in theirs] == [(None, "gotcha")]


# --- scoped tokens -------------------------------------------------------------------------------


async def test_scoped_token__claims_only_its_tenants_jobs(engine: Engine) -> None:
    mine, other = await engine.enqueue(A), await engine.enqueue(B)
    token = await issue_token(engine.store, A)

    refused = await engine.call(token, "POST", "/queue/next-job", next_job(B))
    status, answer = await engine.call(token, "POST", "/queue/next-job", next_job(A))

    assert refused[0] == 403
    assert "acme" in refused[1]["error"]
    assert (status, [j["id"] for j in answer["jobs"]]) == (200, [mine])
    row = await engine.store.job(int(other))
    assert row is not None and (row.status, row.attempt) == ("pending", 0)


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        pytest.param("GET", "", None, id="show"),
        pytest.param("POST", "/heartbeat", {}, id="heartbeat"),
        pytest.param("POST", "/complete", {"outcome": "ok", "result": {}}, id="complete"),
        pytest.param("POST", "/fail", {"error": "x", "retry": False}, id="fail"),
    ],
)
async def test_scoped_token__another_tenants_job_is_404_and_untouched(
    engine: Engine, method: str, suffix: str, body: Any
) -> None:
    other = await engine.enqueue(B)
    status, _ = await engine.call(ENGINE_TOKEN, "POST", "/queue/next-job", next_job(B))
    assert status == 200
    before = await engine.store.job(int(other))
    token = await issue_token(engine.store, A)

    status, answer = await engine.call(token, method, f"/queue/jobs/{other}{suffix}", body)

    assert (status, answer) == (404, {"error": "no such job"})
    assert await engine.store.job(int(other)) == before
    # the engine's own token still reaches every tenant's jobs
    assert (await engine.call(ENGINE_TOKEN, method, f"/queue/jobs/{other}{suffix}", body))[0] == 200


async def test_scoped_token__works_its_own_job_end_to_end(engine: Engine) -> None:
    job_id = await engine.enqueue(A)
    token = await issue_token(engine.store, A)
    await engine.call(token, "POST", "/queue/next-job", next_job(A))

    beat = await engine.call(token, "POST", f"/queue/jobs/{job_id}/heartbeat", {})
    done = await engine.call(token, "POST", f"/queue/jobs/{job_id}/complete", {"outcome": "ok"})
    status, row = await engine.call(token, "GET", f"/queue/jobs/{job_id}")

    assert (beat[0], done[0], status, row["status"]) == (200, 200, 200, "done")


async def test_scoped_token__sends_and_reads_only_its_tenants_messages(engine: Engine) -> None:
    token = await issue_token(engine.store, A)
    for tenant in (A, B):
        body = {"tenant_id": tenant, "to": "+1", "message": f"for {tenant}"}
        assert (await engine.call(ENGINE_TOKEN, "POST", "/messages/send", body))[0] == 200

    refused = await engine.call(
        token, "POST", "/messages/send", {"tenant_id": B, "to": "+1", "message": "spoofed"}
    )
    status, listed = await engine.call(token, "GET", "/messages")
    asked_other = await engine.call(token, "GET", f"/messages?tenant_id={B}")
    status_all, everything = await engine.call(ENGINE_TOKEN, "GET", "/messages")

    assert refused[0] == 403
    assert (status, [m["message"] for m in listed]) == (200, [f"for {A}"])
    assert asked_other[0] == 403
    assert (status_all, len(everything)) == (200, 2)


async def test_scoped_token__enqueues_and_reads_config_only_for_its_tenant(engine: Engine) -> None:
    token = await issue_token(engine.store, A)

    assert (await engine.call(token, "POST", "/queue/jobs", payload(B)))[0] == 403
    assert (await engine.call(token, "POST", "/queue/jobs", payload(A)))[0] == 201
    assert (await engine.call(token, "GET", f"/routes/tenants/{B}/data-sources"))[0] == 403
    assert (await engine.call(token, "PUT", f"/routes/tenants/{B}/data-sources", {}))[0] == 403
    status, config = await engine.call(token, "GET", f"/routes/tenants/{A}/data-sources")
    assert (status, config) == (200, {"tenant_id": A})


async def test_scoped_token__unknown_or_revoked_is_401(engine: Engine) -> None:
    token = await issue_token(engine.store, A)
    assert (await engine.call(token, "GET", "/messages"))[0] == 200

    assert await engine.store.revoke_tokens(token_digest(token)[:12]) == 1

    assert (await engine.call(token, "GET", "/messages"))[0] == 401
    assert (await engine.call(token + "x", "GET", "/messages"))[0] == 401


async def test_engine_token_command__issues_a_token_the_running_engine_accepts(
    engine: Engine,
) -> None:
    command = [sys.executable, "-m", "worker.cli", "engine", "token"]
    issued = subprocess.run(
        [*command, "--tenant", A, "--db", engine.target],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )
    token = issued.stdout.strip()
    listed = subprocess.run(
        [*command, "--list", "--db", engine.target],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=True,
    )

    assert token.startswith("wet_")
    assert token not in listed.stdout and token_digest(token)[:12] in listed.stdout
    assert (await engine.call(token, "GET", "/messages"))[0] == 200
    assert (await engine.call(token, "POST", "/queue/next-job", next_job(B)))[0] == 403
