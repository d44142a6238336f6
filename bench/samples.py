"""The measured window of a closed-loop benchmark, shared by the bench scripts.

``bench/connectors.py`` and ``bench/e2e.py`` (and, through it, ``bench/scale.py``)
import it from the scripts' own folder, which Python puts on ``sys.path``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Samples"]


@dataclass
class Samples:
    """Requests that finished after the warm-up: a request that waited long still counts."""

    since: float
    until: float
    done: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def window(cls, warmup_s: float, measure_s: float) -> Samples:
        since = time.perf_counter() + warmup_s
        return cls(since, since + measure_s)

    def add(self, started: float) -> None:
        finished = time.perf_counter()
        if finished >= self.since:
            self.done.append((finished, finished - started))

    @property
    def latencies_s(self) -> list[float]:
        return [latency for _, latency in self.done]

    @property
    def rate(self) -> float:
        """Requests per second that finished inside the measured window."""
        inside = sum(1 for finished, _ in self.done if finished <= self.until)
        return inside / (self.until - self.since)
