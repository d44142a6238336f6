"""Shared SQL handling: the read-only check, ``$1…$n`` placeholders, and the
connection settings every SQL server source shares (`SQLConnectionSettings`).

Every SQL source takes ``$n`` placeholders in its configured queries, as the
seed writes them, whatever the driver's own style; `prepare_sql` rewrites them
for the driver and says how many there are, so the config can check a lookup's
``args`` against them at load time.

Whether a query is a read is decided by a real parser of its dialect, once, at
load time: pglast (PostgreSQL's own parser) for PostgreSQL, sqlglot for MySQL,
T-SQL and SQLite. A query is accepted when it parses as exactly one plain read
(SELECT, WITH, set operations, VALUES; SHOW and EXPLAIN where they cannot
write) with no locking clause, no ``INTO``, no data-modifying CTE and no call
to a function that touches files, runs other SQL or changes server state.
What the parser cannot read is refused. The older token-level check runs
first, as a second opinion.

Each parser lives in its own module (`connectors.sql_pglast`,
`connectors.sql_sqlglot`), imported the first time a query of its dialect is
checked: a worker loads only the parsers its sources' dialects need.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, SecretStr

from connectors.base import ConfigError, ConnectionSettings, Dialect, NotARead, PreparedQuery

__all__ = [
    "POSTGRESQL_WRITE_ACCESS",
    "Dialect",
    "SQLConnectionSettings",
    "SQLSpec",
    "mysql_write_access",
    "placeholder_columns",
    "postgresql_write_access",
    "prepare_sql",
]

Style = Literal["dollar", "qmark_numbered", "format"]
_ScanStyle = Literal[Style, "parse", "mark"]

# String literals, quoted identifiers and comments: skipped by the scanners below.
# MySQL runs the body of a `/*! … */` comment, so that one is scanned as code.
_QUOTED = r""""(?:[^"]|"")*"|`[^`]*`|--[^\n]*|/\*(?!!).*?\*/"""
_SKIP = re.compile(r"'(?:[^']|'')*'|" + _QUOTED, re.DOTALL)
# The same, for dialects where a backslash escapes a quote (MySQL, PostgreSQL E'…'):
# a query must read as one read statement under both rules.
_SKIP_BACKSLASH = re.compile(r"'(?:[^'\\]|\\.|'')*'|" + _QUOTED, re.DOTALL)
_TOKEN = re.compile(r"\$(\d+)|;|[A-Za-z_][A-Za-z0-9_]*")
_READ_STARTS = {"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "DESCRIBE"}
# Statements that write or change state. Function names that are also
# keywords elsewhere (REPLACE, SET in CHARACTER SET) are left out on purpose:
# the read-only session the driver opens is the second line of defence.
_WRITES = {
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "DROP",
    "ALTER",
    "CREATE",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "COPY",
    "CALL",
    "EXEC",
    "EXECUTE",
    "ATTACH",
    "DETACH",
    "PRAGMA",
    "VACUUM",
    "REINDEX",
    "INTO",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
}


#: the fields a dsn holds too: given beside one, they say the target twice
_LOGIN_FIELDS = frozenset({"host", "port", "database", "username", "password"})


class SQLConnectionSettings(ConnectionSettings):
    """The ``connection`` fields every SQL server source shares: a server and a
    login, or one ``dsn``; and the pool of connections to it.

    A source type's model declares ``port`` again with its server's default, and
    any field again whose limits are its own (a shorter name, a smaller pool); its
    validator says how ``dsn`` and the other fields combine.
    """

    host: str | None = Field(default=None, min_length=1)
    port: int = Field(ge=1, le=65535)
    database: str | None = Field(default=None, min_length=1)
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    dsn: SecretStr | None = None
    #: most connections open at once; one read uses one at a time. The pool opens
    #: them as reads need them and closes them after ``pool_idle_s`` unused, so 25
    #: costs a quiet tenant one connection (worker.sources caps reads in flight at
    #: this too)
    pool_size: int = Field(default=25, ge=1, le=100)
    #: a pooled connection unused this long is closed (the pool keeps one)
    pool_idle_s: float = Field(default=60.0, gt=0, le=3600)

    def login_fields_given(self) -> list[str]:
        """The fields a dsn also holds that the config gave (sorted), defaults aside."""
        return sorted(_LOGIN_FIELDS & self.model_fields_set)


@dataclass(frozen=True)
class SQLSpec:
    """SQL in the driver's placeholder style, and the order args bind in."""

    text: str
    #: for positional styles: which ``$n`` (0-based) each driver placeholder takes
    order: tuple[int, ...]

    def arguments(self, args: tuple[object, ...]) -> tuple[object, ...]:
        return tuple(args[i] for i in self.order)


def prepare_sql(sql: str, *, style: Style, dialect: Dialect) -> PreparedQuery:
    """Check that ``sql`` is one read in ``dialect`` and rewrite its ``$n`` for the driver."""
    if not isinstance(sql, str) or not sql.strip():
        raise ConfigError("a SQL query must be a non-empty string")
    scan = _scan(sql, _SKIP, style)
    count = max(scan.order, default=-1) + 1
    missing = sorted(set(range(count)) - set(scan.order))
    if missing:
        raise ConfigError(f"placeholder ${missing[0] + 1} is never used (placeholders run $1…$n)")
    # The parser is the authority; the token scans under both quoting rules stay
    # as a second opinion.
    _check_parsed(sql, scan, dialect)
    _check_tokens(scan)
    _check_tokens(_scan(sql, _SKIP_BACKSLASH, style))
    # Only `%s` binds by position of appearance; `$n` and `?n` bind by number.
    spec_order = tuple(scan.order) if style == "format" else tuple(range(count))
    return PreparedQuery(
        spec=SQLSpec(text=scan.text, order=spec_order),
        positional=count,
        columns=placeholder_columns(sql, dialect=dialect, count=count),
    )


def placeholder_columns(sql: str, *, dialect: Dialect, count: int) -> tuple[str | None, ...]:
    """For each of ``$1…$count``, the column it is compared with, or None.

    Read with the dialect's parser, like the read-only check: ``col = $1``,
    ``$1 = t.col``, ``col IN ($1, …)``, ``col LIKE $1``, and ``<>``, ``<``, ``>``,
    ``<=``, ``>=``, ``ILIKE``, casts on either side ignored. A placeholder compared
    with no column (``lower(col) = $1``, ``SELECT $1``) or with two different
    columns has no name; nor have two placeholders compared with the same column
    (``day >= $1 AND day < $2``): their order cannot come from the name.
    """
    if count == 0:
        return ()
    found: dict[int, set[str]] = {}
    try:
        if dialect == "postgresql" and _has_pglast():
            from connectors import sql_pglast

            pairs = list(sql_pglast.comparisons(sql))
        else:
            from connectors import sql_sqlglot

            pairs = sql_sqlglot.comparisons(_scan(sql, _SKIP, "mark").text, dialect)
        for number, column in pairs:
            found.setdefault(number, set()).add(column)
    except (ConfigError, ValueError, RecursionError):
        return (None,) * count
    names = [
        next(iter(found[n])) if len(found.get(n, ())) == 1 else None for n in range(1, count + 1)
    ]
    shared = {name for name in names if name is not None and names.count(name) > 1}
    return tuple(None if name in shared else name for name in names)


def _check_parsed(sql: str, scan: _Scan, dialect: Dialect) -> None:
    """The dialect's parser decides; each parser is imported only when its dialect is checked."""
    if dialect == "postgresql" and _has_pglast():
        from connectors import sql_pglast

        sql_pglast.check_read(sql, set(scan.order))
        return
    from connectors import sql_sqlglot

    # The parser reads what the server will: `?` stands where each value goes.
    sql_sqlglot.check_read(_scan(sql, _SKIP, "parse").text, dialect, len(scan.order))


@functools.cache
def _has_pglast() -> bool:
    """Whether pglast loads (the postgresql extra); without it sqlglot reads PostgreSQL too."""
    try:
        from connectors import sql_pglast  # noqa: F401
    except ImportError:  # pragma: no cover - every test environment installs it
        return False
    return True


@dataclass(frozen=True)
class _Scan:
    text: str
    #: which ``$n`` (0-based) each placeholder is, in order of appearance
    order: list[int]
    #: the words outside literals and comments, upper-cased
    keywords: list[str]
    #: whether code follows a ``;``
    stacked: bool


def _scan(sql: str, skip: re.Pattern[str], style: _ScanStyle) -> _Scan:
    """Rewrite placeholders outside literals and comments, noting the words around them."""
    pieces: list[str] = []
    order: list[int] = []
    keywords: list[str] = []
    ended = stacked = False
    pos = 0
    for skipped in [*skip.finditer(sql), None]:
        code = sql[pos : skipped.start() if skipped else len(sql)]
        last = 0
        for tok in _TOKEN.finditer(code):
            word = tok.group(0)
            stacked = stacked or (ended and word != ";")
            if word == ";":
                ended = True
            elif tok.group(1) is not None:
                n = int(tok.group(1))
                if n < 1:
                    raise ConfigError("placeholders start at $1")
                pieces.append(_escape(code[last : tok.start()], style))
                pieces.append(_placeholder(style, n))
                order.append(n - 1)
                last = tok.end()
            else:
                keywords.append(word.upper())
        pieces.append(_escape(code[last:], style))
        if skipped:
            pieces.append(_escape(skipped.group(0), style))
            pos = skipped.end()
    return _Scan("".join(pieces).strip().rstrip(";").rstrip(), order, keywords, stacked)


def _escape(text: str, style: _ScanStyle) -> str:
    # With `%s` placeholders a literal `%` (LIKE 'a%', the modulo operator) is `%%`.
    return text.replace("%", "%%") if style == "format" else text


def _placeholder(style: _ScanStyle, n: int) -> str:
    if style == "parse":
        return "?"
    if style == "mark":  # a column-like marker the parser keeps where it stands
        return f"{_MARK}{n}__"
    if style == "dollar":
        return f"${n}"
    if style == "qmark_numbered":
        return f"?{n}"
    return "%s"


def _check_tokens(scan: _Scan) -> None:
    """The token-level check: one statement, starting like a read, naming no write."""
    if scan.stacked:
        raise NotARead("a query must be exactly one statement (text follows a ';')")
    keywords = scan.keywords
    if not keywords or keywords[0] not in _READ_STARTS:
        first = keywords[0] if keywords else "nothing"
        raise NotARead(f"only reads are allowed: the query starts with {first}, not SELECT/WITH")
    writes = sorted(set(keywords) & _WRITES)
    if writes:
        raise NotARead(f"only reads are allowed: the query contains {', '.join(writes)}")


# --- the parser's word -------------------------------------------------------------------

_DIALECT_NAMES: dict[str, str] = {
    "postgresql": "PostgreSQL",
    "mysql": "MySQL",
    "sqlserver": "T-SQL",
    "sqlite": "SQLite",
}

_FILES = "writes or reads server files/objects"
_OTHER_SQL = "runs SQL of its own"
_STATE = "changes server or session state"
_REMOTE = "reaches another server"
_LOCKS = "takes locks"
_PROGRAMS = "may run programs on the server"

#: functions no read may call, in any dialect; a trailing ``*`` matches a prefix.
#: User-defined functions cannot be known: the read-only account is the real limit.
_DENIED_FUNCTIONS: dict[str, str] = {
    # PostgreSQL
    "lo_*": _FILES,
    "loread": _FILES,
    "lowrite": _FILES,
    "pg_read_file": _FILES,
    "pg_read_binary_file": _FILES,
    "pg_ls_*": _FILES,
    "pg_stat_file": _FILES,
    "pg_file_*": _FILES,
    "pg_logdir_ls": _FILES,
    "dblink*": _REMOTE,
    "query_to_xml*": _OTHER_SQL,
    "cursor_to_xml*": _OTHER_SQL,
    "table_to_xml*": _OTHER_SQL,
    "schema_to_xml*": _OTHER_SQL,
    "database_to_xml*": _OTHER_SQL,
    "ts_stat": _OTHER_SQL,
    "ts_rewrite": _OTHER_SQL,
    "set_config": _STATE,
    "nextval": _STATE,
    "setval": _STATE,
    "pg_terminate_backend": _STATE,
    "pg_cancel_backend": _STATE,
    "pg_reload_conf": _STATE,
    "pg_rotate_logfile": _STATE,
    "pg_notify": _STATE,
    "pg_stat_reset*": _STATE,
    "pg_switch_wal": _STATE,
    "pg_create_*": _STATE,
    "pg_drop_replication_slot": _STATE,
    "pg_replication_*": _STATE,
    "pg_logical_*": _STATE,
    "pg_promote": _STATE,
    "pg_backup_*": _STATE,
    "pg_start_backup": _STATE,
    "pg_stop_backup": _STATE,
    "pg_wal_replay_*": _STATE,
    "pg_export_snapshot": _STATE,
    "pg_import_system_collations": _STATE,
    "pg_current_xact_id": _STATE,
    "txid_current": _STATE,
    "pg_advisory_*": _LOCKS,
    "pg_try_advisory_*": _LOCKS,
    # MySQL and MariaDB
    "load_file": _FILES,
    "get_lock": _LOCKS,
    "release_lock": _LOCKS,
    "release_all_locks": _LOCKS,
    "benchmark": "burns server time on purpose",
    "master_pos_wait": _STATE,
    "source_pos_wait": _STATE,
    "sys_*": _PROGRAMS,
    "lib_mysqludf_*": _PROGRAMS,
    # SQLite
    "load_extension": _PROGRAMS,
    "readfile": _FILES,
    "writefile": _FILES,
    "edit": _PROGRAMS,
    "fts3_tokenizer": _PROGRAMS,
    # T-SQL
    "openrowset": _REMOTE,
    "opendatasource": _REMOTE,
    "openquery": _REMOTE,
}
#: T-SQL's extended and system procedures, however they are reached.
_DENIED_TSQL_PREFIXES: dict[str, str] = {"xp_": _PROGRAMS, "sp_": _PROGRAMS}


def _denied(name: str, dialect: Dialect) -> str | None:
    """Why a call of ``name`` is no read, or None."""
    bare = name.lower().rsplit(".", 1)[-1]
    for pattern, reason in _DENIED_FUNCTIONS.items():
        if bare == pattern or (pattern.endswith("*") and bare.startswith(pattern[:-1])):
            return f"{bare}() {reason}: not allowed in a read"
    if dialect == "sqlserver":
        for prefix, reason in _DENIED_TSQL_PREFIXES.items():
            if bare.startswith(prefix):
                return f"{bare} {reason}: not allowed in a read"
    return None


def _refuse(reason: str) -> NotARead:
    return NotARead(f"only reads are allowed: {reason}")


def _check_one(statements: int, dialect_name: str) -> None:
    if statements == 0:
        raise _refuse("the query has no statement (only comments)")
    if statements > 1:
        raise NotARead(f"a query must be exactly one statement ({dialect_name} reads {statements})")


#: the "mark" scan writes each ``$n`` as ``{_MARK}n__``, a column name sqlglot keeps in place
_MARK = "__lookup_param_"


# --- what a source's account could change (`worker test-connection`) ---------------------

#: one row: the PostgreSQL account's powers beyond reading, in the current database
POSTGRESQL_WRITE_ACCESS = r"""
SELECT r.rolsuper AS superuser, r.rolcreaterole AS createrole, r.rolcreatedb AS createdb,
  ARRAY(SELECT g.rolname::text FROM pg_roles g
        WHERE g.rolname IN ('pg_write_server_files', 'pg_execute_server_program',
                            'pg_read_server_files', 'pg_write_all_data')
          AND pg_has_role(current_user, g.oid, 'MEMBER') ORDER BY 1) AS file_roles,
  ARRAY(SELECT p FROM unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p
        WHERE EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'p', 'v', 'f')
                        AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                        AND n.nspname NOT LIKE 'pg\_toast%'
                        AND has_table_privilege(c.oid, p))) AS table_writes,
  ARRAY(SELECT n.nspname::text FROM pg_namespace n
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\_%'
          AND has_schema_privilege(n.oid, 'CREATE') ORDER BY 1) AS create_schemas
FROM pg_roles r WHERE r.rolname = current_user
"""

#: MySQL and MariaDB privileges that change nothing
_MYSQL_READ_PRIVILEGES = {
    "SELECT",
    "USAGE",
    "SHOW VIEW",
    "SHOW DATABASES",
    "PROCESS",
    "REPLICATION CLIENT",
    "BINLOG MONITOR",
    "SLAVE MONITOR",
    "REPLICA MONITOR",
    "LOCK TABLES",
}
_GRANT = re.compile(r"^GRANT\s+(.+?)\s+ON\s+(?:(?:TABLE|FUNCTION|PROCEDURE)\s+)?(\S+)\s+TO\s", re.I)


def postgresql_write_access(row: Mapping[str, Any] | None) -> list[str]:
    """What `POSTGRESQL_WRITE_ACCESS`'s row says the account could change."""
    if row is None:
        return []
    if row["superuser"]:
        return ["superuser"]
    found = [f"member of {role}" for role in row["file_roles"] or ()]
    if row["table_writes"]:
        found.append(f"{', '.join(row['table_writes'])} on tables")
    found += [f"CREATE in schema {schema}" for schema in row["create_schemas"] or ()]
    if row["createrole"]:
        found.append("CREATEROLE")
    if row["createdb"]:
        found.append("CREATEDB")
    return found


def mysql_write_access(grants: Sequence[str]) -> list[str]:
    """What ``SHOW GRANTS`` lines say the account could change, beyond reading."""
    found: list[str] = []
    for line in grants:
        match = _GRANT.match(line.strip())
        if match is None:
            continue  # a role granted to the account: its own grants are listed too
        privileges = re.sub(r"\([^)]*\)", "", match.group(1))  # column lists
        names = [" ".join(p.split()).upper() for p in privileges.split(",")]
        writes = [p for p in names if p and p not in _MYSQL_READ_PRIVILEGES and p != "PROXY"]
        if re.search(r"\bWITH\b.*\bGRANT OPTION\b", line, re.I) and "PROXY" not in names:
            writes.append("GRANT OPTION")
        if writes:
            found.append(f"{', '.join(writes)} on {match.group(2).replace('`', '')}")
    return found
