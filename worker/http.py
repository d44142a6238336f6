"""The worker's own endpoints (contract §6): health, readiness, metrics, webhooks.

Served by `worker.http_guard.GuardedRunner`: request heads have a deadline, deep
JSON bodies and undecodable headers are refused before any handler runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.errors import WorkerError
from worker.http_guard import bearer_matches, read_json, refuse_undecodable_headers
from worker.jobs import JOB_TYPE, NotOurs, normalise_query_type
from worker.logs import job_context
from worker.pipeline import Pipeline, UnknownLookup
from worker.queues import JobQueue

__all__ = ["WorkerApp", "parse_listen"]

MAX_BODY = 4 * 1024 * 1024
READY_TIMEOUT_S = 3.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``":8080"`` listens on all."""
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"WORKER_HTTP must be HOST:PORT, not {value!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)  # noqa: S104 - an explicit ":port"


class WorkerApp:
    """The HTTP face of one worker process."""

    def __init__(self, pipeline: Pipeline, queue: JobQueue | None, *, token: str | None) -> None:
        self.pipeline = pipeline
        self.queue = queue
        self.token = token

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[refuse_undecodable_headers])
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.post("/webhook/data/test-connection", self._guarded(self.test_connection)),
                web.post("/webhook/data/{lookup}", self._guarded(self.push)),
            ]
        )
        return app

    def _guarded(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            if not self.token or not bearer_matches(request, self.token):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
            return await handler(request)

        return check

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, Any] = {"config": True}
        if self.queue is not None:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await self.queue.ping()
                checks["engine"] = True
            except (WorkerError, TimeoutError, OSError) as exc:
                checks["engine"] = False
                checks["error"] = str(exc)
        ready = checks.get("engine", True)
        return web.json_response(
            {"status": "ready" if ready else "not ready", **checks}, status=200 if ready else 503
        )

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.pipeline.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _json(self, request: web.Request) -> Any:
        return await read_json(request)

    async def test_connection(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        source_id = body.get("data_source") if isinstance(body, dict) else None
        if not isinstance(source_id, str) or source_id not in self.pipeline.tenant.sources:
            return web.json_response(
                {"status": "error", "error": f"no data source {source_id!r} in this tenant"},
                status=404,
            )
        report = await self.pipeline.sources.check(source_id)
        if report.ok:
            return web.json_response(
                {"status": "success", "response_time_ms": report.response_time_ms}
            )
        return web.json_response(
            {"status": "error", "error": report.error, "response_time_ms": report.response_time_ms}
        )

    async def push(self, request: web.Request) -> web.Response:
        payload = await self._json(request)
        if not isinstance(payload, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=422)
        payload.setdefault("job_type", JOB_TYPE)
        payload.setdefault("tenant_id", self.pipeline.tenant.tenant_id)
        lookup = normalise_query_type(request.match_info["lookup"])
        if not payload.get("query_type") and not payload.get("query"):
            payload["query_type"] = lookup
        # The request's job id (the reply's idempotency key) names it in every log line.
        key = request.headers.get("Idempotency-Key") or str(payload.get("job_id") or uuid.uuid4())
        with job_context(self.pipeline.tenant.tenant_id, key):
            return await self._push(payload, lookup, key)

    async def _push(self, payload: dict[str, Any], lookup: str, key: str) -> web.Response:
        try:
            answer = await self.pipeline.answer(payload, lookup_name=lookup)
        except UnknownLookup as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except NotOurs as exc:
            return web.json_response({"error": str(exc)}, status=422)
        self.pipeline.release_audit(answer)  # no completion carries a push's audit row
        sent = False
        if self.queue is not None and answer.message and answer.reply_to:
            try:
                await self.queue.send(key, answer.reply_to, answer.message)
            except WorkerError as exc:
                body = {**answer.as_json(), "sent": False, "error": f"reply not delivered: {exc}"}
                return web.json_response(body, status=502)
            sent = True
        return web.json_response({**answer.as_json(), "sent": sent})
