"""The seed's "Inventory Stock Check", end to end: `worker lookup` against a real REST API.

The tenant config holds the seed's ``inventory_api`` source block as the seed
writes it (only ``base_url`` points at the test's API, and the key is given as
a value or through ``${env:…}``); the ``check_stock`` lookup names the seed's
endpoint and replies with ``templates/inventory_stock.j2``. The API
(`tests.servers.rest_app`) serves ``/api/products/{sku}/stock`` and checks the
bearer key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import REPO, WORKER, _env
from tests.servers.hostile import Recorder, serve
from tests.servers.rest_app import API_KEY, rest_app

pytestmark = pytest.mark.slow

KEY_VARIABLE = "INVENTORY_API_KEY"


def seed_source(base_url: str, api_key: str) -> dict[str, Any]:
    """The seed's second data source, as written, but for ``base_url`` and the key's value."""
    return {
        "id": "inventory_api",
        "name": "Inventory System",
        "type": "rest_api",
        "connection": {
            "base_url": base_url,
            "api_key": api_key,
            "headers": {"Authorization": "Bearer {api_key}"},
        },
        "endpoints": {
            "check_stock": "/products/{sku}/stock",
            "product_details": "/products/{sku}",
        },
    }


def tenant(base_url: str, api_key: str) -> dict[str, Any]:
    return {
        "tenant_id": "inventory_shop",
        "templates_dir": str(REPO / "templates"),
        "data_sources": [seed_source(base_url, api_key)],
        "lookups": {
            "check_stock": {
                "source": "inventory_api",
                "params": {"sku": {"pattern": "SKU-[0-9]{1,6}", "max_length": 12}},
                "template": "inventory_stock.j2",
                "not_found": "Sorry, we have no product {{ params.sku }}.",
                "fallback": "Our stock system is not answering; we'll get back to you.",
            }
        },
    }


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def api(recorder: Recorder) -> AsyncIterator[str]:
    async with serve(rest_app(recorder)) as url:
        yield f"{url}/api"


async def lookup(config: Path, sku: str, **env: str) -> tuple[dict[str, Any], str]:
    """``worker lookup --config … check_stock sku=… --json``: its JSON answer and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *WORKER,
        "lookup",
        "--config",
        str(config),
        "check_stock",
        f"sku={sku}",
        "--json",
        cwd=REPO,
        env=_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    answer = json.loads(out)
    assert proc.returncode == (0 if answer["outcome"] == "ok" else 1), err.decode()  # §7
    return answer, err.decode()


def write_config(tmp_path: Path, base_url: str, api_key: str) -> Path:
    path = tmp_path / "inventory_shop.json"
    path.write_text(json.dumps(tenant(base_url, api_key), indent=2), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("api_key", "env"),
    [
        pytest.param(API_KEY, {}, id="key-as-written"),
        pytest.param(f"${{env:{KEY_VARIABLE}}}", {KEY_VARIABLE: API_KEY}, id="key-from-env"),
    ],
)
async def test_seed_inventory__in_stock_reply(
    api: str, recorder: Recorder, tmp_path: Path, api_key: str, env: dict[str, str]
) -> None:
    config = write_config(tmp_path, api, api_key)

    answer, stderr = await lookup(config, "SKU-789", **env)

    assert answer["outcome"] == "ok"
    assert answer["source"] == "inventory_api"
    assert answer["message"].strip() == (
        "Good news! Blue Mug (SKU-789) is in stock: 42 units available. ✅"
    )
    assert answer["data"] == {"sku": "SKU-789", "name": "Blue Mug", "quantity": 42}
    (seen,) = recorder.seen
    assert (seen.method, seen.raw_path) == ("GET", "/api/products/SKU-789/stock")
    assert seen.headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in stderr


async def test_seed_inventory__out_of_stock_reply_names_the_restock_date(
    api: str, tmp_path: Path
) -> None:
    answer, _ = await lookup(write_config(tmp_path, api, API_KEY), "SKU-790")

    assert answer["outcome"] == "ok"
    assert (
        answer["message"].split()
        == (
            "Sorry, Red Mug (SKU-790) is out of stock right now. 😕 "
            "We expect more by September 20th."
        ).split()
    )


async def test_seed_inventory__unknown_sku_is_not_found(api: str, tmp_path: Path) -> None:
    answer, _ = await lookup(write_config(tmp_path, api, API_KEY), "SKU-000")

    assert answer["outcome"] == "not_found"
    assert answer["message"] == "Sorry, we have no product SKU-000."


async def test_seed_inventory__wrong_key_gives_the_fallback_without_the_key(
    api: str, recorder: Recorder, tmp_path: Path
) -> None:
    wrong = "wrong-inventory-Key-4242"

    answer, stderr = await lookup(write_config(tmp_path, api, wrong), "SKU-789")

    assert answer["outcome"] == "fallback"
    assert answer["message"] == "Our stock system is not answering; we'll get back to you."
    assert recorder.seen[-1].headers["Authorization"] == f"Bearer {wrong}"
    assert wrong not in json.dumps(answer)
    assert wrong not in stderr


async def test_seed_inventory__path_injection_is_invalid_input(
    api: str, recorder: Recorder, tmp_path: Path
) -> None:
    answer, _ = await lookup(write_config(tmp_path, api, API_KEY), "../../admin")

    assert answer["outcome"] == "invalid_input"
    assert recorder.seen == []
