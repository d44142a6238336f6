"""Live connectors of one tenant: opened lazily, once, and closed together.

Opening a source, its reads and its health check run inside
`connectors.egress.reaching` the tenant's reach: for a config the engine
serves, every connection its driver makes and every file it names is checked
(contract §5.0), and a refusal is answered as one clear `SourceUnavailable`.

Each source has a `Gate`: at most ``max_concurrency`` reads on it at once
(protecting the tenant's system; for a pooled source never more than its
``pool_size``, since a read holds a connection), the rest wait in arrival
order. The wait counts against the job's deadline. The gate also knows how
long a read holds its slot, which is what the run loop's admission asks
(`Sources.room`): how many more jobs could start and finish in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from connectors.base import Connector
from connectors.egress import Reach, reaching, refusal_in
from worker.circuit import Circuit
from worker.config import Tenant
from worker.errors import (
    CircuitOpen,
    ConfigError,
    InputRefused,
    SourceError,
    SourceFull,
    SourceTimeout,
    SourceUnavailable,
)
from worker.logs import mask_customer_values
from worker.metrics import Metrics, error_kind
from worker.redact import Redactor
from worker.status import ERROR_CHARS, SourceStatus

__all__ = ["DEFAULT_MAX_CONCURRENCY", "Gate", "HealthReport", "Sources"]

log = logging.getLogger(__name__)

#: reads at once on a source without ``max_concurrency`` or a ``pool_size`` of its
#: own: the SQL pools' default too, so 100 simultaneous lookups on a 2 s source end
#: within 8 s, while one worker takes at most a quarter of a small database's 100
#: connections
DEFAULT_MAX_CONCURRENCY = 25
#: the share of a deadline admission plans to fill with waiting and reading: read
#: times vary, and a job spends a little time before and after its read
ADMIT_SHARE = 0.75
#: weight of the newest read in the moving average of how long a read holds a slot
_HOLD_WEIGHT = 0.2
#: `Sources.room` of a tenant with no sources: nothing to protect, the run loop's own cap rules
_NO_SOURCE_ROOM = 1_000_000
#: how long a gate lowered by a full source (`SourceFull`) waits before trying one more slot
_FULL_RETRY_S = 5.0


@dataclass(frozen=True)
class HealthReport:
    source_id: str
    ok: bool
    response_time_ms: int
    error: str | None = None
    #: things that work but should not be so, such as an account that could write
    warnings: tuple[str, ...] = ()
    #: the source did not answer at all (refused, unknown host, no answer in time), as
    #: against answering with an error (refused credentials, a failing query)
    unreachable: bool = False


class Gate:
    """At most ``cap`` reads at once on one source; the others wait, first come first served.

    A slot freed goes straight to the longest waiter, so ``in_use`` never drops
    while anyone waits and a late arrival cannot overtake. A waiter cancelled
    (its deadline, the worker stopping) leaves the line and frees nothing it
    did not take; one cancelled just as a slot reached it passes the slot on.

    A source that refuses another connection (`SourceFull`) lowers ``limit`` to
    the reads that hold one: the others wait for those connections instead of
    failing. One more slot is tried every `_FULL_RETRY_S`, back up to ``cap``.
    """

    def __init__(
        self,
        cap: int,
        deadline_s: float,
        changed: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cap < 1:
            raise ValueError("a gate needs at least one slot")
        self.cap = cap
        #: reads at once for now: ``cap``, less while the source has no connection to spare
        self.limit = cap
        #: the shortest deadline of the lookups that read this source
        self.deadline_s = deadline_s
        self.in_use = 0
        #: moving average of how long a read held its slot; None before the first ends
        self.hold_s: float | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: set when a read ends or arrives here: what `room` and `stall_in` depend on
        #: (shared by a tenant's gates: the run loop waits on it)
        self.changed = changed if changed is not None else asyncio.Event()
        self.clock = clock
        #: when a read last ended, or the gate last went from idle to busy
        self._progress = clock()
        #: when the source last refused a connection, or ``limit`` last grew again
        self._full_at = clock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return self.in_use + len(self._waiters)

    def room(self) -> int:
        """How many more reads could start now and end within ``deadline_s``.

        ``cap`` slots serve ``deadline_s / hold_s`` reads each in a deadline; the
        reads in use and waiting come first. Until a read has ended, only what
        can start at once is safe. Never less than ``cap − busy``: those start now.
        """
        if self.hold_s is None:
            can = self.limit
        else:
            rounds = ADMIT_SHARE * self.deadline_s / max(self.hold_s, 1e-3)
            can = max(self.limit, math.floor(self.limit * rounds))
        return can - self.busy

    def stall_in(self) -> float | None:
        """Seconds until this busy gate counts as stalled if no read ends before (≤ 0:
        it is; None: idle). Twice the usual read time without one ending, or, before
        any has ended, the share of the deadline admission plans with."""
        if not self.busy:
            return None
        patience = ADMIT_SHARE * self.deadline_s if self.hold_s is None else 2 * self.hold_s
        return self._progress + patience - self.clock()

    def take(self) -> bool:
        """A read arrives: it takes a free slot at once (True) or must `wait` for one."""
        if not self.busy:
            self._progress = self.clock()  # its stall clock starts
        self.changed.set()  # a job placed: it no longer counts as anywhere (`Sources.room`)
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def wait(self) -> None:
        """Wait in line for a slot, after `take` found none free."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._hand_on()  # the slot reached us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self, held_s: float) -> None:
        """Give a slot back after holding it ``held_s`` seconds."""
        if self.hold_s is None:
            self.hold_s = held_s
        else:
            self.hold_s += _HOLD_WEIGHT * (held_s - self.hold_s)
        self._progress = self.clock()
        if self.limit < self.cap and self._progress - self._full_at >= _FULL_RETRY_S:
            self.limit += 1  # try one more connection
            self._full_at = self._progress
        self._hand_on()
        self.changed.set()

    def full(self) -> None:
        """The source refused a connection to a read holding a slot here: from now on
        only as many reads as hold one (the others, less this one) go at once."""
        self.limit = max(1, min(self.limit, self.in_use - 1))
        self._full_at = self.clock()

    def _hand_on(self) -> None:
        if self.in_use > self.limit:  # ``limit`` fell: this slot is not handed on
            self.in_use -= 1
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands: in_use stays
                return
        self.in_use -= 1


