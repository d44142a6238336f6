"""Config reload without a restart: SIGHUP, the engine's new copy, a watched file.

`Reloads` switches a running worker to a new config; `follow_config` polls the
engine for one, `follow_file` loads the config file again (on SIGHUP, or when it
or a template changes with ``--watch`` / ``WORKER_CONFIG_WATCH``). A config that
does not load is logged, and the worker keeps the one it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from worker.config import Tenant, load_tenant
from worker.engine_client import EngineClient
from worker.errors import ConfigError, WorkerError
from worker.precedence import engine_settings
from worker.supervisor import watch

if TYPE_CHECKING:
    from worker.parts import Worker
    from worker.pipeline import Pipeline
    from worker.runtime import Runtime

__all__ = [
    "RETIRE_MARGIN_S",
    "WATCH_MAX_FILES",
    "Reloads",
    "follow_config",
    "follow_file",
    "longest_job_s",
    "reload_on_hangup",
    "tenant_from_engine",
]

log = logging.getLogger(__name__)

#: seconds added to a config's slowest job before a replaced pipeline's sources close
RETIRE_MARGIN_S = 1.0
#: a health check's own limit (`Sources.check`): test-connection runs on a pipeline too
_CHECK_S = 10.0
#: most files of a templates folder a file watch looks at
WATCH_MAX_FILES = 1000

_Stamp = tuple[tuple[str, int, int], ...]


def tenant_from_engine(document: Any, tenant_id: str, url: str) -> Tenant:
    """The tenant of a config document the engine at ``url`` served."""
    if not isinstance(document, dict):
        raise ConfigError(f"the engine's config for {tenant_id!r} is not a JSON object")
    return load_tenant(
        document=document, tenant_id=tenant_id, name=f"{url} config of {tenant_id}", origin="engine"
    )


@contextlib.contextmanager
def reload_on_hangup(reload: asyncio.Event, *, enabled: bool = True) -> Iterator[None]:
    """Set ``reload`` on SIGHUP while inside; restore the old handler after."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


class Reloads:
    """Switches a running worker to a new config (the engine's, or the file again).

    New jobs run on the new pipeline at once. Jobs the run loop claimed finish on
    the old one (`Runtime.retire` waits for them); a pushed job (webhook) is not
    counted, so the old sources stay open for as long as one of the old config's
    jobs may take (`longest_job_s`), then close. Metrics and the audit log are shared.
    """

    def __init__(self, worker: Worker, runtime: Runtime | None) -> None:
        self.worker = worker
        self.runtime = runtime
        self._retiring: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    def switch(self, tenant: Tenant) -> None:
        old = self.worker.pipeline
        new = self.worker.switch_to(tenant)
        if self.runtime is not None:
            self.runtime.use(new)
        task = watch(asyncio.create_task(self._retire(old), name="retire-pipeline"), may_end=True)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Pipeline) -> None:
        if self.worker.app is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(longest_job_s(old.tenant)):
                    await self._closing.wait()
        if self.runtime is not None:
            await self.runtime.retire(old)  # closes its sources after the last job on it
        else:
            await old.sources.close()

    async def close(self) -> None:
        """The worker stops: retire the old pipelines now (the run loop has drained)."""
        self._closing.set()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def longest_job_s(tenant: Tenant) -> float:
    """How long a job on ``tenant``'s config may take: its slowest lookup, with its
    knowledge fallback, or a source's health check; plus a margin."""
    knowledge = tenant.knowledge.timeout_s if tenant.knowledge else 0.0
    spans = [tenant.config.defaults.timeout_s + knowledge, _CHECK_S]
    for lookup in tenant.lookups.values():
        spans.append(lookup.timeout_s + (lookup.knowledge.timeout_s if lookup.knowledge else 0))
    return max(spans) + RETIRE_MARGIN_S


