"""Queue stores (contract §4): the jobs and outbound_messages tables."""

from __future__ import annotations

from pathlib import Path

from worker.settings import Settings
from worker.stores.base import Claim, JobRow, Reply, Store

__all__ = ["Claim", "JobRow", "Reply", "Store", "open_store"]


def open_store(target: str, settings: Settings | None = None) -> Store:
    """A store from a PostgreSQL DSN, ``sqlite:///path``, or a plain file path.

    Each store's module (and its driver) is imported only for a target of its kind.
    PostgreSQL's LISTEN session connects to ``QUEUE_LISTEN_DSN`` when it is set, and
    ``QUEUE_POOL_MODE=transaction`` suits a pool behind PgBouncer's transaction pooling.
    """
    if target.startswith(("postgres://", "postgresql://")):
        from worker.stores.postgres import PostgresStore

        settings = settings or Settings.load()
        return PostgresStore(
            target,
            listen_dsn=settings.queue_listen_dsn or None,
            pool_mode=settings.pool_mode(),
        )
    from worker.stores.sqlite import SQLiteStore

    path = target.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SQLiteStore(Path(path))
