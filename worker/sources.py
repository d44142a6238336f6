"""Live connectors of one tenant: opened lazily, once, and closed together.

Opening a source, its reads and its health check run inside
`connectors.egress.reaching` the tenant's reach: for a config the engine
serves, every connection its driver makes and every file it names is checked
(contract §5.0), and a refusal is answered as one clear `SourceUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from connectors.base import Connector
from connectors.egress import Reach, reaching, refusal_in
from worker.circuit import Circuit, CircuitOpen
from worker.config import Tenant
from worker.errors import ConfigError, InputRefused, SourceError, SourceUnavailable
from worker.metrics import Metrics

__all__ = ["HealthReport", "Sources"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthReport:
    source_id: str
    ok: bool
    response_time_ms: int
    error: str | None = None
    #: things that work but should not be so, such as an account that could write
    warnings: tuple[str, ...] = ()


class Sources:
    """One connector per configured source, opened on first use, each behind a circuit."""

    def __init__(self, tenant: Tenant, metrics: Metrics | None = None) -> None:
        self.tenant = tenant
        self.metrics = metrics
        self._live: dict[str, Connector] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._circuits: dict[str, Circuit] = {}

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
            raise SourceUnavailable(
                source_id,
                f"skipped: the source failed repeatedly (circuit open for {circuit.reset_s:g} s)",
            ) from None
        try:
            with self._fence(source_id):
                yield
        except InputRefused:  # the customer's value, not the source
            circuit.undecided()  # say nothing about the source, but free a trial read
            raise
        except Exception:  # SourceError, the deadline, a driver error a connector let through
            circuit.failed()  # counts, and frees a trial read: no circuit stays wedged
            raise
        except BaseException:  # the job cancelled (the worker stops), the interpreter exiting
            circuit.undecided()
            raise
        else:
            circuit.succeeded()
        finally:
            if self.metrics is not None:
                self.metrics.circuit_open.labels(source_id).set(1 if circuit.state == "open" else 0)

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
        try:
            with self._fence(source_id):
                async with asyncio.timeout(timeout_s):
                    connector = await self.get(source_id)
                    await connector.health_check()
        except TimeoutError:
            error: str | None = f"no answer within {timeout_s:g} s"
        except SourceError as exc:
            error = exc.message
        except Exception as exc:  # a connector that let a driver error through
            log.exception("health check of %s failed", source_id, extra={"action": "check"})
            error = f"unexpected {type(exc).__name__} (see the worker log)"
        else:
            error = None
        elapsed = round((time.perf_counter() - started) * 1000)
        warnings = await self._warnings(source_id, timeout_s) if error is None else ()
        return HealthReport(source_id, error is None, elapsed, error, warnings)

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
