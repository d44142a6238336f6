"""A worker imports only what its tenant's sources use (issue 13: a small idle worker).

Each case runs the real ``worker`` CLI in a fresh interpreter and reads
``sys.modules`` as it exits, so every import on the way counts: the config's
connector lookup, the read-only check of each query, the queue, the HTTP
endpoints. Nothing here is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.databases import fresh_postgres

pytestmark = pytest.mark.slow  # each case starts a fresh interpreter

REPO = Path(__file__).resolve().parents[2]

#: Runs ``worker ARGS…`` and writes the names in ``sys.modules`` to OUT when it exits.
_RECORD = """
import atexit, json, sys
out, sys.argv = sys.argv[1], ["worker", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from worker.cli import main
main()
"""

#: Drivers and parsers of other source types, and what only some configs need.
NOT_FOR_POSTGRESQL = (
    "sqlglot",
    "aiomysql",
    "pymysql",
    "pymssql",
    "pymongo",
    "redis",
    "elasticsearch",
    "httpx",
    "zeep",
    "gql",
    "gspread",
    "simple_salesforce",
    "openpyxl",
    "asyncssh",
    "aiosqlite",
    "cryptography",  # only for enc:v1: values
    "babel",  # only for a template's date, money and list filters
    "rapidfuzz",  # only for routing a customer's free text
)

POSTGRESQL_TENANT = """
tenant_id: pg_only
data_sources:
  - id: crm
    type: postgresql
    connection: {host: 127.0.0.1, port: 5432, database: postgres, username: postgres}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
lookups:
  order_status:
    source: crm
    args: [order_id]
    params:
      order_id: {pattern: '[0-9]{1,12}'}
    template: "Order {{ params.order_id }}: {{ row.status }}"
"""

MYSQL_TENANT = """
tenant_id: my_only
data_sources:
  - id: shop
    type: mysql
    connection: {host: 127.0.0.1, port: 3306, database: shop, username: root}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
      sneaky: SELECT status FROM orders WHERE order_id = $1 FOR UPDATE
lookups:
  order_status:
    source: shop
    args: [order_id]
    template: "{{ row.status }}"
"""


def _worker_modules(tmp_path: Path, args: list[str], **env: str) -> tuple[set[str], str, int]:
    """The modules a ``worker`` command had loaded when it exited; its stderr and exit code."""
    out = tmp_path / "modules.json"
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "WORKER_", "QUEUE_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", _RECORD, str(out), *args],
        cwd=tmp_path,
        env={**clean, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    modules = set(json.loads(out.read_text())) if out.exists() else set()
    return {name.split(".")[0] for name in modules}, done.stderr, done.returncode


async def test_run__postgresql_tenant_on_the_direct_queue_loads_no_other_driver(
    tmp_path: Path,
) -> None:
    config = tmp_path / "pg_only.yaml"
    config.write_text(POSTGRESQL_TENANT)
    async with fresh_postgres("lookup_imports") as queue_dsn:
        loaded, stderr, code = _worker_modules(
            tmp_path,
            ["run", "--config", str(config), "--once", "--listen", "127.0.0.1:0"],
            QUEUE_DSN=queue_dsn,
        )
    assert code == 0, stderr
    # What this tenant does use was loaded: the run went the whole way.
    assert {"asyncpg", "pglast", "aiohttp", "jinja2", "re2"} <= loaded
    unwanted = sorted(loaded & set(NOT_FOR_POSTGRESQL))
    assert not unwanted, f"a PostgreSQL-only worker imported {unwanted}"


def test_config_check__mysql_tenant_still_reads_its_queries_with_sqlglot(tmp_path: Path) -> None:
    config = tmp_path / "my_only.yaml"
    config.write_text(MYSQL_TENANT)
    loaded, stderr, code = _worker_modules(tmp_path, ["config", "check", "--config", str(config)])
    assert code != 0
    assert "FOR UPDATE/SHARE locks rows" in stderr, stderr
    assert "sqlglot" in loaded
    assert "pglast" not in loaded  # PostgreSQL's parser is for PostgreSQL queries only


def test_config_check__tenant_without_patterns_loads_no_re2(tmp_path: Path) -> None:
    config = tmp_path / "plain.yaml"
    config.write_text(POSTGRESQL_TENANT.replace("pattern: '[0-9]{1,12}'", "max_length: 12"))
    loaded, stderr, code = _worker_modules(tmp_path, ["config", "check", "--config", str(config)])
    assert code == 0, stderr
    assert "pglast" in loaded
    assert "re2" not in loaded  # RE2 compiles a config's patterns and extractors, if any


@pytest.mark.parametrize(
    ("dialect", "parser", "other"),
    [
        pytest.param("postgresql", "connectors.sql_pglast", "sqlglot", id="postgresql"),
        pytest.param("sqlite", "connectors.sql_sqlglot", "pglast", id="sqlite"),
    ],
)
def test_prepare_sql__imports_only_its_dialects_parser(
    tmp_path: Path, dialect: str, parser: str, other: str
) -> None:
    code = (
        "import json, sys\n"
        "from connectors.sql import prepare_sql\n"
        f"prepare_sql('SELECT a FROM t WHERE b = $1', style='dollar', dialect={dialect!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(done.stdout))
    assert parser in loaded
    assert other not in {name.split(".")[0] for name in loaded}
