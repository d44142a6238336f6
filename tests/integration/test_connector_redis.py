"""The redis connector against real Redis servers.

Most tests use the shared server on 127.0.0.1:6379: each writes its keys under
its own random prefix and deletes them after; nothing here flushes a database.
A hung server is simulated two ways: `TarpitProxy`, a TCP proxy in front of the
shared server that stops answering a connection once it sends a marked key
(only that test's connection hangs), and, on a ``redis-server`` the test starts
itself (`OwnRedis`), ``CLIENT PAUSE … ALL`` and ``DEBUG SLEEP``. Restarts and
``requirepass`` use that own server too, so no one else's connections drop;
the issue's ``service redis-server restart`` of the shared server is tried too,
and skips when it restarts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pytest
import redis
import redis.asyncio
import redis.exceptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from connectors.base import (
    Bound,
    ConfigError,
    Limits,
    NotARead,
    PreparedQuery,
    SourceAuthError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from connectors.redis import (
    READ_COMMANDS,
    PoolStats,
    RedisConnector,
    RedisSettings,
    RedisSpec,
    ScanSpec,
    glob_escape,
)
from connectors.redis.commands import json_result
from connectors.registry import load
from connectors.testing import RawQuery
from tests.support.connectors import ConnectorFactory, ContractCase, read, refused_port
from worker.config import load_tenant
from worker.service import open_worker

HOST = "127.0.0.1"
PORT = 6379
REPO = Path(__file__).resolve().parents[2]

#: keys holding this text hang in `TarpitProxy`
TARPIT = "tarpit"
#: how long `CLIENT PAUSE` stops the real server: every client of it waits that long
PAUSE_MS = 8000

MakeConnector = Callable[..., RedisConnector]


# -- the server, the test's keys -------------------------------------------------


@pytest.fixture
async def admin() -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client for setting up and checking, outside the connector."""
    client = redis.asyncio.Redis(host=HOST, port=PORT, decode_responses=True, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture
async def ns(admin: redis.asyncio.Redis) -> AsyncIterator[str]:
    """This test's key prefix; its keys are deleted afterwards (never a FLUSHDB)."""
    prefix = f"lookup-test:{secrets.token_hex(4)}:"
    yield prefix
    keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await admin.delete(*keys)


async def fill(admin: redis.asyncio.Redis, ns: str) -> None:
    """The shop's data: orders as hashes, a customer's history, tags, a greeting."""
    await admin.hset(
        f"{ns}order:12345",
        mapping={
            "status": "shipped",
            "tracking": "TRK-1",
            "estimated_delivery": "2025-09-12",
            "total": "19.50",
            "note": "Café ☕",
        },
    )
    await admin.hset(f"{ns}order:12346", mapping={"status": "processing"})
    await admin.set(f"{ns}greeting", "Hello, Ana 👋")
    await admin.rpush(f"{ns}history", *[f"event-{i}" for i in range(50)])
    await admin.zadd(
        f"{ns}recent", {"12340": 1.0, "12341": 2.0, "12345": 3.5, "12346": float("inf")}
    )
    await admin.sadd(f"{ns}tags", "gift", "express", "fragile")
    await admin.set(f"{ns}binary", b"\xff\xfe not text")
    await admin.set(f"{ns}canary", "alive")


@pytest.fixture
async def shop(admin: redis.asyncio.Redis, ns: str) -> str:
    await fill(admin, ns)
    return ns


async def key_count(admin: redis.asyncio.Redis, ns: str) -> int:
    return len([key async for key in admin.scan_iter(match=f"{ns}*", count=1000)])


async def sessions(admin: redis.asyncio.Redis, name: str) -> int:
    """Connections the server holds for a client name (CLIENT LIST)."""
    return sum(1 for client in await admin.client_list() if client.get("name") == name)


def closed_port() -> int:
    return refused_port(HOST)


# -- a proxy that hangs on demand ----------------------------------------------------


class TarpitProxy:
    """TCP in front of the real Redis. A connection that sends a key containing
    `TARPIT` never gets another byte back, like a server stuck on that command.

    It counts the client connections it holds (``open``, ``hung``, the most
    ever open at once) and records the commands sent through it.
    """

    def __init__(self) -> None:
        self.open = 0
        self.hung = 0
        self.most_open = 0
        self.sent: list[list[str]] = []
        self.changed = asyncio.Condition()
        self._handlers: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> TarpitProxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()  # each handler then closes both its sockets and returns
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for(self, check: Callable[[], bool], timeout_s: float = 2.0) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(check)

    async def _count(self, open_delta: int, hung_delta: int) -> None:
        async with self.changed:
            self.open += open_delta
            self.hung += hung_delta
            self.most_open = max(self.most_open, self.open)
            self.changed.notify_all()

    def commands(self) -> list[list[str]]:
        """What the connector sent, without the connection handshake."""
        return [c for c in self.sent if c[0].upper() not in ("CLIENT", "HELLO", "AUTH", "SELECT")]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, PORT)
        except OSError:
            writer.close()
            self._handlers.discard(task)
            return
        await self._count(1, 0)
        hung = False

        async def upstream() -> None:
            nonlocal hung
            while data := await reader.read(65536):
                self.sent.extend(_resp_commands(data))
                if TARPIT.encode() in data and not hung:
                    hung = True
                    await self._count(0, 1)
                if not hung:
                    up_writer.write(data)
                    await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                if not hung:
                    writer.write(data)
                    await writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps.difference_update(pumps)
            writer.close()
            up_writer.close()
            with contextlib.suppress(OSError):
                await up_writer.wait_closed()
            await self._count(-1, -1 if hung else 0)
            self._handlers.discard(task)