async def _wake(stop: asyncio.Event, reload: asyncio.Event, timeout_s: float | None) -> None:
    """Return once ``stop`` or ``reload`` is set, or after ``timeout_s`` (None: no limit)."""
    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def follow_config(
    worker: Worker, reloads: Reloads, stop: asyncio.Event, reload: asyncio.Event
) -> None:
    """Poll the engine for a new config (ETag), and at once on ``reload`` (SIGHUP);
    switch to it without a restart (`Reloads`).

    A config that does not load is logged and ignored: the worker keeps the one it has.
    """
    url, token = engine_settings(worker.tenant, worker.env)
    interval = worker.env.config_poll()
    tenant_id = worker.tenant.tenant_id
    etag = worker.tenant.etag
    async with EngineClient(url or "", token or "") as client:
        while not stop.is_set():
            await _wake(stop, reload, interval)
            reload.clear()
            try:
                document, fresh = await client.tenant_config_if_changed(tenant_id, etag)
            except WorkerError as exc:
                log.warning(
                    "config poll failed: %s", exc, extra={"action": "config", "tenant": tenant_id}
                )
                continue
            if document is None:
                continue
            etag = fresh
            _switch_to_engines(reloads, document, fresh, url or "")


def _switch_to_engines(reloads: Reloads, document: Any, etag: str | None, url: str) -> None:
    """Switch to the engine's new config document, unless it does not load."""
    tenant_id = reloads.worker.tenant.tenant_id
    extra = {"action": "config", "tenant": tenant_id}
    try:
        tenant = tenant_from_engine(document, tenant_id, url)
    except ConfigError as exc:
        log.error(
            "the engine's new config does not load; keeping the old one: %s", exc, extra=extra
        )
        return
    tenant.etag = etag
    reloads.switch(tenant)
    log.info("config changed (%s): new jobs use it", etag, extra=extra)


def _stamp(tenant: Tenant) -> _Stamp:
    """The config file's and its templates' modification times and sizes."""
    files = [tenant.path] if tenant.path is not None else []
    folder = tenant.renderer.templates_dir
    if folder is not None and folder.is_dir():
        found = (p for p in folder.rglob("*") if p.is_file())
        files += sorted(itertools.islice(found, WATCH_MAX_FILES))
    seen = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:  # gone for now (an editor's save): that is a change too
            seen.append((str(file), -1, -1))
        else:
            seen.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(seen)


async def follow_file(
    worker: Worker,
    reloads: Reloads,
    stop: asyncio.Event,
    reload: asyncio.Event,
    *,
    watch_files: bool = False,
) -> None:
    """Load the config file again on ``reload`` (SIGHUP) and, with ``watch_files``, when
    it or a template changes (looked at every ``WORKER_CONFIG_POLL_S``); switch to it
    without a restart (`Reloads`). A file that does not load is logged with its file and
    lines, and the worker keeps the config it has.
    """
    interval = worker.env.config_poll() if watch_files else None
    seen = await asyncio.to_thread(_stamp, worker.tenant) if watch_files else ()
    while not stop.is_set():
        await _wake(stop, reload, interval)
        if stop.is_set():
            return
        if reload.is_set():
            reload.clear()
            why = "SIGHUP"
            if watch_files:
                seen = await asyncio.to_thread(_stamp, worker.tenant)
        else:
            now = await asyncio.to_thread(_stamp, worker.tenant)
            if now == seen:
                continue
            seen, why = now, "a file changed"
        if _reload_file(worker, reloads, why) and watch_files:
            seen = await asyncio.to_thread(_stamp, worker.tenant)  # the new templates folder


def _reload_file(worker: Worker, reloads: Reloads, why: str) -> bool:
    """Load ``worker``'s config file again and switch to it; False if it did not load."""
    old = worker.tenant
    path = old.path
    extra = {"action": "config", "tenant": old.tenant_id}
    try:
        tenant = load_tenant(path, tenant_id=old.tenant_id)
        if tenant.tenant_id != old.tenant_id:
            raise ConfigError(
                f"the file now names tenant {tenant.tenant_id!r}; this worker serves "
                f"{old.tenant_id!r} (restart it to serve another)"
            )
    except ConfigError as exc:
        log.error(
            "config reload (%s) failed; keeping the config loaded before: %s", why, exc, extra=extra
        )
        return False
    for warning in tenant.warnings:
        log.warning(warning, extra=extra)
    kept = [
        key
        for key in ("engine", "queue", "audit")
        if getattr(tenant.config, key) != getattr(old.config, key)
    ]
    if kept:
        log.warning(
            "the config's %s changed: that takes a restart; the rest applies now",
            " and ".join(kept),
            extra=extra,
        )
    reloads.switch(tenant)
    log.info("config reloaded from %s (%s): new jobs use it", path, why, extra=extra)
    return True
