"""Wiring one worker process: config, sources, queue, HTTP endpoints, run loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.audit import AuditLog
from worker.config import Tenant, find_config, load_tenant
from worker.engine_client import EngineClient
from worker.engine_queue import EngineQueue
from worker.errors import ConfigError, WorkerError, without_password
from worker.logs import job_context
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.queues import JobQueue, StoreQueue
from worker.runtime import RunSettings, Runtime, stop_on_signals
from worker.sources import Sources
from worker.stores import open_store
from worker.supervisor import Supervisor, watch

if TYPE_CHECKING:
    from worker.http import WorkerApp

__all__ = [
    "READY_SOURCES",
    "Reloads",
    "Worker",
    "audit_target",
    "check_audit_place",
    "engine_settings",
    "follow_config",
    "follow_file",
    "http_endpoints",
    "load",
    "longest_job_s",
    "make_queue",
    "open_worker",
    "queue_target",
    "ready_sources",
    "reload_on_hangup",
    "serve",
    "start_line",
    "tune_gc",
    "watch_from_env",
]

log = logging.getLogger(__name__)


def engine_settings(tenant: Tenant | None = None) -> tuple[str | None, str | None]:
    """Engine URL and token: ``ENGINE_URL`` / ``ENGINE_TOKEN`` over the config's ``engine``."""
    engine = tenant.config.engine if tenant else None
    url = os.environ.get("ENGINE_URL") or (engine.url if engine else None)
    token = os.environ.get("ENGINE_TOKEN") or (engine.token if engine else None)
    return url, token


async def load(tenant_id: str | None, config: Path | None, *, decrypt: bool = True) -> Tenant:
    """The tenant's config from ``--config``, ``config/tenants/``, or the engine.

    The engine's copy is used only when there is no local file: a file that exists
    and does not load is an error, never a reason to fall back on the engine's.
    ``decrypt=False`` leaves ``enc:v1:`` values as they are (`load_tenant`).
    """
    if config is not None:
        return load_tenant(config, tenant_id=tenant_id, decrypt=decrypt)
    if tenant_id is None:
        raise ConfigError("name a tenant with --tenant, or a config file with --config")
    try:
        found = find_config(tenant_id)
    except ConfigError:
        url, token = engine_settings()
        if not url:
            raise
    else:
        return load_tenant(found, tenant_id=tenant_id, decrypt=decrypt)
    async with EngineClient(url, token or "") as client:
        document, etag = await client.tenant_config_if_changed(tenant_id, None)
    tenant = _from_engine(document, tenant_id, url)
    tenant.etag = etag
    return tenant


def _from_engine(document: Any, tenant_id: str, url: str) -> Tenant:
    if not isinstance(document, dict):
        raise ConfigError(f"the engine's config for {tenant_id!r} is not a JSON object")
    return load_tenant(
        document=document, tenant_id=tenant_id, name=f"{url} config of {tenant_id}", origin="engine"
    )


def make_queue(tenant: Tenant) -> JobQueue | None:
    """The direct queue if one is configured (``queue`` / ``QUEUE_DSN``), else the engine."""
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    target = queue_target(tenant)
    if target:
        return StoreQueue(open_store(target), tenant.tenant_id, worker_id)
    url, token = engine_settings(tenant)
    if url:
        if not token:
            raise ConfigError("the engine needs a token: set ENGINE_TOKEN or engine.token")
        return EngineQueue(EngineClient(url, token), tenant.tenant_id, worker_id)
    return None


@dataclass
class Worker:
    tenant: Tenant
    sources: Sources
    pipeline: Pipeline
    queue: JobQueue | None
    app: WorkerApp | None = None

    def switch_to(self, tenant: Tenant) -> Pipeline:
        """A pipeline on a new config, sharing metrics and audit; becomes the current one."""
        old = self.pipeline
        self.tenant = tenant
        self.sources = Sources(tenant, old.metrics)
        self.pipeline = _pipeline(tenant, self.sources, old.metrics, old.audit)
        if self.app is not None:
            self.app.pipeline = self.pipeline
        return self.pipeline


