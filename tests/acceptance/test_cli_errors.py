"""What a person meets when something is wrong (issue 15): one line, the exit code of
contract §7, no traceback, no password. Each case is `worker` as a real subprocess."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, WORKER, _env, free_port, serve_engine, wait_until

PASSWORD = "pw-Sekr1t-" + uuid.uuid4().hex[:8]
MISSING_DB = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/no_such_db_{uuid.uuid4().hex[:8]}"


def worker(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER, "--log-text", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one ``error: …`` line (log lines may come before it); never a traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """Click's usage error: exit 2, ``Error: …`` after the usage line."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr
    assert done.stderr.startswith("Usage: worker")
    return done.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def broken_config(tmp_path: Path) -> Path:
    """``config/tenants/shop.yaml`` below tmp_path: it exists, and has a typo."""
    folder = tmp_path / "config" / "tenants"
    folder.mkdir(parents=True)
    path = folder / "shop.yaml"
    path.write_text(
        "tenant_id: shop\ndata_sources:\n  - id: db\n    type: sqlite\n"
        "    conection: {path: shop.db}\n",
        encoding="utf-8",
    )
    return path


def test_port_in_use__one_line_exit_3(tenant_config: Path, busy_port: int) -> None:
    done = worker("run", "--config", str(tenant_config), "--listen", f"127.0.0.1:{busy_port}")

    assert done.returncode == 3
    line = error_line(done)
    assert f"127.0.0.1:{busy_port}" in line and "already in use" in line
    assert "--listen" in line and "WORKER_HTTP" in line


def test_listen_nonsense__usage_error_naming_where_it_came_from(tenant_config: Path) -> None:
    typed = usage_error(worker("run", "--config", str(tenant_config), "--listen", "nonsense"))
    assert "'--listen'" in typed and "HOST:PORT" in typed and "WORKER_HTTP" not in typed

    from_env = usage_error(worker("run", "--config", str(tenant_config), WORKER_HTTP="nonsense"))
    assert "WORKER_HTTP" in from_env and "HOST:PORT" in from_env


def test_log_level__a_choice_in_any_case(tenant_config: Path) -> None:
    loud = usage_error(worker("--log-level", "LOUD", "config", "check", "--config", "x.yaml"))
    assert "'LOUD' is not one of" in loud

    quiet = worker("--log-level", "warning", "config", "check", "--config", str(tenant_config))
    assert quiet.returncode == 0, quiet.stderr


def test_queue_database_missing__exit_4_without_password() -> None:
    init = worker("queue", "init", "--dsn", MISSING_DB)
    assert init.returncode == 4
    line = error_line(init)
    assert "does not exist" in line and "createdb" in line

    from_env = worker("queue", "init", QUEUE_DSN=MISSING_DB)
    assert from_env.returncode == 4 and "does not exist" in error_line(from_env)


def test_run_on_a_queue_database_that_is_missing__exit_4(tenant_config: Path) -> None:
    done = worker("run", "--config", str(tenant_config), "--listen", "", QUEUE_DSN=MISSING_DB)

    assert done.returncode == 4
    assert "does not exist" in error_line(done)


@pytest.mark.parametrize(
    "setting",
    [
        pytest.param("AUDIT_DSN", id="audit-dsn"),
        pytest.param("WORKER_STATE_DIR", id="state-dir"),
    ],
)
def test_audit_log_cannot_be_written__exit_3_names_it(
    tenant_config: Path, tmp_path: Path, setting: str
) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("", encoding="utf-8")
    place = str(a_file / "audit.db") if setting == "AUDIT_DSN" else str(a_file / "state")

    for args in (["run", "--listen", ""], ["lookup", "order_status", "order_id=12345"]):
        done = worker(args[0], "--config", str(tenant_config), *args[1:], **{setting: place})
        assert done.returncode == 3, done.stderr
        line = error_line(done)
        assert "audit log" in line and str(a_file) in line
        assert "WORKER_STATE_DIR" in line and "AUDIT_DSN" in line


def test_queue_init__refuses_what_is_not_postgresql_or_sqlite(tmp_path: Path) -> None:
    refused = usage_error(worker("queue", "init", "--dsn", "mysql://x", cwd=tmp_path))
    assert "mysql://x" in refused and "postgresql://" in refused
    masked = usage_error(
        worker("queue", "init", "--dsn", f"mysql://root:{PASSWORD}@db/x", cwd=tmp_path)
    )
    assert "mysql://root:***@db/x" in masked
    assert list(tmp_path.iterdir()) == []  # no file named mysql:/x

    file = worker("queue", "init", "--dsn", "sqlite:///" + str(tmp_path / "q.db"))
    assert file.returncode == 0 and (tmp_path / "q.db").is_file()


