"""Wiring one worker process: config, sources, queue, HTTP endpoints, run loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from worker.audit import AuditLog
from worker.config import Tenant, find_config, load_tenant
from worker.engine_client import EngineClient
from worker.errors import ConfigError
from worker.http import WorkerApp, parse_listen
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.queues import EngineQueue, JobQueue, StoreQueue
from worker.runtime import RunSettings, Runtime, stop_on_signals
from worker.sources import Sources
from worker.stores import open_store

__all__ = [
    "Worker",
    "audit_target",
    "engine_settings",
    "http_endpoints",
    "load",
    "make_queue",
    "open_worker",
    "queue_target",
    "serve",
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
        document = await client.tenant_config(tenant_id)
    if not isinstance(document, dict):
        raise ConfigError(f"the engine's config for {tenant_id!r} is not a JSON object")
    return load_tenant(document=document, tenant_id=tenant_id, name=f"{url} config of {tenant_id}")


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
    """``AUDIT_DSN``, the config's ``audit.dsn``, the queue's database, or a file by the config."""
    audit = tenant.config.audit
    explicit = os.environ.get("AUDIT_DSN") or (audit.dsn if audit else None)
    if explicit:
        return explicit
    queue = queue_target(tenant)
    if queue:
        return queue.removeprefix("sqlite:///").removeprefix("sqlite://")
    folder = tenant.path.parent if tenant.path else Path.cwd()
    return str(folder / f"{tenant.tenant_id}.audit.db")


@contextlib.asynccontextmanager
async def open_worker(tenant: Tenant, *, with_queue: bool = True) -> AsyncIterator[Worker]:
    """Everything one tenant's worker holds open, closed on the way out."""
    metrics = Metrics()
    sources = Sources(tenant, metrics)
    audit = AuditLog(audit_target(tenant))
    pipeline = Pipeline(tenant, sources, metrics, audit)
    pipeline.redactor.add([engine_settings(tenant)[1] or "", os.environ.get("WORKER_TOKEN", "")])
    pipeline.redactor.install()
    queue = make_queue(tenant) if with_queue else None
    try:
        await audit.open()
        if isinstance(queue, StoreQueue):
            await queue.store.open()
        yield Worker(tenant, sources, pipeline, queue)
    finally:
        if queue is not None:
            await queue.close()
        await sources.close()
        await audit.close()


@contextlib.asynccontextmanager
async def http_endpoints(worker: Worker, listen: str | None) -> AsyncIterator[None]:
    if not listen:
        yield
        return
    host, port = parse_listen(listen)
    token = os.environ.get("WORKER_TOKEN") or engine_settings(worker.tenant)[1]
    app = WorkerApp(worker.pipeline, worker.queue, token=token)
    runner = web.AppRunner(app.app(), access_log=None, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info(
            "listening on %s:%d",
            host,
            port,
            extra={"action": "listen", "tenant": worker.tenant.tenant_id},
        )
        yield
    finally:
        await runner.cleanup()


async def serve(
    tenant: Tenant,
    settings: RunSettings,
    *,
    listen: str | None,
    stop: asyncio.Event | None = None,
    signals: bool = True,
) -> int:
    """``worker run``: serve until SIGTERM (or, with ``once``, until the queue is empty)."""
    stop = stop or asyncio.Event()
    for warning in tenant.warnings:
        log.warning(warning, extra={"action": "config", "tenant": tenant.tenant_id})
    async with open_worker(tenant) as worker, http_endpoints(worker, listen):
        with stop_on_signals(stop, enabled=signals):
            if worker.queue is None:
                if settings.once:
                    raise ConfigError(
                        "nothing to drain: set ENGINE_URL and ENGINE_TOKEN, "
                        "or queue: in the config (or QUEUE_DSN)"
                    )
                log.warning(
                    "no engine or queue configured: serving push webhooks only",
                    extra={"action": "start", "tenant": tenant.tenant_id},
                )
                await stop.wait()
                return 0
            runtime = Runtime(worker.queue, worker.pipeline, settings)
            await runtime.run(stop)
    return 0
