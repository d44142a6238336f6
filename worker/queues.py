"""Where the run loop gets jobs and leaves answers: the `JobQueue` interface, and a store.

`StoreQueue` claims from the §4 tables directly and writes the reply in the
transaction that marks the job done. The engine's queue over HTTP (contract §3)
is `worker.engine_queue.EngineQueue`, on the engine client's side. Both retry
the final writes through engine or database hiccups for as long as the lease
lasts; after that the job is handed out again and, the reply being idempotent,
the customer still gets exactly one.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import random
import time
from collections.abc import Callable

from worker.answers import Answer
from worker.audit import AuditLog
from worker.errors import LeaseLost
from worker.metrics import Metrics
from worker.retry import with_retries
from worker.stores.base import JOB_TYPE, Claim, ClaimedJob, Reply, Store

__all__ = ["JobQueue", "Racing", "StoreQueue"]

log = logging.getLogger(__name__)


class Racing:
    """How long a replica that lost the last claim races pauses before it claims.

    Each insert wakes every replica of the tenant; SKIP LOCKED gives the row to the
    first claim and the others come back empty. A replica whose claim on a wake-up
    found nothing pauses 1–2 ms before its next claim, up to 25–50 ms while it
    keeps losing; a claim that gets jobs, or a second without losing, ends the
    pause. The replica that keeps winning claims at once, and the others stay a
    step behind: they take the jobs the winner has no room for, at the cost of one
    claim a pause instead of one a wake-up. One replica alone seldom loses (only
    when its own earlier claim took the row that woke it), and so seldom waits.
    """

    FIRST_S = 0.002
    CAP_S = 0.05
    FORGET_S = 1.0

    def __init__(self) -> None:
        self._pause_s = 0.0
        self._lost_at = -math.inf

    def pause_s(self) -> float:
        """How long to wait before the next claim (0: claim at once)."""
        if not self._pause_s or time.monotonic() - self._lost_at > self.FORGET_S:
            return 0.0
        return random.uniform(self._pause_s / 2, self._pause_s)  # noqa: S311 - jitter

    def settled(self, *, won: bool) -> None:
        """A claim on a wake-up came back, with jobs (``won``) or without."""
        if won:
            self._pause_s = 0.0
            return
        now = time.monotonic()
        last = self._pause_s if now - self._lost_at <= self.FORGET_S else 0.0
        self._pause_s = min(max(2 * last, self.FIRST_S), self.CAP_S)
        self._lost_at = now


class JobQueue(abc.ABC):
    """Claims and settles one tenant's jobs."""

    def __init__(self, tenant_id: str, worker_id: str) -> None:
        self.tenant_id = tenant_id
        self.worker_id = worker_id
        #: when the last claim came back (`time.monotonic`); None after one failed
        self.answered_at: float | None = None
        #: where retried reply deliveries are counted (``worker_send_retries_total``)
        self.metrics: Metrics | None = None

    async def claim(self, max_jobs: int, wait_s: float) -> list[ClaimedJob]:
        """Up to ``max_jobs`` of the tenant's jobs, waiting up to ``wait_s`` for the first.

        A claim that comes back, empty or not, proves the engine or store answers
        (`answered_within`): a readiness probe need not ask it again.
        """
        try:
            jobs = await self._claim(max_jobs, wait_s)
        except BaseException:
            self.answered_at = None
            raise
        self.answered_at = time.monotonic()
        return jobs

    def describe(self) -> str:
        """Where the jobs come from, for a person (no credentials)."""
        return type(self).__name__

    def answered_within(self, seconds: float) -> bool:
        """Did a claim come back in the last ``seconds``, with none failing since?"""
        return self.answered_at is not None and time.monotonic() - self.answered_at <= seconds

    @abc.abstractmethod
    async def _claim(self, max_jobs: int, wait_s: float) -> list[ClaimedJob]: ...

    @abc.abstractmethod
    async def heartbeat(self, job: ClaimedJob) -> None:
        """Extend the lease; raise `LeaseLost` when it is gone."""

    @abc.abstractmethod
    async def finish(self, job: ClaimedJob, answer: Answer) -> None:
        """Deliver the reply (once) and mark the job done with its outcome."""

    @abc.abstractmethod
    async def reject(
        self, job: ClaimedJob, error: str, *, retry: bool, retry_after_s: float = 0
    ) -> None:
        """Fail the job, for good or to be handed out again."""

    @abc.abstractmethod
    async def send(self, key: str, to: str, message: str) -> None:
        """Send a reply outside a claimed job (push webhook), idempotent per ``key``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """A cheap call that proves the engine or store answers."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def _retry_log(
        self, job: ClaimedJob, what: str, *, reply: bool = False
    ) -> Callable[[Exception], None]:
        """``with_retries``' note of a retry; ``reply``: the call delivers the reply."""

        def note(exc: Exception) -> None:
            if reply and self.metrics is not None:
                self.metrics.send_retried()
            log.warning(
                "%s of job %s: %s; retrying",
                what,
                job.id,
                exc,
                extra={"action": what, "tenant": self.tenant_id, "job_id": job.id},
            )

        return note


