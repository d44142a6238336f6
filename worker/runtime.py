"""The run loop: claim in batches, keep up to N jobs in flight, heartbeat, stop cleanly.

Admission, not expiry: the loop claims only as many jobs as its sources can
start and answer before the jobs' deadlines (`Sources.room`), never more than
the free ``max_in_flight`` slots. With no room it claims nothing and waits for
a read or a job to end; the jobs it leaves stay ``pending`` in the queue, for
another replica or for this one a moment later, instead of being claimed here
to time out in memory. Claims take the queue's order (oldest first), so a job
on a quiet source waits behind the busy source's jobs that came before it, and
no longer.

On stop (SIGTERM, or the queue drained with ``once``) the loop stops claiming,
gives the jobs in flight ``grace_s`` to finish, then cancels the rest; each
cancelled job is handed back to the queue (``fail`` with ``retry``) so another
worker answers it. The final write of every job is shielded from cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from worker.errors import EngineAuthError, LeaseLost, NotOurs, RetriableError, WorkerError
from worker.logs import job_context
from worker.retry import backoff_delays
from worker.stores.base import ClaimedJob
from worker.supervisor import watch

if TYPE_CHECKING:  # the run loop gets its queue and pipeline from its caller (worker.service)
    from worker.answers import Answer
    from worker.metrics import Metrics
    from worker.queues import JobQueue

__all__ = ["JobAnswerer", "RunSettings", "Runtime", "stop_on_signals"]

log = logging.getLogger(__name__)

#: The longest pause between two claims while the engine or queue is down.
CLAIM_BACKOFF_CAP_S = 10.0


#: Heartbeats go out every third of a lease, but at most this often.
HEARTBEAT_MIN_S = 0.5
#: How often the heartbeat loop looks for leases that are due.
HEARTBEAT_TICK_S = 0.25
#: A heartbeat error already logged is logged again after this long, if it goes on.
HEARTBEAT_LOG_EVERY_S = 60.0


class _Tenant(Protocol):
    @property
    def tenant_id(self) -> str: ...


class _Sources(Protocol):
    """What admission reads of the sources (`worker.sources.Sources`)."""

    @property
    def changed(self) -> asyncio.Event: ...

    def room(self, in_flight: int) -> int: ...

    def stall_in(self) -> float | None: ...

    async def close(self) -> None: ...


class JobAnswerer(Protocol):
    """What the run loop needs of a pipeline (`worker.pipeline.Pipeline` is one): answer
    a payload, its tenant's id, its sources' room, the metrics to count in."""

    @property
    def tenant(self) -> _Tenant: ...

    @property
    def sources(self) -> _Sources: ...

    @property
    def metrics(self) -> Metrics: ...

    async def answer(self, payload: Any) -> Answer: ...


@dataclass(eq=False)
class _Lease:
    """A job in flight, and when its lease is next to be extended."""

    job: ClaimedJob
    interval: float
    due: float
    beating: bool = False


@dataclass(frozen=True)
class RunSettings:
    #: jobs in the worker at once, over all sources; admission keeps it lower while
    #: the sources are slow (25 reads at once on a 1 s source take ~190 in 10 s)
    max_in_flight: int = 200
    #: most jobs one claim asks for (never more than the free slots); the engine API's cap
    claim_batch: int = 1000
    wait_s: float = 20.0
    grace_s: float = 20.0
    once: bool = False


class Runtime:
    """Serves one tenant's queue until told to stop."""

    def __init__(self, queue: JobQueue, pipeline: JobAnswerer, settings: RunSettings) -> None:
        self.queue = queue
        self.pipeline = pipeline
        self.settings = settings
        self.tenant_id = pipeline.tenant.tenant_id
        self._freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.engine_ok = False
        self.answered = 0
        self._using: dict[int, int] = {}  # id(pipeline) -> jobs running on it
        self._leases: dict[str, _Lease] = {}  # job id -> its lease, while in flight
        self._released = asyncio.Event()
        self._beat_errors: dict[str, float] = {}  # error text -> when it was last logged

    def use(self, pipeline: JobAnswerer) -> JobAnswerer:
        """New jobs run on ``pipeline`` from now on; returns the one it replaces."""
        old, self.pipeline = self.pipeline, pipeline
        return old

    async def retire(self, old: JobAnswerer) -> None:
        """Close ``old``'s sources once no job runs on it any more."""
        while self._using.get(id(old), 0):
            self._released.clear()
            await self._released.wait()
        await old.sources.close()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and answer until ``stop`` is set (or, with ``once``, the queue is empty)."""
        log.info(
            "serving tenant %s", self.tenant_id, extra={"action": "start", "tenant": self.tenant_id}
        )
        beats = watch(asyncio.create_task(self._heartbeat_loop(), name="heartbeats"))
        try:
            await self._claim_loop(stop)
        finally:
            try:
                await self._drain()
            finally:
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats
        log.info(
            "stopped; %d job(s) answered",
            self.answered,
            extra={"action": "stop", "tenant": self.tenant_id},
        )

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        delays = backoff_delays(cap_s=CLAIM_BACKOFF_CAP_S)
        while not stop.is_set():
            free = await self._wait_for_room(stop)
            if free == 0:
                break
            try:
                jobs = await self._claim(stop, min(free, self.settings.claim_batch))
            except (RetriableError, EngineAuthError) as exc:
                self.engine_ok = False
                await self._back_off(stop, exc, next(delays))
                continue
            except Exception as exc:  # a claim must never take the worker down
                log.exception(
                    "claiming failed unexpectedly",
                    extra={"action": "claim", "tenant": self.tenant_id},
                )
                self.engine_ok = False
                await self._back_off(stop, WorkerError(type(exc).__name__), next(delays))
                continue
            self.engine_ok = True
            delays = backoff_delays(cap_s=CLAIM_BACKOFF_CAP_S)
            for job in jobs:
                self._start(job)
            if self.settings.once and not jobs:
                if not self._tasks:
                    break
                await self._idle.wait()

    async def _wait_for_room(self, stop: asyncio.Event) -> int:
        """Block until a job claimed now could start in time; how many; 0 if stopped.

        Room changes when a job ends, a read arrives at its source or ends (a
        slot freed, a read time learned), or a busy source stalls
        (`Sources.room`): the wait is for the first of those, never a polling timer.
        """
        while not stop.is_set():
            room = self._room()
            if room > 0:
                return room
            sources = self.pipeline.sources
            self._freed.clear()
            sources.changed.clear()
            freed = asyncio.ensure_future(_either(self._freed, sources.changed))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sources.stall_in()):
                    await _first_of(freed, stop)
            freed.cancel()
        return 0

    def _room(self) -> int:
        free = self.settings.max_in_flight - len(self._tasks)
        return min(free, self.pipeline.sources.room(len(self._tasks))) if free > 0 else 0

    async def _claim(self, stop: asyncio.Event, count: int) -> list[ClaimedJob]:
        wait_s = 1.0 if self.settings.once else self.settings.wait_s
        started = time.perf_counter()
        claim = asyncio.ensure_future(self.queue.claim(count, wait_s))
        if not await _first_of(claim, stop):
            # Stopping mid long-poll. A job the engine leased to us in this very
            # moment is handed out again when its lease runs out: late, not lost.
            claim.cancel()
            with contextlib.suppress(asyncio.CancelledError, WorkerError, OSError):
                await claim
            return []
        self.pipeline.metrics.claim_latency.observe(time.perf_counter() - started)
        return claim.result()

    async def _back_off(self, stop: asyncio.Event, exc: WorkerError, delay: float) -> None:
        level = logging.ERROR if isinstance(exc, EngineAuthError) else logging.WARNING
        log.log(
            level,
            "claiming failed: %s; next try in %.1f s",
            exc,
            delay,
            extra={"action": "claim", "tenant": self.tenant_id},
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()

    def _start(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._handle(job), name=f"job-{job.id}")
        self._tasks.add(task)
        self._idle.clear()
        self.pipeline.metrics.set_in_flight(len(self._tasks))
        if job.queued_s is not None:
            self.pipeline.metrics.queue_lag.observe(job.queued_s)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._freed.set()
        self.pipeline.metrics.set_in_flight(len(self._tasks))
        if not self._tasks:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "job task %s died: %r",
                task.get_name(),
                task.exception(),
                extra={"action": "job", "tenant": self.tenant_id},
            )

    async def _handle(self, job: ClaimedJob) -> None:
        pipeline = self.pipeline  # a config reload mid-job leaves this job on its pipeline
        self._using[id(pipeline)] = self._using.get(id(pipeline), 0) + 1
        try:
            with job_context(self.tenant_id, job.id):  # every line about the job names it
                await self._answer(job, pipeline)
        finally:
            self._using[id(pipeline)] -= 1
            if not self._using[id(pipeline)]:
                del self._using[id(pipeline)]
            self._released.set()

    async def _answer(self, job: ClaimedJob, pipeline: JobAnswerer) -> None:
        extra = {"tenant": self.tenant_id, "job_id": job.id, "attempt": job.attempt}
        interval = max(job.lease_s / 3, HEARTBEAT_MIN_S)
        loop = asyncio.get_running_loop()
        self._leases[job.id] = _Lease(job, interval, loop.time() + interval)
        try:
            try:
                answer = await pipeline.answer(job.payload)
            finally:
                self._leases.pop(job.id, None)  # settling it is retried for as long as a lease
        except NotOurs as exc:
            log.warning("refused job %s: %s", job.id, exc, extra={"action": "reject", **extra})
            pipeline.metrics.rejected.inc()
            pipeline.metrics.recent.record(None, "refused", 0)
            await asyncio.shield(self.queue.reject(job, str(exc), retry=False))
            return
        except asyncio.CancelledError:
            await asyncio.shield(self._hand_back(job, "the worker stopped before answering"))
            raise
        except Exception as exc:
            log.exception("job %s crashed", job.id, extra={"action": "job", **extra})
            await asyncio.shield(
                self.queue.reject(
                    job, f"worker error: {type(exc).__name__}", retry=True, retry_after_s=5
                )
            )
            return
        if await self._settle(job, answer, extra):
            self.answered += 1
            log.info(
                "job %s answered: %s in %d ms",
                job.id,
                answer.outcome,
                answer.response_time_ms,
                extra={
                    "action": "answer",
                    "outcome": answer.outcome,
                    "lookup": answer.lookup,
                    "source": answer.source_id,
                    "ms": answer.response_time_ms,
                    **extra,
                },
            )

    async def _settle(self, job: ClaimedJob, answer: Answer, extra: dict[str, Any]) -> bool:
        """Deliver the answer and mark the job done; False (logged) when that failed."""
        try:
            await asyncio.shield(self.queue.finish(job, answer))
        except LeaseLost:
            log.warning(
                "job %s: lease lost before completing; another worker answers it",
                job.id,
                extra={"action": "complete", **extra},
            )
            return False
        except Exception as exc:  # retried for the lease's length; the queue then hands it out
            log.error(
                "job %s: the answer could not be stored (%s); the job is answered again "
                "once its lease runs out",
                job.id,
                exc if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}",
                extra={"action": "complete", **extra},
            )
            return False
        return True

    async def _hand_back(self, job: ClaimedJob, why: str) -> None:
        try:
            await self.queue.reject(job, why, retry=True, retry_after_s=0)
        except (WorkerError, OSError) as exc:
            log.warning(
                "could not hand job %s back (%s); its lease will expire",
                job.id,
                exc,
                extra={"action": "hand_back", "tenant": self.tenant_id, "job_id": job.id},
            )

    async def _heartbeat_loop(self) -> None:
        """One timer for every job in flight: extend the leases that are due.

        Most jobs end long before their first heartbeat is due, so a job costs
        a dict entry rather than a timer or a task of its own.
        """
        loop = asyncio.get_running_loop()
        beating: set[asyncio.Task[None]] = set()
        try:
            while True:
                await asyncio.sleep(HEARTBEAT_TICK_S)
                now = loop.time()
                for lease in list(self._leases.values()):
                    if lease.due <= now and not lease.beating:
                        lease.beating = True
                        task = asyncio.create_task(
                            self._beat(lease), name=f"heartbeat-{lease.job.id}"
                        )
                        beating.add(task)
                        task.add_done_callback(beating.discard)
        finally:
            for task in beating:
                task.cancel()

    async def _beat(self, lease: _Lease) -> None:
        job = lease.job
        extra = {"action": "heartbeat", "tenant": self.tenant_id, "job_id": job.id}
        try:
            await self.queue.heartbeat(job)
        except LeaseLost:
            if self._leases.pop(job.id, None) is not None:  # not merely settled meanwhile
                log.warning("job %s: lease lost", job.id, extra=extra)
            return
        except Exception as exc:  # a store's raw error too: log it, try again next round
            self._beat_failed(job, exc, extra)
        lease.due = asyncio.get_running_loop().time() + lease.interval
        lease.beating = False

    def _beat_failed(self, job: ClaimedJob, exc: Exception, extra: dict[str, Any]) -> None:
        """Log a failed heartbeat; the same error once a minute, however many jobs it hits."""
        text = str(exc) if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        now = asyncio.get_running_loop().time()
        last = self._beat_errors.get(text)
        if last is not None and now - last < HEARTBEAT_LOG_EVERY_S:
            return
        if len(self._beat_errors) >= 100:  # distinct texts (one per job id?) must not pile up
            self._beat_errors = {
                t: w for t, w in self._beat_errors.items() if now - w < HEARTBEAT_LOG_EVERY_S
            }
        self._beat_errors[text] = now
        log.warning(
            "heartbeat of job %s failed: %s; retrying (this error is logged once a minute)",
            job.id,
            text,
            extra=extra,
        )

    async def _drain(self) -> None:
        """Give in-flight jobs the grace period, then cancel (and hand back) the rest."""
        if not self._tasks:
            return
        log.info(
            "waiting up to %g s for %d job(s) in flight",
            self.settings.grace_s,
            len(self._tasks),
            extra={"action": "drain", "tenant": self.tenant_id},
        )
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.settings.grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def _either(one: asyncio.Event, other: asyncio.Event) -> None:
    """Return once ``one`` or ``other`` is set."""
    waits = {asyncio.ensure_future(one.wait()), asyncio.ensure_future(other.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _first_of(work: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait for ``work`` or ``stop``; True if ``work`` finished first (or both did)."""
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    return work.done()


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, *, enabled: bool = True) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT while inside; restore the old handlers after."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