async def test_queue_init__dsn_from_env_or_file_printed_without_password(tmp_path: Path) -> None:
    from tests.support.databases import fresh_postgres

    async with fresh_postgres("cli_errors") as dsn:
        with_password = dsn.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth
        dsn_file = tmp_path / "dsn"
        dsn_file.write_text(with_password + "\n", encoding="utf-8")
        runs = [
            worker("queue", "init", "--dsn", with_password),
            worker("queue", "init", QUEUE_DSN=with_password),
            worker("queue", "init", "--dsn-file", str(dsn_file)),
        ]
        for done in runs:
            assert done.returncode == 0, done.stderr
            assert PASSWORD not in done.stdout + done.stderr
            assert "queue ready at postgresql://postgres:***@127.0.0.1:5432/" in done.stdout

        both = worker("queue", "init", "--dsn-file", str(dsn_file), QUEUE_DSN=with_password)
        assert "not both" in usage_error(both)


async def test_engine_serve__prints_its_queue_without_password(tmp_path: Path) -> None:
    from tests.support.databases import fresh_postgres

    async with fresh_postgres("cli_errors") as dsn:
        with_password = dsn.replace("postgres@", f"postgres:{PASSWORD}@")
        port = free_port()
        log = tmp_path / "engine.log"
        with log.open("w") as sink:
            proc = subprocess.Popen(
                [*WORKER, "engine", "serve", "--listen", f"127.0.0.1:{port}", "--token", "t"],
                cwd=tmp_path,
                env=_env(ENGINE_DB=with_password),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: "local engine on" in log.read_text(), what="the engine's start")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        text = log.read_text()
        assert "postgresql://postgres:***@127.0.0.1:5432/" in text
        assert PASSWORD not in text and "Traceback" not in text


def test_lookup__exit_1_when_the_outcome_is_not_ok(tenant_config: Path) -> None:
    found = worker("lookup", "--config", str(tenant_config), "order_status", "order_id=12345")
    assert found.returncode == 0, found.stderr

    for pairs, outcome in [("order_id=99999", "not_found"), ("order_id=x'--", "invalid_input")]:
        done = worker("lookup", "--config", str(tenant_config), "order_status", pairs, "--json")
        assert done.returncode == 1, done.stderr
        assert f'"outcome": "{outcome}"' in done.stdout

    unknown = usage_error(worker("lookup", "--config", str(tenant_config), "teleport"))
    assert "order_status" in unknown


@pytest.mark.parametrize(
    ("command", "args"),
    [
        pytest.param(["config", "check"], [], id="config-check"),
        pytest.param(["run"], ["--listen", ""], id="run"),
        pytest.param(["lookup"], ["order_status", "order_id=1"], id="lookup"),
        pytest.param(["test-connection"], [], id="test-connection"),
        pytest.param(["stats"], [], id="stats"),
    ],
)
def test_invalid_config__exit_3_naming_file_and_line(
    broken_config: Path, command: list[str], args: list[str]
) -> None:
    done = worker(*command, "--config", str(broken_config), *args)

    assert done.returncode == 3
    assert f"{broken_config}:5" in done.stderr and "conection" in done.stderr
    assert "Traceback" not in done.stderr


def test_engine_url_set__a_broken_local_file_is_an_error_not_a_fallback(
    broken_config: Path, tmp_path: Path
) -> None:
    with serve_engine(tmp_path / "engine.db", REPO / "config" / "tenants") as engine:
        done = worker(
            "config",
            "check",
            "--tenant",
            "shop",
            cwd=tmp_path,
            ENGINE_URL=engine.url,
            ENGINE_TOKEN=engine.token,
        )

    assert done.returncode == 3
    assert "config/tenants/shop.yaml:5" in done.stderr
    assert "engine" not in done.stdout


def test_run__start_line_says_where_the_config_and_queue_are(tenant_config: Path) -> None:
    done = worker(
        "run",
        "--config",
        str(tenant_config),
        "--listen",
        "",
        "--once",
        QUEUE_DSN=str(tenant_config.parent / "queue.db"),
    )

    assert done.returncode == 0, done.stderr
    assert f"config from {tenant_config}" in done.stderr
    assert f"direct SQLite queue at {tenant_config.parent / 'queue.db'}" in done.stderr


