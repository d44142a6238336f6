"""Prometheus metrics (contract §6 ``GET /metrics``).

Every label value comes from the tenant's config or from a small fixed set, never
from a job: a lookup name a customer typed is counted under `OTHER`, so the
series stay bounded and no customer's words reach a scrape. Label children are
made once and kept (``.labels()`` parses its arguments and takes a lock each call).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from worker.errors import SourceAuthError, SourceFull, SourceTimeout, SourceUnavailable
from worker.status import RecentLookups

__all__ = ["OTHER", "SOURCE_ERROR_KINDS", "Metrics", "error_kind"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

#: the ``lookup`` label of jobs for a lookup the config does not have (or none at all)
OTHER = "(other)"
#: the ``kind`` label of ``worker_source_errors_total``: ``circuit_open`` a read skipped
#: because the source kept failing, ``busy`` a read that waited for a free slot until its
#: deadline, ``full`` the source refused another connection, ``error`` anything else
SOURCE_ERROR_KINDS = ("timeout", "unavailable", "full", "auth", "circuit_open", "busy", "error")


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of a failed read's exception (one of `SOURCE_ERROR_KINDS`)."""
    if isinstance(exc, SourceFull):
        return "full"
    if isinstance(exc, SourceTimeout | TimeoutError):
        return "timeout"
    if isinstance(exc, SourceAuthError):
        return "auth"
    if isinstance(exc, SourceUnavailable):
        return "unavailable"
    return "error"


class Metrics:
    """One registry per worker process (tests can make as many as they like)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._job_families()
        self._source_families()
        self._queue_families()
        # process_* (CPU, memory, open files, start time) and python_info
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        #: jobs being worked on now (what the gauge says, readable)
        self.jobs_in_flight = 0
        #: each lookup's outcomes and latencies over the last hour (`GET /status`); its
        #: ``known`` (set by each config's pipeline) also decides the ``lookup`` label
        self.recent = RecentLookups()
        self._answered: dict[str, Counter] = {}
        self._by_lookup: dict[tuple[str, str], Counter] = {}
        self._known_by: Callable[[str], bool] = self.recent.known
        self._took: dict[str, Histogram] = {}
        self._failed: dict[tuple[str, str], Counter] = {}

    def _job_families(self) -> None:
        """What became of the jobs: answered (by outcome and lookup), rejected, in flight."""
        self.jobs = Counter(
            "worker_jobs_total", "Jobs answered, by outcome", ["outcome"], registry=self.registry
        )
        self.lookups = Counter(
            "worker_lookups_total",
            f"Jobs answered, by the config's lookup name ({OTHER}: any other) and outcome",
            ["lookup", "outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "worker_jobs_rejected_total", "Jobs failed without an answer", registry=self.registry
        )
        self.in_flight = Gauge(
            "worker_jobs_in_flight", "Jobs being worked on", registry=self.registry
        )

    def _source_families(self) -> None:
        """The reads of the data sources: how long they took, how they failed, circuits."""
        self.latency = Histogram(
            "worker_lookup_seconds",
            "Time a lookup took, by data source",
            ["source"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.circuit_open = Gauge(
            "worker_source_circuit_open",
            "1 while a source's circuit is open",
            ["source"],
            registry=self.registry,
        )
        self.source_errors = Counter(
            "worker_source_errors_total",
            "Reads of a data source that failed, by source and kind of failure",
            ["source", "kind"],
            registry=self.registry,
        )

    def _queue_families(self) -> None:
        """The way to and from the engine or queue: claims, their lag, reply retries."""
        self.send_retries = Counter(
            "worker_send_retries_total",
            "Retries of delivering a reply to the engine or the queue database",
            registry=self.registry,
        )
        self.claim_latency = Histogram(
            "worker_claim_seconds",
            "Time a claim call took",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.queue_lag = Histogram(
            "worker_queue_lag_seconds",
            "Time a job waited in the queue, from when it was due to its claim",
            buckets=(*_BUCKETS, 60, 300),
            registry=self.registry,
        )

    def set_in_flight(self, jobs: int) -> None:
        self.jobs_in_flight = jobs
        self.in_flight.set(jobs)

    def answered(self, outcome: str, lookup: str | None = None) -> None:
        """One job answered with ``outcome``, for ``lookup`` (the config's name, or not)."""
        child = self._answered.get(outcome)
        if child is None:
            child = self._answered[outcome] = self.jobs.labels(outcome)
        child.inc()
        self._lookup_child(lookup, outcome).inc()

    def _lookup_child(self, lookup: str | None, outcome: str) -> Counter:
        known = self.recent.known
        if known is not self._known_by:  # another config: its names, not the last one's
            self._known_by = known
            self._by_lookup = {}
        child = self._by_lookup.get((lookup or OTHER, outcome))
        if child is None:  # a name not seen yet: only the config's become a label (or a key)
            name = lookup if lookup and known(lookup) else OTHER
            child = self._by_lookup.get((name, outcome))
            if child is None:
                child = self._by_lookup[(name, outcome)] = self.lookups.labels(name, outcome)
        return child

    def lookup_took(self, source: str, seconds: float) -> None:
        """One read of ``source`` took ``seconds``."""
        child = self._took.get(source)
        if child is None:
            child = self._took[source] = self.latency.labels(source)
        child.observe(seconds)

    def source_failed(self, source: str, kind: str) -> None:
        """One read of ``source`` failed; ``kind`` is one of `SOURCE_ERROR_KINDS`."""
        child = self._failed.get((source, kind))
        if child is None:
            if kind not in SOURCE_ERROR_KINDS:
                raise ValueError(f"not a source error kind: {kind!r}")
            child = self._failed[(source, kind)] = self.source_errors.labels(source, kind)
        child.inc()

    def send_retried(self) -> None:
        """A reply's delivery failed for a retriable reason and is tried again."""
        self.send_retries.inc()
