"""What a queue store does, whichever database holds the tables.

The job as a claim hands it out (`ClaimedJob`) and the one job type this worker
claims (`JOB_TYPE`) live here, under every queue: the stores, the queues and the
run loop share them without importing what reads a job's payload.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from worker.audit_table import AuditRow, AuditTable

__all__ = [
    "JOB_TYPE",
    "MAX_ATTEMPTS",
    "Claim",
    "ClaimedJob",
    "JobRow",
    "Reply",
    "Store",
    "TokenRow",
    "job_number",
]

#: The job type of contract §2: the only one this worker claims.
JOB_TYPE = "data_lookup"

#: A job whose lease ran out this many times is failed instead of handed out again.
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class ClaimedJob:
    """A job handed to this worker, with its lease."""

    id: str
    payload: Any
    attempt: int = 1
    lease_s: float = 30.0
    #: seconds from when the job was due (its ``run_at``) to this claim; None if unknown
    queued_s: float | None = None


@dataclass(frozen=True)
class Claim:
    """Who claims what: one tenant's jobs of some types, for a lease."""

    tenant_id: str
    job_types: Sequence[str]
    max_jobs: int
    lease_s: float
    worker_id: str


@dataclass(frozen=True)
class Reply:
    """A message for a customer, written with the job's completion."""

    tenant_id: str
    to: str
    message: str


@dataclass(frozen=True)
class JobRow:
    id: int
    payload: Any
    status: str
    attempt: int
    outcome: str | None
    result: Any
    error: str | None

    @property
    def tenant_id(self) -> str | None:
        """The tenant the payload names; None when it names none (or is not an object)."""
        tenant = self.payload.get("tenant_id") if isinstance(self.payload, dict) else None
        return tenant if isinstance(tenant, str) else None


@dataclass(frozen=True)
class TokenRow:
    """A tenant-scoped engine token, as stored: only its SHA-256 is kept."""

    token_sha256: str
    tenant_id: str
    created_at: str


def job_number(key: str) -> int | None:
    """The job id an idempotency key names, when it is one (a bigint)."""
    return int(key) if key.isascii() and key.isdigit() and int(key) < 2**63 else None


class Store(abc.ABC):
    """The queue tables of contract §4 behind one async interface."""

    #: what the status page calls it
    kind = "a store"

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the tables if they are missing (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def carry_audit(
        self, table: AuditTable | None, refused: Callable[[BaseException], None]
    ) -> bool:
        """Write jobs' audit rows (into ``table``, in this database) with their completions.

        True when this store does; ``refused`` hears of rows the table refused.
        """
        return False

    @abc.abstractmethod
    async def enqueue(self, payload: Any, *, delay_s: float = 0) -> int:
        """Insert a pending job; returns its id."""

    @abc.abstractmethod
    async def claim(self, claim: Claim) -> list[ClaimedJob]:
        """Lease up to ``max_jobs`` ready jobs of the tenant and types; ``attempt`` + 1."""

    @abc.abstractmethod
    async def release(self, jobs: Sequence[ClaimedJob]) -> None:
        """Undo a claim nobody received (the caller went away): pending again, attempt − 1."""

    async def claim_or_release(self, claim: Claim) -> list[ClaimedJob]:
        """`claim`, but if the caller is cancelled meanwhile, the jobs go back untouched."""
        # in the caller's context: the claim runs in a task of its own
        await self.mark_seen(claim.tenant_id)
        task = asyncio.ensure_future(self.claim(claim))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            jobs = await task
            await asyncio.shield(self.release(jobs))
            raise

    async def mark_seen(self, tenant_id: str) -> None:  # noqa: B027 - stores that wait override it
        """Remember, for this task, what the tenant's queue looked like (see `wait_for_jobs`)."""

    @abc.abstractmethod
    async def wait_for_jobs(self, timeout_s: float, tenant_id: str) -> bool:
        """Return when the tenant's jobs may have come (or fallen due) since this task's
        last claim: True; or after ``timeout_s`` with no sign of any: False.

        A store may ignore the tenant and wake for anyone's jobs; it must not sleep
        through the tenant's.
        """

    @abc.abstractmethod
    async def heartbeat(self, job_id: int, *, lease_s: float, attempt: int | None) -> bool:
        """Extend the lease; False when the job is no longer this claimant's."""

    @abc.abstractmethod
    async def complete(
        self,
        job_id: int,
        *,
        outcome: str,
        result: Any,
        attempt: int | None,
        reply: Reply | None = None,
        audit: AuditRow | None = None,
    ) -> bool:
        """Mark done, writing the reply in the same transaction; False if the lease is lost.

        ``audit``: the job's audit row, for a store that writes it in the same
        statement (`PostgresStore.carry_audit`); it sets ``audit.stored`` when it
        did. A store that does not leaves it for the audit log's buffer.
        """

    @abc.abstractmethod
    async def fail(
        self, job_id: int, *, error: str, retry: bool, retry_after_s: float, attempt: int | None
    ) -> bool:
        """Fail for good, or hand back for a later attempt."""

    @abc.abstractmethod
    async def send_message(self, *, key: str, reply: Reply, job_id: int | None = None) -> bool:
        """Record an outbound message once per tenant and idempotency key; False if already sent.

        The row names a job (``job_id``, else the job a numeric ``key`` names) only
        when that job exists and is the sending tenant's: another tenant's key
        never takes a job's reply slot.
        """

    @abc.abstractmethod
    async def job(self, job_id: int) -> JobRow | None: ...

    @abc.abstractmethod
    async def messages(self, tenant_id: str | None = None) -> list[dict[str, Any]]: ...

    # -- tenant-scoped engine tokens (the local engine's `worker engine token`) --------

    @abc.abstractmethod
    async def add_token(self, token_sha256: str, tenant_id: str) -> None:
        """Remember a token (by its SHA-256, hex) that may act only for ``tenant_id``."""

    @abc.abstractmethod
    async def token_tenant(self, token_sha256: str) -> str | None:
        """The tenant a stored token is scoped to; None for an unknown token."""

    @abc.abstractmethod
    async def revoke_tokens(self, sha256_prefix: str) -> int:
        """Forget the tokens whose SHA-256 starts with ``sha256_prefix``; how many went."""

    @abc.abstractmethod
    async def tokens(self) -> list[TokenRow]:
        """Every stored token, oldest first."""
