"""The local engine: contract §3's HTTP API served on a queue store.

For development, demos, tests and self-hosting. Besides the §3 calls it has a
few of its own, for people and tests (all behind the same bearer token):

- ``POST /queue/jobs`` (body: a job payload) → ``201 {"id": "…"}``
- ``GET /queue/jobs/{id}`` → the job's row
- ``GET /messages[?tenant_id=t]`` → the messages sent, oldest first
- ``GET /healthz`` (no token)

and the seed's ``POST /webhook/inbound`` (contract §6): a customer's free text,
routed with the tenant's config from the config folder and enqueued as a job.

Callers send the engine's own token (every tenant) or a token scoped to one
tenant (`issue_token`, ``worker engine token --tenant T``; only its SHA-256 is
stored). With a scoped token every call sees and changes only that tenant's
jobs, messages and config: a body's ``tenant_id`` must be the token's tenant
(403 otherwise), and another tenant's job is answered as missing (404).

Tenant configs for ``GET /routes/tenants/{id}/data-sources`` are read from a
folder of ``<tenant>.yaml`` / ``.json`` files, as they are on disk (encrypted
values stay encrypted: the engine never holds a usable credential).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.answers import Outcome
from worker.config import Tenant, find_config, load_tenant
from worker.errors import ConfigError, ConfigErrors
from worker.http_guard import GuardedRunner, bearer_matches, read_json, refuse_undecodable_headers
from worker.inbound import BadInbound, inbound_job, read_inbound
from worker.router import route_text
from worker.stores.base import Claim, JobRow, Reply, Store, job_number

__all__ = ["LocalEngine", "issue_token", "serve_engine", "token_digest"]

log = logging.getLogger(__name__)

LEASE_S = 30.0
MAX_BODY = 4 * 1024 * 1024
OUTCOMES = tuple(Outcome)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The request key holding the tenant a scoped token may act for (None: every tenant).
SCOPE = web.RequestKey("tenant_scope", str)
_TENANT = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


class _NextJob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tenant_id: str = Field(min_length=1, max_length=255)
    job_types: list[str] = Field(default_factory=lambda: ["data_lookup"], max_length=20)
    max_jobs: int = Field(default=10, ge=0, le=1000)
    wait_s: float = Field(default=20, ge=0, le=60)


class _Complete(BaseModel):
    model_config = ConfigDict(extra="ignore")
    outcome: str
    result: Any = None
    response_time_ms: int | None = None
    attempt: int | None = None


class _Fail(BaseModel):
    model_config = ConfigDict(extra="ignore")
    error: str = Field(default="", max_length=10_000)
    retry: bool = False
    retry_after_s: float = Field(default=0, ge=0, le=86_400)
    attempt: int | None = None


class _Send(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tenant_id: str = Field(min_length=1)
    to: str = Field(min_length=1, max_length=64)
    message: str = Field(min_length=1, max_length=65_536)
    job_id: str | int | None = None


class _Beat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    attempt: int | None = None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await read_json(request) if request.can_read_body else {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise web.HTTPUnprocessableEntity(
            text=json.dumps({"error": detail}), content_type="application/json"
        ) from None


def token_digest(token: str) -> str:
    """What the store keeps of a scoped token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


async def issue_token(store: Store, tenant_id: str) -> str:
    """A new token scoped to ``tenant_id``; the store keeps only its digest."""
    if not _TENANT.fullmatch(tenant_id):
        raise ValueError("a tenant id is 1 to 255 characters, none of them control characters")
    token = "wet_" + secrets.token_urlsafe(32)
    await store.add_token(token_digest(token), tenant_id)
    return token


def _scope(request: web.Request) -> str | None:
    return request.get(SCOPE)


def _only_for_scope(request: web.Request, tenant_id: object) -> None:
    """403 unless the caller's token may act for ``tenant_id``."""
    scope = _scope(request)
    if scope is not None and tenant_id != scope:
        raise web.HTTPForbidden(
            text=json.dumps({"error": f"this token acts only for tenant {scope!r}"}),
            content_type="application/json",
        )


