"""A fresh PostgreSQL database per test, on the machine's server (trust auth on loopback)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

#: contract §8's audit table as the seed writes it: tenant_id a UUID, no outcome column
SEED_AUDIT_DDL = """
CREATE TABLE data_access_logs (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL,
    data_source_id VARCHAR(255),
    query_type VARCHAR(100),
    customer_identifier VARCHAR(255),
    accessed_at TIMESTAMPTZ DEFAULT NOW(),
    response_time_ms INTEGER
)
"""


@contextlib.asynccontextmanager
async def fresh_postgres(prefix: str = "lookup_test") -> AsyncIterator[str]:
    """A new, empty database named ``prefix_<random>``; its DSN; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await admin.execute(f'DROP DATABASE "{name}"')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def postgres_with(prefix: str, *statements: str) -> AsyncIterator[str]:
    """`fresh_postgres` with ``statements`` (tables, rows) run in it first; its DSN."""
    async with fresh_postgres(prefix) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
        yield dsn
