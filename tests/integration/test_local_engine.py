"""The local engine (contract §3) on a real port, spoken to by raw HTTP and by `EngineClient`."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from yarl import URL

from worker.engine_client import EngineClient
from worker.errors import EngineAuthError, EngineUnavailable, LeaseLost
from worker.local_engine import LocalEngine, serve_engine
from worker.retry import with_retries
from worker.stores.base import ClaimedJob
from worker.stores.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[2]
TENANT = "acme"
PAYLOAD = {
    "job_type": "data_lookup",
    "tenant_id": TENANT,
    "query_type": "order_status",
    "parameters": {"order_id": "12345", "customer_phone": "+1234567890"},
    "customer_context": {"phone": "+1234567890", "name": "Ana", "locale": "en"},
}
NEXT_JOB = {"tenant_id": TENANT, "job_types": ["data_lookup"], "max_jobs": 10, "wait_s": 0}

Engine = tuple[str, str, SQLiteStore]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(local_engine: Engine) -> AsyncIterator[EngineClient]:
    base_url, token, _store = local_engine
    async with EngineClient(base_url, token) as engine_client:
        yield engine_client


async def call(
    http: aiohttp.ClientSession,
    engine: Engine,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One raw request with the right token (unless ``headers`` say otherwise)."""
    base_url, token, _store = engine
    async with http.request(
        method,
        URL(base_url + path, encoded=True),
        json=body,
        headers=bearer(token) if headers is None else headers,
    ) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def claim_one(http: aiohttp.ClientSession, engine: Engine) -> dict[str, Any]:
    status, answer = await call(http, engine, "POST", "/queue/next-job", NEXT_JOB)
    assert status == 200
    [job] = answer["jobs"]
    return dict(job)


async def enqueue(http: aiohttp.ClientSession, engine: Engine, payload: Any = None) -> str:
    status, answer = await call(http, engine, "POST", "/queue/jobs", payload or PAYLOAD)
    assert status == 201
    return str(answer["id"])


async def status_of(http: aiohttp.ClientSession, engine: Engine, job_id: str) -> dict[str, Any]:
    status, row = await call(http, engine, "GET", f"/queue/jobs/{job_id}")
    assert status == 200
    return dict(row)


async def claimed(http: aiohttp.ClientSession, engine: Engine) -> str:
    """A job enqueued and claimed (the only one): its id."""
    job_id = await enqueue(http, engine)
    await claim_one(http, engine)
    return job_id


async def report(
    http: aiohttp.ClientSession, engine: Engine, job_id: str, verb: str, body: Any
) -> tuple[int, Any]:
    """POST ``body`` to the job's ``complete`` or ``fail``."""
    return await call(http, engine, "POST", f"/queue/jobs/{job_id}/{verb}", body)


# --- serving ------------------------------------------------------------------------------------


async def test_serve_engine__starts_without_warnings(sqlite_store: SQLiteStore) -> None:
    engine = LocalEngine(sqlite_store, token="t")
    stop = asyncio.Event()
    ports: list[int] = []

    def ready(port: int) -> None:
        ports.append(port)
        stop.set()

    await asyncio.wait_for(serve_engine(engine, "127.0.0.1", 0, stop, ready=ready), timeout=5)

    assert ports
    assert ports[0] > 0


# --- the bearer token ----------------------------------------------------------------------------

ROUTES = [
    pytest.param("POST", "/queue/next-job", {**NEXT_JOB, "wait_s": 5}, id="next-job"),
    pytest.param("POST", "/queue/jobs", PAYLOAD, id="enqueue"),
    pytest.param("GET", "/queue/jobs/1", None, id="show-job"),
    pytest.param("POST", "/queue/jobs/1/heartbeat", {}, id="heartbeat"),
    pytest.param("POST", "/queue/jobs/1/complete", {"outcome": "ok", "result": {}}, id="complete"),
    pytest.param("POST", "/queue/jobs/1/fail", {"error": "x", "retry": False}, id="fail"),
    pytest.param(
        "POST",
        "/messages/send",
        {"tenant_id": TENANT, "to": "+1234567890", "message": "hi", "job_id": "1"},
        id="send",
    ),
    pytest.param("GET", "/messages", None, id="messages"),
    pytest.param("GET", "/routes/tenants/demo/data-sources", None, id="tenant-config"),
]
BAD_AUTH = [
    pytest.param({}, id="no-header"),
    pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
    pytest.param({"Authorization": "Bearer "}, id="empty-token"),
    pytest.param({"Authorization": "test-engine-token"}, id="no-bearer-prefix"),
    pytest.param({"Authorization": "Basic test-engine-token"}, id="basic-scheme"),
    pytest.param({"Authorization": "Bearer test-engine-tokenX"}, id="token-prefix-only"),
]


