"""The thread-backed pool of the blocking drivers (sqlite, sqlserver), on fake connections."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from connectors.base import SourceUnavailable
from connectors.thread_pool import Lease, ThreadBackedPool


class FakeConn:
    """A connection whose statement runs until interrupted (or ``release`` is set)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.interrupted = threading.Event()

    def close(self) -> None:
        self.closed = True

    def interrupt(self) -> None:
        self.interrupted.set()

    def __repr__(self) -> str:
        return f"FakeConn({self.name})"


Pool = ThreadBackedPool[FakeConn]
Work = Callable[[Lease[FakeConn]], str]


def make(size: int = 2, *, conns: int | list[FakeConn] = 0, idle_s: float | None = None) -> Pool:
    opened = [FakeConn(f"pre{n}") for n in range(conns)] if isinstance(conns, int) else conns
    return ThreadBackedPool(
        "src",
        size,
        kind="fake",
        close_conn=FakeConn.close,
        interrupt=FakeConn.interrupt,
        idle_s=idle_s,
        conns=opened,
    )


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    made = make()
    yield made
    await made.close()


def connecting(name: str = "new") -> Work:
    """Work that connects an empty slot and answers which connection it ran on."""

    def work(lease: Lease[FakeConn]) -> str:
        if lease.conn is None:
            lease.conn = FakeConn(name)
        return lease.conn.name

    return work


def until_stopped(lease: Lease[FakeConn]) -> str:
    """Work that blocks until the pool gives up on it (stop flag or interrupt)."""
    if lease.conn is None:
        lease.conn = FakeConn("slow")
    while not (lease.stop.wait(0.01) or lease.conn.interrupted.is_set()):
        pass
    raise RuntimeError("interrupted")


async def test_run__connects_an_empty_slot_and_keeps_the_connection(pool: Pool) -> None:
    assert await pool.run(connecting("first")) == "first"
    assert await pool.run(connecting("second")) == "first"  # the slot used last, first


async def test_run__runs_on_the_pools_own_named_threads(pool: Pool) -> None:
    def work(lease: Lease[FakeConn]) -> str:
        return threading.current_thread().name

    assert (await pool.run(work)).startswith("fake-src")


async def test_run__a_failed_read_leaves_what_the_work_set(pool: Pool) -> None:
    def fails(lease: Lease[FakeConn]) -> str:
        lease.conn = None  # the driver's connection is not to be trusted
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await pool.run(fails)
    assert await pool.run(connecting("fresh")) == "fresh"


async def test_run__caps_reads_at_size_and_the_rest_wait_their_turn() -> None:
    pool = make(size=2)
    running = 0
    most = 0
    lock = threading.Lock()

    def work(lease: Lease[FakeConn]) -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        threading.Event().wait(0.05)
        with lock:
            running -= 1
        return "ok"

    try:
        assert await asyncio.gather(*(pool.run(work) for _ in range(6))) == ["ok"] * 6
    finally:
        await pool.close()
    assert most == 2


async def test_run__deadline_interrupts_and_the_slot_returns_when_the_thread_does() -> None:
    pool = make(size=1, conns=1)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.run(until_stopped)
        # The interrupted read gave its connection back once its thread returned.
        async with asyncio.timeout(2):
            assert await pool.run(connecting()) == "pre0"
    finally:
        await pool.close()


async def test_run__waiting_for_a_slot_counts_against_the_deadline() -> None:
    pool = make(size=1)
    release = threading.Event()

    def held(lease: Lease[FakeConn]) -> str:
        release.wait(5)
        return "held"

    try:
        first = asyncio.create_task(pool.run(held))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.run(connecting())
        release.set()
        assert await first == "held"
    finally:
        await pool.close()


async def test_idle_sweep__closes_connections_unused_idle_s_but_keeps_one() -> None:
    pool = make(size=3, idle_s=0.2)
    barrier = threading.Barrier(3)
    made: list[FakeConn] = []

    def work(lease: Lease[FakeConn]) -> str:
        barrier.wait(5)  # three at once: three connections open
        lease.conn = FakeConn(f"c{len(made)}")
        made.append(lease.conn)
        return "ok"

    try:
        await asyncio.gather(*(pool.run(work) for _ in range(3)))
        async with asyncio.timeout(5):
            while sum(c.closed for c in made) < 2:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.4)
        assert sum(c.closed for c in made) == 2
    finally:
        await pool.close()
    assert all(c.closed for c in made)


async def test_close__interrupts_reads_in_flight_wakes_waiters_and_closes_all() -> None:
    conn = FakeConn("pre0")
    pool = make(size=1, conns=[conn])
    running = asyncio.create_task(pool.run(until_stopped))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(pool.run(connecting()))
    await asyncio.sleep(0.05)

    async with asyncio.timeout(2):
        await pool.close()

    with pytest.raises(RuntimeError, match="interrupted"):
        await running
    with pytest.raises(SourceUnavailable, match="closed"):
        await waiting
    assert conn.interrupted.is_set() and conn.closed
    with pytest.raises(SourceUnavailable, match="closed"):
        await pool.run(connecting())


def test_init__refuses_more_connections_than_slots() -> None:
    with pytest.raises(ValueError, match="3 connections for 2 slots"):
        make(size=2, conns=3)
