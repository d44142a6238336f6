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

from worker.errors import NotOurs, WorkerError
from worker.http_guard import (
    basic_matches,
    bearer_matches,
    read_json,
    refuse_undecodable_headers,
)
from worker.inbound import BadInbound, inbound_job, read_inbound
from worker.jobs import normalise_query_type
from worker.logs import job_context
from worker.pipeline import Pipeline, UnknownLookup
from worker.queues import JobQueue
from worker.router import route_text
from worker.status import render_status
from worker.stores.base import JOB_TYPE

__all__ = ["WorkerApp", "job_from_flat_body", "parse_listen"]

MAX_BODY = 4 * 1024 * 1024
READY_TIMEOUT_S = 3.0
#: A claim that came back this recently answers `/readyz` without a round trip: an
#: idle worker claims once a long poll (20 s), and a probe every 10 s would otherwise
#: double the transactions it costs the queue.
READY_FRESH_S = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: keys that make a pushed body a job payload (contract §2); any other object is n8n-style
_JOB_KEYS = frozenset({"job_type", "parameters", "query_type", "query"})
#: the keys of the item n8n's Webhook node emits, when a workflow forwards it whole
_N8N_ITEM_KEYS = frozenset({"headers", "params", "query", "body", "webhookUrl", "executionMode"})
#: a flat body's keys that are the job's own, not parameters
_JOB_LEVEL_KEYS = ("tenant_id", "job_id", "reply_to", "customer_context", "data_source")
#: where a flat body's reply address is read from, first found
_ADDRESS_KEYS = ("customer_phone", "phone", "from")


def job_from_flat_body(body: dict[str, Any]) -> dict[str, Any]:
    """A pushed body as a job payload: a job payload as it is; otherwise (n8n's webhooks
    post ``{"order_id": "12345", "customer_phone": "+1…"}``) the body's fields are the
    parameters, its ``customer_phone``/``phone``/``from`` the reply address. The item n8n's
    Webhook node emits (``{"headers", "params", "query", "body"}``) is read by its ``body``.
    """
    if _JOB_KEYS & body.keys() and not _is_n8n_item(body):
        return body
    if _is_n8n_item(body):
        body = dict(body["body"])
        if _JOB_KEYS & body.keys():
            return body
    job: dict[str, Any] = {key: body[key] for key in _JOB_LEVEL_KEYS if key in body}
    job["parameters"] = {k: v for k, v in body.items() if k not in _JOB_LEVEL_KEYS}
    address = next((body[k] for k in _ADDRESS_KEYS if isinstance(body.get(k), str)), None)
    if address and "reply_to" not in job:
        job["reply_to"] = address
    return job