class StoreQueue(JobQueue):
    """Contract §4: claim from the tables directly.

    ``audit``: the audit log whose table lives in the store's database; a job's
    row then goes in its completion statement (`AuditLog.with_completion`).
    """

    def __init__(
        self, store: Store, tenant_id: str, worker_id: str, *, lease_s: float = 30
    ) -> None:
        super().__init__(tenant_id, worker_id)
        self.store = store
        self.lease_s = lease_s
        self.audit: AuditLog | None = None
        self.racing = Racing()

    def describe(self) -> str:
        return f"the job tables directly ({self.store.kind})"

    async def _claim(self, max_jobs: int, wait_s: float) -> list[ClaimedJob]:
        """Claim; when that finds nothing, wait for a sign of jobs and claim again,
        until some come or ``wait_s`` passes with no sign.

        Every insert wakes every replica of the tenant, and one of them gets the
        rows: a replica that keeps losing these races pauses before it claims
        (`Racing`), so that the wake-ups of the pause gather into one claim.
        """
        claim = Claim(self.tenant_id, [JOB_TYPE], max_jobs, self.lease_s, self.worker_id)
        deadline = time.monotonic() + wait_s
        jobs = await self._claim_now(claim)
        if jobs:
            self.racing.settled(won=True)
        # A wait that ran out saw no sign of jobs, and the caller's next claim looks
        # anyway: claiming again here would double an idle worker's transactions.
        while not jobs and (left := deadline - time.monotonic()) > 0:
            if not await self.store.wait_for_jobs(left, self.tenant_id):
                break
            jobs = await self._claim_now(claim)
            self.racing.settled(won=bool(jobs))
        return jobs

    async def _claim_now(self, claim: Claim) -> list[ClaimedJob]:
        if pause_s := self.racing.pause_s():
            await asyncio.sleep(pause_s)
        return await self.store.claim_or_release(claim)

    async def heartbeat(self, job: ClaimedJob) -> None:
        if not await self.store.heartbeat(int(job.id), lease_s=self.lease_s, attempt=job.attempt):
            raise LeaseLost(f"job {job.id}: the lease was lost")

    async def finish(self, job: ClaimedJob, answer: Answer) -> None:
        reply = None
        if answer.message and answer.reply_to:
            reply = Reply(self.tenant_id, answer.reply_to, answer.message)
        audit = self.audit
        row = answer.audit if audit is not None and audit.holding(answer.audit) else None
        try:
            done = await with_retries(
                lambda: self.store.complete(
                    int(job.id),
                    outcome=answer.outcome,
                    result=answer.result,
                    attempt=job.attempt,
                    reply=reply,
                    audit=row,
                ),
                deadline_s=job.lease_s,
                on_retry=self._retry_log(job, "complete", reply=reply is not None),
            )
        finally:
            if audit is not None and row is not None:
                audit.settle(row)  # not stored with a completion: the buffer writes it
        if not done:
            raise LeaseLost(f"job {job.id}: the lease was lost before it completed")

    async def reject(
        self, job: ClaimedJob, error: str, *, retry: bool, retry_after_s: float = 0
    ) -> None:
        await with_retries(
            lambda: self.store.fail(
                int(job.id),
                error=error,
                retry=retry,
                retry_after_s=retry_after_s,
                attempt=job.attempt,
            ),
            deadline_s=job.lease_s,
            on_retry=self._retry_log(job, "fail"),
        )

    async def send(self, key: str, to: str, message: str) -> None:
        await self.store.send_message(key=key, reply=Reply(self.tenant_id, to, message))

    async def ping(self) -> None:
        await self.store.job(0)

    async def close(self) -> None:
        await self.store.close()