def _resp_commands(data: bytes) -> list[list[str]]:
    """Commands in a chunk of RESP (arrays of bulk strings), as text."""
    commands: list[list[str]] = []
    lines = data.split(b"\r\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"*"):
        count = int(lines[i][1:])
        words = [lines[i + 2 + 2 * n].decode("utf-8", "replace") for n in range(count)]
        commands.append(words)
        i += 1 + 2 * count
    return commands


@pytest.fixture
async def tarpit() -> AsyncIterator[TarpitProxy]:
    async with TarpitProxy() as proxy:
        yield proxy


# -- connectors ----------------------------------------------------------------------


@pytest.fixture
async def make_connector(tmp_path: Path) -> AsyncIterator[MakeConnector]:
    """Connectors on the test server, each with its own client name; closed afterwards."""
    factory = ConnectorFactory(RedisConnector, "cache", tmp_path)

    def make(*, limits: Limits | None = None, **connection: Any) -> RedisConnector:
        if "url" not in connection:
            connection.setdefault("host", HOST)
            connection.setdefault("client_name", f"lookup-test-{secrets.token_hex(4)}")
        return factory.make(limits, **connection)

    yield make
    await factory.aclose()


def hgetall(ns: str) -> dict[str, str]:
    return {"command": "HGETALL", "key": f"{ns}order:{{order_id}}"}


class TestRedisContract(ContractCase):
    FOUND_PARAMS = Bound(params={"order_id": "12345"})
    MISSING_PARAMS = Bound(params={"order_id": "99999"})
    WRITE_QUERY: ClassVar[RawQuery] = {
        "command": "SET",
        "key": "order:{order_id}",
        "args": ["cancelled"],
    }

    @pytest.fixture
    async def connector(
        self, make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
    ) -> RedisConnector:
        return make_connector(port=tarpit.port, pool_size=2)

    @pytest.fixture
    def found_query(self, shop: str) -> RawQuery:
        return hgetall(shop)

    @pytest.fixture
    def slow_query(self, shop: str) -> RawQuery | None:
        return {"command": "GET", "key": f"{shop}{TARPIT}"}


# -- prepare -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("SET", id="set"),
        pytest.param("set", id="set-lower-case"),
        pytest.param("DEL", id="del"),
        pytest.param("HSET", id="hset"),
        pytest.param("GETDEL", id="getdel"),
        pytest.param("GETEX", id="getex"),
        pytest.param("EVAL", id="eval"),
        pytest.param("FCALL_RO", id="fcall-ro"),
        pytest.param("FLUSHALL", id="flushall"),
        pytest.param("CONFIG", id="config"),
        pytest.param("SORT", id="sort-can-store"),
        pytest.param("JSON.SET", id="json-set"),
        pytest.param("KEYS", id="keys-not-listed"),
        pytest.param("GET order:1; DEL", id="smuggled"),
    ],
)
def test_prepare__refuses_anything_but_listed_reads(command: str) -> None:
    with pytest.raises(NotARead, match="not one of the read commands"):
        RedisConnector.prepare({"command": command, "key": "order:{order_id}"})


def test_prepare__the_command_cannot_be_a_parameter() -> None:
    with pytest.raises(ConfigError, match="command cannot be a parameter"):
        RedisConnector.prepare({"command": "{command}", "key": "order:1"})


def test_prepare__lists_the_placeholders_of_key_field_and_args() -> None:
    query = RedisConnector.prepare(
        {"command": "HMGET", "key": "{tenant}:order:{order_id}", "args": ["status", "{field}"]}
    )

    assert query.names == ("tenant", "order_id", "field")
    assert isinstance(query.spec, RedisSpec)
    assert query.spec.command == "HMGET"


