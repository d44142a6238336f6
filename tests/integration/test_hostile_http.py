"""Hostile HTTP against both servers (issue 10): the worker's endpoints and the local engine.

Raw sockets send what a well-behaved client never would: bodies nested thousands deep,
header bytes that are not UTF-8, request heads that never finish.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import ENGINE_TOKEN
from worker.config import load_tenant
from worker.http import WorkerApp
from worker.http_guard import MAX_JSON_DEPTH, GuardedRunner, json_too_deep
from worker.local_engine import LocalEngine, serve_engine
from worker.pipeline import Pipeline
from worker.sources import Sources
from worker.stores.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[2]
HEAD_S = 1.0  # the servers' header deadline in these tests
MARGIN_S = 8.0  # how long past it a dropped connection may take to close, on a busy machine


@dataclass
class Server:
    port: int
    token: str
    json_path: str  # a POST route behind the token that reads a JSON body

    async def raw(self, data: bytes, *, timeout: float = 10) -> bytes:
        """``data`` on a fresh connection; everything the server sends back until it closes."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(timeout):
                return await reader.read()
        finally:
            writer.close()

    def request(
        self, body: bytes = b"", *, method: str = "POST", path: str = "", **headers: bytes
    ) -> bytes:
        """A raw request with the token (unless ``Authorization`` is given); ``_`` is ``-``."""
        lines = [f"{method} {path or self.json_path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
        sent = {"Authorization": b"Bearer " + self.token.encode(), **headers}
        lines += [name.replace("_", "-").encode() + b": " + value for name, value in sent.items()]
        lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
        return b"\r\n".join([*lines, b"Connection: close", b"", b""]) + body


def nested(depth: int) -> object:
    """``depth`` arrays, one inside the other."""
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> object:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


@pytest.fixture(params=["engine", "worker"])
async def server(request: pytest.FixtureRequest, queue_path: Path) -> AsyncIterator[Server]:
    stop = asyncio.Event()
    if request.param == "engine":
        async with SQLiteStore(queue_path) as store:
            bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            engine = LocalEngine(store, token=ENGINE_TOKEN)
            task = asyncio.create_task(
                serve_engine(
                    engine, "127.0.0.1", 0, stop, ready=bound.set_result, header_timeout_s=HEAD_S
                )
            )
            try:
                await asyncio.wait([task, bound], timeout=10, return_when=asyncio.FIRST_COMPLETED)
                yield Server(bound.result(), ENGINE_TOKEN, "/queue/jobs")
            finally:
                stop.set()
                await task
        return
    tenant = load_tenant(REPO / "config" / "tenants" / "demo.yaml")
    app = WorkerApp(Pipeline(tenant, Sources(tenant)), None, token="worker-token").app()
    runner = GuardedRunner(app, header_timeout_s=HEAD_S, access_log=None, shutdown_timeout=2)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        yield Server(port, "worker-token", "/webhook/data/order_status")
    finally:
        await runner.cleanup()


async def healthz(server: Server) -> int:
    return status_of(await server.raw(server.request(method="GET", path="/healthz")))


# --- deep JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="arrays-100k-deep"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="objects-50k-deep"),
        pytest.param(b"[" * 200_000, id="unclosed-200k"),
        pytest.param(
            json.dumps({"tenant_id": "x", "n": nested(MAX_JSON_DEPTH)}).encode(),
            id="just-past-the-limit",
        ),
    ],
)
async def test_json__nested_past_the_limit_is_400(server: Server, body: bytes) -> None:
    answer = await server.raw(server.request(body))

    assert status_of(answer) == 400
    assert "deeper than 32" in str(body_of(answer))
    assert await healthz(server) == 200


async def test_json__nested_within_the_limit_is_read(server: Server) -> None:
    deep = nested(MAX_JSON_DEPTH - 1)  # and the object around it: exactly the limit
    body = json.dumps({"job_type": "data_lookup", "tenant_id": "demo", "deep": deep}).encode()

    answer = await server.raw(server.request(body))

    assert status_of(answer) not in (400, 500)


def test_json_too_deep__brackets_inside_strings_do_not_count() -> None:
    assert not json_too_deep(json.dumps({"text": "[" * 1000 + '\\"{' * 100}))
    assert json_too_deep("[" * 33 + "]" * 33)
    assert not json_too_deep("[" * 32 + "]" * 32)


# --- undecodable headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"Bearer \xff\xfe", id="latin1-bytes"),
        pytest.param(b"Bearer \xed\xa0\x80", id="encoded-surrogate"),
        pytest.param(b"\xc3", id="truncated-utf8"),
    ],
)
async def test_headers__authorization_that_is_not_utf8_is_401(server: Server, value: bytes) -> None:
    answer = await server.raw(server.request(b"{}", Authorization=value))

    assert status_of(answer) == 401
    assert await healthz(server) == 200


async def test_headers__another_header_that_is_not_utf8_is_400(server: Server) -> None:
    answer = await server.raw(server.request(b"{}", Idempotency_Key=b"\xff\xfe"))

    assert status_of(answer) == 400
    assert "Idempotency-Key" in str(body_of(answer))


# --- the request head deadline --------------------------------------------------------------------


async def test_head_deadline__200_unfinished_heads_are_dropped_and_healthz_still_answers(
    server: Server,
) -> None:
    connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(200)]
    try:
        for _, writer in connections:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await asyncio.gather(*(writer.drain() for _, writer in connections))

        async with asyncio.timeout(HEAD_S / 2 + 5):  # answered meanwhile, not after the deadline
            assert await healthz(server) == 200

        async def closed(reader: asyncio.StreamReader) -> bytes:
            return await reader.read()

        async with asyncio.timeout(HEAD_S + MARGIN_S):
            answers = await asyncio.gather(*(closed(reader) for reader, _ in connections))
    finally:
        for _, writer in connections:
            writer.close()

    assert answers == [b""] * 200  # closed without a word
    assert await healthz(server) == 200


async def test_head_deadline__a_silent_connection_is_dropped(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        async with asyncio.timeout(HEAD_S + MARGIN_S):
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_head_deadline__an_unfinished_second_request_is_dropped(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(HEAD_S * 1.5)  # idle keep-alive: not the head deadline's business
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        async with asyncio.timeout(HEAD_S + MARGIN_S):
            rest = await reader.read()
    finally:
        writer.close()

    assert b"HTTP/1.1" not in rest  # the first answer's body at most, never a second answer


async def test_head_deadline__a_slow_body_after_a_prompt_head_is_still_answered(
    server: Server,
) -> None:
    body = json.dumps({"job_type": "data_lookup", "tenant_id": "demo"}).encode()
    head = server.request(body)[: -len(body)]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head)
        await asyncio.sleep(HEAD_S * 2)
        writer.write(body)
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()

    assert answer.startswith(b"HTTP/1.1 ")
    assert status_of(answer) not in (400, 408, 500)
