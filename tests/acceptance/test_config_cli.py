"""`worker config check` and `worker config schema` as a person runs them: duplicate and
misspelt keys named with file and line, the same answer from any directory, and a
schema an editor can use."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.acceptance.conftest import REPO, WORKER, _env

pytestmark = pytest.mark.slow

CONFIG = """\
tenant_id: acme
data_sources:
  - id: db
    type: sqlite
    connection: {path: ../data/shop.db}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
lookups:
  order_status: {source: db, args: [order_id], template: order_status.j2}
"""


def worker(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60
    )


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    # the exit code of an invalid config is being settled (§7 says 3): any failure will do
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    return result.stderr


def test_config_check__duplicate_keys_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        CONFIG.replace("$1\n", "$1\n      order_status: SELECT 1 WHERE 1 = $1\n"), encoding="utf-8"
    )

    err = _refused(worker("config", "check", "--config", str(path)))

    assert (
        f"{path}:8: data_sources[0].queries: duplicate key 'order_status' (first at line 7)" in err
    )


def test_config_check__duplicate_json_keys_refused(tmp_path: Path) -> None:
    path = tmp_path / "acme.json"
    path.write_text('{"tenant_id": "acme",\n "tenant_id": "acme"}\n', encoding="utf-8")

    err = _refused(worker("config", "check", "--config", str(path)))

    assert f"{path}:2: duplicate key 'tenant_id' (first at line 1)" in err


def test_config_check__misspelt_key_gets_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(CONFIG.replace("queries:", "querys:"), encoding="utf-8")

    err = _refused(worker("config", "check", "--config", str(path)))

    assert f"{path}:6: data_sources[0]: unknown key 'querys' — did you mean 'queries'?" in err


def test_config_check__same_answer_from_any_directory(tmp_path: Path) -> None:
    # templates/ beside the config's folder; the repository's own templates/ has a file
    # of the same name, which must not stand in for it from the repository's directory
    (tmp_path / "tenants").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "tenants" / "acme.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    assert (REPO / "templates" / "order_status.j2").is_file()

    missing = [
        worker("config", "check", "--config", str(path), cwd=cwd) for cwd in (REPO, tmp_path)
    ]
    for result in missing:
        assert "template 'order_status.j2'" in _refused(result)

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "order_status.j2").write_text("{{ row.status }}", encoding="utf-8")
    runs = [(REPO, str(path)), (tmp_path, "tenants/acme.yaml")]
    runs.append((tmp_path / "elsewhere", "../tenants/acme.yaml"))
    for cwd, given in runs:
        ok = worker("config", "check", "--config", given, cwd=cwd)
        assert ok.returncode == 0, ok.stderr
        assert "ok — 1 source(s), 1 lookup(s)" in ok.stdout


def test_config_schema__validates_the_demo_and_refuses_a_misspelling(tmp_path: Path) -> None:
    printed = worker("config", "schema")
    assert printed.returncode == 0, printed.stderr
    schema = json.loads(printed.stdout)
    Draft7Validator.check_schema(schema)
    validator = Draft7Validator(schema)
    demo = yaml.safe_load((REPO / "config" / "tenants" / "demo.yaml").read_text(encoding="utf-8"))

    assert list(validator.iter_errors(demo)) == []
    demo["data_sources"][0]["querys"] = demo["data_sources"][0].pop("queries")
    assert [list(e.absolute_path) for e in validator.iter_errors(demo)] == [["data_sources", 0]]

    out = tmp_path / "tenant.schema.json"
    written = worker("config", "schema", "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert json.loads(out.read_text(encoding="utf-8")) == schema