def test_prepare__normalises_the_command_name() -> None:
    query = RedisConnector.prepare({"command": " json.get ", "key": "doc:{id}"})

    assert isinstance(query.spec, RedisSpec)
    assert query.spec.command == "JSON.GET"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("HGETALL order:1", "is a mapping", id="text"),
        pytest.param({"command": "GET"}, "key", id="no-key"),
        pytest.param({"command": "GET", "key": ""}, "key", id="empty-key"),
        pytest.param({"command": "GET", "key": "k", "ttl": 5}, "ttl", id="unknown-item"),
        pytest.param({"command": "GET", "key": "k", "args": ["x"]}, "GET key", id="get-with-args"),
        pytest.param({"command": "HGET", "key": "k"}, 'needs "field"', id="hget-no-field"),
        pytest.param({"command": "GET", "key": "k", "field": "f"}, 'no "field"', id="get-field"),
        pytest.param({"command": "HMGET", "key": "k"}, "HMGET key", id="hmget-no-fields"),
        pytest.param({"command": "LRANGE", "key": "k", "args": [0]}, "LRANGE key", id="lrange-1"),
        pytest.param(
            {"command": "LRANGE", "key": "k", "args": ["a", "b"]}, "whole number", id="lrange-text"
        ),
        pytest.param(
            {"command": "ZRANGE", "key": "k", "args": [0, 1, "LIMIT", 0, 5]},
            "only with BYSCORE",
            id="zrange-limit-by-index",
        ),
        pytest.param(
            {"command": "ZRANGE", "key": "k", "args": [0, 1, "{option}"]},
            "cannot be parameters",
            id="zrange-option-parameter",
        ),
        pytest.param(
            {"command": "ZRANGE", "key": "k", "args": [0, 1, "STORE"]},
            "unexpected 'STORE'",
            id="zrange-unknown-option",
        ),
        pytest.param(
            {"command": "ZRANGEBYSCORE", "key": "k", "args": [0, 1, "LIMIT", 0]},
            "offset and a count",
            id="limit-short",
        ),
        pytest.param(
            {"command": "SISMEMBER", "key": "k", "args": [True]}, "true/false", id="bool-arg"
        ),
    ],
)
def test_prepare__refuses_bad_shapes(raw: RawQuery, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisConnector.prepare(raw)


def test_prepare__allows_every_listed_command() -> None:
    assert {
        "GET", "MGET", "HGET", "HGETALL", "HMGET", "HEXISTS", "HLEN", "HKEYS", "HVALS",
        "SMEMBERS", "SISMEMBER", "SCARD", "ZRANGE", "ZREVRANGE", "ZRANGEBYSCORE", "ZSCORE",
        "ZCARD", "LRANGE", "LLEN", "LINDEX", "EXISTS", "TTL", "TYPE", "STRLEN", "JSON.GET",
        "SCAN", "INFO",
    } == READ_COMMANDS  # fmt: skip


# -- reads ---------------------------------------------------------------------------


async def test_run__hash_is_the_row(make_connector: MakeConnector, shop: str) -> None:
    result = await read(make_connector(), hgetall(shop), order_id=12345)  # typed: an int

    row = {
        "status": "shipped",
        "tracking": "TRK-1",
        "estimated_delivery": "2025-09-12",
        "total": "19.50",
        "note": "Café ☕",
    }
    assert result.rows == [row]
    assert result.data == row


@pytest.mark.parametrize(
    ("raw", "rows", "data"),
    [
        pytest.param(
            {"command": "GET", "key": "{ns}greeting"},
            [{"value": "Hello, Ana 👋"}],
            "Hello, Ana 👋",
            id="get",
        ),
        pytest.param(
            {"command": "HGET", "key": "{ns}order:{order_id}", "field": "status"},
            [{"value": "shipped"}],
            "shipped",
            id="hget",
        ),
        pytest.param(
            {"command": "HMGET", "key": "{ns}order:{order_id}", "args": ["status", "nope"]},
            [{"status": "shipped", "nope": None}],
            {"status": "shipped", "nope": None},
            id="hmget-as-a-row",
        ),
        pytest.param(
            {"command": "HEXISTS", "key": "{ns}order:{order_id}", "field": "tracking"},
            [{"value": True}],
            True,
            id="hexists",
        ),
        pytest.param(
            {"command": "HLEN", "key": "{ns}order:{order_id}"}, [{"value": 5}], 5, id="hlen"
        ),
        pytest.param(
            {"command": "HKEYS", "key": "{ns}order:{order_id}"},
            [{"value": k} for k in ("status", "tracking", "estimated_delivery", "total", "note")],
            ["status", "tracking", "estimated_delivery", "total", "note"],
            id="hkeys-in-order",
        ),
        pytest.param(
            {"command": "HVALS", "key": "{ns}order:{order_id}"},
            [{"value": v} for v in ("shipped", "TRK-1", "2025-09-12", "19.50", "Café ☕")],
            ["shipped", "TRK-1", "2025-09-12", "19.50", "Café ☕"],
            id="hvals-in-order",
        ),
        pytest.param(
            {"command": "SMEMBERS", "key": "{ns}tags"},
            [{"value": "express"}, {"value": "fragile"}, {"value": "gift"}],
            ["express", "fragile", "gift"],
            id="smembers-sorted",
        ),
        pytest.param(
            {"command": "SISMEMBER", "key": "{ns}tags", "args": ["{tag}"]},
            [{"value": False}],
            False,
            id="sismember-no-is-an-answer",
        ),
        pytest.param({"command": "SCARD", "key": "{ns}tags"}, [{"value": 3}], 3, id="scard"),
        pytest.param(
            {"command": "ZRANGE", "key": "{ns}recent", "args": [0, -1, "WITHSCORES"]},
            [
                {"value": "12340", "score": 1.0},
                {"value": "12341", "score": 2.0},
                {"value": "12345", "score": 3.5},
                {"value": "12346", "score": "inf"},
            ],
            [
                {"value": "12340", "score": 1.0},
                {"value": "12341", "score": 2.0},
                {"value": "12345", "score": 3.5},
                {"value": "12346", "score": "inf"},
            ],
            id="zrange-withscores",
        ),
        pytest.param(
            {"command": "ZRANGE", "key": "{ns}recent", "args": ["+inf", "(2", "BYSCORE", "REV"]},
            [{"value": "12346"}, {"value": "12345"}],
            ["12346", "12345"],
            id="zrange-byscore-rev",
        ),
        pytest.param(
            {"command": "ZREVRANGE", "key": "{ns}recent", "args": [0, 1]},
            [{"value": "12346"}, {"value": "12345"}],
            ["12346", "12345"],
            id="zrevrange",
        ),
        pytest.param(
            {"command": "ZRANGEBYSCORE", "key": "{ns}recent", "args": [2, 3.5]},
            [{"value": "12341"}, {"value": "12345"}],
            ["12341", "12345"],
            id="zrangebyscore",
        ),
        pytest.param(
            {"command": "ZSCORE", "key": "{ns}recent", "args": ["{order_id}"]},
            [{"value": 3.5}],
            3.5,
            id="zscore-a-number",
        ),
        pytest.param({"command": "ZCARD", "key": "{ns}recent"}, [{"value": 4}], 4, id="zcard"),
        pytest.param(
            {"command": "LRANGE", "key": "{ns}history", "args": [0, 2]},
            [{"value": "event-0"}, {"value": "event-1"}, {"value": "event-2"}],
            ["event-0", "event-1", "event-2"],
            id="lrange",
        ),
        pytest.param(
            {"command": "LRANGE", "key": "{ns}history", "args": [-2, -1]},
            [{"value": "event-48"}, {"value": "event-49"}],
            ["event-48", "event-49"],
            id="lrange-from-the-end",
        ),
        pytest.param({"command": "LLEN", "key": "{ns}history"}, [{"value": 50}], 50, id="llen"),
        pytest.param(
            {"command": "LINDEX", "key": "{ns}history", "args": [-1]},
            [{"value": "event-49"}],
            "event-49",
            id="lindex",
        ),
        pytest.param(
            {"command": "MGET", "key": "{ns}greeting", "args": ["{ns}nope"]},
            [{"value": "Hello, Ana 👋"}, {"value": None}],
            ["Hello, Ana 👋", None],
            id="mget",
        ),
        pytest.param(
            {"command": "EXISTS", "key": "{ns}order:{order_id}", "args": ["{ns}nope"]},
            [{"value": 1}],
            1,
            id="exists-counts",
        ),
        pytest.param({"command": "TTL", "key": "{ns}greeting"}, [{"value": -1}], -1, id="ttl"),
        pytest.param(
            {"command": "TYPE", "key": "{ns}order:{order_id}"},
            [{"value": "hash"}],
            "hash",
            id="type",
        ),
        pytest.param(
            {"command": "STRLEN", "key": "{ns}greeting"}, [{"value": 15}], 15, id="strlen-bytes"
        ),
    ],
)
async def test_run__results_reach_templates_as_plain_values(
    make_connector: MakeConnector, shop: str, raw: dict[str, Any], rows: list[Any], data: Any
) -> None:
    result = await read(make_connector(), raw, ns=shop, order_id="12345", tag="clearance")

    assert result.rows == rows
    assert result.data == data
    assert result.found


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"command": "GET", "key": "{ns}nope"}, id="get-nil"),
        pytest.param({"command": "HGETALL", "key": "{ns}nope"}, id="hgetall-empty"),
        pytest.param(
            {"command": "HGET", "key": "{ns}order:12345", "field": "nope"}, id="hget-no-field"
        ),
        pytest.param(
            {"command": "HMGET", "key": "{ns}nope", "args": ["status", "tracking"]},
            id="hmget-all-nil",
        ),
        pytest.param({"command": "SMEMBERS", "key": "{ns}nope"}, id="smembers-empty"),
        pytest.param({"command": "HKEYS", "key": "{ns}nope"}, id="hkeys-empty"),
        pytest.param({"command": "LRANGE", "key": "{ns}nope", "args": [0, -1]}, id="lrange-empty"),
        pytest.param(
            {"command": "LRANGE", "key": "{ns}history", "args": [0, -60]}, id="lrange-past-start"
        ),
        pytest.param({"command": "ZRANGE", "key": "{ns}nope", "args": [0, -1]}, id="zrange-empty"),
        pytest.param({"command": "ZSCORE", "key": "{ns}recent", "args": ["nope"]}, id="zscore-nil"),
        pytest.param({"command": "LINDEX", "key": "{ns}history", "args": [99]}, id="lindex-nil"),
        pytest.param(
            {"command": "MGET", "key": "{ns}nope", "args": ["{ns}nope2"]}, id="mget-all-nil"
        ),
    ],
)
async def test_run__nil_and_empty_are_not_found(
    make_connector: MakeConnector, shop: str, raw: dict[str, Any]
) -> None:
    result = await read(make_connector(), raw, ns=shop)

    assert not result.found
    assert result.rows == []
    assert result.data is None


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param("12345 FLUSHALL", id="second-command"),
        pytest.param("*", id="glob"),
        pytest.param("12345\r\nDEL canary\r\n", id="crlf-command"),
        pytest.param("*2\r\n$3\r\nDEL\r\n$6\r\ncanary\r\n", id="raw-resp"),
        pytest.param("{order_id}", id="placeholder-text"),
        pytest.param("../12345", id="path-like"),
    ],
)
async def test_run__injection_text_is_just_one_key(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, shop: str, evil: str
) -> None:
    before = await key_count(admin, shop)

    result = await read(make_connector(), hgetall(shop), order_id=evil)

    assert not result.found
    assert await admin.get(f"{shop}canary") == "alive"
    assert await key_count(admin, shop) == before


