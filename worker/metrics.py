"""Prometheus metrics (contract §6 ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.status import RecentLookups

__all__ = ["Metrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """One registry per worker process (tests can make as many as they like)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "worker_jobs_total", "Jobs answered, by outcome", ["outcome"], registry=self.registry
        )
        self.rejected = Counter(
            "worker_jobs_rejected_total", "Jobs failed without an answer", registry=self.registry
        )
        self.latency = Histogram(
            "worker_lookup_seconds",
            "Time a lookup took, by data source",
            ["source"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "worker_jobs_in_flight", "Jobs being worked on", registry=self.registry
        )
        self.circuit_open = Gauge(
            "worker_source_circuit_open",
            "1 while a source's circuit is open",
            ["source"],
            registry=self.registry,
        )
        self.claim_latency = Histogram(
            "worker_claim_seconds",
            "Time a claim call took",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        #: jobs being worked on now (what the gauge says, readable)
        self.jobs_in_flight = 0
        #: each lookup's outcomes and latencies over the last hour (`GET /status`)
        self.recent = RecentLookups()
        # `.labels()` parses its arguments and takes a lock each call: once a label is enough.
        self._answered: dict[str, Counter] = {}
        self._took: dict[str, Histogram] = {}

    def set_in_flight(self, jobs: int) -> None:
        self.jobs_in_flight = jobs
        self.in_flight.set(jobs)

    def answered(self, outcome: str) -> None:
        """One job answered with ``outcome``."""
        child = self._answered.get(outcome)
        if child is None:
            child = self._answered[outcome] = self.jobs.labels(outcome)
        child.inc()

    def lookup_took(self, source: str, seconds: float) -> None:
        """One read of ``source`` took ``seconds``."""
        child = self._took.get(source)
        if child is None:
            child = self._took[source] = self.latency.labels(source)
        child.observe(seconds)
