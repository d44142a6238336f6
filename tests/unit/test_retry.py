"""`worker.retry`: the one back-off, and retries through `RetriableError` under a deadline."""

from __future__ import annotations

import itertools

import pytest

from worker.errors import EngineAuthError, EngineUnavailable, QueueUnavailable
from worker.retry import backoff_delays, backoff_s, with_retries


def test_backoff_s__doubles_from_the_first_up_to_the_cap() -> None:
    pauses = [backoff_s(n, first_s=0.5, cap_s=10.0) for n in range(7)]
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_s__a_huge_attempt_stays_at_the_cap() -> None:
    assert backoff_s(10_000, first_s=0.2, cap_s=10.0) == 10.0


def test_backoff_delays__full_jitter_under_each_step() -> None:
    for delays in (backoff_delays() for _ in range(50)):
        for attempt, delay in enumerate(itertools.islice(delays, 10)):
            assert 0 <= delay <= backoff_s(attempt, first_s=0.2, cap_s=10.0)


def test_backoff_delays__a_lower_cap_holds() -> None:
    assert max(itertools.islice(backoff_delays(cap_s=0.5), 200)) <= 0.5


async def test_with_retries__returns_once_the_call_succeeds() -> None:
    calls: list[int] = []
    retried: list[Exception] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise QueueUnavailable("the queue database did not answer")
        return "done"

    assert await with_retries(flaky, deadline_s=30, on_retry=retried.append) == "done"
    assert len(calls) == 3
    assert [type(e) for e in retried] == [QueueUnavailable, QueueUnavailable]


async def test_with_retries__gives_up_at_the_deadline_with_the_last_error() -> None:
    async def down() -> None:
        raise EngineUnavailable("the engine answered 503")

    with pytest.raises(EngineUnavailable, match="503"):
        await with_retries(down, deadline_s=0, on_retry=lambda exc: None)


async def test_with_retries__does_not_retry_other_errors() -> None:
    calls: list[int] = []

    async def refused() -> None:
        calls.append(1)
        raise EngineAuthError("the engine refused the token")

    with pytest.raises(EngineAuthError):
        await with_retries(refused, deadline_s=30, on_retry=lambda exc: None)
    assert calls == [1]
