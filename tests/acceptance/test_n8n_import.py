"""`worker import-n8n` end to end: n8n exports in, a config that answers out.

The exports are written the way n8n 1.x/2.x writes them (`tests/fixtures/n8n/`:
webhook → Postgres → Code → HTTP Request to the engine, and the seed's three
simplified workflows). The real ``worker import-n8n`` runs as a subprocess; the
operator's part is then played as the README says: each ``${env:N8N_…}`` is set
(to a real PostgreSQL database this test makes, a loopback REST API, the Google
Sheets stand-in), ``worker config check`` passes on the output unchanged, and
``worker lookup`` answers ``ok`` with the row. Only the HTTP sources' ``base_url``
(and the Sheets stand-in's ``api_base_url``) is pointed at loopback by editing the
file, as an operator moving to a test server would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.acceptance.conftest import REPO, WORKER, _env
from tests.servers.hostile import Recorder, serve
from tests.servers.rest_app import API_KEY, rest_app
from tests.standins.google_sheets import GoogleSheetsStandIn, Spreadsheet
from tests.support.databases import postgres_with

pytestmark = pytest.mark.slow

FIXTURES = REPO / "tests" / "fixtures" / "n8n"
EXPORTS = [FIXTURES / n for n in ("order_status.json", "recent_orders.json", "stock_check.json")]
SEED = sorted(FIXTURES.glob("seed_*.json"))
SHEET_ID = "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"
EMAIL = "lookups@tenant-project.iam.gserviceaccount.com"


async def worker(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *WORKER,
        *args,
        cwd=REPO,
        env=_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def lookup(config: Path, env: dict[str, str], name: str, *pairs: str) -> dict[str, Any]:
    code, out, err = await worker("lookup", "--config", str(config), name, *pairs, "--json", **env)
    assert code in {0, 1}, out + err  # 1: an outcome other than ok (contract §7)
    answer: dict[str, Any] = json.loads(out)
    return answer


def postgres_env(prefix: str, dsn: str) -> dict[str, str]:
    """What an operator puts in the credential's variables: this test's database."""
    return {
        f"{prefix}_HOST": "127.0.0.1",
        f"{prefix}_PORT": "5432",
        f"{prefix}_DATABASE": dsn.rsplit("/", 1)[1],
        f"{prefix}_USER": "postgres",
        f"{prefix}_PASSWORD": "trust",
    }


def repoint(config: Path, source: str, **connection: str) -> None:
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    (found,) = [s for s in document["data_sources"] if s["id"] == source]
    found["connection"].update(connection)
    config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


@pytest.fixture
async def shop_db() -> AsyncIterator[str]:
    async with postgres_with(
        "n8n_import",
        "CREATE TABLE orders (order_id text PRIMARY KEY, status text, tracking text, "
        "tracking_number text, estimated_delivery date, customer_phone text)",
        "INSERT INTO orders VALUES "
        "('12345', 'shipped', 'UPS123456', 'UPS123456', '2025-09-12', '+1234567890'), "
        "('12346', 'processing', NULL, NULL, NULL, '+1234567890'), "
        "('20000', 'delivered', NULL, NULL, NULL, '+1999999999')",
    ) as dsn:
        yield dsn


@pytest.fixture
async def api() -> AsyncIterator[str]:
    async with serve(rest_app(Recorder())) as url:
        yield f"{url}/api"


@pytest.fixture
async def sheets() -> AsyncIterator[tuple[str, str]]:
    """The Sheets stand-in with the seed's Customers sheet: (its URL, a service-account key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rows = [
        ["name", "email", "phone", "plan"],
        ["Ana Lima", "ana@example.com", "+1234567890", "Pro"],
    ]
    standin = GoogleSheetsStandIn(
        {SHEET_ID: Spreadsheet("CRM", {"Customers": rows}, readers={EMAIL})}
    )
    standin.register(EMAIL, key.public_key())
    async with serve(standin.app()) as url:
        standin.base_url = url
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        account = {
            "type": "service_account",
            "project_id": "tenant-project",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": EMAIL,
            "token_uri": f"{url}/token",
        }
        yield url, json.dumps(account)