def _no_such_job() -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=json.dumps({"error": "no such job"}), content_type="application/json"
    )


def _job_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no job {raw!r}"}), content_type="application/json"
        )
    return int(raw)


class LocalEngine:
    """The §3 API on a `Store`."""

    def __init__(
        self, store: Store, *, token: str, config_dir: Path | None = None, lease_s: float = LEASE_S
    ) -> None:
        self.store = store
        self.token = token
        self.config_dir = config_dir
        self.lease_s = lease_s
        #: tenant → (its config file's mtime and size, the config loaded from it), for routing
        self._routing: dict[str, tuple[tuple[Path, int, int], Tenant]] = {}

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY, middlewares=[refuse_undecodable_headers, self._auth]
        )
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.post("/queue/next-job", self.next_job),
                web.post("/queue/jobs", self.enqueue),
                web.get("/queue/jobs/{id}", self.show_job),
                web.post("/queue/jobs/{id}/heartbeat", self.heartbeat),
                web.post("/queue/jobs/{id}/complete", self.complete),
                web.post("/queue/jobs/{id}/fail", self.fail),
                web.post("/messages/send", self.send),
                web.get("/messages", self.list_messages),
                web.get("/routes/tenants/{tenant_id}/data-sources", self.tenant_config),
                web.put("/routes/tenants/{tenant_id}/data-sources", self.put_tenant_config),
                web.post("/webhook/inbound", self.inbound),
            ]
        )
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        if bearer_matches(request, self.token):
            return await handler(request)  # the engine's own token: every tenant
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        tenant = (
            await self.store.token_tenant(token_digest(given))
            if scheme == "Bearer" and given
            else None
        )
        if tenant is None:
            return _error(401, "missing or wrong bearer token")
        request[SCOPE] = tenant
        return await handler(request)

    async def _job_of_caller(self, request: web.Request) -> int:
        """The job id in the path; 404 when a scoped caller's tenant does not own it."""
        job_id = _job_id(request)
        if _scope(request) is not None:
            self._owned(request, await self.store.job(job_id))
        return job_id

    @staticmethod
    def _owned(request: web.Request, row: JobRow | None) -> JobRow:
        scope = _scope(request)
        if row is None or (scope is not None and row.tenant_id != scope):
            raise _no_such_job()
        return row

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def next_job(self, request: web.Request) -> web.Response:
        body: _NextJob = await _body(request, _NextJob)
        _only_for_scope(request, body.tenant_id)
        claim = Claim(
            body.tenant_id,
            body.job_types,
            body.max_jobs,
            self.lease_s,
            worker_id=f"http:{request.remote}",
        )
        # A caller that hangs up mid long-poll cancels this handler; claim_or_release
        # then puts back what it had just leased, so nothing waits out a lease.
        jobs = await self.store.claim_or_release(claim) if body.max_jobs else []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body.wait_s
        while not jobs and body.max_jobs and (left := deadline - loop.time()) > 0:
            if not await self.store.wait_for_jobs(left, body.tenant_id):
                break  # the poll ran out with no sign of the tenant's jobs
            jobs = await self.store.claim_or_release(claim)
        return web.json_response(
            {
                "jobs": [
                    {"id": j.id, "payload": j.payload, "attempt": j.attempt, "lease_s": j.lease_s}
                    for j in jobs
                ]
            }
        )

    async def enqueue(self, request: web.Request) -> web.Response:
        payload = await read_json(request)
        if not isinstance(payload, dict):
            return _error(422, "a job payload must be a JSON object")
        _only_for_scope(request, payload.get("tenant_id"))
        job_id = await self.store.enqueue(payload)
        return web.json_response({"id": str(job_id)}, status=201)

    async def show_job(self, request: web.Request) -> web.Response:
        row = self._owned(request, await self.store.job(_job_id(request)))
        return web.json_response(
            {
                "id": str(row.id),
                "payload": row.payload,
                "status": row.status,
                "attempt": row.attempt,
                "outcome": row.outcome,
                "result": row.result,
                "error": row.error,
            }
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        body: _Beat = await _body(request, _Beat)
        ok = await self.store.heartbeat(
            await self._job_of_caller(request), lease_s=self.lease_s, attempt=body.attempt
        )
        if not ok:
            return _error(409, "the lease was lost")
        return web.json_response({"lease_s": self.lease_s})

    async def complete(self, request: web.Request) -> web.Response:
        body: _Complete = await _body(request, _Complete)
        if body.outcome not in OUTCOMES:
            return _error(422, f"outcome must be one of {', '.join(OUTCOMES)}")
        ok = await self.store.complete(
            await self._job_of_caller(request),
            outcome=body.outcome,
            result=body.result,
            attempt=body.attempt,
        )
        if not ok:
            return _error(409, "the lease was lost")
        return web.json_response({"status": "done"})

    async def fail(self, request: web.Request) -> web.Response:
        body: _Fail = await _body(request, _Fail)
        ok = await self.store.fail(
            await self._job_of_caller(request),
            error=body.error,
            retry=body.retry,
            retry_after_s=body.retry_after_s,
            attempt=body.attempt,
        )
        if not ok:
            return _error(409, "the lease was lost")
        return web.json_response({"status": "pending" if body.retry else "failed"})

    async def send(self, request: web.Request) -> web.Response:
        body: _Send = await _body(request, _Send)
        _only_for_scope(request, body.tenant_id)
        key = request.headers.get("Idempotency-Key") or (
            str(body.job_id) if body.job_id is not None else str(uuid.uuid4())
        )
        fresh = await self.store.send_message(
            key=key,
            reply=Reply(body.tenant_id, body.to, body.message),
            job_id=job_number(str(body.job_id)) if body.job_id is not None else None,
        )
        log.info(
            "message to %s%s",
            body.to[:4] + "…",
            "" if fresh else " (duplicate, not sent again)",
            extra={"action": "send", "tenant": body.tenant_id, "job_id": key},
        )
        return web.json_response({"status": "sent" if fresh else "duplicate"}, status=200)

    async def list_messages(self, request: web.Request) -> web.Response:
        tenant_id = request.query.get("tenant_id")
        scope = _scope(request)
        if scope is not None:
            _only_for_scope(request, tenant_id or scope)
            tenant_id = scope
        return web.json_response(await self.store.messages(tenant_id))

    def _config_path(self, request: web.Request, tenant_id: str | None = None) -> Path:
        tenant_id = tenant_id if tenant_id is not None else request.match_info["tenant_id"]
        _only_for_scope(request, tenant_id)
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", tenant_id) or ".." in tenant_id:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "no such tenant"}), content_type="application/json"
            )
        if self.config_dir is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "this engine serves no tenant configs (--config-dir)"}),
                content_type="application/json",
            )
        try:
            return find_config(tenant_id, self.config_dir)
        except ConfigError:
            return self.config_dir / f"{tenant_id}.json"

    async def tenant_config(self, request: web.Request) -> web.Response:
        path = self._config_path(request)
        if not path.is_file():
            return _error(404, f"no config for tenant {request.match_info['tenant_id']!r}")
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        etag = _etag(document)
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response(document, headers={"ETag": etag})

    async def put_tenant_config(self, request: web.Request) -> web.Response:
        """The seed's settings call: validate, then replace; an invalid body keeps the old one."""
        path = self._config_path(request)
        tenant_id = request.match_info["tenant_id"]
        document = await read_json(request)
        if not isinstance(document, dict):
            return _error(422, "a tenant config must be a JSON object")
        if document.get("tenant_id", tenant_id) != tenant_id:
            return _error(
                422, f"the body is for tenant {document.get('tenant_id')!r}, not {tenant_id!r}"
            )
        try:
            load_tenant(
                document=document,
                tenant_id=tenant_id,
                name=f"PUT {tenant_id}",
                decrypt=False,
                origin="engine",
            )
        except ConfigErrors as exc:
            return web.json_response(
                {
                    "error": "the config is not valid; the old one is kept",
                    "problems": [str(e) for e in exc.errors],
                },
                status=422,
            )
        except ConfigError as exc:
            return web.json_response(
                {"error": "the config is not valid; the old one is kept", "problems": [str(exc)]},
                status=422,
            )
        text = (
            json.dumps(document, indent=2)
            if path.suffix == ".json"
            else yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        )
        staging = path.with_name(f".{path.name}.new")
        staging.write_text(text, encoding="utf-8")
        staging.replace(path)
        log.info(
            "config of %s replaced", tenant_id, extra={"action": "config", "tenant": tenant_id}
        )
        return web.json_response({"status": "updated", "etag": _etag(document)})

    async def inbound(self, request: web.Request) -> web.Response:
        """The seed's free-text call: route with the tenant's config, enqueue the job."""
        try:
            message = read_inbound(await read_json(request))
        except BadInbound as exc:
            return _error(422, str(exc))
        tenant_id = message.tenant_id or _scope(request)
        if tenant_id is None:
            return _error(422, "`tenant_id` is required: which tenant is the message for?")
        tenant = self._routing_config(request, tenant_id)
        route = route_text(tenant, message.text, sender=message.sender)
        if route.query_type is None:
            unrouted: dict[str, Any] = {"routed": False}
            if route.ambiguous:
                unrouted["ambiguous"] = list(route.ambiguous)
            return web.json_response(unrouted)
        payload = inbound_job(tenant_id, route, message)
        job_id = await self.store.enqueue(payload)
        log.info(
            "inbound message routed to %s",
            route.query_type,
            extra={"action": "inbound", "tenant": tenant_id, "job_id": str(job_id)},
        )
        return web.json_response(
            {
                "job_id": str(job_id),
                "query_type": route.query_type,
                "parameters": payload["parameters"],
            },
            status=202,
        )

    def _routing_config(self, request: web.Request, tenant_id: str) -> Tenant:
        """The tenant's config as the folder holds it now (cached while the file is unchanged).

        It is loaded as the worker loads a config file, without decrypting anything:
        routing reads only lookups, and the engine never opens a source. (An engine-served
        load would refuse file sources unless ``WORKER_DATA_DIR`` is set, though the
        engine never reads them; what a PUT stores was checked as the tenant's.)
        """
        path = self._config_path(request, tenant_id)
        try:
            stat = path.stat()
        except OSError:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no config for tenant {tenant_id!r}"}),
                content_type="application/json",
            ) from None
        version = (path, stat.st_mtime_ns, stat.st_size)
        cached = self._routing.get(tenant_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            tenant = load_tenant(path, tenant_id=tenant_id, decrypt=False)
        except ConfigError as exc:
            log.warning(
                "config of %s does not load: %s",
                tenant_id,
                exc,
                extra={"action": "inbound", "tenant": tenant_id},
            )
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": f"the config of tenant {tenant_id!r} does not load"}),
                content_type="application/json",
            ) from None
        self._routing[tenant_id] = (version, tenant)
        return tenant


def _etag(document: Any) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return '"' + hashlib.sha256(canonical).hexdigest()[:32] + '"'


async def serve_engine(
    engine: LocalEngine,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    ready: Callable[[int], None] | None = None,
    header_timeout_s: float | None = None,
) -> None:
    """Serve until ``stop`` is set; ``ready`` gets the bound port (useful with port 0).

    ``header_timeout_s``: how long a connection may take to send a request head
    (default: ``WORKER_HTTP_HEADER_TIMEOUT_S`` or 10 s; see `worker.http_guard`).
    """
    runner = GuardedRunner(
        engine.app(),
        header_timeout_s=header_timeout_s,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=2,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        addresses = runner.addresses
        if ready is not None:
            ready(int(addresses[0][1]) if addresses else port)
        await stop.wait()
    finally:
        await runner.cleanup()
