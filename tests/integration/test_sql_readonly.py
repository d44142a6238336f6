"""Read-only for real (issue 10): each attack on the load-time check, against the real servers.

Queries are read by each dialect's own parser when the config loads, so a
trick that fooled the old token-level check (a PostgreSQL dollar quote, a
MySQL ``#`` comment, a large-object function the read-only session lets
through) is refused before any lookup can run it. Legitimate reads still load
and run. `worker test-connection` warns when a source's account could write.

Each module gets its own PostgreSQL database and MariaDB database, and roles
and users with unique names, all dropped at the end.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from connectors.base import Bound, Connector, NotARead
from connectors.mysql import MySQLConnector, MySQLSettings
from connectors.postgresql import PostgreSQLConnector, PostgreSQLSettings
from connectors.sqlite import SQLiteConnector
from connectors.sqlserver import SQLServerConnector
from tests.integration.test_connector_mysql import ADMIN, ADMIN_PASSWORD, admin_connect
from tests.integration.test_connector_mysql import HOST as MYSQL_HOST
from tests.integration.test_connector_mysql import PORT as MYSQL_PORT
from tests.integration.test_connector_postgresql import ADMIN_USER, WORKER, psql
from tests.integration.test_connector_postgresql import HOST as PG_HOST
from tests.integration.test_connector_postgresql import PORT as PG_PORT
from worker.config import load_tenant
from worker.errors import ConfigErrors
from worker.sources import Sources

REPO = Path(__file__).resolve().parents[2]

PG_SCHEMA = """
CREATE TABLE orders (order_id text PRIMARY KEY, status text NOT NULL, items int, meta jsonb,
                     customer text);
INSERT INTO orders VALUES ('12345', 'shipped', 3, '{"gift": "yes"}', 'Ana'),
                          ('12346', 'processing', 1, NULL, 'Bo');
CREATE TABLE customers (name text PRIMARY KEY, city text);
INSERT INTO customers VALUES ('Ana', 'Lisboa'), ('Bo', 'Porto');
"""


# --- servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    name = f"lookup_ro_{secrets.token_hex(4)}"
    psql(f"CREATE DATABASE {name}")
    try:
        psql(PG_SCHEMA, database=name)
        yield name
    finally:
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        psql(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="module")
def pg_reader(pg_database: str) -> Iterator[str]:
    """A login role that may only SELECT from ``orders``."""
    role = f"lookup_reader_{secrets.token_hex(4)}"
    psql(f"CREATE ROLE {role} LOGIN")
    try:
        psql(f"GRANT SELECT ON orders TO {role}", database=pg_database)
        yield role
    finally:
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        psql(f"DROP OWNED BY {role}", database=pg_database)
        psql(f"DROP ROLE IF EXISTS {role}")


@pytest.fixture(scope="module")
def my_database() -> Iterator[str]:
    name = f"lookup_ro_{secrets.token_hex(4)}"
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        cur.execute(
            f"CREATE TABLE {name}.orders (order_id VARCHAR(20) PRIMARY KEY,"
            " status VARCHAR(20), customer VARCHAR(20))"
        )
        cur.execute(
            f"INSERT INTO {name}.orders VALUES ('12345', 'shipped', 'Ana'),"
            " ('12346', 'processing', 'Bo')"
        )
        cur.execute(f"CREATE TABLE {name}.customers (name VARCHAR(20), city VARCHAR(20))")
        cur.execute(f"INSERT INTO {name}.customers VALUES ('Ana', 'Lisboa'), ('Bo', 'Porto')")
        conn.commit()
    try:
        yield name
    finally:
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="module")
def my_reader(my_database: str) -> Iterator[tuple[str, str]]:
    """A MariaDB user that may only SELECT in ``my_database``: (name, password)."""
    user, password = f"lookup_rd_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with admin_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'{MYSQL_HOST}' IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT SELECT ON {my_database}.* TO '{user}'@'{MYSQL_HOST}'")
        conn.commit()
    try:
        yield user, password
    finally:
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'{MYSQL_HOST}'")


@pytest.fixture
async def connectors() -> AsyncIterator[list[Connector]]:
    made: list[Connector] = []
    yield made
    for connector in made:
        await connector.close()


def pg_connector(made: list[Connector], database: str, user: str = ADMIN_USER) -> Connector:
    settings = PostgreSQLSettings.model_validate(
        {"host": PG_HOST, "port": PG_PORT, "database": database, "username": user, "pool_size": 1}
    )
    made.append(PostgreSQLConnector("crm", settings, base_dir=REPO))
    return made[-1]


def my_connector(
    made: list[Connector], database: str, user: str = ADMIN, password: str = ADMIN_PASSWORD
) -> Connector:
    fields: dict[str, Any] = {"host": MYSQL_HOST, "port": MYSQL_PORT, "database": database}
    fields |= {"username": user, "pool_size": 1}
    if password:
        fields["password"] = password
    made.append(MySQLConnector("shop", MySQLSettings.model_validate(fields), base_dir=REPO))
    return made[-1]


def config_with(tmp_path: Path, source_type: str, connection: str, sql: str) -> Path:
    path = tmp_path / "tenant.yaml"
    path.write_text(
        f"""