async def test_import__n8n_exports_answer_from_postgres_and_rest(
    tmp_path: Path, shop_db: str, api: str
) -> None:
    config = tmp_path / "shop.yaml"
    code, out, err = await worker(
        "import-n8n", *map(str, EXPORTS), "--tenant", "shop", "--out", str(config)
    )
    assert code == 0, out + err
    assert "dropped: node 'Send reply'" in err
    env = {**postgres_env("N8N_PROD_DB", shop_db), "N8N_INVENTORY_API_TOKEN": API_KEY}

    code, out, err = await worker("config", "check", "--config", str(config), **env)
    assert code == 0, out + err
    assert "2 source(s), 3 lookup(s)" in out

    order = await lookup(
        config, env, "order_status", "order_id=12345", "customer_phone=+1234567890"
    )
    assert order["outcome"] == "ok", order
    assert order["source"] == "prod_db"
    assert order["data"] == [
        {"status": "shipped", "tracking": "UPS123456", "estimated_delivery": "2025-09-12"}
    ]
    assert order["message"] == (
        "Status: shipped\nTracking: UPS123456\nEstimated delivery: 2025-09-12"
    )
    recent = await lookup(config, env, "recent_orders", "phone=+1234567890")
    assert [r["order_id"] for r in recent["data"]] == ["12345", "12346"]

    repoint(config, "inventory_api", base_url=f"{api}/products")
    stock = await lookup(config, env, "check_stock", "sku=SKU-789")
    assert stock["outcome"] == "ok", stock
    assert stock["data"]["quantity"] == 42


async def test_import__a_hostile_value_stays_a_value(tmp_path: Path, shop_db: str) -> None:
    """Whatever a customer sends is bound as ``$1``: SQL in it matches no order."""
    config = tmp_path / "shop.yaml"
    await worker("import-n8n", str(EXPORTS[0]), "--tenant", "shop", "--out", str(config))
    env = postgres_env("N8N_PROD_DB", shop_db)

    pairs = ("order_id=12345' OR '1'='1", "customer_phone=+1234567890")
    answer = await lookup(config, env, "order_status", *pairs)
    assert answer["outcome"] == "not_found", answer
    assert answer["data"] in (None, [])


async def test_import__seed_workflows_answer_from_postgres_rest_and_sheets(
    tmp_path: Path, shop_db: str, api: str, sheets: tuple[str, str]
) -> None:
    sheets_url, service_account = sheets
    config = tmp_path / "seedshop.yaml"
    code, out, err = await worker(
        "import-n8n", *map(str, SEED), "--tenant", "seedshop", "--out", str(config)
    )
    assert code == 0, out + err
    env = {
        **postgres_env("N8N_POSTGRESQL", shop_db),
        "N8N_API_TENANT_COM_API_KEY": API_KEY,
        "N8N_GOOGLE_SHEETS_SERVICE_ACCOUNT": service_account,
        "N8N_GOOGLE_SHEETS_SPREADSHEET_ID": SHEET_ID,
    }

    code, out, err = await worker("config", "check", "--config", str(config), **env)
    assert code == 0, out + err

    order = await lookup(config, env, "order_status", "order_id=12345")
    assert order["outcome"] == "ok", order
    assert order["data"] == [{"status": "shipped", "tracking": "UPS123456"}]
    assert order["message"] == "Status: shipped\nTracking: UPS123456"

    repoint(config, "api_tenant_com", base_url=f"{api}/products")
    repoint(config, "google_sheets", api_base_url=f"{sheets_url}/v4")
    stock = await lookup(config, env, "inventory_check", "sku=SKU-789")
    assert (stock["outcome"], stock["data"]["name"]) == ("ok", "Blue Mug"), stock
    customer = await lookup(config, env, "customer_lookup", "customer_phone=+1234567890")
    assert customer["outcome"] == "ok", customer
    assert customer["data"][0]["name"] == "Ana Lima"


async def test_import__untranslated_node_exits_1_and_a_broken_file_exits_3(tmp_path: Path) -> None:
    export = json.loads(EXPORTS[0].read_text(encoding="utf-8"))
    export["nodes"].insert(2, {"name": "Found?", "type": "n8n-nodes-base.if", "typeVersion": 2,
                               "position": [330, 0], "parameters": {}})  # fmt: skip
    export["connections"]["Postgres"]["main"][0][0]["node"] = "Found?"
    export["connections"]["Found?"] = {
        "main": [[{"node": "Format reply", "type": "main", "index": 0}]]
    }
    with_if = tmp_path / "with_if.json"
    with_if.write_text(json.dumps(export), encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x", "nodes": ', encoding="utf-8")

    code, out, err = await worker("import-n8n", str(with_if), "--tenant", "shop")
    assert code == 1
    assert "NOT TRANSLATED: node 'Found?' (if)" in err
    assert "order_status:" in out  # the rest is still written

    code, out, err = await worker("import-n8n", str(with_if), str(broken), "--tenant", "shop")
    assert (code, out) == (3, "")
    assert f"{broken}:1: not valid JSON" in err
    assert "Traceback" not in err