def _pipeline(
    tenant: Tenant, sources: Sources, metrics: Metrics, audit: AuditLog | None
) -> Pipeline:
    pipeline = Pipeline(tenant, sources, metrics, audit)
    pipeline.redactor.add([engine_settings(tenant)[1] or "", os.environ.get("WORKER_TOKEN", "")])
    pipeline.redactor.install()
    return pipeline


def queue_target(tenant: Tenant) -> str | None:
    """The queue database: ``QUEUE_DSN``, else the config's ``queue`` block."""
    target = os.environ.get("QUEUE_DSN")
    queue = tenant.config.queue
    if not target and queue is not None:
        if queue.postgres is not None:
            target = queue.postgres.dsn
        elif queue.sqlite is not None and queue.sqlite.path:
            raw = Path(queue.sqlite.path)
            target = str(raw if raw.is_absolute() else tenant.base_dir / raw)
    return target or None


def start_line(tenant: Tenant) -> str:
    """Where the config came from and which queue runs, without any password."""
    url = engine_settings(tenant)[0]
    if tenant.path is not None:
        origin = f"config from {tenant.path}"
    else:
        origin = f"config from the engine at {without_password(url or '?')}"
    target = queue_target(tenant)
    if target and target.startswith(("postgres://", "postgresql://")):
        queue = f"direct PostgreSQL queue at {without_password(target)}"
    elif target:
        queue = f"direct SQLite queue at {target.removeprefix('sqlite:///')}"
    elif url:
        queue = f"engine queue at {without_password(url)}"
    else:
        queue = "no queue (push webhooks only)"
    return f"{origin}; {queue}"


def audit_target(tenant: Tenant) -> str:
    """``AUDIT_DSN``, the config's ``audit.dsn``, the queue's database, or a file: in
    ``WORKER_STATE_DIR`` when set (the image sets it: its config may be mounted
    read-only), else beside the config."""
    audit = tenant.config.audit
    explicit = os.environ.get("AUDIT_DSN") or (audit.dsn if audit else None)
    if explicit:
        return explicit
    queue = queue_target(tenant)
    if queue:
        return queue.removeprefix("sqlite:///").removeprefix("sqlite://")
    state = os.environ.get("WORKER_STATE_DIR", "").strip()
    folder = Path(state) if state else tenant.path.parent if tenant.path else Path.cwd()
    return str(folder / f"{tenant.tenant_id}.audit.db")


def check_audit_place(target: str) -> None:
    """A SQLite audit file must be writable: a wrong place is a setting to fix, found
    at start rather than as rows that never get written (a database server that is
    down is different: its rows wait in memory, `AuditLog`)."""
    if target.startswith(("postgres://", "postgresql://")):
        return
    path = Path(target.removeprefix("sqlite:///").removeprefix("sqlite://"))
    try:
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise NotADirectoryError(20, f"{blocking} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path if path.exists() else path.parent, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the audit log at {path}: {exc.strerror or exc}; set "
            "WORKER_STATE_DIR to a writable folder, or AUDIT_DSN (or audit: dsn: in the "
            "config) to a writable file or a postgresql:// database"
        ) from None


@contextlib.asynccontextmanager
async def open_worker(tenant: Tenant, *, with_queue: bool = True) -> AsyncIterator[Worker]:
    """Everything one tenant's worker holds open, closed on the way out."""
    metrics = Metrics()
    sources = Sources(tenant, metrics)
    target = audit_target(tenant)
    check_audit_place(target)
    audit = AuditLog(target, flush_s=float(os.environ.get("WORKER_AUDIT_FLUSH_S", "0.5")))
    pipeline = _pipeline(tenant, sources, metrics, audit)
    queue = make_queue(tenant) if with_queue else None
    if queue is not None:
        queue.metrics = metrics  # retried reply deliveries
    worker = Worker(tenant, sources, pipeline, queue)
    try:
        await audit.open()
        if isinstance(queue, StoreQueue):
            await queue.store.open()
            # The audit table in the queue's database: rows go with the jobs' completions.
            same_database = audit.is_postgres and target == queue_target(tenant)
            if same_database and queue.store.carry_audit(audit.table, audit.refused):
                audit.with_completion = True
                queue.audit = audit
        yield worker
    finally:
        try:
            if queue is not None:
                await queue.close()
            await worker.sources.close()
        finally:
            await audit.close()  # after the queue: rows of the last completions settle first


