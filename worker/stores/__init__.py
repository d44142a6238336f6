"""Queue stores (contract §4): the jobs and outbound_messages tables."""

from __future__ import annotations

from pathlib import Path

from worker.stores.base import Claim, JobRow, Reply, Store
from worker.stores.sqlite import SQLiteStore

__all__ = ["Claim", "JobRow", "Reply", "SQLiteStore", "Store", "open_store"]


def open_store(target: str) -> Store:
    """A store from ``sqlite:///path``, a plain file path, or (later) a PostgreSQL DSN."""
    if target.startswith(("postgres://", "postgresql://")):
        raise NotImplementedError("the PostgreSQL queue store is not built yet")
    path = target.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SQLiteStore(Path(path))
