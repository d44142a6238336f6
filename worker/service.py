"""Wiring one worker process: config, sources, queue, HTTP endpoints, run loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.audit import AuditLog
from worker.config import Tenant, find_config, load_tenant
from worker.engine_client import EngineClient
from worker.errors import ConfigError, WorkerError
from worker.logs import job_context
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.queues import EngineQueue, JobQueue, StoreQueue
from worker.runtime import RunSettings, Runtime, stop_on_signals
from worker.sources import Sources
from worker.stores import open_store
from worker.supervisor import Supervisor, watch

if TYPE_CHECKING:
    from worker.http import WorkerApp

__all__ = [
    "Worker",
    "audit_target",
    "engine_settings",
    "follow_config",
    "http_endpoints",
    "load",
    "make_queue",
    "open_worker",
    "queue_target",
    "serve",
    "tune_gc",
]

log = logging.getLogger(__name__)


def engine_settings(tenant: Tenant | None = None) -> tuple[str | None, str | None]:
    """Engine URL and token: ``ENGINE_URL`` / ``ENGINE_TOKEN`` over the config's ``engine``."""
    engine = tenant.config.engine if tenant else None
    url = os.environ.get("ENGINE_URL") or (engine.url if engine else None)
    token = os.environ.get("ENGINE_TOKEN") or (engine.token if engine else None)
    return url, token


async def load(tenant_id: str | None, config: Path | None) -> Tenant:
    """The tenant's config from ``--config``, ``config/tenants/``, or the engine."""
    if config is not None:
        return load_tenant(config, tenant_id=tenant_id)
    if tenant_id is None:
        raise ConfigError("name a tenant with --tenant, or a config file with --config")
    try:
        return load_tenant(find_config(tenant_id), tenant_id=tenant_id)
    except ConfigError:
        url, token = engine_settings()
        if not url:
            raise
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


@contextlib.asynccontextmanager
async def open_worker(tenant: Tenant, *, with_queue: bool = True) -> AsyncIterator[Worker]:
    """Everything one tenant's worker holds open, closed on the way out."""
    metrics = Metrics()
    sources = Sources(tenant, metrics)
    target = audit_target(tenant)
    audit = AuditLog(target, flush_s=float(os.environ.get("WORKER_AUDIT_FLUSH_S", "0.5")))
    pipeline = _pipeline(tenant, sources, metrics, audit)
    queue = make_queue(tenant) if with_queue else None
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
    app = WorkerApp(worker.pipeline, worker.queue, token=token)
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
) -> int:
    """``worker run``: serve until SIGTERM (or, with ``once``, until the queue is empty).

    Returns the exit status: 0, or `EXIT_TASK_DIED` when a background task died
    (worker.supervisor): the worker then stops as on SIGTERM, so that whatever
    runs it (a container, systemd) starts a fresh one.
    """
    stop = stop or asyncio.Event()
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
            with stop_on_signals(stop, enabled=signals):
                try:
                    work = _work(worker, settings, stop, supervisor)
                    await supervisor.run(work, name="claim-loop")
                finally:
                    await supervisor.close()
    return supervisor.exit_code


async def _work(
    worker: Worker, settings: RunSettings, stop: asyncio.Event, supervisor: Supervisor
) -> None:
    """The claim loop (and the config poller beside it), or push webhooks only."""
    tenant = worker.tenant
    if worker.queue is None:
        log.warning(
            "no engine or queue configured: serving push webhooks only",
            extra={"action": "start", "tenant": tenant.tenant_id},
        )
        await stop.wait()
        return
    runtime = Runtime(worker.queue, worker.pipeline, settings)
    if tenant.path is None and engine_settings(tenant)[0]:
        supervisor.start(follow_config(worker, runtime, stop), name="config-poller")
    await runtime.run(stop)


async def follow_config(worker: Worker, runtime: Runtime, stop: asyncio.Event) -> None:
    """Poll the engine for a new config (ETag); switch to it without a restart.

    Jobs already running finish on the old pipeline, whose pools close after
    them; new jobs run on the new one. A config that does not load is logged
    and ignored: the worker keeps the one it has.
    """
    url, token = engine_settings(worker.tenant)
    interval = float(os.environ.get("WORKER_CONFIG_POLL_S", "5"))
    tenant_id = worker.tenant.tenant_id
    etag = worker.tenant.etag
    extra = {"action": "config", "tenant": tenant_id}
    retiring: set[asyncio.Task[None]] = set()
    try:
        async with EngineClient(url or "", token or "") as client:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stop.wait()
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
                old = runtime.use(worker.switch_to(tenant))
                log.info("config changed (%s): new jobs use it", fresh, extra=extra)
                task = watch(
                    asyncio.create_task(runtime.retire(old), name="retire-pipeline"), may_end=True
                )
                retiring.add(task)
                task.add_done_callback(retiring.discard)
    finally:
        if retiring:
            await asyncio.gather(*retiring, return_exceptions=True)
