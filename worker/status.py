"""What ``GET /status`` shows a person (contract §6), and ``worker stats`` its figures.

Two records, kept in memory by the worker process, bounded whatever the traffic:

- `RecentLookups`: each configured lookup's outcomes and latencies over the last
  hour, in one-minute buckets; latencies are counted in fixed buckets, so p50
  and p95 are read as "at most" a bucket's bound (exact enough for a person).
  A job for a lookup the config does not have, or one refused unanswered (no such
  lookup and no tenant fallback, another tenant's), is counted under `UNKNOWN`:
  the name a customer typed never becomes a row (nor the memory to hold one).
- `SourceStatus`: one source's circuit, its gate (reads in use, waiting, the
  cap) and its last error, read off `worker.sources.Sources`.

The page itself is `worker/pages/status.html`, rendered with autoescaping: source
names and error texts come from the tenant's config and its systems.
No customer data is on it: errors are masked of the current job's values
(`worker.logs.mask_customer_values`) and of the config's secrets before they are
kept, and cut to `ERROR_CHARS`.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jinja2 import Template

__all__ = [
    "LATENCY_BOUNDS_MS",
    "UNKNOWN",
    "LookupSummary",
    "RecentLookups",
    "SourceStatus",
    "percentile_ms",
    "render_status",
]

#: upper bounds of the latency buckets, in ms (one more bucket holds anything slower)
LATENCY_BOUNDS_MS = (
    *(1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700),
    *(1_000, 1_500, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 30_000),
)
#: the row of jobs for lookups the config does not have, and jobs refused unanswered
UNKNOWN = "(other jobs)"
ERROR_CHARS = 300

_PAGES = Path(__file__).resolve().parent / "pages"


def percentile_ms(counts: Sequence[int], q: float) -> int | None:
    """The bound of the latency bucket holding the ``q`` quantile (0 < q ≤ 1) of
    ``counts`` (one count a bucket of `LATENCY_BOUNDS_MS`, then the overflow);
    None without samples; the overflow reads as one past the last bound."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] + 1
    return LATENCY_BOUNDS_MS[-1] + 1


@dataclass
class _Minute:
    minute: int
    outcomes: Counter[str] = field(default_factory=Counter)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))


@dataclass(frozen=True)
class LookupSummary:
    lookup: str
    total: int
    outcomes: dict[str, int]
    p50_ms: int | None
    p95_ms: int | None
    last_at: float  # wall-clock seconds

    @property
    def ok_share(self) -> float:
        return self.outcomes.get("ok", 0) / self.total if self.total else 0.0


class RecentLookups:
    """Outcomes and latencies of each lookup over the last ``window_s`` (an hour)."""

    def __init__(
        self,
        known: Callable[[str], bool] = lambda _name: True,
        *,
        window_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: whether a name is one of the config's lookups (set again on a reload)
        self.known = known
        self.window_s = window_s
        self.clock = clock
        self._minutes: dict[str, deque[_Minute]] = {}
        self._last: dict[str, float] = {}

    def record(self, lookup: str | None, outcome: str, ms: int) -> None:
        name = lookup if lookup and self.known(lookup) else UNKNOWN
        now = self.clock()
        minute = int(now // 60)
        buckets = self._minutes.get(name)
        if buckets is None:
            buckets = self._minutes[name] = deque()
        if not buckets or buckets[-1].minute != minute:
            buckets.append(_Minute(minute))
            self._forget(buckets, now)
        bucket = buckets[-1]
        bucket.outcomes[outcome] += 1
        bucket.latency[bisect.bisect_left(LATENCY_BOUNDS_MS, ms)] += 1
        self._last[name] = now

    def _forget(self, buckets: deque[_Minute], now: float) -> None:
        oldest = int((now - self.window_s) // 60)
        while buckets and buckets[0].minute <= oldest:
            buckets.popleft()

    def summaries(self) -> list[LookupSummary]:
        """One summary a lookup seen in the window, by name (the unknown row last)."""
        now = self.clock()
        rows = []
        for name, buckets in self._minutes.items():
            self._forget(buckets, now)
            if not buckets:
                continue
            outcomes: Counter[str] = Counter()
            latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
            for bucket in buckets:
                outcomes.update(bucket.outcomes)
                latency = [a + b for a, b in zip(latency, bucket.latency, strict=True)]
            rows.append(
                LookupSummary(
                    name,
                    sum(outcomes.values()),
                    dict(outcomes.most_common()),
                    percentile_ms(latency, 0.5),
                    percentile_ms(latency, 0.95),
                    self._last[name],
                )
            )
        return sorted(rows, key=lambda r: (r.lookup == UNKNOWN, r.lookup))


@dataclass(frozen=True)
class SourceStatus:
    source_id: str
    name: str
    type: str
    circuit: str  # closed, open, half-open
    in_use: int
    waiting: int
    cap: int
    problem: str | None = None  # the config's reason it has no connector
    last_error: str | None = None
    last_error_at: float | None = None  # wall-clock seconds
    last_ok_at: float | None = None

    @property
    def health(self) -> str:
        """ok, failing (the last read failed), down (circuit open), unused or broken."""
        if self.problem:
            return "broken"
        if self.circuit != "closed":
            return "down"
        if self.last_error_at is not None and (self.last_ok_at or 0) < self.last_error_at:
            return "failing"
        return "ok" if self.last_ok_at is not None else "unused"


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0, int(now - then))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return f"{seconds // 86400} d ago"


def _ms(value: int | None) -> str:
    if value is None:
        return "–"
    if value > LATENCY_BOUNDS_MS[-1]:
        return f"> {LATENCY_BOUNDS_MS[-1] / 1000:g} s"
    return f"≤ {value} ms" if value < 1000 else f"≤ {value / 1000:g} s"


@cache
def _template() -> Template:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(_PAGES),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["ms"] = _ms
    return env.get_template("status.html")


def render_status(
    tenant_id: str,
    sources: Iterable[SourceStatus],
    lookups: Iterable[LookupSummary],
    *,
    in_flight: int,
    queue: str,
    now: float | None = None,
) -> str:
    """The status page's HTML."""
    now = time.time() if now is None else now
    return _template().render(
        tenant_id=tenant_id,
        sources=list(sources),
        lookups=list(lookups),
        in_flight=in_flight,
        queue=queue,
        now=now,
        generated=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
