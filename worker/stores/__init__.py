"""Queue stores (contract §4): the jobs and outbound_messages tables."""

from __future__ import annotations

from pathlib import Path

from worker.stores.base import Claim, JobRow, Reply, Store
from worker.stores.sqlite import SQLiteStore

__all__ = ["Claim", "JobRow", "Reply", "SQLiteStore", "Store", "open_store"]


def open_store(target: str) -> Store:
    """A store from a PostgreSQL DSN, ``sqlite:///path``, or a plain file path."""
    if target.startswith(("postgres://", "postgresql://")):
        from worker.stores.postgres import PostgresStore

        return PostgresStore(target)
    path = target.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SQLiteStore(Path(path))
