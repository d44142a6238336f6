"""The README's commands, the demo, the seed's config and the Dockerfile: what a newcomer meets."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from tests.acceptance.conftest import REPO, WORKER, _env

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text(encoding="utf-8")
COMMANDS = [line[2:].strip() for line in README.splitlines() if line.startswith("$ worker ")]


def worker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120
    )


def test_readme__lists_runnable_commands() -> None:
    assert len(COMMANDS) >= 5
    assert "./scripts/demo.sh" in README
    assert "./scripts/test.sh" in README


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_readme__command_runs_as_written(command: str) -> None:
    done = worker(*shlex.split(command)[1:])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_demo__answers_every_sample_question() -> None:
    done = worker("demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Your order #12345 has been shipped! 📦\n  │ Tracking: UPS123456" in out
    assert "Expected delivery: September 12th" in out
    for outcome in ("ok", "not_found", "invalid_input"):
        assert f"outcome {outcome}" in out
    assert re.search(r"(\d+) of \1 jobs answered", out)


def test_demo__customers_words_become_replies_through_the_engines_inbound() -> None:
    done = worker("demo")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "❯ Where is my order #12345?  (from +1234567890)\n  routed to order_status" in out
    assert "routed to order_status (order_id=12346)" in out
    assert "routed to check_stock (sku=SKU-789)" in out
    assert "❯ hi there 👋  (from +1234567890)\n  no lookup matches: nothing queued" in out


def test_seed_config__loads_and_reports_unreachable_sources_without_crashing() -> None:
    config = str(REPO / "config" / "tenants" / "whappstream.json")
    check = worker("config", "check", "--config", config)
    assert check.returncode in (0, 3), check.stderr  # 3 only while a connector is missing
    assert "plaintext secret" in check.stderr
    assert "Traceback" not in check.stderr
    probe = worker("test-connection", "--config", config)
    assert probe.returncode == 4  # contract §7: its hosts cannot be reached from here
    assert re.search(r"FAIL\s+primary_crm", probe.stdout)
    assert re.search(r"FAIL\s+inventory_api", probe.stdout)
    assert "encrypted_password" not in probe.stdout + probe.stderr
    assert "Traceback" not in probe.stderr


def test_seed_job__query_alias_runs_the_sources_query_by_name(tmp_path: object) -> None:
    """The seed's job shape with `data_source` and no lookup entry: the implicit lookup."""
    done = worker("lookup", "--tenant", "demo", "faq", "topic=returns", "--json")
    answer = json.loads(done.stdout)
    assert answer["outcome"] == "ok" and "30 days" in answer["message"]


def test_connectors__json_lists_all_seventeen_types() -> None:
    done = worker("connectors", "--json")
    types = {row["type"]: row for row in json.loads(done.stdout)}
    assert len(types) >= 17
    for built in ("sqlite", "csv", "excel", "json", "postgresql", "mysql", "redis"):
        assert types[built]["installed"], types[built]
    for row in types.values():
        assert row["installed"] or row["problem"], row


def test_dockerfile__non_root_healthcheck_and_run_command() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    assert 'worker run --tenant \\"$TENANT\\"' in text
    assert "WORKER_HTTP=0.0.0.0:8080" in text and "EXPOSE 8080" in text


def test_ci__runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] in README