async def test_run__a_parameter_in_args_stays_one_argument(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port)
    raw = {"command": "HMGET", "key": f"{shop}order:12345", "args": ["status", "{field}"]}

    result = await read(connector, raw, field="tracking note")

    assert result.rows == [{"status": "shipped", "tracking note": None}]
    assert tarpit.commands() == [["HMGET", f"{shop}order:12345", "status", "tracking note"]]


@pytest.mark.parametrize(
    ("raw", "max_rows", "sent", "count"),
    [
        pytest.param(
            {"command": "LRANGE", "key": "{ns}history", "args": [0, -1]},
            5,
            [["LRANGE", "{ns}history", "0", "4"]],
            5,
            id="lrange-all",
        ),
        pytest.param(
            {"command": "LRANGE", "key": "{ns}history", "args": [10, 30]},
            5,
            [["LRANGE", "{ns}history", "10", "14"]],
            5,
            id="lrange-window",
        ),
        pytest.param(
            {"command": "LRANGE", "key": "{ns}history", "args": [-10, -1]},
            4,
            [["LLEN", "{ns}history"], ["LRANGE", "{ns}history", "40", "43"]],
            4,
            id="lrange-from-the-end-asks-the-length",
        ),
        pytest.param(
            {"command": "ZRANGE", "key": "{ns}recent", "args": [0, -1, "REV", "WITHSCORES"]},
            2,
            [["ZRANGE", "{ns}recent", "0", "1", "REV", "WITHSCORES"]],
            2,
            id="zrange-rev",
        ),
        pytest.param(
            {"command": "ZRANGEBYSCORE", "key": "{ns}recent", "args": ["-inf", "+inf"]},
            3,
            [["ZRANGEBYSCORE", "{ns}recent", "-inf", "+inf", "LIMIT", "0", "3"]],
            3,
            id="zrangebyscore-gets-a-limit",
        ),
        pytest.param(
            {
                "command": "ZRANGE",
                "key": "{ns}recent",
                "args": ["-inf", "+inf", "BYSCORE", "LIMIT", 1, 100],
            },
            2,
            [["ZRANGE", "{ns}recent", "-inf", "+inf", "BYSCORE", "LIMIT", "1", "2"]],
            2,
            id="zrange-limit-narrowed",
        ),
        pytest.param(
            {"command": "SMEMBERS", "key": "{ns}tags"},
            2,
            [["SRANDMEMBER", "{ns}tags", "2"]],
            2,
            id="smembers",
        ),
        pytest.param(
            {"command": "HVALS", "key": "{ns}order:12345"},
            2,
            [["HRANDFIELD", "{ns}order:12345", "2", "WITHVALUES"]],
            2,
            id="hvals",
        ),
        pytest.param(
            {"command": "MGET", "key": "{ns}greeting", "args": ["{ns}canary", "{ns}nope"]},
            2,
            [["MGET", "{ns}greeting", "{ns}canary"]],
            2,
            id="mget-first-keys",
        ),
    ],
)
async def test_run__asks_the_server_for_at_most_max_rows(
    make_connector: MakeConnector,
    tarpit: TarpitProxy,
    shop: str,
    raw: dict[str, Any],
    max_rows: int,
    sent: list[list[str]],
    count: int,
) -> None:
    connector = make_connector(port=tarpit.port, limits=Limits(max_rows=max_rows))

    result = await read(connector, raw, ns=shop)

    assert len(result.rows) == count
    assert tarpit.commands() == [[w.replace("{ns}", shop) for w in line] for line in sent]


async def test_run__a_value_that_is_not_utf8_is_a_source_error(
    make_connector: MakeConnector, shop: str
) -> None:
    connector = make_connector()

    with pytest.raises(SourceError, match="not UTF-8 text"):
        await read(connector, {"command": "GET", "key": f"{shop}binary"})

    assert (await read(connector, hgetall(shop), order_id="12345")).found


async def test_run__a_wrong_type_is_a_source_error_without_values(
    make_connector: MakeConnector, shop: str
) -> None:
    with pytest.raises(SourceError, match="WRONGTYPE") as caught:
        await read(make_connector(), {"command": "GET", "key": "{ns}order:{order_id}"}, ns=shop,
                   order_id="12345")  # fmt: skip

    assert "12345" not in str(caught.value)


async def test_run__json_get_without_the_module_is_a_clear_source_error(
    make_connector: MakeConnector, shop: str
) -> None:
    with pytest.raises(SourceError, match="no RedisJSON module") as caught:
        await read(make_connector(), {"command": "JSON.GET", "key": "doc:{id}"}, id="s3cr3t-id")

    assert "s3cr3t-id" not in str(caught.value)


@pytest.mark.parametrize(
    ("reply", "rows", "data"),
    [
        pytest.param('{"status": "shipped"}', [{"status": "shipped"}], {"status": "shipped"},
                     id="object-is-the-row"),
        pytest.param('[{"sku": "A"}, {"sku": "B"}]', [{"sku": "A"}, {"sku": "B"}],
                     [{"sku": "A"}, {"sku": "B"}], id="objects-are-rows"),
        pytest.param('["shipped"]', [{"value": "shipped"}], ["shipped"], id="jsonpath-match"),
        pytest.param("12.5", [{"value": 12.5}], 12.5, id="number"),
        pytest.param("null", [], None, id="null-not-found"),
        pytest.param("[]", [], None, id="no-match-not-found"),
        pytest.param("{}", [], None, id="empty-object-not-found"),
    ],
)  # fmt: skip
def test_json_get__replies_become_rows(reply: str, rows: list[Any], data: Any) -> None:
    # No RedisJSON module on this server: the reply shaping is checked on its own.
    result = json_result(reply, cap=10)

    assert (result.rows, result.data) == (rows, data)


async def test_run__a_write_that_skips_prepare_is_still_refused(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, shop: str
) -> None:
    spec = RedisSpec("SET", f"{shop}canary", values=("dead",))

    with pytest.raises(NotARead):
        await make_connector().run(PreparedQuery(spec=spec), Bound(), timeout_s=5)

    assert await admin.get(f"{shop}canary") == "alive"


# -- credentials -------------------------------------------------------------------


@pytest.fixture
async def reader_user(admin: redis.asyncio.Redis, ns: str) -> AsyncIterator[tuple[str, str]]:
    """An ACL user that may only read this test's keys: ``(name, password)``."""
    name, password = f"lookup_{secrets.token_hex(4)}", secrets.token_hex(12)
    await admin.execute_command("ACL", "SETUSER", name, "on", f">{password}", f"~{ns}*", "+@read")
    yield name, password
    await admin.execute_command("ACL", "DELUSER", name)


