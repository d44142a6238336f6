"""Shared fixtures: a queue store on a fresh SQLite file, and a local engine serving it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.local_engine import LocalEngine, serve_engine
from worker.stores.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[1]

#: The bearer token the `local_engine` fixture accepts.
ENGINE_TOKEN = "test-engine-token"


@pytest.fixture
def queue_path(tmp_path: Path) -> Path:
    """A fresh SQLite queue file for this test."""
    return tmp_path / "queue.db"


@pytest.fixture
async def sqlite_store(queue_path: Path) -> AsyncIterator[SQLiteStore]:
    """An open `SQLiteStore` on `queue_path`, closed after the test."""
    async with SQLiteStore(queue_path) as store:
        yield store


@pytest.fixture
def engine_lease_s() -> float:
    """The local engine's lease; override with ``@pytest.mark.parametrize("engine_lease_s", …)``."""
    return 30.0


@pytest.fixture
def engine_config_dir() -> Path:
    """Where the local engine reads tenant configs: the repository's ``config/tenants``."""
    return REPO / "config" / "tenants"


@pytest.fixture
async def local_engine(
    sqlite_store: SQLiteStore, engine_lease_s: float, engine_config_dir: Path
) -> AsyncIterator[tuple[str, str, SQLiteStore]]:
    """A `LocalEngine` on 127.0.0.1 (a free port): yields ``(base_url, token, store)``."""
    engine = LocalEngine(
        sqlite_store, token=ENGINE_TOKEN, config_dir=engine_config_dir, lease_s=engine_lease_s
    )
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_engine(engine, "127.0.0.1", 0, stop, ready=bound.set_result), name="local-engine"
    )
    try:
        await asyncio.wait([server, bound], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if not bound.done():
            raise RuntimeError("the local engine did not start")
        yield f"http://127.0.0.1:{bound.result()}", ENGINE_TOKEN, sqlite_store
    finally:
        stop.set()
        await server
