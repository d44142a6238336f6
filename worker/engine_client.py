"""The engine's HTTP API (contract §3), as the worker calls it.

Status codes become the worker's errors here, once: 401/403 →
`EngineAuthError` (a configuration problem), 409 → `LeaseLost`, 5xx, timeouts
and refused connections → `EngineUnavailable` (retry with back-off: `worker.retry`).
Nothing else in the worker looks at an HTTP status from the engine.

aiohttp's client is imported when the first request is made: a worker on the
direct queue (contract §4) that serves no HTTP never loads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from worker.errors import (
    ConfigError,
    EngineAuthError,
    EngineUnavailable,
    FatalError,
    LeaseLost,
    without_password,
)
from worker.stores.base import ClaimedJob

if TYPE_CHECKING:
    import aiohttp

__all__ = ["EngineClient"]

_MAX_BODY = 10_000_000


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, reading at most ``limit`` bytes (``read(n)`` may return fewer)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class EngineClient:
    """One pooled HTTP session to the engine."""

    def __init__(self, base_url: str, token: str, *, pool_size: int = 100) -> None:
        parts = urlsplit(base_url)
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"the engine URL {without_password(base_url)} carries a user name or password; "
                "give it without them: the worker sends ENGINE_TOKEN (or engine.token) "
                "as a bearer token"
            )
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"<EngineClient {self.base_url}>"

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float = 15.0,
        headers: dict[str, str] | None = None,
    ) -> Any:
        status, _, raw = await self._exchange(
            method, path, body, timeout_s=timeout_s, headers=headers
        )
        return self._answer(status, raw, method, path)

    async def _exchange(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout_s: float = 15.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        import aiohttp

        url = self.base_url + path
        try:
            async with self._http().request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                raw = await _read_capped(response.content, _MAX_BODY + 1)
                # CIMultiDict: header names stay case-insensitive ("ETag", "Etag")
                return response.status, response.headers.copy(), raw
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EngineUnavailable(
                f"{method} {path}: the engine did not answer ({type(exc).__name__})"
            ) from exc

    @staticmethod
    def _answer(status: int, raw: bytes, method: str, path: str) -> Any:
        if status in (401, 403):
            raise EngineAuthError(
                f"{method} {path}: the engine refused the token ({status}); check ENGINE_TOKEN"
            )
        if status == 409:
            raise LeaseLost(f"{method} {path}: the job's lease was lost")
        if status >= 500 or status == 429:
            raise EngineUnavailable(f"{method} {path}: the engine answered {status}")
        if status >= 400:
            raise FatalError(f"{method} {path}: the engine answered {status}: {raw[:200]!r}")
        if len(raw) > _MAX_BODY:
            raise FatalError(f"{method} {path}: the engine's answer is too large")
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise EngineUnavailable(f"{method} {path}: the engine's answer is not JSON") from exc

    async def next_jobs(
        self, tenant_id: str, job_types: Sequence[str], *, max_jobs: int, wait_s: float
    ) -> list[ClaimedJob]:
        body = {
            "tenant_id": tenant_id,
            "job_types": list(job_types),
            "max_jobs": max_jobs,
            "wait_s": wait_s,
        }
        answer = await self._call("POST", "/queue/next-job", body, timeout_s=wait_s + 15)
        jobs = answer.get("jobs", []) if isinstance(answer, dict) else []
        claimed = []
        for item in jobs if isinstance(jobs, list) else []:
            if not isinstance(item, dict) or "id" not in item:
                continue
            claimed.append(
                ClaimedJob(
                    id=str(item["id"]),
                    payload=item.get("payload"),
                    attempt=int(item.get("attempt") or 1),
                    lease_s=float(item.get("lease_s") or 30),
                )
            )
        return claimed

    async def heartbeat(self, job: ClaimedJob) -> float:
        answer = await self._call(
            "POST", f"/queue/jobs/{job.id}/heartbeat", {"attempt": job.attempt}
        )
        return (
            float(answer.get("lease_s", job.lease_s)) if isinstance(answer, dict) else job.lease_s
        )

    async def complete(
        self, job: ClaimedJob, *, outcome: str, result: Any, response_time_ms: int
    ) -> None:
        body = {
            "outcome": outcome,
            "result": result,
            "response_time_ms": response_time_ms,
            "attempt": job.attempt,
        }
        await self._call("POST", f"/queue/jobs/{job.id}/complete", body)

    async def fail(self, job: ClaimedJob, *, error: str, retry: bool, retry_after_s: float) -> None:
        body = {
            "error": error,
            "retry": retry,
            "retry_after_s": retry_after_s,
            "attempt": job.attempt,
        }
        await self._call("POST", f"/queue/jobs/{job.id}/fail", body)

    async def send_message(self, *, tenant_id: str, to: str, message: str, key: str) -> None:
        body = {"tenant_id": tenant_id, "to": to, "message": message, "job_id": key}
        await self._call("POST", "/messages/send", body, headers={"Idempotency-Key": key})

    async def tenant_config(self, tenant_id: str) -> Any:
        return await self._call("GET", f"/routes/tenants/{tenant_id}/data-sources")

    async def tenant_config_if_changed(
        self, tenant_id: str, etag: str | None
    ) -> tuple[Any | None, str | None]:
        """The config if it changed since ``etag`` (None if not), and its new ETag."""
        path = f"/routes/tenants/{tenant_id}/data-sources"
        headers = {"If-None-Match": etag} if etag else None
        status, answer_headers, raw = await self._exchange("GET", path, headers=headers)
        if status == 304:
            return None, etag
        return self._answer(status, raw, "GET", path), answer_headers.get("ETag")