async def test_auth__a_read_only_acl_user_reads_and_the_server_refuses_its_writes(
    make_connector: MakeConnector,
    admin: redis.asyncio.Redis,
    shop: str,
    reader_user: tuple[str, str],
) -> None:
    name, password = reader_user
    connector = make_connector(username=name, password=password, client_name=None)

    await connector.health_check()  # PING is not a read; the answer proves the session
    assert (await read(connector, hgetall(shop), order_id="12345")).found
    # A write that got past prepare, sent through the connector's own pool:
    pool = connector._ensure_pool()
    async with pool.borrow(5, 5) as borrowed:
        await borrowed.conn.send_command("SET", f"{shop}canary", "dead")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await borrowed.conn.read_response()

    assert await admin.get(f"{shop}canary") == "alive"
    assert connector.pool_stats() == PoolStats(idle=1, in_use=0)  # still in step, kept


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({"password": "hunter2-pw"}, id="password-the-server-does-not-want"),
        pytest.param({"username": "nobody", "password": "hunter2-pw"}, id="unknown-user"),
        pytest.param(
            {"url": f"redis://:hunter2-pw@{HOST}:{PORT}/0", "client_name": None}, id="url"
        ),
    ],
)
async def test_auth__bad_credentials_name_the_source_not_the_secret(
    make_connector: MakeConnector, shop: str, connection: dict[str, Any]
) -> None:
    connector = make_connector(**connection)

    with pytest.raises(SourceAuthError, match=r"source 'cache': authentication failed") as caught:
        await read(connector, hgetall(shop), order_id="12345")

    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(caught.value)
    assert connector.pool_stats() == PoolStats(idle=0, in_use=0)


async def test_auth__a_wrong_password_for_an_acl_user(
    make_connector: MakeConnector, shop: str, reader_user: tuple[str, str]
) -> None:
    name, password = reader_user
    connector = make_connector(username=name, password="not-" + password, client_name=None)

    with pytest.raises(SourceAuthError, match="authentication failed") as caught:
        await connector.health_check()

    assert password not in str(caught.value)
    assert password not in repr(caught.value)


# -- unreachable, deadlines, cancellation ------------------------------------------


async def test_run__closed_port_is_unavailable_at_once(make_connector: MakeConnector) -> None:
    port = closed_port()
    connector = make_connector(port=port)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match=rf"cannot reach Redis at 127\.0\.0\.1:{port}"):
        await read(connector, hgetall("x:"), order_id="1", timeout_s=30)

    assert time.monotonic() - started < 5  # not the 30 s deadline


async def test_health_check__closed_port_is_unavailable(make_connector: MakeConnector) -> None:
    with pytest.raises(SourceUnavailable):
        await make_connector(port=closed_port()).health_check()


