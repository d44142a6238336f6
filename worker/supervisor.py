"""One supervisor for a worker's long-lived tasks: if one dies, the worker stops loudly.

The claim loop, the heartbeats, the audit flusher, the stores' group commits
and the config poller each run as a named task. A worker that went on
without one of them would look alive while it stopped heartbeating, writing
its audit trail or following its config, so the supervisor treats any of
them ending unexpectedly (an exception, or returning while the worker still
runs) as fatal: it logs one line naming the task and the error, sets the
worker's stop event (in-flight jobs get their grace period as on SIGTERM),
and `serve` exits with `EXIT_TASK_DIED` so the container restarts it.

Components that create tasks of their own register them with `watch`, which
finds the supervisor of the worker they run in (a context variable, so
several workers in one process each have their own) and does nothing when
there is none (``worker lookup``, tests that embed a component alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["EXIT_TASK_DIED", "Supervisor", "watch"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: `worker run`'s exit status when a background task died (a restart is the cure).
EXIT_TASK_DIED = 1

_running: contextvars.ContextVar[Supervisor | None] = contextvars.ContextVar(
    "supervisor", default=None
)


def watch(task: asyncio.Task[T], *, may_end: bool = False) -> asyncio.Task[T]:
    """Put ``task`` under the running worker's supervisor, if there is one; returns it.

    ``may_end``: the task finishes on its own in normal work (a group commit's
    writer); only an exception from it is fatal.
    """
    supervisor = _running.get()
    if supervisor is not None:
        supervisor.watch(task, may_end=may_end)
    return task


class Supervisor:
    """Watches named tasks; the first to die unexpectedly stops the worker."""

    def __init__(self, stop: asyncio.Event, *, tenant: str | None = None) -> None:
        self.stop = stop
        self.tenant = tenant
        #: ``"'heartbeats' died: KeyError: 'x'"`` once a task died, else None
        self.failure: str | None = None
        self._owned: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def exit_code(self) -> int:
        return 0 if self.failure is None else EXIT_TASK_DIED

    @contextlib.contextmanager
    def active(self) -> Iterator[Supervisor]:
        """Inside, `watch` (and tasks created here, which inherit it) reports to this one."""
        token = _running.set(self)
        try:
            yield self
        finally:
            _running.reset(token)

    def start(
        self, coro: Coroutine[Any, Any, T], *, name: str, may_end: bool = False
    ) -> asyncio.Task[T]:
        """A task of the supervisor's own: cancelled and awaited by `close`."""
        task = asyncio.create_task(coro, name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)
        return self.watch(task, may_end=may_end)

    def watch(self, task: asyncio.Task[T], *, may_end: bool = False) -> asyncio.Task[T]:
        task.add_done_callback(lambda done: self._ended(done, may_end=may_end))
        return task

    async def run(self, coro: Coroutine[Any, Any, T], *, name: str) -> T | None:
        """Await the worker's main work (the claim loop) in place, supervised like the rest.

        Its end is the worker's end, so returning is normal; an exception is
        logged as a death (None is returned) and cancellation goes through.
        """
        try:
            return await coro
        except Exception as exc:
            self._died(name, exc)
            return None

    async def close(self) -> None:
        """Cancel the supervisor's own tasks (the worker is stopping) and wait for them."""
        self._closing = True
        owned = list(self._owned)
        for task in owned:
            task.cancel()
        if owned:
            await asyncio.wait(owned)

    def _ended(self, task: asyncio.Task[Any], *, may_end: bool) -> None:
        if task.cancelled():
            return  # only the worker's own shutdown cancels its tasks
        exc = task.exception()
        if exc is not None:
            self._died(task.get_name(), exc)
        elif not may_end and not self._closing and not self.stop.is_set():
            self._died(task.get_name(), None)

    def _died(self, name: str, exc: BaseException | None) -> None:
        what = f"{type(exc).__name__}: {exc}" if exc is not None else "it returned"
        if self.failure is None:
            self.failure = f"{name!r} died: {what}"
        log.critical(
            "background task %r died: %s; stopping so the container restarts",
            name,
            what,
            extra={"action": "supervise", "tenant": self.tenant},
        )
        self.stop.set()