def _is_n8n_item(body: dict[str, Any]) -> bool:
    return isinstance(body.get("body"), dict) and body.keys() <= _N8N_ITEM_KEYS


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``":8080"`` listens on all."""
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"WORKER_HTTP must be HOST:PORT, not {value!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)  # noqa: S104 - an explicit ":port"


class WorkerApp:
    """The HTTP face of one worker process."""

    def __init__(
        self,
        pipeline: Pipeline,
        queue: JobQueue | None,
        *,
        token: str | None,
        ready_sources: str = "ignore",
    ) -> None:
        self.pipeline = pipeline
        self.queue = queue
        self.token = token
        #: what open circuits do to `/readyz` (``WORKER_READY_SOURCES``): ``ignore``,
        #: ``any`` (one open: not ready) or ``all`` (every source open: not ready)
        self.ready_sources = ready_sources

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[refuse_undecodable_headers])
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.post("/webhook/data/test-connection", self._guarded(self.test_connection)),
                web.post("/webhook/data/{lookup}", self._guarded(self.push)),
                web.post("/webhook/inbound", self._guarded(self.inbound)),
                web.get("/status", self.status),
            ]
        )
        return app

    def _guarded(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            if not self.token or not bearer_matches(request, self.token):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
            return await handler(request)

        return check

    async def status(self, request: web.Request) -> web.Response:
        """The status page (contract §6): the webhooks' token, as a bearer token or as
        the password of HTTP Basic (a browser asks for it); no token set, no page."""
        if not self.token or not (
            bearer_matches(request, self.token) or basic_matches(request, self.token)
        ):
            return web.Response(
                status=401,
                text="401: this page needs the worker's token (as the password)\n",
                headers={"WWW-Authenticate": 'Basic realm="worker status", charset="UTF-8"'},
            )
        pipeline = self.pipeline
        page = render_status(
            pipeline.tenant.tenant_id,
            pipeline.sources.status(),
            pipeline.metrics.recent.summaries(),
            in_flight=pipeline.metrics.jobs_in_flight,
            queue=self._queue_text(),
        )
        return web.Response(
            text=page,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    def _queue_text(self) -> str:
        if self.queue is None:
            return "none (push webhooks only)"
        answering = "answering" if self.queue.answered_within(READY_FRESH_S) else "not answering"
        return f"{self.queue.describe()}, {answering}"

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, Any] = {"config": True}
        if self.queue is not None and self.queue.answered_within(READY_FRESH_S):
            checks["engine"] = True  # the run loop's last claim said so: ask nothing more
        elif self.queue is not None:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await self.queue.ping()
                checks["engine"] = True
            except (WorkerError, TimeoutError, OSError) as exc:
                checks["engine"] = False
                checks["error"] = str(exc)
        ready = checks.get("engine", True)
        down = self.pipeline.sources.down()
        if self.ready_sources != "ignore":
            every = len(self.pipeline.tenant.config.data_sources)
            up = not down or (self.ready_sources == "all" and len(down) < every)
            checks["sources"] = up
            ready = ready and up
        checks["sources_down"] = down
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
        payload = job_from_flat_body(payload)
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
        body, status = await self._answer_and_send(payload, lookup, key)
        return web.json_response(body, status=status)

    async def _answer_and_send(
        self, payload: dict[str, Any], lookup: str, key: str
    ) -> tuple[dict[str, Any], int]:
        """Run a pushed job and send its reply (``key``: its idempotency key)."""
        try:
            answer = await self.pipeline.answer(payload, lookup_name=lookup)
        except UnknownLookup as exc:
            return {"error": str(exc)}, 404
        except NotOurs as exc:
            return {"error": str(exc)}, 422
        self.pipeline.release_audit(answer)  # no completion carries a push's audit row
        sent = False
        if self.queue is not None and answer.message and answer.reply_to:
            try:
                await self.queue.send(key, answer.reply_to, answer.message)
            except WorkerError as exc:
                return {
                    **answer.as_json(),
                    "sent": False,
                    "error": f"reply not delivered: {exc}",
                }, 502
            sent = True
        return {**answer.as_json(), "sent": sent}, 200

    async def inbound(self, request: web.Request) -> web.Response:
        """A customer's free text (push mode): route it, answer it, send the reply.

        The reply's idempotency key is the request's ``Idempotency-Key``, else the
        provider's message id (``message_id`` / ``id`` in the body), else a fresh one.
        """
        tenant_id = self.pipeline.tenant.tenant_id
        try:
            message = read_inbound(await self._json(request))
        except BadInbound as exc:
            return web.json_response({"error": str(exc)}, status=422)
        if message.tenant_id not in (None, tenant_id):
            error = f"this worker serves tenant {tenant_id!r}, not {message.tenant_id!r}"
            return web.json_response({"error": error}, status=422)
        route = route_text(self.pipeline.tenant, message.text, sender=message.sender)
        if route.query_type is None:
            unrouted: dict[str, Any] = {"outcome": "unrouted", "sent": False}
            if route.ambiguous:
                unrouted["ambiguous"] = list(route.ambiguous)
            return web.json_response(unrouted)
        key = request.headers.get("Idempotency-Key") or message.message_id or str(uuid.uuid4())
        with job_context(tenant_id, key):
            return await self._inbound(
                route.query_type, inbound_job(tenant_id, route, message), key
            )

    async def _inbound(self, query_type: str, payload: dict[str, Any], key: str) -> web.Response:
        # A matched lookup missing a required parameter goes through the pipeline too: its
        # parameter rules answer `invalid_input` with the lookup's text, and no source is read.
        body, status = await self._answer_and_send(payload, query_type, key)
        if status in (200, 502):
            body = {**body, "query_type": query_type, "parameters": payload["parameters"]}
        return web.json_response(body, status=status)
