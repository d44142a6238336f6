"""Group commit: batches follow the load, errors reach every caller of their batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from worker.batching import GroupCommit


class Recorder:
    """A write that remembers each batch; ``held``: every write waits for `release`."""

    def __init__(self, fail_on: int | None = None, *, held: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.release = asyncio.Event()
        if not held:
            self.release.set()

    async def write(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError("the database went away")
        return [item * 10 for item in items]


async def submitted(commit: GroupCommit[int, int], *items: int) -> list[asyncio.Task[int]]:
    """Hand ``items`` in, each from a task of its own, and let them reach the commit."""
    tasks = [asyncio.create_task(commit.submit(item)) for item in items]
    await asyncio.sleep(0)
    return tasks


async def test_submit__alone_is_written_at_once_and_gets_its_own_result() -> None:
    recorder = Recorder()
    commit = GroupCommit(recorder.write)

    assert await commit.submit(7) == 70
    assert recorder.batches == [[7]]


async def test_submit__what_arrives_during_a_write_goes_in_the_next_batch() -> None:
    recorder = Recorder(held=True)  # the first write is under way until we say so
    commit = GroupCommit(recorder.write)

    (first,) = await submitted(commit, 1)
    rest = await submitted(commit, *range(2, 7))
    recorder.release.set()

    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40, 50, 60]
    assert recorder.batches == [[1], [2, 3, 4, 5, 6]]


async def test_submit__batches_are_cut_at_max_batch() -> None:
    recorder = Recorder(held=True)
    commit = GroupCommit(recorder.write, max_batch=2)

    tasks = await submitted(commit, *range(5))
    recorder.release.set()

    assert [await task for task in tasks] == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1], [2, 3], [4]]


async def test_submit__a_failed_write_fails_its_batch_only() -> None:
    recorder = Recorder(fail_on=2, held=True)
    commit = GroupCommit(recorder.write)

    (first,) = await submitted(commit, 1)
    doomed = await submitted(commit, 2, 3)
    recorder.release.set()

    assert await first == 10
    for task in doomed:
        with pytest.raises(ConnectionError):
            await task
    assert await commit.submit(4) == 40  # the next batch is written as usual


async def test_submit__a_cancelled_caller_does_not_take_its_item_out() -> None:
    recorder = Recorder(held=True)
    commit = GroupCommit(recorder.write)

    (task,) = await submitted(commit, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recorder.release.set()
    await commit.close()

    assert recorder.batches == [[1]]


async def test_close__waits_for_the_write_under_way() -> None:
    recorder = Recorder(held=True)
    commit = GroupCommit(recorder.write)
    (task,) = await submitted(commit, 5)

    closing = asyncio.create_task(commit.close())
    await asyncio.sleep(0)
    assert not closing.done()
    recorder.release.set()
    await closing

    assert task.done() and task.result() == 50