tenant_id: acme
data_sources:
  - id: db
    type: {source_type}
    connection: {{{connection}}}
    queries:
      the_read: {json.dumps(sql)}
""",
        encoding="utf-8",
    )
    return path


# --- PostgreSQL: attacks ------------------------------------------------------------------

PG_ATTACKS = [
    pytest.param("SELECT $$a$$; DELETE FROM orders", "exactly one statement", id="dollar-quote"),
    pytest.param(
        "SELECT $tag$ ' $tag$; DELETE FROM orders --'", "exactly one statement", id="tagged-quote"
    ),
    pytest.param(
        "SELECT $q$ $1 $q$ AS x FROM orders WHERE order_id = '1'",
        "placeholders read differently",
        id="placeholder-in-dollar-quote",
    ),
    pytest.param(
        r"SELECT lo_from_bytea(0, '\x41'::bytea)",
        r"lo_from_bytea\(\) writes or reads server files/objects",
        id="lo_from_bytea",
    ),
    pytest.param("SELECT lo_unlink(1)", r"lo_unlink\(\) writes", id="lo_unlink"),
    pytest.param(
        "SELECT pg_catalog.lo_export(1, 'lookup_lo.out')", r"lo_export\(\) writes", id="lo_export"
    ),
    pytest.param("SELECT * FROM lo_import('pg_hba.conf')", r"lo_import\(\)", id="lo_import"),
    pytest.param("SELECT pg_read_file('postgresql.conf')", r"pg_read_file\(\)", id="pg_read_file"),
    pytest.param("SELECT * FROM pg_ls_dir('.') AS f", r"pg_ls_dir\(\)", id="pg_ls_dir"),
    pytest.param("COPY orders TO STDOUT", "COPY is not a read", id="copy"),
    pytest.param("COPY (SELECT 1) TO 'lookup_copy.out'", "COPY is not a read", id="copy-to-file"),
    pytest.param(
        "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
        r"data-modifying WITH \(DELETE\)",
        id="cte-delete",
    ),
    pytest.param(
        "WITH a AS (SELECT 1), u AS (UPDATE orders SET status = 'x' RETURNING 1) SELECT * FROM a",
        r"data-modifying WITH \(UPDATE\)",
        id="cte-update",
    ),
    pytest.param("SELECT * INTO orders_copy FROM orders", "SELECT INTO", id="select-into"),
    pytest.param("SELECT * FROM orders FOR UPDATE", "FOR UPDATE", id="for-update"),
    pytest.param(
        "SELECT * FROM (SELECT * FROM orders FOR SHARE) AS o", "FOR UPDATE/SHARE", id="for-share"
    ),
    pytest.param(
        "SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')",
        r"query_to_xml\(\) runs SQL of its own",
        id="query_to_xml",
    ),
    pytest.param(
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        r"set_config\(\) changes server or session state",
        id="set_config",
    ),
    pytest.param("SELECT pg_advisory_lock(1)", r"pg_advisory_lock\(\) takes locks", id="advisory"),
    pytest.param("SELECT nextval('s')", r"nextval\(\)", id="nextval"),
    pytest.param(
        "SELECT * FROM dblink('host=x', 'DELETE FROM t') AS t(a int)", "dblink", id="dblink"
    ),
    pytest.param("SELECT 1 FROM", "does not parse as PostgreSQL", id="unparsable"),
]


@pytest.mark.parametrize(("sql", "match"), PG_ATTACKS)
def test_postgresql_attack__refused_by_prepare(sql: str, match: str) -> None:
    with pytest.raises(NotARead, match=match):
        PostgreSQLConnector.prepare(sql)


@pytest.mark.parametrize(("sql", "match"), PG_ATTACKS)
def test_postgresql_attack__config_does_not_load(
    sql: str, match: str, pg_database: str, tmp_path: Path
) -> None:
    connection = f"host: {PG_HOST}, port: {PG_PORT}, database: {pg_database}"
    path = config_with(tmp_path, "postgresql", f"{connection}, username: {ADMIN_USER}", sql)

    with pytest.raises(ConfigErrors, match=match):
        load_tenant(path)


async def test_postgresql__the_read_only_session_alone_lets_lo_from_bytea_write(
    connectors: list[Connector], pg_database: str
) -> None:
    # Why the parser must refuse it: the server's read-only session does not.
    connector = pg_connector(connectors, pg_database)
    bypassed = PostgreSQLConnector.prepare("SELECT 1 AS x")
    text = r"SELECT lo_from_bytea(0, '\x41'::bytea) AS oid"
    sneaked = type(bypassed)(spec=type(bypassed.spec)(text=text, order=()), positional=0)

    result = await connector.run(sneaked, Bound(), timeout_s=10)

    oid = result.rows[0]["oid"]
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=ADMIN_USER, database=pg_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_largeobject_metadata") == 1
        await conn.execute(f"SELECT lo_unlink({int(oid)})")
    finally:
        await conn.close()


# --- PostgreSQL: reads that still load and run --------------------------------------------

PG_READS = [
    pytest.param("SELECT status FROM orders WHERE order_id = $1", ("12345",), "shipped", id="seed"),
    pytest.param(
        "SELECT c.city AS status FROM orders o JOIN customers c ON c.name = o.customer"
        " WHERE o.order_id = $1",
        ("12345",),
        "Lisboa",
        id="join",
    ),
    pytest.param(
        "WITH o AS (SELECT * FROM orders WHERE order_id = $1) SELECT status FROM o",
        ("12346",),
        "processing",
        id="cte",
    ),
    pytest.param(
        "SELECT status FROM (SELECT status, row_number() OVER (ORDER BY order_id DESC) AS n"
        " FROM orders) AS r WHERE n = $1",
        (1,),
        "processing",
        id="window",
    ),
    pytest.param("SELECT status FROM orders WHERE items = $1::int", ("3",), "shipped", id="cast"),
    pytest.param(
        "SELECT status FROM orders WHERE status ILIKE $1", ("SHIP%",), "shipped", id="ilike"
    ),
    pytest.param(
        "SELECT meta->>'gift' AS status FROM orders WHERE meta->>'gift' = $1",
        ("yes",),
        "yes",
        id="json-operator",
    ),
    pytest.param(
        "SELECT status FROM orders WHERE status LIKE 'ship%' AND order_id = $1",
        ("12345",),
        "shipped",
        id="like-percent",
    ),
    pytest.param(
        "SELECT $$it's$$ AS status FROM orders WHERE order_id = $1",
        ("12345",),
        "it's",
        id="dollar-quoted-literal",
    ),
    pytest.param(
        "SELECT status FROM orders WHERE order_id = $1 UNION SELECT 'x' WHERE false",
        ("12345",),
        "shipped",
        id="union",
    ),
    pytest.param("VALUES ($1::text)", ("v",), "v", id="values"),
]


@pytest.mark.parametrize(("sql", "args", "first"), PG_READS)
async def test_postgresql_read__loads_and_runs(
    connectors: list[Connector], pg_database: str, sql: str, args: tuple[Any, ...], first: str
) -> None:
    connector = pg_connector(connectors, pg_database)

    result = await connector.run(PostgreSQLConnector.prepare(sql), Bound(args=args), timeout_s=10)

    assert next(iter(result.rows[0].values())) == first


# --- MySQL / MariaDB: attacks -------------------------------------------------------------


def outfile() -> str:
    """A file name no other run uses, relative: it would land in the database's folder."""
    return f"lookup_attack_{secrets.token_hex(6)}.txt"


