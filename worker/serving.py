"""The HTTP server's life beside the run loop: /healthz, /readyz, /metrics, the webhooks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from worker.precedence import engine_settings

if TYPE_CHECKING:
    from worker.parts import Worker

__all__ = ["http_endpoints"]

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def http_endpoints(worker: Worker, listen: str | None) -> AsyncIterator[None]:
    """``worker``'s endpoints listening on ``listen`` while inside (None or '': none)."""
    if not listen:
        yield
        return
    # The HTTP server (aiohttp) is imported only by a worker that listens: not by
    # `worker lookup`, `config check` or a `worker run --listen ''`.
    from aiohttp import web

    from worker.http import WorkerApp, parse_listen
    from worker.http_guard import GuardedRunner, header_timeout_from_env

    env = worker.env
    host, port = parse_listen(listen)
    token = env.token.get_secret_value() or engine_settings(worker.tenant, env)[1]
    app = WorkerApp(
        worker.pipeline, worker.queue, token=token, ready_sources=env.ready_sources_mode()
    )
    worker.app = app
    # GuardedRunner: a request head has WORKER_HTTP_HEADER_TIMEOUT_S (10 s) to arrive whole.
    runner = GuardedRunner(
        app.app(),
        header_timeout_s=header_timeout_from_env(env),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2,
    )
    await runner.setup()
    try:
        # A child of `worker run --processes N` shares the port with its siblings.
        reuse_port = env.http_reuse_port == "1"
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