async def test_run__a_server_that_accepts_and_never_answers_times_out(
    make_connector: MakeConnector,
) -> None:
    handlers: list[asyncio.Task[Any]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.read()  # no answer to anything, until the client hangs up
        finally:
            writer.close()

    server = await asyncio.start_server(silent, HOST, 0)
    try:
        connector = make_connector(port=server.sockets[0].getsockname()[1])
        started = time.monotonic()
        with pytest.raises(SourceTimeout):
            await read(connector, hgetall("x:"), order_id="1", timeout_s=0.4)
        assert time.monotonic() - started < 0.4 + 4  # the server never answers
        assert connector.pool_stats() == PoolStats(idle=0, in_use=0)
        async with asyncio.timeout(2):  # the connector hung up: the handler saw EOF
            await asyncio.gather(*handlers)
    finally:
        server.close()
        await server.wait_closed()


async def test_run__a_hung_server_gives_source_timeout_and_the_socket_is_closed(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port, pool_size=1)
    started = time.monotonic()

    with pytest.raises(SourceTimeout, match=r"did not answer GET within 0\.3 s"):
        await read(connector, {"command": "GET", "key": f"{shop}{TARPIT}"}, timeout_s=0.3)

    assert time.monotonic() - started < 0.3 + 4  # the tarpit never answers
    await tarpit.wait_for(lambda: tarpit.hung == 0)  # the connector hung up on it
    assert connector.pool_stats() == PoolStats(idle=0, in_use=0)
    async with asyncio.timeout(1):  # the only slot is free again
        assert (await read(connector, hgetall(shop), order_id="12345")).found


async def test_run__cancelled_read_closes_its_connection(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port, pool_size=2)
    assert (await read(connector, hgetall(shop), order_id="12345")).found
    task = asyncio.create_task(read(connector, {"command": "GET", "key": f"{shop}{TARPIT}"}))
    await tarpit.wait_for(lambda: tarpit.hung == 1)
    assert connector.pool_stats() == PoolStats(idle=0, in_use=1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert connector.pool_stats() == PoolStats(idle=0, in_use=0)
    await tarpit.wait_for(lambda: tarpit.hung == 0 and tarpit.open == 0)


async def test_run__waiting_for_a_busy_pool_counts_against_timeout_s(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port, pool_size=1)
    hog = asyncio.create_task(
        read(connector, {"command": "GET", "key": f"{shop}{TARPIT}"}, timeout_s=60)
    )
    await tarpit.wait_for(lambda: tarpit.hung == 1)

    with pytest.raises(SourceTimeout):
        await read(connector, hgetall(shop), order_id="12345", timeout_s=0.3)

    hog.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hog
    async with asyncio.timeout(1):
        assert (await read(connector, hgetall(shop), order_id="12345")).found


async def test_run__never_more_connections_than_pool_size(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port, pool_size=3)

    results = await asyncio.gather(
        *(read(connector, hgetall(shop), order_id="12345") for _ in range(30))
    )

    assert all(result.found for result in results)
    assert tarpit.most_open == 3
    assert connector.pool_stats() == PoolStats(idle=3, in_use=0)


async def test_close__ends_reads_in_flight_and_waiters(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port, pool_size=1)
    running = asyncio.create_task(
        read(connector, {"command": "GET", "key": f"{shop}{TARPIT}"}, timeout_s=60)
    )
    await tarpit.wait_for(lambda: tarpit.hung == 1)
    waiting = asyncio.create_task(read(connector, hgetall(shop), order_id="12345"))
    await asyncio.sleep(0.05)

    async with asyncio.timeout(2):
        await connector.close()
        with pytest.raises(SourceUnavailable, match="closed"):
            await running
        with pytest.raises(SourceUnavailable, match="closed"):
            await waiting

    await tarpit.wait_for(lambda: tarpit.open == 0)


async def test_run__after_close_opens_again(make_connector: MakeConnector, shop: str) -> None:
    connector = make_connector()
    assert (await read(connector, hgetall(shop), order_id="12345")).found
    await connector.close()

    assert (await read(connector, hgetall(shop), order_id="12345")).found


# -- dead connections, restarts --------------------------------------------------------


async def test_run__pooled_connections_the_server_closed_are_replaced(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, shop: str
) -> None:
    name = f"lookup-test-{secrets.token_hex(4)}"
    connector = make_connector(client_name=name, pool_size=3)
    await asyncio.gather(*(read(connector, hgetall(shop), order_id="12345") for _ in range(3)))
    assert connector.pool_stats() == PoolStats(idle=3, in_use=0)

    for client in await admin.client_list():
        if client.get("name") == name:
            await admin.client_kill_filter(_id=client["id"])

    for _ in range(5):  # none fails
        assert (await read(connector, hgetall(shop), order_id="12345")).found


async def test_run__a_dead_pooled_connection_is_retried_once_on_a_fresh_one(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, shop: str
) -> None:
    name = f"lookup-test-{secrets.token_hex(4)}"
    connector = make_connector(client_name=name, pool_size=2)
    await asyncio.gather(*(read(connector, hgetall(shop), order_id="12345") for _ in range(2)))
    for client in await admin.client_list():
        if client.get("name") == name:
            await admin.client_kill_filter(_id=client["id"])

    # As if the server went away just after the check on borrowing: the send finds out.
    with mock.patch.object(redis.asyncio.Connection, "can_read", return_value=False):
        assert (await read(connector, hgetall(shop), order_id="12345")).found

    assert connector.pool_stats() == PoolStats(idle=1, in_use=0)


# -- a server of the test's own: restarted, paused, password-protected -------------


class OwnRedis:
    """A ``redis-server`` this test starts on a free port, keeping nothing on disk.

    Restarting, pausing or blocking it disturbs no one else using the shared
    server; it is ended by its own process id.
    """

    def __init__(self, *options: str) -> None:
        self.port = closed_port()
        self.options = options
        self.password = (
            options[options.index("--requirepass") + 1] if "--requirepass" in options else None
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary to start a server of the test's own")
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            *("--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"),
            *("--daemonize", "no", "--logfile", ""),
            *self.options,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_for_redis(self.port, self.password)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
        if proc is not None:
            await proc.wait()

    def client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            decode_responses=True,
            protocol=2,
            socket_timeout=60,  # DEBUG SLEEP's own answer comes after PAUSE_MS
        )


async def wait_for_redis(port: int, password: str | None = None, deadline_s: float = 30) -> None:
    """Until a fresh connection gets PONG (a server just started may refuse at first)."""
    async with asyncio.timeout(deadline_s):
        while True:
            client = redis.asyncio.Redis(
                host=HOST, port=port, password=password, socket_connect_timeout=1
            )
            try:
                if await client.ping():
                    return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                await asyncio.sleep(0.1)
            finally:
                await client.aclose()


@pytest.fixture
async def own_redis() -> AsyncIterator[OwnRedis]:
    server = OwnRedis("--enable-debug-command", "yes")
    await server.start()
    yield server
    await server.stop()


async def fill_own(server: OwnRedis) -> None:
    client = server.client()
    try:
        await fill(client, "")
    finally:
        await client.aclose()


async def reads_until_failure(connector: RedisConnector, count: int) -> int:
    """How many of ``count`` reads, one after another, failed."""
    failures = 0
    for _ in range(count):
        try:
            if not (await read(connector, hgetall(""), order_id="12345")).found:
                failures += 1
        except SourceError:
            failures += 1
    return failures


@pytest.mark.slow
async def test_run__recovers_after_a_server_restart(
    own_redis: OwnRedis, make_connector: MakeConnector
) -> None:
    await fill_own(own_redis)
    connector = make_connector(port=own_redis.port, pool_size=3)
    await asyncio.gather(*(read(connector, hgetall(""), order_id="12345") for _ in range(3)))
    assert connector.pool_stats() == PoolStats(idle=3, in_use=0)

    started = time.monotonic()
    await own_redis.stop()
    await own_redis.start()
    restarted_s = time.monotonic() - started
    await fill_own(own_redis)  # it keeps nothing on disk

    assert await reads_until_failure(connector, 10) == 0
    results = await asyncio.gather(
        *(read(connector, hgetall(""), order_id="12345") for _ in range(10))
    )
    assert all(result.found for result in results)
    assert connector.pool_stats().in_use == 0
    print(f"own redis-server restarted and answered in {restarted_s:.2f} s")


@pytest.mark.slow
async def test_run__while_the_server_is_down_reads_fail_fast_then_recover(
    own_redis: OwnRedis, make_connector: MakeConnector
) -> None:
    await fill_own(own_redis)
    connector = make_connector(port=own_redis.port, pool_size=2)
    assert (await read(connector, hgetall(""), order_id="12345")).found

    await own_redis.stop()
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="cannot reach Redis"):
        await read(connector, hgetall(""), order_id="12345", timeout_s=30)
    assert time.monotonic() - started < 5  # not the 30 s deadline

    await own_redis.start()
    await fill_own(own_redis)
    assert await reads_until_failure(connector, 5) == 0


async def _pause(client: redis.asyncio.Redis) -> asyncio.Task[Any]:
    await client.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    return asyncio.create_task(asyncio.sleep(0))  # nothing to wait for: it ends by itself


async def _debug_sleep(client: redis.asyncio.Redis) -> asyncio.Task[Any]:
    # DEBUG SLEEP blocks the whole (single-threaded) server, this connection's reply too.
    task = asyncio.create_task(client.execute_command("DEBUG", "SLEEP", PAUSE_MS / 1000))
    await asyncio.sleep(0.1)
    return task


@pytest.mark.slow
@pytest.mark.parametrize(
    "hang",
    [
        pytest.param(_pause, id="client-pause-all"),
        pytest.param(_debug_sleep, id="debug-sleep"),
    ],
)
async def test_run__deadline_on_a_stalled_server_ends_the_session(
    own_redis: OwnRedis,
    make_connector: MakeConnector,
    hang: Callable[[redis.asyncio.Redis], Any],
) -> None:
    await fill_own(own_redis)
    name = f"lookup-test-{secrets.token_hex(4)}"
    connector = make_connector(port=own_redis.port, client_name=name)
    assert (await read(connector, hgetall(""), order_id="12345")).found
    admin = own_redis.client()
    try:
        assert await sessions(admin, name) == 1

        stalled = await hang(admin)
        started = time.monotonic()
        with pytest.raises(SourceTimeout, match=r"did not answer HGETALL within 0\.5 s"):
            await read(connector, hgetall(""), order_id="12345", timeout_s=0.5)
        elapsed = time.monotonic() - started
        await stalled

        assert 0.4 < elapsed < 0.5 + 4, f"the read ended after {elapsed:.2f} s"  # not at 8 s
        assert connector.pool_stats() == PoolStats(idle=0, in_use=0)
        # Answered once the server moves again: by then the session that carried
        # the timed-out HGETALL is gone, and its command with it.
        assert await sessions(admin, name) == 0
        assert (await read(connector, hgetall(""), order_id="12345")).found
        assert await sessions(admin, name) == 1
    finally:
        await admin.aclose()


@pytest.mark.slow
@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({"password": "hunter2-wrong"}, id="wrong-password"),
        pytest.param({"username": "default", "password": "hunter2-wrong"}, id="wrong-user-pair"),
        pytest.param({}, id="no-password"),
    ],
)
async def test_auth__a_password_protected_server_refuses_bad_credentials(
    make_connector: MakeConnector, connection: dict[str, Any]
) -> None:
    server = OwnRedis("--requirepass", "hunter2-right")
    await server.start()
    try:
        connector = make_connector(port=server.port, **connection)
        with pytest.raises(SourceAuthError, match="authentication failed") as caught:
            await read(connector, hgetall(""), order_id="12345")
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in repr(caught.value)

        right = make_connector(port=server.port, password="hunter2-right")
        assert not (await read(right, hgetall(""), order_id="12345")).found
    finally:
        await server.stop()