MY_ATTACKS = [
    pytest.param(
        "SELECT 'a' # '\nINTO OUTFILE '{file}' -- '",
        "does not parse as MySQL",
        id="hash-comment-into-outfile",
    ),
    pytest.param(
        "SELECT * FROM orders INTO OUTFILE '{file}'", "does not parse as MySQL", id="into-outfile"
    ),
    pytest.param(
        "SELECT status FROM orders LIMIT 1 INTO DUMPFILE '{file}'",
        "does not parse as MySQL",
        id="into-dumpfile",
    ),
    pytest.param(
        "SELECT * FROM orders /*! INTO OUTFILE '{file}' */",
        "MySQL runs|comments read differently",
        id="executable-comment",
    ),
    pytest.param(
        "SELECT 1 /*M! INTO OUTFILE '{file}' */", "comments read differently", id="mariadb-comment"
    ),
    pytest.param(
        "SELECT 1 --1 INTO OUTFILE '{file}'", "does not parse as MySQL", id="dash-dash-no-space"
    ),
    pytest.param(
        "SELECT LOAD_FILE('/etc/passwd') AS f",
        r"load_file\(\) writes or reads server files",
        id="load_file",
    ),
    pytest.param("SELECT GET_LOCK('x', 1)", r"get_lock\(\) takes locks", id="get_lock"),
    pytest.param("SELECT BENCHMARK(100000000, MD5('a'))", r"benchmark\(\)", id="benchmark"),
    pytest.param("SELECT sys_exec('id')", r"sys_exec\(\)", id="sys_exec-udf"),
    pytest.param("SELECT * FROM orders FOR UPDATE", "FOR UPDATE", id="for-update"),
    pytest.param("SELECT * FROM orders LOCK IN SHARE MODE", "FOR UPDATE/SHARE", id="share-mode"),
    pytest.param(
        "SELECT * FROM orders WHERE order_id = $1; DELETE FROM orders",
        "one statement",
        id="stacked",
    ),
    pytest.param(
        "SELECT '\\' , $1 -- ' AS x",
        "placeholders read differently in MySQL",
        id="backslash-splices-value-as-code",
    ),
    pytest.param("LOAD DATA INFILE '{file}' INTO TABLE orders", "parse|not a read", id="load-data"),
    pytest.param("SET @x = 1", "not a read", id="set"),
    pytest.param("HANDLER orders OPEN", "parse|not a read", id="handler"),
]


