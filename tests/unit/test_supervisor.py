"""The supervisor: a background task that dies stops the worker loudly; shutdown stays quiet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from worker.batching import GroupCommit
from worker.supervisor import EXIT_TASK_DIED, Supervisor, watch


async def _crash() -> None:
    await asyncio.sleep(0)
    raise KeyError("lease")


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_watch__a_task_that_raises_stops_the_worker_with_one_clear_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop, tenant="shop")
    with supervisor.active():
        task = watch(asyncio.create_task(_crash(), name="heartbeats"))
    await asyncio.wait_for(stop.wait(), timeout=10)
    assert task.done()
    assert supervisor.exit_code == EXIT_TASK_DIED != 0
    assert supervisor.failure == "'heartbeats' died: KeyError: 'lease'"
    [record] = [r for r in caplog.records if r.name == "worker.supervisor"]
    assert record.levelno == logging.CRITICAL
    assert record.getMessage() == (
        "background task 'heartbeats' died: KeyError: 'lease'; stopping so the container restarts"
    )
    assert record.tenant == "shop"  # type: ignore[attr-defined]


async def test_start__a_task_that_returns_while_the_worker_runs_is_a_death() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    supervisor.start(asyncio.sleep(0), name="config-poller")
    await asyncio.wait_for(stop.wait(), timeout=10)
    assert supervisor.failure == "'config-poller' died: it returned"


async def test_watch__may_end_tasks_and_tasks_that_end_after_stop_are_not_deaths() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    with supervisor.active():
        done = watch(asyncio.create_task(asyncio.sleep(0), name="group-commit"), may_end=True)
    await done
    stop.set()
    await supervisor.start(asyncio.sleep(0), name="config-poller")  # stopping: it may return
    assert supervisor.failure is None
    assert supervisor.exit_code == 0


async def test_close__cancels_its_own_tasks_quietly(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    task = supervisor.start(_forever(), name="config-poller")
    await asyncio.sleep(0)
    await supervisor.close()
    assert task.cancelled()
    assert not stop.is_set()
    assert supervisor.exit_code == 0
    assert not [r for r in caplog.records if r.name == "worker.supervisor"]


async def test_run__the_main_work_raising_is_a_death_and_cancellation_goes_through() -> None:
    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    assert await supervisor.run(_crash(), name="claim-loop") is None
    assert stop.is_set()
    assert supervisor.failure == "'claim-loop' died: KeyError: 'lease'"
    running = asyncio.create_task(Supervisor(asyncio.Event()).run(_forever(), name="claim-loop"))
    await asyncio.sleep(0)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_watch__without_a_supervisor_does_nothing() -> None:
    task = watch(asyncio.create_task(_crash()))
    with pytest.raises(KeyError):
        await task


async def test_group_commit__a_writer_that_dies_stops_the_worker() -> None:
    async def miscounting(items: Sequence[int]) -> list[int]:  # a bug: one result short
        return [item for item in items][:-1]

    stop = asyncio.Event()
    supervisor = Supervisor(stop)
    with supervisor.active():
        commit: GroupCommit[int, int] = GroupCommit(miscounting)
        with pytest.raises(asyncio.CancelledError):  # its callers are not left waiting…
            await commit.submit(1)
    await asyncio.wait_for(stop.wait(), timeout=10)  # …and the worker stops
    assert supervisor.failure is not None
    assert supervisor.failure.startswith("'group-commit' died: ValueError")