@pytest.mark.parametrize("headers", BAD_AUTH)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_auth__every_call_without_the_token_is_401(
    http: aiohttp.ClientSession,
    local_engine: Engine,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    _base, _token, store = local_engine
    await enqueue(http, local_engine)

    start = time.monotonic()
    status, answer = await call(http, local_engine, method, path, body, headers=headers)

    assert status == 401
    assert isinstance(answer["error"], str)
    assert answer["error"]
    assert time.monotonic() - start < 5  # refused at once, not after a long poll
    row = await store.job(1)
    assert row is not None
    assert (row.status, row.attempt) == ("pending", 0)
    assert await store.messages() == []
    assert await store.job(2) is None


async def test_auth__right_token_is_accepted(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    status, answer = await call(http, local_engine, "POST", "/queue/next-job", NEXT_JOB)

    assert (status, answer) == (200, {"jobs": []})


# --- POST /queue/next-job ---------------------------------------------------------------------


async def test_next_job__answer_has_the_contract_shape(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    job_id = await enqueue(http, local_engine)

    status, answer = await call(http, local_engine, "POST", "/queue/next-job", NEXT_JOB)

    assert status == 200
    assert set(answer) == {"jobs"}
    [job] = answer["jobs"]
    assert set(job) == {"id", "payload", "attempt", "lease_s"}
    assert isinstance(job["id"], str)
    assert job["id"] == job_id
    assert job["payload"] == PAYLOAD
    assert type(job["attempt"]) is int
    assert job["attempt"] == 1
    assert type(job["lease_s"]) in (int, float)
    assert job["lease_s"] == 30


@pytest.mark.parametrize("how", [pytest.param("http", id="dev-route"), "other-connection"])
async def test_next_job__long_poll_returns_a_job_enqueued_later(
    http: aiohttp.ClientSession, local_engine: Engine, queue_path: Path, how: str
) -> None:
    async def enqueue_later() -> str:
        await asyncio.sleep(0.3)
        if how == "http":
            return await enqueue(http, local_engine)
        async with SQLiteStore(queue_path) as other:  # as another process would
            return str(await other.enqueue(PAYLOAD))

    start = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        enqueued = tasks.create_task(enqueue_later())
        status, answer = await call(
            http, local_engine, "POST", "/queue/next-job", {**NEXT_JOB, "wait_s": 20}
        )
    elapsed = time.monotonic() - start

    assert status == 200
    assert [j["id"] for j in answer["jobs"]] == [enqueued.result()]
    assert 0.25 < elapsed < 0.3 + 4  # woken by the job, not at the end of the 20 s


async def test_next_job__empty_list_after_wait_s_when_nothing_comes(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    await enqueue(http, local_engine, {**PAYLOAD, "tenant_id": "globex"})

    start = time.monotonic()
    status, answer = await call(
        http, local_engine, "POST", "/queue/next-job", {**NEXT_JOB, "wait_s": 0.5}
    )
    elapsed = time.monotonic() - start

    assert (status, answer) == (200, {"jobs": []})
    assert 0.45 < elapsed < 0.5 + 4


async def test_next_job__respects_max_jobs_and_tenant(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    ours = [await enqueue(http, local_engine, {**PAYLOAD, "n": n}) for n in range(3)]
    await enqueue(http, local_engine, {**PAYLOAD, "tenant_id": "globex"})
    await enqueue(http, local_engine, {**PAYLOAD, "job_type": "send_email"})

    _s, first = await call(
        http, local_engine, "POST", "/queue/next-job", {**NEXT_JOB, "max_jobs": 2}
    )
    _s, rest = await call(http, local_engine, "POST", "/queue/next-job", NEXT_JOB)

    assert [j["id"] for j in first["jobs"]] == ours[:2]
    assert [j["id"] for j in rest["jobs"]] == ours[2:]


# --- heartbeat, complete, fail -------------------------------------------------------------------


async def test_heartbeat__answers_the_lease(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    await enqueue(http, local_engine)
    job = await claim_one(http, local_engine)

    status, answer = await call(
        http, local_engine, "POST", f"/queue/jobs/{job['id']}/heartbeat", {}
    )

    assert (status, answer) == (200, {"lease_s": 30})


@pytest.mark.parametrize("engine_lease_s", [0.2])
async def test_heartbeat__409_after_the_lease_was_lost(
    http: aiohttp.ClientSession, local_engine: Engine, client: EngineClient
) -> None:
    await enqueue(http, local_engine)
    [first] = await client.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0)
    await asyncio.sleep(0.3)
    [second] = await client.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0)
    assert (second.id, second.attempt) == (first.id, 2)

    with pytest.raises(LeaseLost):
        await client.heartbeat(first)
    status, answer = await call(
        http, local_engine, "POST", f"/queue/jobs/{first.id}/heartbeat", {"attempt": 1}
    )
    assert status == 409
    assert answer["error"]
    assert await client.heartbeat(second) == pytest.approx(0.2)

    await client.complete(second, outcome="ok", result={}, response_time_ms=1)
    status, _answer = await call(
        http, local_engine, "POST", f"/queue/jobs/{first.id}/heartbeat", {}
    )
    assert status == 409


async def test_complete__200_then_409_the_second_time(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    job_id = await claimed(http, local_engine)
    body = {"outcome": "ok", "result": {"status": "shipped"}, "response_time_ms": 12}

    first, _ = await report(http, local_engine, job_id, "complete", body)
    second, answer = await report(http, local_engine, job_id, "complete", body)

    assert (first, second) == (200, 409)
    assert answer["error"]
    row = await status_of(http, local_engine, job_id)
    assert (row["status"], row["outcome"], row["result"]) == ("done", "ok", {"status": "shipped"})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"outcome": "done"}, id="unknown"),
        pytest.param({"outcome": "OK"}, id="wrong-case"),
        pytest.param({"outcome": ""}, id="empty"),
        pytest.param({"result": {}}, id="missing"),
        pytest.param({"outcome": 1}, id="not-a-string"),
    ],
)
async def test_complete__unknown_outcome_is_422(
    http: aiohttp.ClientSession, local_engine: Engine, body: dict[str, Any]
) -> None:
    job_id = await claimed(http, local_engine)

    status, answer = await report(http, local_engine, job_id, "complete", body)

    assert status == 422
    assert isinstance(answer["error"], str)
    assert answer["error"]
    assert (await status_of(http, local_engine, job_id))["status"] == "running"


async def test_fail__with_retry_puts_the_job_back_pending(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    job_id = await claimed(http, local_engine)

    status, _ = await report(
        http,
        local_engine,
        job_id,
        "fail",
        {"error": "engine hiccup", "retry": True, "retry_after_s": 0},
    )

    assert status == 200
    row = await status_of(http, local_engine, job_id)
    assert (row["status"], row["error"]) == ("pending", "engine hiccup")
    again = await claim_one(http, local_engine)
    assert (again["id"], again["attempt"]) == (job_id, 2)


async def test_fail__retry_after_s_holds_the_job_back(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    job_id = await claimed(http, local_engine)

    status, _ = await report(
        http, local_engine, job_id, "fail", {"error": "later", "retry": True, "retry_after_s": 5}
    )

    assert status == 200
    assert (await status_of(http, local_engine, job_id))["status"] == "pending"
    _s, answer = await call(http, local_engine, "POST", "/queue/next-job", NEXT_JOB)
    assert answer == {"jobs": []}


async def test_fail__without_retry_ends_failed(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    job_id = await claimed(http, local_engine)

    status, _ = await report(
        http, local_engine, job_id, "fail", {"error": "not this worker's tenant", "retry": False}
    )

    assert status == 200
    row = await status_of(http, local_engine, job_id)
    assert (row["status"], row["error"]) == ("failed", "not this worker's tenant")


# --- /messages/send ------------------------------------------------------------------------------


async def test_send__same_idempotency_key_twice_stores_one_message(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    body = {"tenant_id": TENANT, "to": "+1234567890", "message": "Shipped!", "job_id": "42"}
    headers = {**bearer(local_engine[1]), "Idempotency-Key": "42"}

    first, _ = await call(http, local_engine, "POST", "/messages/send", body, headers=headers)
    second, _ = await call(http, local_engine, "POST", "/messages/send", body, headers=headers)
    status, messages = await call(http, local_engine, "GET", "/messages")

    assert (first, second) == (200, 200)
    assert status == 200
    assert [(m["tenant_id"], m["to"], m["message"]) for m in messages] == [
        (TENANT, "+1234567890", "Shipped!")
    ]


async def test_send__different_keys_store_both(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    body = {"tenant_id": TENANT, "to": "+1234567890", "message": "hi"}
    for key in ("a-1", "a-2"):
        headers = {**bearer(local_engine[1]), "Idempotency-Key": key}
        status, _ = await call(http, local_engine, "POST", "/messages/send", body, headers=headers)
        assert status == 200

    _s, messages = await call(http, local_engine, "GET", f"/messages?tenant_id={TENANT}")
    _s, others = await call(http, local_engine, "GET", "/messages?tenant_id=globex")

    assert len(messages) == 2
    assert others == []


# --- malformed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/queue/next-job", id="next-job"),
        pytest.param("/queue/jobs", id="enqueue"),
        pytest.param("/queue/jobs/1/heartbeat", id="heartbeat"),
        pytest.param("/queue/jobs/1/complete", id="complete"),
        pytest.param("/queue/jobs/1/fail", id="fail"),
        pytest.param("/messages/send", id="send"),
    ],
)
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"tenant_id": ', id="truncated"),
        pytest.param(b"{'outcome': 'ok'}", id="single-quotes"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
    ],
)
async def test_malformed_json__is_400_with_a_json_error(
    http: aiohttp.ClientSession, local_engine: Engine, path: str, data: bytes
) -> None:
    await claimed(http, local_engine)
    base_url, token, _store = local_engine

    async with http.post(
        base_url + path,
        data=data,
        headers={**bearer(token), "Content-Type": "application/json"},
    ) as response:
        status, content_type, answer = response.status, response.content_type, await response.json()

    assert status == 400
    assert content_type == "application/json"
    assert isinstance(answer["error"], str)
    assert answer["error"]


# --- GET /routes/tenants/{id}/data-sources ------------------------------------------------------


async def test_tenant_config__serves_the_demo_config(
    http: aiohttp.ClientSession, local_engine: Engine, client: EngineClient
) -> None:
    expected = yaml.safe_load((REPO / "config" / "tenants" / "demo.yaml").read_text("utf-8"))

    status, answer = await call(http, local_engine, "GET", "/routes/tenants/demo/data-sources")

    assert (status, answer) == (200, expected)
    assert await client.tenant_config("demo") == expected


async def test_tenant_config__serves_a_json_config_as_written(
    http: aiohttp.ClientSession, local_engine: Engine
) -> None:
    expected = json.loads((REPO / "config" / "tenants" / "whappstream.json").read_text("utf-8"))

    status, answer = await call(
        http, local_engine, "GET", "/routes/tenants/whappstream/data-sources"
    )

    assert (status, answer) == (200, expected)


@pytest.mark.parametrize(
    "tenant",
    [
        pytest.param("nobody", id="unknown"),
        pytest.param("..%2Ftenants%2Fdemo", id="dotdot-slash"),
        pytest.param("%2E%2E%2Ftenants%2Fdemo", id="encoded-dotdot"),
        pytest.param("..%5Ctenants%5Cdemo", id="dotdot-backslash"),
        pytest.param("demo..", id="trailing-dotdot"),
        pytest.param("%2E%2E", id="just-dotdot"),
    ],
)
async def test_tenant_config__unknown_or_escaping_tenant_is_404(
    http: aiohttp.ClientSession, local_engine: Engine, tenant: str
) -> None:
    status, answer = await call(http, local_engine, "GET", f"/routes/tenants/{tenant}/data-sources")

    assert status == 404
    assert answer is None or "data_sources" not in answer


# --- EngineClient's errors -----------------------------------------------------------------------

CLIENT_CALLS = [
    pytest.param(lambda c: c.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0), id="next"),
    pytest.param(lambda c: c.heartbeat(ClaimedJob("1", {})), id="heartbeat"),
    pytest.param(
        lambda c: c.complete(ClaimedJob("1", {}), outcome="ok", result={}, response_time_ms=1),
        id="complete",
    ),
    pytest.param(
        lambda c: c.fail(ClaimedJob("1", {}), error="x", retry=False, retry_after_s=0), id="fail"
    ),
    pytest.param(
        lambda c: c.send_message(tenant_id=TENANT, to="+1", message="hi", key="1"), id="send"
    ),
    pytest.param(lambda c: c.tenant_config("demo"), id="tenant-config"),
]


@pytest.mark.parametrize("request_of", CLIENT_CALLS)
async def test_client__401_is_engine_auth_error(local_engine: Engine, request_of: Any) -> None:
    base_url, _token, store = local_engine
    await store.enqueue(PAYLOAD)

    async with EngineClient(base_url, "wrong-token") as wrong:
        with pytest.raises(EngineAuthError, match="401"):
            await request_of(wrong)


async def test_client__409_is_lease_lost(local_engine: Engine, client: EngineClient) -> None:
    await local_engine[2].enqueue(PAYLOAD)
    [job] = await client.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0)
    await client.complete(job, outcome="ok", result={}, response_time_ms=3)

    with pytest.raises(LeaseLost):
        await client.complete(job, outcome="ok", result={}, response_time_ms=3)


@pytest.mark.parametrize("request_of", CLIENT_CALLS)
async def test_client__refused_connection_is_engine_unavailable(request_of: Any) -> None:
    async with EngineClient(f"http://127.0.0.1:{closed_port()}", "t") as nowhere:
        with pytest.raises(EngineUnavailable, match="did not answer"):
            await request_of(nowhere)


@pytest.fixture
async def failing_engine() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """An engine that answers every call with ``state["status"]``."""
    state = {"status": 503}

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=state["status"])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_client__5xx_is_engine_unavailable(
    failing_engine: tuple[str, dict[str, int]], status: int
) -> None:
    base_url, state = failing_engine
    state["status"] = status

    async with EngineClient(base_url, "t") as down:
        with pytest.raises(EngineUnavailable, match=str(status)):
            await down.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0)