@pytest.mark.slow
async def test_run__recovers_after_service_redis_server_restart(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, shop: str
) -> None:
    """The shared server, restarted the way the issue says (it pauses every user of it)."""
    connector = make_connector(pool_size=3)
    await asyncio.gather(*(read(connector, hgetall(shop), order_id="12345") for _ in range(3)))
    run_id = (await admin.info("server"))["run_id"]

    done = await asyncio.to_thread(
        subprocess.run,
        ["service", "redis-server", "restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    await wait_for_redis(PORT)
    if (await admin.info("server"))["run_id"] == run_id:
        pytest.skip(
            "`service redis-server restart` left the running server alone (same run_id): "
            "it was not started by the init script; the own-server restart test covers this"
        )
    assert done.returncode == 0, done.stderr
    await fill(admin, shop)  # this Redis keeps nothing on disk

    failures = 0
    for _ in range(10):
        try:
            assert (await read(connector, hgetall(shop), order_id="12345")).found
        except SourceError:
            failures += 1
    assert failures == 0


# -- the worker around it ------------------------------------------------------------


async def test_lookup__hash_and_string_render_through_the_pipeline(
    admin: redis.asyncio.Redis, shop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", f"redis://{HOST}:{PORT}/0")
    tenant = load_tenant(
        document={
            "tenant_id": "redis_shop",
            "data_sources": [
                {
                    "id": "cache",
                    "type": "redis",
                    "connection": {"url": "${env:TEST_REDIS_URL}"},
                    "queries": {
                        "order_status": {"command": "HGETALL", "key": f"{shop}order:{{order_id}}"},
                        "greeting": {"command": "GET", "key": f"{shop}greeting"},
                    },
                }
            ],
            "lookups": {
                "order_status": {
                    "source": "cache",
                    "params": {"order_id": {"pattern": "[0-9]{1,12}"}},
                    "template": "order_status.j2",
                    "not_found": "No order #{{ params.order_id }}.",
                },
                "greeting": {"source": "cache", "template": "{{ data }} ({{ row.value }})"},
            },
        },
        templates_dir=REPO / "templates",
    )

    async with open_worker(tenant, with_queue=False) as worker:
        shipped = await worker.pipeline.lookup("order_status", {"order_id": "12345"})
        missing = await worker.pipeline.lookup("order_status", {"order_id": "99999"})
        greeting = await worker.pipeline.lookup("greeting", {})

    assert shipped.outcome == "ok", shipped.message
    assert "has been shipped" in shipped.message
    assert "Tracking: TRK-1" in shipped.message
    assert "September 12" in shipped.message
    assert (missing.outcome, missing.message) == ("not_found", "No order #99999.")
    assert greeting.message == "Hello, Ana 👋 (Hello, Ana 👋)"


def test_example_config__loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://lookup:example-secret@cache.internal:6379/0")

    tenant = load_tenant(REPO / "config" / "examples" / "redis.yaml")

    assert {s.type_name for s in tenant.sources.values()} == {"redis"}
    assert tenant.lookups


# -- settings and discovery ----------------------------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"url": "redis://h", "host": "h"}, id="url-and-host"),
        pytest.param({"url": "redis://h", "password": "x"}, id="url-and-password"),
        pytest.param({"url": "http://:hunter2@h"}, id="not-redis-scheme"),
        pytest.param({"url": "redis://:hunter2@h:99999"}, id="bad-port"),
        pytest.param({"url": "redis://:hunter2@h/zero"}, id="bad-db"),
        pytest.param({"url": "redis://:hunter2@h/0?ssl_cert_reqs=none"}, id="query-string"),
        pytest.param({"host": "h", "pool_size": 0}, id="pool-size-zero"),
        pytest.param({"host": "h", "port": 0}, id="port-zero"),
        pytest.param({"host": "h", "client_name": "has space"}, id="client-name-space"),
        pytest.param({"host": "h", "dsn": "redis://h"}, id="unknown-key"),
    ],
)
def test_settings__refuse_bad_connections(connection: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        RedisSettings.model_validate(connection)

    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        pytest.param("redis://cache:6380/2", ("cache", 6380, 2, None, None, False), id="plain"),
        pytest.param(
            "rediss://lookup:p%40ss@cache/0", ("cache", 6379, 0, "lookup", "p@ss", True), id="tls"
        ),
        pytest.param("redis://:only-pw@cache", ("cache", 6379, 0, None, "only-pw", False),
                     id="password-only"),
    ],
)  # fmt: skip
def test_settings__url_gives_the_target(tmp_path: Path, url: str, target: tuple[Any, ...]) -> None:
    connector = RedisConnector("c", RedisSettings(url=url), base_dir=tmp_path)

    got = connector._target()

    assert (got.host, got.port, got.db, got.username, got.password, got.tls) == target
    assert "only-pw" not in repr(RedisSettings(url=url))


def test_registry__loads_the_redis_entry_point() -> None:
    assert load("redis") is RedisConnector


# -- SCAN and INFO -------------------------------------------------------------------


