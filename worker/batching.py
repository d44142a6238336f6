"""Group commit: many small writes that arrive together go to the database as one.

A caller hands in one item and waits for its own result. When no write is
under way, the item is written at once (no added latency when the worker is
quiet); items that arrive while a write is under way wait for it and then go
together in the next one. The batch size therefore follows the load by
itself: one item at a time when idle, dozens per round trip under load, with
no timer and no tuning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from worker.supervisor import watch

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Writes items in batches with ``write``, which returns one result per item, in order.

    An exception from ``write`` is raised to every caller of that batch (each
    may retry: its item then goes in a later batch); a result that is an
    exception is raised to its own caller only. A caller that is cancelled
    while it waits does not take its item out of the write.
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = 500,
    ) -> None:
        self._write = write
        self.max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            # Supervised: a writer that died would leave every later caller waiting.
            self._writer = watch(
                asyncio.create_task(self._drain(), name="group-commit"), may_end=True
            )
        return await future

    async def close(self) -> None:
        """Wait for what was handed in to be written (or to fail)."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait([writer])

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:  # each caller decides whether to retry
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if future.done():
                            continue
                        if isinstance(result, BaseException):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
                batch = []
        except BaseException:
            # Cancelled (the loop is closing): nobody may wait for ever.
            for _, future in [*batch, *self._waiting]:
                if not future.done():
                    future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._writer = None
