"""One pool for blocking drivers: connections in slots, each read on a thread of the pool's own.

A driver that blocks (``sqlite3``, pymssql) cannot run on the event loop, and a
statement it started cannot be abandoned while its connection is handed to the
next read. `ThreadBackedPool` holds ``size`` slots, each an open connection or
None (empty: the read connects). A read leases a slot (`acquire`), runs its
work on one of the pool's ``size`` threads (`start`, or `run` for both), and the
slot comes back when that thread has really returned, holding whatever the
work left in `Lease.conn`: the connection to keep, or None.

What the pool decides, for every driver alike:

- caps: ``size`` reads at once; the rest wait, in turn, and waiting counts
  against the caller's own deadline;
- the slot used last is taken first, so after a burst the surplus stays unused;
  with ``idle_s`` a timer closes connections left unused that long (down to
  ``keep_idle``);
- at the deadline (or a cancellation) the caller leaves at once and the read is
  interrupted (`Lease.stop` is set and, if the driver can, ``interrupt`` stops
  the statement); its connection rejoins the pool only when the thread returns;
- a read cancelled without its thread having returned (the event loop shutting
  down) gives back an empty slot: the connection may still be in use;
- `close` refuses new reads, wakes the waiters, interrupts the reads in flight,
  closes the idle connections and waits for the rest.

The threads are the pool's own: the event loop's default executor has
min(32, cores + 4) of them, shared with every other blocking call, which held a
source below its pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from connectors.base import SourceUnavailable

__all__ = ["Lease", "ThreadBackedPool"]

C = TypeVar("C")
R = TypeVar("R")


@dataclass(eq=False)
class Lease(Generic[C]):
    """One read's hold on a slot.

    ``conn`` is what the slot held (None: connect first); the work sets it to
    what the slot keeps after it (None to leave the slot empty). ``stop`` is set
    when the read is given up on; ``done`` once its thread has returned.
    """

    conn: C | None
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class ThreadBackedPool(Generic[C]):
    """``size`` slots on a stack, reads on ``size`` threads (module docstring).

    ``kind`` names the tasks (``{kind}-read:{source_id}``) and threads
    (``{kind}-{source_id}``); ``close_conn`` closes a connection (errors are
    ignored); ``interrupt`` stops a statement running on a connection, from
    another thread; ``conns`` fills the slots with connections opened already.
    """

    def __init__(
        self,
        source_id: str,
        size: int,
        *,
        kind: str,
        close_conn: Callable[[C], object],
        interrupt: Callable[[C], object] | None = None,
        idle_s: float | None = None,
        keep_idle: int = 1,
        conns: Sequence[C] = (),
    ) -> None:
        if len(conns) > size:
            raise ValueError(f"{len(conns)} connections for {size} slots")
        self.source_id = source_id
        self.size = size
        self.kind = kind
        self.idle_s = idle_s
        self.keep_idle = keep_idle
        self.slots: asyncio.LifoQueue[C | None] = asyncio.LifoQueue()
        for _ in range(size - len(conns)):
            self.slots.put_nowait(None)
        for conn in conns:
            self.slots.put_nowait(conn)
        self.in_flight: dict[asyncio.Task[Any], Lease[C]] = {}
        self.closed = False
        self._close_conn = close_conn
        self._interrupt = interrupt
        self._threads = ThreadPoolExecutor(size, thread_name_prefix=f"{kind}-{source_id}")
        self._released: dict[C, float] = {}
        self._sweep_timer: asyncio.TimerHandle | None = None

    async def run(self, work: Callable[[Lease[C]], R]) -> R:
        """``work`` on a leased slot, on a pool thread; interrupted if the caller leaves."""
        lease: Lease[C] = Lease(await self.acquire())
        task = self.start(lease, work)
        try:
            return await asyncio.shield(task)
        except BaseException:
            # Deadline, cancellation or error: whatever still runs must stop.
            # The slot comes back when the thread returns (`_finished`).
            if not task.done():
                self.interrupt(lease)
            raise

    async def acquire(self) -> C | None:
        """The next free slot's content, waiting in turn for one."""
        if self.closed:
            raise SourceUnavailable(self.source_id, "the source was closed")
        conn = await self.slots.get()
        if self.closed:
            self.slots.put_nowait(conn)  # pass the news on to the next waiter
            raise SourceUnavailable(self.source_id, "the source was closed")
        return conn

    def start(self, lease: Lease[C], work: Callable[[Lease[C]], R]) -> asyncio.Task[R]:
        """``work(lease)`` on a pool thread; the slot comes back when it returns."""
        name = f"{self.kind}-read:{self.source_id}"
        task = asyncio.create_task(self._threaded(work, lease), name=name)
        self.in_flight[task] = lease
        task.add_done_callback(self._finished)
        return task

    def interrupt(self, lease: Lease[C]) -> None:
        # `interrupt` stops a running statement at once; the flag covers the
        # moment before the thread has started it, which `interrupt` misses.
        lease.stop.set()
        conn = lease.conn
        if conn is not None and self._interrupt is not None:
            self._interrupt(conn)

    async def _threaded(self, work: Callable[[Lease[C]], R], lease: Lease[C]) -> R:
        """``work(lease)`` on one of the pool's threads, in this task's context (its reach)."""
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        call = functools.partial(context.run, _until_done, work, lease)
        return await loop.run_in_executor(self._threads, call)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        lease = self.in_flight.pop(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller may have left on its deadline
        conn = lease.conn
        if not lease.done.is_set():
            # Only the event loop shutting down cancels these; the thread may
            # still be using the connection, so it is not handed out again.
            self.interrupt(lease)
            conn = None
        if self.closed and conn is not None:
            self._close_quietly(conn)
            conn = None
        if conn is not None and self.idle_s is not None:
            self._released[conn] = time.monotonic()
            self._arm_sweep()
        self.slots.put_nowait(conn)

    def _arm_sweep(self) -> None:
        if self._sweep_timer is None and not self.closed and self.idle_s is not None:
            loop = asyncio.get_running_loop()
            self._sweep_timer = loop.call_later(self.idle_s, self._sweep)

    def _sweep(self) -> None:
        """Close the connections left unused ``idle_s`` (on a pool thread: closing blocks)."""
        self._sweep_timer = None
        if self.closed or self.idle_s is None:
            return
        stack: list[C | None] = []
        while not self.slots.empty():  # top first; nobody waits while a slot is free
            stack.append(self.slots.get_nowait())
        now, kept = time.monotonic(), 0
        for n, conn in enumerate(stack):
            if conn is None:
                continue
            if kept < self.keep_idle or now - self._released.get(conn, now) < self.idle_s:
                kept += 1
                continue
            stack[n] = None
            self._released.pop(conn, None)
            self._threads.submit(self._close_quietly, conn)
        for conn in reversed(stack):
            self.slots.put_nowait(conn)
        if kept > self.keep_idle:
            self._arm_sweep()

    async def close(self) -> None:
        """Refuse new reads, stop the ones in flight, close every connection."""
        self.closed = True  # from here on `acquire` hands out nothing
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        for lease in self.in_flight.values():
            self.interrupt(lease)
        idle = []
        while not self.slots.empty():
            idle.append(self.slots.get_nowait())
        self.slots.put_nowait(None)  # wakes whoever waits for a slot
        loop = asyncio.get_running_loop()
        for conn in idle:
            if conn is not None:
                await loop.run_in_executor(self._threads, self._close_quietly, conn)
        if self.in_flight:
            # Each closes its connection as its thread returns (`_finished`).
            # `wait`, not `gather`: being cancelled here must not cancel the reads.
            await asyncio.wait(list(self.in_flight))
        self._released.clear()
        self._threads.shutdown(wait=False)

    def _close_quietly(self, conn: C) -> None:
        with contextlib.suppress(Exception):
            self._close_conn(conn)


def _until_done(work: Callable[[Lease[C]], R], lease: Lease[C]) -> R:
    """On the pool thread: the work, then ``lease.done`` whatever happened."""
    try:
        return work(lease)
    finally:
        lease.done.set()
