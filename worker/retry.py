"""Back-off and retries, one way for the whole worker.

`backoff_s` is the capped exponential back-off; `backoff_delays` draws from it
with full jitter, so replicas that failed together do not retry together;
`with_retries` retries a call through `RetriableError` (engine or queue down)
while a deadline allows. The queues' final writes (the engine's over its client,
a store's), the run loop's claims and the audit log's flusher all back off
through here. (Connectors keep their own: they import nothing of the worker's but
its errors.)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from worker.errors import RetriableError

__all__ = ["backoff_delays", "backoff_s", "with_retries"]

T = TypeVar("T")


def backoff_s(attempt: int, *, first_s: float, cap_s: float) -> float:
    """The pause before retry ``attempt`` (0-based): ``first_s``, doubled each time, at
    most ``cap_s``."""
    return min(cap_s, first_s * 2.0 ** min(attempt, 30))


def backoff_delays(base_s: float = 0.2, cap_s: float = 10.0) -> Iterator[float]:
    """Capped exponential back-off with full jitter: 0.2 s, 0.4 s … up to ``cap_s``."""
    attempt = 0
    while True:
        limit = backoff_s(attempt, first_s=base_s, cap_s=cap_s)
        yield random.uniform(0, limit)  # noqa: S311 - jitter, not crypto
        attempt += 1


async def with_retries(
    call: Callable[[], Awaitable[T]], *, deadline_s: float, on_retry: Callable[[Exception], None]
) -> T:
    """Retry ``call`` on a `RetriableError` (engine or queue down) until ``deadline_s``."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    delays = backoff_delays()
    while True:
        try:
            return await call()
        except RetriableError as exc:
            delay = next(delays)
            if loop.time() + delay > give_up:
                raise
            on_retry(exc)
            await asyncio.sleep(delay)