@contextlib.asynccontextmanager
async def http_endpoints(worker: Worker, listen: str | None) -> AsyncIterator[None]:
    if not listen:
        yield
        return
    # The HTTP server (aiohttp) is imported only by a worker that listens: not by
    # `worker lookup`, `config check` or a `worker run --listen ''`.
    from aiohttp import web

    from worker.http import WorkerApp, parse_listen
    from worker.http_guard import GuardedRunner
    from worker.processes import REUSE_PORT_ENV

    host, port = parse_listen(listen)
    token = os.environ.get("WORKER_TOKEN") or engine_settings(worker.tenant)[1]
    app = WorkerApp(worker.pipeline, worker.queue, token=token, ready_sources=ready_sources())
    worker.app = app
    # GuardedRunner: a request head has WORKER_HTTP_HEADER_TIMEOUT_S (10 s) to arrive whole.
    runner = GuardedRunner(app.app(), access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    try:
        # A child of `worker run --processes N` shares the port with its siblings.
        reuse_port = os.environ.get(REUSE_PORT_ENV) == "1"
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        log.info(
            "listening on %s:%d",
            host,
            port,
            extra={"action": "listen", "tenant": worker.tenant.tenant_id},
        )
        yield
    finally:
        await runner.cleanup()


#: The young generation's collection threshold while serving (CPython's default is 700).
GC_THRESHOLD = (10_000, 50, 100)


def tune_gc() -> None:
    """Collect cyclic garbage less often while serving, and never re-scan start-up objects.

    A job allocates a few hundred short-lived objects that reference counting frees;
    at CPython's default threshold the collector still ran so often under load that
    it took about a fifth of the worker's CPU (bench/README.md). ``gc.freeze`` moves
    everything alive after start-up (modules, config, compiled templates) out of the
    collector's reach; ``WORKER_GC=default`` leaves the interpreter as it is.
    """
    if os.environ.get("WORKER_GC", "").strip().lower() == "default":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def serve(
    tenant: Tenant,
    settings: RunSettings,
    *,
    listen: str | None,
    stop: asyncio.Event | None = None,
    signals: bool = True,
    watch_files: bool = False,
    reload: asyncio.Event | None = None,
) -> int:
    """``worker run``: serve until SIGTERM (or, with ``once``, until the queue is empty).

    SIGHUP (or setting ``reload``) reloads the config: the local file again, or the
    engine's copy at once. ``watch_files`` (or ``WORKER_CONFIG_WATCH=1``) also reloads
    a local file when it or a template in its templates folder changes.

    Returns the exit status: 0, or `EXIT_TASK_DIED` when a background task died
    (worker.supervisor): the worker then stops as on SIGTERM, so that whatever
    runs it (a container, systemd) starts a fresh one.
    """
    stop = stop or asyncio.Event()
    reload = reload or asyncio.Event()
    watch_files = watch_files or watch_from_env()
    supervisor = Supervisor(stop, tenant=tenant.tenant_id)
    for warning in tenant.warnings:
        log.warning(warning, extra={"action": "config", "tenant": tenant.tenant_id})
    with job_context(tenant.tenant_id), supervisor.active():
        async with open_worker(tenant) as worker, http_endpoints(worker, listen):
            if worker.queue is None and settings.once:
                raise ConfigError(
                    "nothing to drain: set ENGINE_URL and ENGINE_TOKEN, "
                    "or queue: in the config (or QUEUE_DSN)"
                )
            log.info(
                "serving tenant %s: %s",
                tenant.tenant_id,
                start_line(tenant),
                extra={"action": "start", "tenant": tenant.tenant_id},
            )
            with stop_on_signals(stop, enabled=signals), reload_on_hangup(reload, enabled=signals):
                try:
                    work = _work(
                        worker, settings, stop, supervisor, reload, watch_files=watch_files
                    )
                    await supervisor.run(work, name="claim-loop")
                finally:
                    await supervisor.close()
    return supervisor.exit_code


async def _work(
    worker: Worker,
    settings: RunSettings,
    stop: asyncio.Event,
    supervisor: Supervisor,
    reload: asyncio.Event,
    *,
    watch_files: bool,
) -> None:
    """The claim loop (and the config follower beside it), or push webhooks only."""
    tenant = worker.tenant
    runtime = Runtime(worker.queue, worker.pipeline, settings) if worker.queue else None
    reloads = Reloads(worker, runtime)
    try:
        if tenant.path is not None:
            follow = follow_file(worker, reloads, stop, reload, watch_files=watch_files)
            supervisor.start(follow, name="config-reloader")
        elif engine_settings(tenant)[0]:
            supervisor.start(follow_config(worker, reloads, stop, reload), name="config-poller")
        if runtime is None:
            log.warning(
                "no engine or queue configured: serving push webhooks only",
                extra={"action": "start", "tenant": tenant.tenant_id},
            )
            await stop.wait()
        else:
            await runtime.run(stop)
    finally:
        await reloads.close()


#: what ``WORKER_READY_SOURCES`` may say (`ready_sources`)
READY_SOURCES = ("ignore", "any", "all")
_YES = frozenset({"1", "true", "yes", "on"})
_NO = frozenset({"", "0", "false", "no", "off"})


def ready_sources() -> str:
    """``WORKER_READY_SOURCES``: whether open circuits make ``/readyz`` answer 503.

    ``ignore`` (the default: a source that is down is answered with its fallback,
    and a replica taken out of the load balancer would answer nothing at all),
    ``any`` (one source's circuit open) or ``all`` (every source's circuit open).
    """
    value = os.environ.get("WORKER_READY_SOURCES", "ignore").strip().lower() or "ignore"
    if value not in READY_SOURCES:
        raise ConfigError(f"WORKER_READY_SOURCES must be ignore, any or all, not {value!r}")
    return value


def watch_from_env() -> bool:
    """``WORKER_CONFIG_WATCH``: 1/true/yes/on to reload a config file when it changes."""
    value = os.environ.get("WORKER_CONFIG_WATCH", "").strip().lower()
    if value not in _YES | _NO:
        raise ConfigError(f"WORKER_CONFIG_WATCH must be 1 or 0, not {value!r}")
    return value in _YES


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


#: seconds added to a config's slowest job before a replaced pipeline's sources close
RETIRE_MARGIN_S = 1.0
#: a health check's own limit (`Sources.check`): test-connection runs on a pipeline too
_CHECK_S = 10.0


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
    url, token = engine_settings(worker.tenant)
    interval = float(os.environ.get("WORKER_CONFIG_POLL_S", "5"))
    tenant_id = worker.tenant.tenant_id
    etag = worker.tenant.etag
    extra = {"action": "config", "tenant": tenant_id}
    async with EngineClient(url or "", token or "") as client:
        while not stop.is_set():
            await _wake(stop, reload, interval)
            reload.clear()
            try:
                document, fresh = await client.tenant_config_if_changed(tenant_id, etag)
            except WorkerError as exc:
                log.warning("config poll failed: %s", exc, extra=extra)
                continue
            if document is None:
                continue
            etag = fresh
            try:
                tenant = _from_engine(document, tenant_id, url or "")
            except ConfigError as exc:
                log.error(
                    "the engine's new config does not load; keeping the old one: %s",
                    exc,
                    extra=extra,
                )
                continue
            tenant.etag = fresh
            reloads.switch(tenant)
            log.info("config changed (%s): new jobs use it", fresh, extra=extra)


#: most files of a templates folder a file watch looks at
WATCH_MAX_FILES = 1000

_Stamp = tuple[tuple[str, int, int], ...]


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
    interval = float(os.environ.get("WORKER_CONFIG_POLL_S", "5")) if watch_files else None
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
