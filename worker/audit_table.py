"""The ``data_access_logs`` table (contract §8): its rows, its columns, how a
customer is recorded.

`AuditRow` is one data access; `AuditTable` writes rows into a table as it is
found (a table that already exists keeps its own columns and types);
`mask_identifier` records the customer masked or as a keyed hash, never raw.
The stores write these rows (`worker.stores`); `worker.audit.AuditLog` buffers
them off the hot path. This module knows nothing of either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import operator
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "COLUMNS",
    "SCHEMA_POSTGRES",
    "SCHEMA_SQLITE_TABLE",
    "SQLITE_INDEX",
    "AuditRow",
    "AuditTable",
    "give_ids",
    "iso_utc",
    "mask_identifier",
    "postgres_columns",
    "tenant_uuid",
]

SCHEMA_POSTGRES = """
CREATE TABLE IF NOT EXISTS data_access_logs (
    id UUID PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    data_source_id VARCHAR(255),
    query_type VARCHAR(100),
    customer_identifier VARCHAR(255),
    accessed_at TIMESTAMPTZ DEFAULT NOW(),
    response_time_ms INTEGER,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS data_access_logs_recent ON data_access_logs (tenant_id, accessed_at);
"""

SCHEMA_SQLITE_TABLE = """
CREATE TABLE IF NOT EXISTS data_access_logs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    data_source_id VARCHAR(255),
    query_type VARCHAR(100),
    customer_identifier VARCHAR(255),
    accessed_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    response_time_ms INTEGER,
    outcome TEXT
);
"""
SQLITE_INDEX = """
CREATE INDEX IF NOT EXISTS data_access_logs_recent ON data_access_logs (tenant_id, accessed_at)
"""

#: The contract's columns, in order; a table that already exists may have fewer.
COLUMNS = (
    "id",
    "tenant_id",
    "data_source_id",
    "query_type",
    "customer_identifier",
    "accessed_at",
    "response_time_ms",
    "outcome",
)


def tenant_uuid(tenant_id: str, configured: uuid.UUID | None = None) -> uuid.UUID:
    """The tenant's UUID for a ``tenant_id UUID`` column: the configured one, else name-based."""
    return configured or uuid.uuid5(uuid.NAMESPACE_URL, "tenant:" + tenant_id)


@dataclass(slots=True)
class AuditRow:
    tenant_id: str
    data_source_id: str | None
    query_type: str | None
    customer_identifier: str | None
    accessed_at: dt.datetime
    response_time_ms: int
    outcome: str
    #: given when the row is first written, so a retried batch cannot write it twice
    id: str = ""
    #: the config's ``tenant_uuid``; None: the name-based UUID (`tenant_uuid`)
    tenant_uuid: uuid.UUID | None = None
    #: set by a store that wrote the row in the statement that completed its job
    stored: bool = False


def iso_utc(moment: dt.datetime) -> str:
    """SQLite's ``accessed_at``: UTC, milliseconds, ``Z`` (sorts as it reads)."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def give_ids(rows: list[AuditRow]) -> None:
    """Random (version 4) UUIDs for the rows that have none, from one read of the OS's RNG."""
    fresh = [r for r in rows if not r.id]
    pool = os.urandom(16 * len(fresh))
    for n, row in enumerate(fresh):
        row.id = str(uuid.UUID(bytes=pool[16 * n : 16 * n + 16], version=4))


def mask_identifier(
    raw: str | None, *, mode: Literal["masked", "hashed"] = "masked", key: bytes = b""
) -> str | None:
    """``+1234567890`` → ``+******7890`` (masked) or ``hmac:1f2e…`` (a keyed hash)."""
    if not raw:
        return None
    if mode == "hashed":
        digest = hmac.new(key or b"data-lookup-worker", raw.encode(), hashlib.sha256)
        return "hmac:" + digest.hexdigest()[:32]
    keep = 4 if len(raw) > 6 else 1
    prefix = "+" if raw.startswith("+") else ""
    body = raw.removeprefix("+")
    return prefix + re.sub(r"\S", "*", body[:-keep]) + body[-keep:]


@dataclass(frozen=True)
class _Column:
    """One column the worker writes: its name, the array type it is sent as, its value."""

    name: str
    pg_type: str
    value: Callable[[AuditRow], Any]