class Sources:
    """One connector per configured source, opened on first use, each behind a circuit
    and a gate."""

    def __init__(self, tenant: Tenant, metrics: Metrics | None = None) -> None:
        self.tenant = tenant
        self.metrics = metrics
        self._live: dict[str, Connector] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._circuits: dict[str, Circuit] = {}
        self._shown: dict[str, int] = {}  # source id -> the circuit gauge's value
        self._gates: dict[str, Gate] = {}
        self._last_ok: dict[str, float] = {}  # source id -> wall clock of its last good read
        self._last_error: dict[str, tuple[float, str]] = {}  # … of its last failure, and why
        self._redactor: Redactor | None = None
        #: set whenever a read on any of the tenant's sources arrives or ends
        self.changed = asyncio.Event()

    def gate(self, source_id: str) -> Gate:
        gate = self._gates.get(source_id)
        if gate is None:
            gate = Gate(self._cap(source_id), self._deadline_s(source_id), self.changed)
            self._gates[source_id] = gate
        return gate

    def _cap(self, source_id: str) -> int:
        """``max_concurrency``, within the source's ``pool_size`` if it has one."""
        declared = next(
            (s.max_concurrency for s in self.tenant.config.data_sources if s.id == source_id),
            None,
        )
        source = self.tenant.sources.get(source_id)
        pool = getattr(source.settings, "pool_size", None) if source else None
        if isinstance(declared, int) and isinstance(pool, int) and declared > pool:
            log.warning(
                "source %s: max_concurrency %d is above its pool_size %d: %d reads at once",
                source_id,
                declared,
                pool,
                pool,
                extra={"action": "open", "source": source_id},
            )
        caps = [c for c in (declared, pool) if isinstance(c, int)]
        return min(caps) if caps else DEFAULT_MAX_CONCURRENCY

    def _deadline_s(self, source_id: str) -> float:
        """The shortest deadline of the lookups (and knowledge fallbacks) on the source."""
        deadlines = [self.tenant.config.defaults.timeout_s]
        for lookup in self.tenant.lookups.values():
            if lookup.source_id == source_id:
                deadlines.append(lookup.timeout_s)
            if lookup.knowledge is not None and lookup.knowledge.source_id == source_id:
                deadlines.append(lookup.knowledge.timeout_s)
        return min(deadlines)

    def room(self, in_flight: int) -> int:
        """How many more jobs the sources can start and answer before their deadlines.

        A job's source is known only once it is claimed, so the answer is safe
        for the case where every new job lands on the tightest source: the
        least room among the busy sources (all of them when none is busy), less
        the ``in_flight`` jobs not yet at any gate (they may land there too). An
        idle source does not hold back the others' jobs, and neither does a
        stalled one (`Gate.stall_in`): jobs behind it in the queue for other
        sources go on being claimed, while its own wait for it within their deadline.
        """
        gates = [self.gate(source_id) for source_id in self.tenant.sources]
        if not gates:
            return _NO_SOURCE_ROOM
        busy = [g for g in gates if g.busy]
        unplaced = max(0, in_flight - sum(g.busy for g in busy))
        limiting = [g for g in busy if (g.stall_in() or 0) > 0] or [g for g in gates if not g.busy]
        if not limiting:  # every source is stalled: the run loop's own cap rules
            return _NO_SOURCE_ROOM
        return max(0, min(g.room() for g in limiting) - unplaced)

    def stall_in(self) -> float | None:
        """Seconds until a busy source counts as stalled (and `room` may grow): when to
        look again if no read ends before; None when no source is busy."""
        times = [t for g in self._gates.values() if (t := g.stall_in()) is not None and t > 0]
        return min(times) if times else None

    @contextlib.asynccontextmanager
    async def reading(self, source_id: str, deadline: float) -> AsyncIterator[Connector]:
        """The source's connector for one read, with a slot of its gate, inside its
        circuit, all before ``deadline`` (the event loop's clock).

        Waiting for the slot counts against the deadline; a wait that runs out
        says nothing about the source, so the circuit does not count it.
        """
        circuit = self.circuit(source_id)
        if circuit.state == "open":  # fail at once rather than after queueing
            self._count(source_id, "circuit_open")
            raise _circuit_open(source_id, circuit)
        gate = self.gate(source_id)
        if not gate.take():
            try:
                async with asyncio.timeout_at(deadline):
                    await gate.wait()
            except TimeoutError:
                busy = f"all {gate.limit} of the source's read slots stayed busy until the deadline"
                self._count(source_id, "busy")
                raise SourceTimeout(source_id, busy) from None
        started = time.perf_counter()
        try:
            # The circuit sits outside the deadline so that a timeout counts as a failure.
            async with self.guarded(source_id), asyncio.timeout_at(deadline):
                yield await self.get(source_id)
        except SourceFull:
            gate.full()
            raise
        finally:
            gate.release(time.perf_counter() - started)

    def circuit(self, source_id: str) -> Circuit:
        circuit = self._circuits.get(source_id)
        if circuit is None:
            source = self.tenant.sources.get(source_id)
            settings = source.circuit if source else None
            circuit = Circuit(settings.failures, settings.reset_s) if settings else Circuit()
            self._circuits[source_id] = circuit
        return circuit

    @contextlib.asynccontextmanager
    async def guarded(self, source_id: str) -> AsyncIterator[None]:
        """Let a read through if the source's circuit allows it, and count how it went."""
        circuit = self.circuit(source_id)
        try:
            circuit.before()
        except CircuitOpen:
            self._count(source_id, "circuit_open")
            raise _circuit_open(source_id, circuit) from None
        try:
            with self._fence(source_id):
                yield
        except (InputRefused, SourceFull) as exc:  # the customer's value; a source up but full
            circuit.undecided()  # say nothing about the source, but free a trial read
            if isinstance(exc, SourceFull):
                self._count(source_id, "full")
            raise
        except Exception as exc:  # SourceError, the deadline, a driver error let through
            circuit.failed()  # counts, and frees a trial read: no circuit stays wedged
            self._count(source_id, error_kind(exc))
            self._last_error[source_id] = (time.time(), self._error_text(exc))
            raise
        except BaseException:  # the job cancelled (the worker stops), the interpreter exiting
            circuit.undecided()
            raise
        else:
            circuit.succeeded()
            self._last_ok[source_id] = time.time()
        finally:
            self._show(source_id, circuit)

    def _error_text(self, exc: Exception) -> str:
        """What the status page may show of a failure: no secret of the config, no value
        of the job that met it, not too long."""
        if self._redactor is None:
            self._redactor = Redactor(self.tenant.secrets)
        text = str(exc) or type(exc).__name__
        text = mask_customer_values(self._redactor.scrub(text))
        return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"

    def status(self) -> list[SourceStatus]:
        """Each configured source as `GET /status` shows it, in config order."""
        rows = []
        for config in self.tenant.config.data_sources:
            source = self.tenant.sources.get(config.id)
            circuit = self._circuits.get(config.id)
            gate = self.gate(config.id)  # made once (its cap's warning too), as `room` does
            error_at, error = self._last_error.get(config.id, (None, None))
            rows.append(
                SourceStatus(
                    config.id,
                    config.name or config.id,
                    config.type,
                    circuit.state if circuit else "closed",
                    gate.in_use,
                    gate.waiting,
                    gate.limit,
                    problem=source.problem if source else None,
                    last_error=error,
                    last_error_at=error_at,
                    last_ok_at=self._last_ok.get(config.id),
                )
            )
        return rows

    def _count(self, source_id: str, kind: str) -> None:
        """A failed read on ``worker_source_errors_total``."""
        if self.metrics is not None:
            self.metrics.source_failed(source_id, kind)

    def down(self) -> list[str]:
        """The sources whose circuit is open, in config order: what ``/readyz`` reports.

        Half-open is not down: a probe that kept a replica out of the load balancer
        until a read succeeded would send it no reads to succeed with.
        """
        circuits = self._circuits
        return [
            config.id
            for config in self.tenant.config.data_sources
            if config.id in circuits and circuits[config.id].state == "open"
        ]

    def _show(self, source_id: str, circuit: Circuit) -> None:
        """The circuit's state on ``worker_source_circuit_open``, set when it changes
        (a gauge's ``labels()`` on every read cost more than the read's own bookkeeping)."""
        shown = 1 if circuit.state == "open" else 0
        if self.metrics is not None and self._shown.get(source_id) != shown:
            self._shown[source_id] = shown
            self.metrics.circuit_open.labels(source_id).set(shown)

    def _fence(self, source_id: str) -> contextlib.AbstractContextManager[None]:
        """The tenant's reach in force for what runs inside (nothing to do for a file config)."""
        reach = self.tenant.reach
        return contextlib.nullcontext() if reach.trusted else _fenced(reach, source_id)

    async def get(self, source_id: str) -> Connector:
        live = self._live.get(source_id)
        if live is not None:
            return live
        lock = self._locks.setdefault(source_id, asyncio.Lock())
        async with lock:
            live = self._live.get(source_id)
            if live is None:
                live = await self._open(source_id)
                self._live[source_id] = live
        return live

    async def _open(self, source_id: str) -> Connector:
        source = self.tenant.sources.get(source_id)
        if source is None:
            raise SourceUnavailable(source_id, "no such data source in this tenant's config")
        reach = self.tenant.reach
        with self._fence(source_id):
            try:
                connector = source.make_connector(self.tenant.base_dir, reach)
            except ConfigError as exc:
                raise SourceUnavailable(source_id, exc.message) from exc
            if not reach.trusted:  # a clear answer before any driver tries
                for host, port in connector.targets():
                    await reach.check_host(source_id, host, port)
            await connector.open()
        log.info("opened source %s", source_id, extra={"action": "open", "source": source_id})
        return connector

    async def check(self, source_id: str, *, timeout_s: float = 10.0) -> HealthReport:
        """The source's own health check, timed; never raises."""
        started = time.perf_counter()
        unreachable = False
        try:
            with self._fence(source_id):
                async with asyncio.timeout(timeout_s):
                    connector = await self.get(source_id)
                    await connector.health_check()
        except TimeoutError:
            error: str | None = f"no answer within {timeout_s:g} s"
            unreachable = True
        except SourceError as exc:
            error = exc.message
            unreachable = isinstance(exc, SourceUnavailable | SourceTimeout)
        except Exception as exc:  # a connector that let a driver error through
            log.exception("health check of %s failed", source_id, extra={"action": "check"})
            error = f"unexpected {type(exc).__name__} (see the worker log)"
        else:
            error = None
        elapsed = round((time.perf_counter() - started) * 1000)
        warnings = await self._warnings(source_id, timeout_s) if error is None else ()
        return HealthReport(source_id, error is None, elapsed, error, warnings, unreachable)

    async def _warnings(self, source_id: str, timeout_s: float) -> tuple[str, ...]:
        """What a passed check warns about: an account that could write. Never raises."""
        try:
            with self._fence(source_id):
                async with asyncio.timeout(timeout_s):
                    powers = await (await self.get(source_id)).write_access()
        except (TimeoutError, SourceError) as exc:
            log.warning(
                "could not ask %s what its account may change: %s",
                source_id,
                exc.message if isinstance(exc, SourceError) else "no answer in time",
                extra={"action": "check", "source": source_id},
            )
            return ()
        if not powers:
            return ()
        return (f"the account can write ({'; '.join(powers)}): give it a read-only role",)

    async def close(self) -> None:
        live, self._live = self._live, {}
        for source_id, connector in live.items():
            try:
                await connector.close()
            except Exception:  # closing must go on for the others
                log.exception("closing source %s failed", source_id, extra={"action": "close"})


def _circuit_open(source_id: str, circuit: Circuit) -> SourceUnavailable:
    return SourceUnavailable(
        source_id,
        f"skipped: the source failed repeatedly (circuit open for {circuit.reset_s:g} s)",
    )


@contextlib.contextmanager
def _fenced(reach: Reach, source_id: str) -> Iterator[None]:
    """``reach`` held for the code inside; a connection or file it refused, however a
    driver wrapped it, comes out as one clear `SourceUnavailable`."""
    try:
        with reaching(reach):
            yield
    except Exception as exc:
        refused = refusal_in(exc)
        if refused is None:
            raise
        raise SourceUnavailable(source_id, str(refused)) from exc