@pytest.mark.parametrize(("sql", "match"), MY_ATTACKS)
def test_mysql_attack__refused_by_prepare(sql: str, match: str) -> None:
    with pytest.raises(NotARead, match=match):
        MySQLConnector.prepare(sql.format(file=outfile()))


@pytest.mark.parametrize(("sql", "match"), MY_ATTACKS)
def test_mysql_attack__config_does_not_load_and_writes_no_file(
    sql: str, match: str, my_database: str, tmp_path: Path
) -> None:
    file = outfile()
    connection = f"host: '{MYSQL_HOST}', port: {MYSQL_PORT}, database: {my_database}"
    path = config_with(tmp_path, "mysql", f"{connection}, username: {ADMIN}", sql.format(file=file))

    with pytest.raises(ConfigErrors, match=match):
        load_tenant(path)
    with admin_connect(my_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT LOAD_FILE(CONCAT(@@datadir, DATABASE(), '/', %s))", (file,))
        assert cur.fetchone() == (None,)


# --- MySQL / MariaDB: reads that still load and run ---------------------------------------

MY_READS = [
    pytest.param(
        "SELECT `status` FROM `orders` WHERE `order_id` = $1", ("12345",), "shipped", id="backticks"
    ),
    pytest.param(
        "SELECT status FROM orders WHERE status LIKE 'ship%' AND order_id = $1",
        ("12345",),
        "shipped",
        id="like-percent",
    ),
    pytest.param(
        "SELECT c.city FROM orders o JOIN customers c ON c.name = o.customer WHERE o.order_id = $1",
        ("12346",),
        "Porto",
        id="join",
    ),
    pytest.param(
        "WITH o AS (SELECT * FROM orders WHERE order_id = $1) SELECT status FROM o",
        ("12346",),
        "processing",
        id="cte",
    ),
    pytest.param(
        "SELECT status FROM (SELECT status, ROW_NUMBER() OVER (ORDER BY order_id) AS n"
        " FROM orders) AS r WHERE n = $1",
        (2,),
        "processing",
        id="window",
    ),
    pytest.param(
        "SELECT status FROM orders # the seed's table\nWHERE order_id = $1 -- by id",
        ("12345",),
        "shipped",
        id="comments",
    ),
    pytest.param(
        "SELECT CONCAT(status, '#', 'x') FROM orders WHERE order_id = $1",
        ("12345",),
        "shipped#x",
        id="hash-in-string",
    ),
    pytest.param("SELECT SLEEP(0) + $1", (1,), 1, id="sleep-allowed"),
]


@pytest.mark.parametrize(("sql", "args", "first"), MY_READS)
async def test_mysql_read__loads_and_runs(
    connectors: list[Connector], my_database: str, sql: str, args: tuple[Any, ...], first: Any
) -> None:
    connector = my_connector(connectors, my_database)

    result = await connector.run(MySQLConnector.prepare(sql), Bound(args=args), timeout_s=10)

    assert next(iter(result.rows[0].values())) == first


# --- SQLite and T-SQL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        pytest.param("SELECT load_extension('x')", r"load_extension\(\)", id="load_extension"),
        pytest.param("SELECT writefile('x', 'y')", r"writefile\(\)", id="writefile"),
        pytest.param("SELECT fts3_tokenizer('x')", r"fts3_tokenizer\(\)", id="fts3_tokenizer"),
        pytest.param("ATTACH DATABASE 'x.db' AS x", "not a read", id="attach"),
        pytest.param("SELECT * FROM t WHERE a = :name", "placeholders", id="named-parameter"),
    ],
)
def test_sqlite_attack__refused(sql: str, match: str) -> None:
    with pytest.raises(NotARead, match=match):
        SQLiteConnector.prepare(sql)