def _pg_column(name: str, type_name: str) -> _Column | None:
    """How to write the contract's column ``name`` when the table declares ``type_name``."""
    is_uuid = type_name == "uuid"
    is_text = type_name in ("text", "character varying", "character", "name", "citext")
    if name == "id":
        if is_uuid:
            return _Column(name, "uuid", lambda r: r.id)
        return _Column(name, "text", lambda r: r.id) if is_text else None  # a serial: its default
    if name == "tenant_id":
        if is_uuid:
            return _Column(name, "uuid", lambda r: tenant_uuid(r.tenant_id, r.tenant_uuid))
        return _Column(name, "text", lambda r: r.tenant_id)
    if name == "accessed_at":
        return _Column(name, "timestamptz", lambda r: r.accessed_at)
    if name == "response_time_ms":
        return _Column(name, "int", lambda r: r.response_time_ms)
    return _Column(name, "text", operator.attrgetter(name))


def _sqlite_column(name: str, declared: str) -> _Column | None:
    declared = declared.upper()
    if name == "id":
        # INTEGER PRIMARY KEY is the rowid: SQLite numbers it
        return None if "INT" in declared else _Column(name, "", lambda r: r.id)
    if name == "tenant_id" and "UUID" in declared:
        return _Column(name, "", lambda r: str(tenant_uuid(r.tenant_id, r.tenant_uuid)))
    if name == "accessed_at":
        return _Column(name, "", lambda r: iso_utc(r.accessed_at))
    return _Column(name, "", operator.attrgetter(name))


class AuditTable:
    """The ``data_access_logs`` that is there: which contract columns it has, and their types.

    A table the worker created has them all. One that existed before (the seed's
    own: ``tenant_id UUID``, no ``outcome``) is written as it is: ``tenant_id``
    gets the tenant's UUID when the column is a UUID, and the columns it lacks
    are left out. Columns of its own are left to their defaults.
    """

    def __init__(self, columns: Sequence[_Column]) -> None:
        self.columns = tuple(columns)
        self.names = ", ".join(f'"{c.name}"' for c in self.columns)

    @classmethod
    def postgres(cls, declared: Mapping[str, str]) -> AuditTable:
        found = (_pg_column(name, declared[name]) for name in COLUMNS if name in declared)
        return cls([c for c in found if c is not None])

    @classmethod
    def sqlite(cls, declared: Mapping[str, str]) -> AuditTable:
        found = (_sqlite_column(name, declared[name]) for name in COLUMNS if name in declared)
        return cls([c for c in found if c is not None])

    @property
    def casts(self) -> list[str]:
        """``uuid[]``, ``text[]``… one array type per column, for ``unnest``."""
        return [f"{c.pg_type}[]" for c in self.columns]

    def insert_postgres(self) -> str:
        """One statement for a batch; a retried batch skips the rows it had written."""
        arrays = ", ".join(f"${n}::{cast}" for n, cast in enumerate(self.casts, start=1))
        return (
            f"INSERT INTO data_access_logs ({self.names}) "  # noqa: S608 - known column names
            f"SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
        )

    def insert_sqlite(self) -> str:
        """One statement for a batch, its rows one JSON array: SQLite inserts them in one
        step, so the writing thread takes the GIL once a batch instead of once a row (with
        ``executemany`` it waited for the busy event loop at every row, and fell behind)."""
        picks = ", ".join(f"json_extract(value, '$[{n}]')" for n in range(len(self.columns)))
        return (
            f"INSERT INTO data_access_logs ({self.names}) "  # noqa: S608 - known column names
            f"SELECT {picks} FROM json_each(?) WHERE true ON CONFLICT DO NOTHING"
        )

    def arrays(self, rows: Sequence[AuditRow | None]) -> list[list[Any]]:
        """Column-wise values (one list per column); a None row gives NULLs."""
        return [[c.value(r) if r is not None else None for r in rows] for c in self.columns]

    def tuples(self, rows: Sequence[AuditRow]) -> list[tuple[Any, ...]]:
        return [tuple(c.value(r) for c in self.columns) for r in rows]


async def postgres_columns(conn: Any) -> dict[str, str]:
    """The columns of the ``data_access_logs`` an unqualified name reaches, with their types."""
    rows = await conn.fetch(
        """SELECT attname, atttypid::regtype::text FROM pg_attribute
           WHERE attrelid = to_regclass('data_access_logs') AND attnum > 0 AND NOT attisdropped"""
    )
    return {str(r[0]): str(r[1]) for r in rows}
