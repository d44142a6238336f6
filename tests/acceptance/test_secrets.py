"""`worker secrets …` as a person uses them: keygen, encrypt from stdin, load, rotate, check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, WORKER, _env

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-p4ssw0rd"


def worker(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER, *args],
        cwd=REPO,
        env=_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_secrets__encrypt_load_rotate_check(tmp_path: Path) -> None:
    old = worker("secrets", "keygen").stdout.strip()
    new = worker("secrets", "keygen").stdout.strip()
    assert old != new and len(old) == 44
    token = worker("secrets", "encrypt", stdin=SECRET + "\n", WORKER_SECRET_KEYS=old).stdout.strip()
    assert token.startswith("enc:v1:") and SECRET not in token

    shutil_db = tmp_path / "shop.db"
    shutil_db.write_bytes((REPO / "config" / "demo" / "shop.db").read_bytes())
    config = tmp_path / "shop.yaml"
    config.write_text(
        "# a comment that rotation keeps\n"
        "data_sources:\n"
        "  - id: db\n    type: sqlite\n    connection: {path: shop.db}\n"
        "    queries: {order_status: 'SELECT status FROM orders WHERE order_id = $1'}\n"
        "  - id: api\n    type: rest_api\n"
        f"    connection: {{base_url: 'http://127.0.0.1:9', api_key: '{token}'}}\n"
        "lookups:\n  order_status: {source: db, args: [order_id], template: '{{ row.status }}'}\n",
        encoding="utf-8",
    )
    ok = worker("secrets", "check", "--config", str(config), WORKER_SECRET_KEYS=old)
    assert ok.returncode == 0 and "1 secret(s), all decrypt" in ok.stdout

    both = f"{new},{old}"
    rotated = worker("secrets", "rotate", "--config", str(config), WORKER_SECRET_KEYS=both)
    assert rotated.returncode == 0, rotated.stderr
    text = config.read_text(encoding="utf-8")
    assert token not in text and "# a comment that rotation keeps" in text
    assert "enc:v1:shop:" in text  # rotation binds the value to the config's tenant
    assert (tmp_path / "shop.yaml.bak").read_text(encoding="utf-8").count(token) == 1
    # the old key can go now
    assert (
        worker("secrets", "check", "--config", str(config), WORKER_SECRET_KEYS=new).returncode == 0
    )
    stale = worker("secrets", "check", "--config", str(config), WORKER_SECRET_KEYS=old)
    assert stale.returncode == 1
    assert "data_sources[1].connection.api_key: an encrypted value does not decrypt" in stale.stderr
    for out in (rotated, stale):
        assert SECRET not in out.stdout + out.stderr

    lookup = worker(
        "lookup",
        "--config",
        str(config),
        "order_status",
        "order_id=12345",
        "--json",
        WORKER_SECRET_KEYS=new,
    )
    assert lookup.returncode == 0, lookup.stderr
    assert json.loads(lookup.stdout)["message"] == "shipped"
    wrong = worker("config", "check", "--config", str(config), WORKER_SECRET_KEYS=old)
    assert wrong.returncode == 3  # an invalid config (contract §7)
    assert "data_sources[1].connection.api_key" in wrong.stderr
    assert "does not decrypt" in wrong.stderr
    assert SECRET not in wrong.stderr


def test_secrets__encrypt_without_keys_says_what_to_do() -> None:
    done = worker("secrets", "encrypt", stdin="x\n")
    assert done.returncode == 3  # a setting to fix: contract §7's invalid config
    assert "WORKER_SECRET_KEYS" in done.stderr and "keygen" in done.stderr


def _api_config(path: Path, tenant: str, value: str) -> Path:
    path.write_text(
        f"tenant_id: {tenant}\n"
        "data_sources:\n  - id: api\n    type: rest_api\n"
        f"    connection: {{base_url: 'http://127.0.0.1:9', api_key: '{value}'}}\n"
        "    endpoints: {stock: /stock}\n",
        encoding="utf-8",
    )
    return path


def test_secrets__a_value_bound_to_a_tenant_decrypts_only_in_its_config(tmp_path: Path) -> None:
    key = worker("secrets", "keygen").stdout.strip()
    made = worker("secrets", "encrypt", "--tenant", "acme", stdin=SECRET, WORKER_SECRET_KEYS=key)
    assert made.returncode == 0, made.stderr
    bound = made.stdout.strip()
    assert bound.startswith("enc:v1:acme:") and SECRET not in bound

    own = _api_config(tmp_path / "acme.yaml", "acme", bound)
    assert worker("config", "check", "--config", str(own), WORKER_SECRET_KEYS=key).returncode == 0
    # Another tenant copies the value as it is, or relabels it as its own: neither decrypts.
    relabelled = bound.replace("enc:v1:acme:", "enc:v1:rival:")
    for name, value in (("copied", bound), ("relabelled", relabelled)):
        other = _api_config(tmp_path / f"{name}.yaml", "rival", value)
        done = worker("config", "check", "--config", str(other), WORKER_SECRET_KEYS=key)
        assert done.returncode != 0, name
        assert "data_sources[0].connection.api_key" in done.stderr
        assert SECRET not in done.stdout + done.stderr


def test_secrets__outside_connection_settings_a_secret_is_a_config_error(tmp_path: Path) -> None:
    key = worker("secrets", "keygen").stdout.strip()
    value = worker("secrets", "encrypt", stdin=SECRET, WORKER_SECRET_KEYS=key).stdout.strip()
    config = _api_config(tmp_path / "shop.yaml", "shop", "plain-key")
    config.write_text(
        config.read_text(encoding="utf-8")
        + "lookups:\n  stock:\n    source: api\n"
        + f"    template: 'key {value} env ${{env:ENGINE_TOKEN}}'\n",
        encoding="utf-8",
    )
    done = worker("config", "check", "--config", str(config), WORKER_SECRET_KEYS=key)
    assert done.returncode != 0
    assert "lookups.stock.template" in done.stderr
    assert "only inside connection settings" in done.stderr
    assert SECRET not in done.stdout + done.stderr
