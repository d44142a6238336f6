"""The engine's queue (contract §3) as a `JobQueue`: claim, heartbeat, send, complete.

It sends the reply with the job id as idempotency key, then completes the job,
each retried (`worker.retry`) through engine hiccups for as long as the lease
lasts. It lives on the engine client's side, so `worker.queues` (the interface
and the store-backed queue) never loads the HTTP client.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from worker.answers import Answer
from worker.engine_client import EngineClient
from worker.queues import JobQueue
from worker.retry import with_retries
from worker.stores.base import JOB_TYPE, ClaimedJob

__all__ = ["EngineQueue"]


class EngineQueue(JobQueue):
    """Contract §3 over HTTP."""

    def __init__(self, client: EngineClient, tenant_id: str, worker_id: str) -> None:
        super().__init__(tenant_id, worker_id)
        self.client = client

    def describe(self) -> str:
        parts = urlsplit(self.client.base_url)
        return f"the engine at {parts.scheme}://{parts.hostname or ''}"

    async def _claim(self, max_jobs: int, wait_s: float) -> list[ClaimedJob]:
        return await self.client.next_jobs(
            self.tenant_id, [JOB_TYPE], max_jobs=max_jobs, wait_s=wait_s
        )

    async def heartbeat(self, job: ClaimedJob) -> None:
        await self.client.heartbeat(job)

    async def finish(self, job: ClaimedJob, answer: Answer) -> None:
        if answer.message and answer.reply_to:
            message, to = answer.message, answer.reply_to
            await with_retries(
                lambda: self.client.send_message(
                    tenant_id=self.tenant_id, to=to, message=message, key=job.id
                ),
                deadline_s=job.lease_s,
                on_retry=self._retry_log(job, "send", reply=True),
            )
        await with_retries(
            lambda: self.client.complete(
                job,
                outcome=answer.outcome,
                result=answer.result,
                response_time_ms=answer.response_time_ms,
            ),
            deadline_s=job.lease_s,
            on_retry=self._retry_log(job, "complete"),
        )

    async def reject(
        self, job: ClaimedJob, error: str, *, retry: bool, retry_after_s: float = 0
    ) -> None:
        await with_retries(
            lambda: self.client.fail(job, error=error, retry=retry, retry_after_s=retry_after_s),
            deadline_s=job.lease_s,
            on_retry=self._retry_log(job, "fail"),
        )

    async def send(self, key: str, to: str, message: str) -> None:
        await self.client.send_message(tenant_id=self.tenant_id, to=to, message=message, key=key)

    async def ping(self) -> None:
        await self.client.next_jobs(self.tenant_id, [JOB_TYPE], max_jobs=0, wait_s=0)

    async def close(self) -> None:
        await self.client.close()