async def test_sqlite_read__concatenation_loads_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (order_id TEXT, status TEXT)")
        db.execute("INSERT INTO orders VALUES ('12345', 'shipped')")
    db.close()
    connector = SQLiteConnector(
        "shop", SQLiteConnector.Settings.model_validate({"path": str(path)}), base_dir=tmp_path
    )
    prepared = SQLiteConnector.prepare(
        "SELECT order_id || ': ' || status AS line FROM orders WHERE order_id = $1"
    )
    try:
        result = await connector.run(prepared, Bound(args=("12345",)), timeout_s=10)
    finally:
        await connector.close()

    assert result.rows == [{"line": "12345: shipped"}]


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        pytest.param(
            "SELECT * FROM OPENROWSET('SQLNCLI', 's', 'q')", "openrowset", id="openrowset"
        ),
        pytest.param("SELECT * FROM OPENQUERY(srv, 'q')", "openquery", id="openquery"),
        pytest.param("EXEC xp_cmdshell 'dir'", "not a read", id="exec"),
        pytest.param("SELECT * FROM master.dbo.xp_dirtree", "xp_dirtree", id="xp-table"),
        pytest.param("SELECT * INTO #copy FROM orders", "INTO", id="select-into"),
        pytest.param("SELECT * FROM orders WITH (UPDLOCK)", "UPDLOCK takes locks", id="updlock"),
    ],
)
def test_sqlserver_attack__refused(sql: str, match: str) -> None:
    with pytest.raises(NotARead, match=match):
        SQLServerConnector.prepare(sql)


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param(
            "SELECT TOP (1) [status] FROM [orders] WHERE [order_id] = $1", id="top-brackets"
        ),
        pytest.param("SELECT TOP 1 status FROM orders WITH (NOLOCK) WHERE id = $1", id="nolock"),
        pytest.param("SELECT name FROM t WHERE name LIKE N'a%' AND id = $1", id="nchar-like"),
    ],
)
def test_sqlserver_read__loads(sql: str) -> None:
    assert SQLServerConnector.prepare(sql).positional == 1


# --- write access: `worker test-connection` warns ------------------------------------------


