"""What a job comes to: its `Outcome` (contract §3) and the `Answer` the queue settles.

`Outcome` is a `StrEnum`: each member is the plain string of the contract
(``"ok"``…), so JSON, SQL parameters, metric labels and log lines carry exactly
that string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.audit_table import AuditRow

__all__ = ["Answer", "Outcome"]


class Outcome(enum.StrEnum):
    """The four outcomes of contract §3."""

    OK = "ok"
    NOT_FOUND = "not_found"
    INVALID_INPUT = "invalid_input"
    FALLBACK = "fallback"


@dataclass
class Answer:
    """What a job came to: the outcome, the customer's text, and what to record."""

    outcome: str
    message: str | None
    reply_to: str | None
    result: Any = None
    lookup: str | None = None
    source_id: str | None = None
    response_time_ms: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    #: its audit row; on the direct PostgreSQL queue it is written with the job's completion
    audit: AuditRow | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "message": self.message,
            "data": self.result if self.outcome == Outcome.OK else None,
            "source": self.source_id,
            "response_time_ms": self.response_time_ms,
        }