async def test_with_retries__retries_until_the_deadline_then_reraises() -> None:
    retried: list[Exception] = []

    async with EngineClient(f"http://127.0.0.1:{closed_port()}", "t") as nowhere:
        start = time.monotonic()
        with pytest.raises(EngineUnavailable):
            await with_retries(
                lambda: nowhere.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0),
                deadline_s=1.0,
                on_retry=retried.append,
            )
        elapsed = time.monotonic() - start

    assert len(retried) >= 2
    assert all(isinstance(exc, EngineUnavailable) for exc in retried)
    assert elapsed < 1.0 + 4  # the deadline ends the retries


async def test_with_retries__returns_once_the_engine_answers(
    failing_engine: tuple[str, dict[str, int]], local_engine: Engine
) -> None:
    down_url, _state = failing_engine
    up_url, token, _store = local_engine
    retried: list[Exception] = []

    async with EngineClient(down_url, token) as down, EngineClient(up_url, token) as up:

        async def flaky() -> Any:
            target = down if len(retried) < 2 else up
            return await target.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0)

        assert await with_retries(flaky, deadline_s=5, on_retry=retried.append) == []

    assert len(retried) == 2


async def test_with_retries__does_not_retry_auth_errors(local_engine: Engine) -> None:
    retried: list[Exception] = []

    async with EngineClient(local_engine[0], "wrong-token") as wrong:
        with pytest.raises(EngineAuthError):
            await with_retries(
                lambda: wrong.next_jobs(TENANT, ["data_lookup"], max_jobs=1, wait_s=0),
                deadline_s=5,
                on_retry=retried.append,
            )

    assert retried == []