async def test_write_access__postgres_superuser_is_named(
    connectors: list[Connector], pg_database: str
) -> None:
    assert await pg_connector(connectors, pg_database).write_access() == ["superuser"]


async def test_write_access__postgres_select_only_role_has_none(
    connectors: list[Connector], pg_database: str, pg_reader: str
) -> None:
    assert await pg_connector(connectors, pg_database, pg_reader).write_access() == []


async def test_write_access__postgres_table_writes_are_named(
    connectors: list[Connector], pg_database: str
) -> None:
    role = f"lookup_writer_{secrets.token_hex(4)}"
    psql(f"CREATE ROLE {role} LOGIN")
    try:
        psql(f"GRANT SELECT, INSERT, DELETE ON orders TO {role}", database=pg_database)
        psql(f"GRANT CREATE ON SCHEMA public TO {role}", database=pg_database)
        connector = pg_connector(connectors, pg_database, role)

        found = await connector.write_access()
        await connector.close()
    finally:
        psql(f"DROP OWNED BY {role}", database=pg_database)
        psql(f"DROP ROLE IF EXISTS {role}")

    assert found == ["INSERT, DELETE on tables", "CREATE in schema public"]


async def test_write_access__mariadb_root_is_named(
    connectors: list[Connector], my_database: str
) -> None:
    found = await my_connector(connectors, my_database).write_access()

    assert any(item.startswith("ALL PRIVILEGES") for item in found), found


async def test_write_access__mariadb_select_only_user_has_none(
    connectors: list[Connector], my_database: str, my_reader: tuple[str, str]
) -> None:
    user, password = my_reader

    assert await my_connector(connectors, my_database, user, password).write_access() == []


def test_write_access__grant_lines_read() -> None:
    from connectors.sql import mysql_write_access

    assert mysql_write_access(
        [
            "GRANT USAGE ON *.* TO `u`@`%`",
            "GRANT SELECT, INSERT, UPDATE (`status`) ON `shop`.* TO `u`@`%`",
            "GRANT FILE ON *.* TO `u`@`%`",
            "GRANT SELECT ON `shop`.`orders` TO `u`@`%` WITH GRANT OPTION",
            "GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION",
            "GRANT `reporting` TO `u`@`%`",
        ]
    ) == ["INSERT, UPDATE on shop.*", "FILE on *.*", "GRANT OPTION on shop.orders"]


async def test_check__report_warns_and_still_passes(
    pg_database: str, pg_reader: str, tmp_path: Path
) -> None:
    connection = f"host: {PG_HOST}, port: {PG_PORT}, database: {pg_database}"
    root = load_tenant(
        config_with(tmp_path, "postgresql", f"{connection}, username: {ADMIN_USER}", "SELECT 1")
    )
    reader_path = tmp_path / "reader"
    reader_path.mkdir()
    reader = load_tenant(
        config_with(reader_path, "postgresql", f"{connection}, username: {pg_reader}", "SELECT 1")
    )
    for tenant, expected in [
        (root, ("the account can write (superuser): give it a read-only role",)),
        (reader, ()),
    ]:
        sources = Sources(tenant)
        try:
            report = await sources.check("db")
        finally:
            await sources.close()
        assert report.ok, report.error
        assert report.warnings == expected


def test_cli_test_connection__warns_for_a_writing_account_and_exits_0(
    pg_database: str, my_database: str, my_reader: tuple[str, str], tmp_path: Path
) -> None:
    user, password = my_reader
    config = tmp_path / "acme.yaml"
    config.write_text(
        f"""
tenant_id: acme
data_sources:
  - id: crm
    type: postgresql
    connection: {{host: {PG_HOST}, port: {PG_PORT}, database: {pg_database},
                  username: {ADMIN_USER}}}
    queries: {{one: SELECT 1}}
  - id: shop
    type: mysql
    connection: {{host: '{MYSQL_HOST}', port: {MYSQL_PORT}, database: {my_database},
                  username: {user}, password: '{password}'}}
    queries: {{one: SELECT 1}}
""",
        encoding="utf-8",
    )

    done = subprocess.run(
        [WORKER, "test-connection", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "warning: crm: the account can write (superuser): give it a read-only role" in lines
    assert not any(line.startswith("warning: shop") for line in lines)
    assert password not in done.stdout + done.stderr