def scan(ns: str, match: str = "order:{order_id}", **extra: Any) -> dict[str, Any]:
    return {"command": "SCAN", "match": f"{ns}{match}", **extra}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"command": "SCAN"}, "match", id="no-match"),
        pytest.param({"command": "SCAN", "match": "k:*", "key": "k"}, "key", id="scan-key"),
        pytest.param({"command": "SCAN", "match": "k:*", "count": 0}, "count", id="count-zero"),
        pytest.param({"command": "SCAN", "match": "k:*", "type": "module"}, "type", id="bad-type"),
        pytest.param({"command": "SCAN", "match": "k:*", "max_keys": 0}, "max_keys", id="max-0"),
        pytest.param({"command": "INFO", "section": "{section}"}, "section", id="info-param"),
        pytest.param({"command": "INFO", "section": "a b"}, "section", id="info-space"),
        pytest.param({"command": "INFO", "key": "k"}, "key", id="info-key"),
        pytest.param({"command": "INFO", "rows": "all"}, "rows", id="info-rows"),
    ],
)
def test_prepare__refuses_bad_scan_and_info_shapes(raw: RawQuery, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisConnector.prepare(raw)


def test_prepare__scan_names_the_placeholders_of_its_pattern() -> None:
    query = RedisConnector.prepare({"command": "scan", "match": "{shop}:order:{order_id}:*"})

    assert query.names == ("shop", "order_id")
    assert isinstance(query.spec, ScanSpec)


async def test_scan__keys_matching_the_pattern_sorted_without_keys_command(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port)

    result = await read(connector, scan(shop, "order:*", count=2))

    assert result.rows == [{"key": f"{shop}order:12345"}, {"key": f"{shop}order:12346"}]
    sent = tarpit.commands()
    assert sent
    assert all(line[0] == "SCAN" for line in sent)
    assert all(line[2:6] == ["MATCH", f"{shop}order:*", "COUNT", "2"] for line in sent)


async def test_scan__values_by_type_in_two_pipelined_round_trips(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port, limits=Limits(max_rows=3))

    result = await read(connector, scan(shop, "{which}", values=True), which="*")
    by_key = {row["key"].removeprefix(shop): row for row in result.rows}

    # "*" as a parameter is a literal star: no key is called that
    assert by_key == {}
    result = await read(connector, scan(shop, "[ghr]*", values=True, count=1000))
    by_key = {row["key"].removeprefix(shop): row for row in result.rows}
    assert by_key == {
        "greeting": {"key": f"{shop}greeting", "type": "string", "value": "Hello, Ana 👋"},
        "history": {
            "key": f"{shop}history",
            "type": "list",
            "value": ["event-0", "event-1", "event-2"],  # at most max_rows items
        },
        "recent": {"key": f"{shop}recent", "type": "zset", "value": ["12340", "12341", "12345"]},
    }
    assert [line[0] for line in tarpit.commands() if line[0] != "SCAN"] == [
        *["TYPE"] * 3,
        "GET",
        "LRANGE",
        "ZRANGE",
    ]


async def test_scan__hash_and_set_values(make_connector: MakeConnector, shop: str) -> None:
    result = await read(make_connector(), scan(shop, "{what}", values=True), what="tags")
    hashes = await read(make_connector(), scan(shop, "order:*", values=True, type="hash"))

    assert result.rows == [
        {"key": f"{shop}tags", "type": "set", "value": ["express", "fragile", "gift"]}
    ]
    assert hashes.rows[1] == {"key": f"{shop}order:12346", "type": "hash",
                              "value": {"status": "processing"}}  # fmt: skip


async def test_scan__stops_at_max_keys_and_max_rows(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, ns: str
) -> None:
    await admin.mset({f"{ns}item:{i:03}": str(i) for i in range(300)})
    connector = make_connector(limits=Limits(max_rows=50))

    capped = await read(connector, scan(ns, "item:*", count=1000))
    fewer = await read(connector, scan(ns, "item:*", count=1000, max_keys=5))

    assert len(capped.rows) == 50
    assert len(fewer.rows) == 5
    assert all(row["key"].startswith(f"{ns}item:") for row in capped.rows)


async def test_scan__nothing_matching_is_not_found(
    make_connector: MakeConnector, shop: str
) -> None:
    result = await read(make_connector(), scan(shop), order_id="99999")

    assert not result.found


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param("*", id="star"),
        pytest.param("1234?", id="question-mark"),
        pytest.param("1234[0-9]", id="class"),
        pytest.param("[", id="open-bracket"),
        pytest.param("1234\\5", id="backslash"),
        pytest.param("12345]", id="close-bracket"),
    ],
)
async def test_scan__a_parameter_cannot_widen_the_pattern(
    make_connector: MakeConnector, shop: str, evil: str
) -> None:
    result = await read(make_connector(), scan(shop), order_id=evil)

    assert not result.found


async def test_scan__a_parameter_with_glob_characters_matches_its_own_key(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, ns: str
) -> None:
    odd = "a*b?c[d]e\\f"
    await admin.set(f"{ns}order:{odd}", "odd")
    await admin.set(f"{ns}order:aXbYcdeZf", "lookalike")

    result = await read(make_connector(), scan(ns, "order:{id}", values=True), id=odd)

    assert result.rows == [{"key": f"{ns}order:{odd}", "type": "string", "value": "odd"}]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.text(alphabet="ab*?[]\\^-!", min_size=1, max_size=8))
def test_glob_escape__any_text_matches_only_itself_on_the_server(value: str) -> None:
    client = redis.Redis(host=HOST, port=PORT, decode_responses=True, protocol=2)
    prefix = f"lookup-test:{secrets.token_hex(4)}:glob:"
    try:
        client.set(prefix + value, "1")
        client.set(prefix + "ab", "1")
        client.set(prefix + "a", "1")
        found = set(client.scan_iter(match=prefix + glob_escape(value), count=1000))
        assert found == {prefix + value}
    finally:
        client.delete(prefix + value, prefix + "ab", prefix + "a")
        client.close()


async def test_scan__a_walk_past_the_deadline_is_a_timeout_naming_its_progress(
    make_connector: MakeConnector, tarpit: TarpitProxy, shop: str
) -> None:
    connector = make_connector(port=tarpit.port)

    with pytest.raises(SourceTimeout, match=r"SCAN had not finished within 0\.5 s \(0 calls"):
        await read(connector, scan(shop, f"{TARPIT}:*"), timeout_s=0.5)


async def test_scan__values_past_max_bytes_are_a_source_error(
    make_connector: MakeConnector, admin: redis.asyncio.Redis, ns: str
) -> None:
    await admin.mset({f"{ns}big:{i}": "x" * 400 for i in range(5)})
    connector = make_connector(limits=Limits(max_rows=100, max_bytes=1000))

    with pytest.raises(SourceError, match="larger than 1000 bytes"):
        await read(connector, scan(ns, "big:*", values=True))
    assert len((await read(connector, scan(ns, "big:*"))).rows) == 5  # the keys alone fit


async def test_info__one_row_of_a_sections_fields(make_connector: MakeConnector) -> None:
    result = await read(make_connector(), {"command": "INFO", "section": "server"})

    assert len(result.rows) == 1
    assert result.rows[0]["redis_version"].count(".") == 2
    assert result.data == result.rows[0]
    assert "used_memory" not in result.rows[0]


async def test_info__a_row_per_field(make_connector: MakeConnector) -> None:
    result = await read(
        make_connector(limits=Limits(max_rows=500)), {"command": "INFO", "rows": "fields"}
    )

    sections = {row["section"] for row in result.rows}
    assert {"server", "clients", "memory"} <= sections
    assert {"section": "server", "field": "tcp_port", "value": str(PORT)} in result.rows


async def test_info__renders_through_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", f"redis://{HOST}:{PORT}/0")
    tenant = load_tenant(
        document={
            "tenant_id": "redis_info",
            "data_sources": [
                {
                    "id": "cache",
                    "type": "redis",
                    "connection": {"url": "${env:TEST_REDIS_URL}"},
                    "queries": {"version": {"command": "INFO", "section": "server"}},
                }
            ],
            "lookups": {
                "version": {"source": "cache", "template": "Redis {{ row.redis_version }}"},
            },
        },
        templates_dir=REPO / "templates",
    )

    async with open_worker(tenant, with_queue=False) as worker:
        answer = await worker.pipeline.lookup("version", {})

    assert answer.outcome == "ok", answer.message
    assert re.fullmatch(r"Redis [0-9]+\.[0-9]+\.[0-9]+", answer.message)
