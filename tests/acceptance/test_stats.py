"""`worker stats` (contract §8, issue 15): the seed's monitoring query per source and
hour, and per lookup its outcomes, average and p95, from the audit log in both of its
shapes, in SQLite and PostgreSQL, without the config's secret keys."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.acceptance.conftest import REPO, WORKER, _env
from tests.support.databases import SEED_AUDIT_DDL, fresh_postgres
from worker import secrets as worker_secrets
from worker.audit import AuditLog, AuditRow, mask_identifier

#: order_status: 1..20 ms (p95 by nearest rank: the 19th, 19 ms), 17 ok, 2 not_found,
#: 1 fallback; faq: five at 5 ms; one more order_status outside the last 24 hours
OUTCOMES = ["ok"] * 17 + ["not_found"] * 2 + ["fallback"]


def rows() -> list[AuditRow]:
    now = dt.datetime.now(dt.UTC)

    def row(lookup: str, source: str, ms: int, outcome: str, ago: dt.timedelta) -> AuditRow:
        return AuditRow(
            tenant_id="shop",
            data_source_id=source,
            query_type=lookup,
            customer_identifier=mask_identifier("+1234567890"),
            accessed_at=now - ago,
            response_time_ms=ms,
            outcome=outcome,
        )

    made = [
        row("order_status", "shop_db", ms, o, dt.timedelta()) for ms, o in enumerate(OUTCOMES, 1)
    ]
    made += [row("faq", "faq", 5, "ok", dt.timedelta(minutes=5)) for _ in range(5)]
    made.append(row("order_status", "shop_db", 999, "ok", dt.timedelta(hours=30)))
    return made


async def write(target: str) -> None:
    audit = AuditLog(target, flush_s=0.01)
    await audit.open()
    for made in rows():
        audit.record(made)
    await audit.close()


def stats(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER, "stats", "--config", str(config), *args],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def by_lookup(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return {r["query_type"]: r for r in json.loads(done.stdout)}


@pytest.fixture
def secret_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose one secret is encrypted with a key the stats run will not have."""
    monkeypatch.setenv("WORKER_SECRET_KEYS", worker_secrets.keygen())
    token = worker_secrets.encrypt("api-key-value", tenant="shop")
    path = tmp_path / "shop.yaml"
    path.write_text(
        "tenant_id: shop\ndata_sources:\n"
        "  - id: api\n    type: rest_api\n"
        f"    connection: {{base_url: 'https://api.example.com', api_key: '{token}'}}\n"
        "    queries: {faq: '/faq/{topic}'}\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    async with fresh_postgres("lookup_stats") as dsn:
        yield dsn


async def test_sqlite__per_lookup_outcomes_and_p95_without_secret_keys(
    secret_config: Path, tmp_path: Path
) -> None:
    target = str(tmp_path / "audit.db")
    await write(target)

    found = by_lookup(stats(secret_config, "--json", "--by", "lookup", AUDIT_DSN=target))

    assert found["order_status"] == {
        "query_type": "order_status",
        "query_count": 20,
        "outcomes": {"ok": 17, "not_found": 2, "fallback": 1},
        "avg_response_time": 10.5,
        "p95_response_time": 19,
    }
    assert found["faq"]["p95_response_time"] == 5 and found["faq"]["outcomes"] == {"ok": 5}

    hourly = stats(secret_config, "--json", AUDIT_DSN=target)  # §8's shape, as it was
    assert hourly.returncode == 0, hourly.stderr
    assert {tuple(sorted(r)) for r in json.loads(hourly.stdout)} == {
        ("avg_response_time", "data_source_id", "hour", "query_count")
    }
    assert sum(r["query_count"] for r in json.loads(hourly.stdout)) == 25


async def test_text__both_tables_and_readable_windows(secret_config: Path, tmp_path: Path) -> None:
    target = str(tmp_path / "audit.db")
    await write(target)

    text = stats(secret_config, AUDIT_DSN=target)
    assert text.returncode == 0, text.stderr
    assert "per data source and hour, last 24 hours:" in text.stdout
    assert "avg ms" in text.stdout and "p95 ms" in text.stdout
    line = next(s for s in text.stdout.splitlines() if s.startswith("order_status"))
    assert line.split() == ["order_status", "20", "17", "2", "0", "1", "10.5", "19"]

    assert "last 90 minutes" in stats(secret_config, "--since", "90m", AUDIT_DSN=target).stdout
    week = stats(secret_config, "--since", "7d", "--by", "lookup", AUDIT_DSN=target).stdout
    assert "last 7 days" in week and "999" not in week.split("order_status")[1].split()[:7]
    assert (
        "no data access in the last hour"
        in stats(secret_config, "--since", "1h", AUDIT_DSN=str(tmp_path / "empty.db")).stdout
    )
    bad = stats(secret_config, "--since", "soon", AUDIT_DSN=target)
    assert bad.returncode == 2 and "24h" in bad.stderr


async def test_postgres__our_shape(secret_config: Path, pg_dsn: str) -> None:
    await write(pg_dsn)

    found = by_lookup(stats(secret_config, "--json", "--by", "lookup", AUDIT_DSN=pg_dsn))

    assert found["order_status"]["outcomes"] == {"ok": 17, "not_found": 2, "fallback": 1}
    assert found["order_status"]["p95_response_time"] == 19
    assert found["order_status"]["query_count"] == 20


async def test_postgres__the_seeds_shape_has_no_outcomes(secret_config: Path, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(SEED_AUDIT_DDL)
    finally:
        await conn.close()
    await write(pg_dsn)

    found = by_lookup(stats(secret_config, "--json", "--by", "lookup", AUDIT_DSN=pg_dsn))
    assert found["order_status"]["outcomes"] is None
    assert found["order_status"]["p95_response_time"] == 19

    text = stats(secret_config, "--by", "lookup", AUDIT_DSN=pg_dsn).stdout
    line = next(s for s in text.splitlines() if s.startswith("order_status"))
    assert line.split() == ["order_status", "20", "-", "-", "-", "-", "10.5", "19"]
    assert "no outcome column" in text


async def test_an_encrypted_audit_dsn__needs_the_keys_and_says_so(
    secret_config: Path, tmp_path: Path
) -> None:
    text = secret_config.read_text(encoding="utf-8")
    target = worker_secrets.encrypt(str(tmp_path / "audit.db"), tenant="shop")
    secret_config.write_text(f"{text}audit: {{dsn: '{target}'}}\n", encoding="utf-8")

    without = stats(secret_config)
    assert without.returncode == 3
    assert "audit log's DSN is encrypted" in without.stderr
    assert "WORKER_SECRET_KEYS" in without.stderr and "Traceback" not in without.stderr
