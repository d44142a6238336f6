"""``worker config check --online`` as an operator runs it, on the seed's config.

The seed's example (`config/tenants/whappstream.json`) with its connections
pointed at a fresh PostgreSQL database (the seed's ``orders`` table, which has
``tracking_number``) and a loopback REST API, plus an ``order_status`` lookup
answering with the shipped ``order_status.j2``, which reads ``row.tracking``:
the mismatch that used to show up only as a reply with an empty tracking line.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import REPO, WORKER, _env
from tests.servers.hostile import Recorder, serve
from tests.servers.rest_app import API_KEY, rest_app
from tests.support.databases import postgres_with

pytestmark = pytest.mark.slow

SEED = REPO / "config" / "tenants" / "whappstream.json"
PASSWORD = "pw-seen-nowhere-31c9"


@pytest.fixture
async def crm() -> AsyncIterator[str]:
    async with postgres_with(
        "online_cli",
        "CREATE TABLE orders (order_id text PRIMARY KEY, status text, "
        "tracking_number text, customer_phone text)",
    ) as dsn:
        yield dsn.rsplit("/", 1)[1]


@pytest.fixture
async def api() -> AsyncIterator[str]:
    async with serve(rest_app(Recorder())) as url:
        yield f"{url}/api"


def seed_config(tmp_path: Path, database: str, api: str, *, port: int = 5432) -> Path:
    document = json.loads(SEED.read_text(encoding="utf-8"))
    crm, inventory = document["data_sources"]
    crm["connection"].update(
        host="127.0.0.1", port=port, database=database, username="postgres", password=PASSWORD
    )
    inventory["connection"].update(base_url=api, api_key=API_KEY)
    document["templates_dir"] = str(REPO / "templates")
    document["lookups"] = {
        "order_status": {
            "source": "primary_crm",
            "args": ["order_id"],
            "template": "order_status.j2",
        }
    }
    path = tmp_path / "whappstream.json"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return path


async def config_check_online(config: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *WORKER,
        "--log-level",
        "WARNING",
        "config",
        "check",
        "--online",
        "--config",
        str(config),
        cwd=REPO,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_config_check_online__names_the_seeds_tracking_mismatch(
    tmp_path: Path, crm: str, api: str
) -> None:
    config = seed_config(tmp_path, crm, api)

    code, out, err = await config_check_online(config)

    assert code == 1, out + err
    assert (
        f"{config}: lookups.order_status.template: reads 'tracking', which query "
        "order_status does not return (it returns status, tracking_number)"
    ) in err.splitlines()
    assert "2 queries prepared" in out  # order_status and customer_orders
    assert "data_sources.inventory_api: health check only" in out
    assert "Traceback" not in out + err
    assert PASSWORD not in out + err


async def test_config_check_online__an_unreachable_database_is_exit_4(
    tmp_path: Path, api: str
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = seed_config(tmp_path, "crm_prod", api, port=port)

    code, out, err = await config_check_online(config)

    assert code == 4, out + err
    assert f"{config}: data_sources.primary_crm: cannot connect to 127.0.0.1:{port}" in err
    assert "Traceback" not in out + err
    assert PASSWORD not in out + err