def test_run__start_line_names_the_engine(tenant_config: Path, tmp_path: Path) -> None:
    with serve_engine(tmp_path / "engine.db", REPO / "config" / "tenants") as engine:
        done = worker(
            "run",
            "--config",
            str(tenant_config),
            "--listen",
            "",
            "--once",
            ENGINE_URL=engine.url,
            ENGINE_TOKEN=engine.token,
        )

    assert done.returncode == 0, done.stderr
    assert f"config from {tenant_config}; engine queue at {engine.url}" in done.stderr


async def test_run__start_line_names_the_postgres_queue_without_password(
    tenant_config: Path,
) -> None:
    from tests.support.databases import fresh_postgres

    async with fresh_postgres("cli_errors") as dsn:
        with_password = dsn.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth
        done = worker(
            "run", "--config", str(tenant_config), "--listen", "", "--once", QUEUE_DSN=with_password
        )

    assert done.returncode == 0, done.stderr
    masked = with_password.replace(PASSWORD, "***")
    assert f"direct PostgreSQL queue at {masked}" in done.stderr
    assert PASSWORD not in done.stderr


def test_debug__shows_the_traceback_as_well(tenant_config: Path, busy_port: int) -> None:
    args = ["run", "--config", str(tenant_config), "--listen", f"127.0.0.1:{busy_port}"]
    for done in (worker("--debug", *args), worker(*args, WORKER_DEBUG="1")):
        assert done.returncode == 3
        assert "Traceback" in done.stderr
        assert done.stderr.rstrip().splitlines()[-1].startswith("error: cannot listen")


def test_version_and_help_name_what_they_read() -> None:
    version = worker("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("worker ") and version.stdout.split()[1][0].isdigit()

    run_help = worker("run", "--help").stdout
    for name in ("WORKER_HTTP", "WORKER_GRACE_S", "WORKER_PROCESSES"):
        assert name in run_help, name
    assert "WORKER_LOG_LEVEL" in worker("--help").stdout
    assert "QUEUE_DSN" in worker("queue", "init", "--help").stdout


def test_tenant_config__found_from_any_folder_with_worker_config_dir(tmp_path: Path) -> None:
    elsewhere = worker("config", "check", "--tenant", "demo", cwd=tmp_path)
    assert elsewhere.returncode == 3
    line = error_line(elsewhere)
    assert str(tmp_path / "config" / "tenants") in line and "WORKER_CONFIG_DIR" in line

    folder = str(REPO / "config" / "tenants")
    anywhere = worker("config", "check", "--tenant", "demo", cwd=tmp_path, WORKER_CONFIG_DIR=folder)
    assert anywhere.returncode == 0, anywhere.stderr


def test_engine_serve__a_bad_listen_address_is_a_usage_error() -> None:
    from_env = usage_error(worker("engine", "serve", ENGINE_LISTEN="nonsense"))
    assert "ENGINE_LISTEN" in from_env and "WORKER_HTTP" not in from_env
    assert "listen somewhere" in usage_error(worker("engine", "serve", "--listen", ""))


def test_engine_url_with_credentials__exit_3_without_the_password(tenant_config: Path) -> None:
    """The engine takes a bearer token; a user:password in its URL used to make every
    call fail inside the HTTP client, and ``run --once`` retried until killed."""
    done = worker(
        "run", "--config", str(tenant_config), "--once", "--listen", "",
        ENGINE_URL=f"http://bob:{PASSWORD}@127.0.0.1:9", ENGINE_TOKEN="t",
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "carries a user name or password" in error_line(done)


@pytest.mark.parametrize(
    ("connection", "code", "says"),
    [
        pytest.param("{host: 127.0.0.1, port: 9, username: root}", 4, "FAIL", id="unreachable"),
        pytest.param(
            f"{{host: 127.0.0.1, port: 3306, username: root, password: {PASSWORD}}}",
            1,
            "FAIL",
            id="credentials-refused",
        ),
        pytest.param("{host: 127.0.0.1, port: 3306, username: root}", 0, "ok", id="ok"),
    ],
)
def test_test_connection__4_when_a_source_cannot_be_reached_1_when_it_answers_no(
    tmp_path: Path, connection: str, code: int, says: str
) -> None:
    config = tmp_path / "t.yaml"
    config.write_text(
        "tenant_id: t\ndata_sources:\n  - id: shop\n    type: mysql\n"
        f"    connection: {connection}\n    queries:\n      q: SELECT 1 AS one\n",
        encoding="utf-8",
    )
    done = worker("test-connection", "--config", str(config))
    assert done.returncode == code, done.stdout + done.stderr
    assert done.stdout.startswith(says)
    assert PASSWORD not in done.stdout + done.stderr and "Traceback" not in done.stderr
