"""Wiring one worker process: config, sources, queue, audit log, HTTP endpoints, run loop.

The parts live in their own modules: the running worker's parts in `worker.parts`,
the environment in `worker.settings` and its precedence over the config in
`worker.precedence`, the HTTP server's life in `worker.serving`, config
reload in `worker.reload`, the garbage collector in `worker.gc_tuning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from worker.audit import AuditLog
from worker.config import Tenant, find_config, load_tenant
from worker.engine_client import EngineClient
from worker.engine_queue import EngineQueue
from worker.errors import ConfigError, without_password
from worker.logs import job_context
from worker.metrics import Metrics
from worker.parts import Worker, make_pipeline
from worker.precedence import audit_target, engine_settings, queue_target
from worker.queues import JobQueue, StoreQueue
from worker.reload import Reloads, follow_config, follow_file, reload_on_hangup, tenant_from_engine
from worker.runtime import RunSettings, Runtime, stop_on_signals
from worker.serving import http_endpoints
from worker.settings import Settings
from worker.sources import Sources
from worker.stores import open_store
from worker.supervisor import Supervisor

if TYPE_CHECKING:
    pass

__all__ = [
    "Worker",
    "check_audit_place",
    "load",
    "make_queue",
    "open_worker",
    "serve",
    "start_line",
]

log = logging.getLogger(__name__)


async def load(
    tenant_id: str | None,
    config: Path | None,
    *,
    decrypt: bool = True,
    env: Settings | None = None,
) -> Tenant:
    """The tenant's config from ``--config``, ``config/tenants/``, or the engine.

    The engine's copy is used only when there is no local file: a file that exists
    and does not load is an error, never a reason to fall back on the engine's.
    ``decrypt=False`` leaves ``enc:v1:`` values as they are (`load_tenant`).
    """
    if config is not None:
        return load_tenant(config, tenant_id=tenant_id, decrypt=decrypt)
    if tenant_id is None:
        raise ConfigError("name a tenant with --tenant, or a config file with --config")
    env = env or Settings.load()
    try:
        found = find_config(tenant_id, settings=env)
    except ConfigError:
        url, token = engine_settings(settings=env)
        if not url:
            raise
    else:
        return load_tenant(found, tenant_id=tenant_id, decrypt=decrypt)
    async with EngineClient(url, token or "") as client:
        document, etag = await client.tenant_config_if_changed(tenant_id, None)
    tenant = tenant_from_engine(document, tenant_id, url)
    tenant.etag = etag
    return tenant


def make_queue(tenant: Tenant, env: Settings | None = None) -> JobQueue | None:
    """The direct queue if one is configured (``queue`` / ``QUEUE_DSN``), else the engine."""
    env = env or Settings.load()
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    target = queue_target(tenant, env)
    if target:
        return StoreQueue(open_store(target, env), tenant.tenant_id, worker_id)
    url, token = engine_settings(tenant, env)
    if url:
        if not token:
            raise ConfigError("the engine needs a token: set ENGINE_TOKEN or engine.token")
        return EngineQueue(EngineClient(url, token), tenant.tenant_id, worker_id)
    return None


def start_line(tenant: Tenant, env: Settings | None = None) -> str:
    """Where the config came from and which queue runs, without any password."""
    env = env or Settings.load()
    url = engine_settings(tenant, env)[0]
    if tenant.path is not None:
        origin = f"config from {tenant.path}"
    else:
        origin = f"config from the engine at {without_password(url or '?')}"
    target = queue_target(tenant, env)
    if target and target.startswith(("postgres://", "postgresql://")):
        queue = f"direct PostgreSQL queue at {without_password(target)}"
    elif target:
        queue = f"direct SQLite queue at {target.removeprefix('sqlite:///')}"
    elif url:
        queue = f"engine queue at {without_password(url)}"
    else:
        queue = "no queue (push webhooks only)"
    return f"{origin}; {queue}"


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
async def open_worker(
    tenant: Tenant, *, with_queue: bool = True, env: Settings | None = None
) -> AsyncIterator[Worker]:
    """Everything one tenant's worker holds open, closed on the way out."""
    env = env or Settings.load()
    metrics = Metrics()
    sources = Sources(tenant, metrics)
    target = audit_target(tenant, env)
    check_audit_place(target)
    audit = AuditLog(target, flush_s=env.audit_flush(), pool_mode=env.pool_mode())
    pipeline = make_pipeline(tenant, sources, metrics, audit, env)
    queue = make_queue(tenant, env) if with_queue else None
    if queue is not None:
        queue.metrics = metrics  # retried reply deliveries
    worker = Worker(tenant, sources, pipeline, queue, env)
    try:
        await audit.open()
        if isinstance(queue, StoreQueue):
            await queue.store.open()
            # The audit table in the queue's database: rows go with the jobs' completions.
            same_database = audit.is_postgres and target == queue_target(tenant, env)
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


async def serve(
    tenant: Tenant,
    settings: RunSettings,
    *,
    listen: str | None,
    stop: asyncio.Event | None = None,
    signals: bool = True,
    watch_files: bool = False,
    reload: asyncio.Event | None = None,
    env: Settings | None = None,
) -> int:
    """``worker run``: serve until SIGTERM (or, with ``once``, until the queue is empty).

    SIGHUP (or setting ``reload``) reloads the config: the local file again, or the
    engine's copy at once. ``watch_files`` (or ``WORKER_CONFIG_WATCH=1``) also reloads
    a local file when it or a template in its templates folder changes. ``env``: the
    settings loaded at start (default: `Settings.load` now).

    Returns the exit status: 0, or `EXIT_TASK_DIED` when a background task died
    (worker.supervisor): the worker then stops as on SIGTERM, so that whatever
    runs it (a container, systemd) starts a fresh one.
    """
    env = env or Settings.load()
    stop = stop or asyncio.Event()
    reload = reload or asyncio.Event()
    watch_files = watch_files or env.watch_config()
    supervisor = Supervisor(stop, tenant=tenant.tenant_id)
    for warning in tenant.warnings:
        log.warning(warning, extra={"action": "config", "tenant": tenant.tenant_id})
    with job_context(tenant.tenant_id), supervisor.active():
        async with open_worker(tenant, env=env) as worker, http_endpoints(worker, listen):
            _starting(worker, once=settings.once)
            with stop_on_signals(stop, enabled=signals), reload_on_hangup(reload, enabled=signals):
                try:
                    work = _work(
                        worker, settings, stop, supervisor, reload, watch_files=watch_files
                    )
                    await supervisor.run(work, name="claim-loop")
                finally:
                    await supervisor.close()
    return supervisor.exit_code


def _starting(worker: Worker, *, once: bool) -> None:
    """Refuse ``--once`` with nothing to drain; else log where the config and queue are."""
    tenant = worker.tenant
    if worker.queue is None and once:
        raise ConfigError(
            "nothing to drain: set ENGINE_URL and ENGINE_TOKEN, "
            "or queue: in the config (or QUEUE_DSN)"
        )
    log.info(
        "serving tenant %s: %s",
        tenant.tenant_id,
        start_line(tenant, worker.env),
        extra={"action": "start", "tenant": tenant.tenant_id},
    )


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
        elif engine_settings(tenant, worker.env)[0]:
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
