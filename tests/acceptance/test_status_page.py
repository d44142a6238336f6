"""``GET /status`` (contract §6) on a real ``worker run``: behind the token, the
sources' health and each lookup's recent outcomes, no customer data; and drawn by a
real headless Chromium (Debian's, installed by ``scripts/test.sh``) on a phone-sized
screen, as a person would open it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import Engine, WorkerProcs, answers, job, wait_until
from tests.support.png import ink_share, read_png

PHONE = "+1234567890"  # every job's customer_context.phone (`conftest.job`)
#: a lookup name a customer typed, with a phone number in it: never on the page
TYPED = "parcel-for-5550123"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def get(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url)  # noqa: S310 - loopback only
    if authorization:
        req.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read().decode()


def push(base: str, token: str, lookup: str, payload: dict[str, Any]) -> int:
    req = urllib.request.Request(  # noqa: S310 - loopback only
        f"{base}/webhook/data/{lookup}", data=json.dumps(payload).encode(), method="POST"
    )
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"me:{password}".encode()).decode()


@pytest.fixture
def served(workers: WorkerProcs, engine: Engine) -> str:
    """A worker that answered a few lookups: ok, not found, a broken source, and a
    lookup the config does not have (the webhook refuses it; the queue answers it)."""
    proc = workers.start()
    base: str = proc.http  # type: ignore[attr-defined]
    wait_until(lambda: answers(f"{base}/healthz"), what="the worker to listen")
    for order in ("12345", "12346", "12347"):
        assert push(base, engine.token, "order_status", job("order_status", order_id=order)) == 200
    assert push(base, engine.token, "order_status", job("order_status", order_id="99999")) == 200
    assert push(base, engine.token, "broken_order", job("broken_order", order_id="55501")) == 200
    assert push(base, engine.token, TYPED, job(TYPED, order_id="12345")) == 404
    typed = engine.enqueue(job(TYPED, order_id="12345"))  # through the queue: answered
    wait_until(lambda: engine.job(typed)["status"] != "pending", what="the typo's job")
    wait_until(lambda: engine.job(typed)["status"] in ("done", "failed"), what="its answer")
    return base


def test_the_page_needs_the_token(served: str, engine: Engine) -> None:
    status, headers, _ = get(f"{served}/status")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    assert get(f"{served}/status", basic("wrong"))[0] == 401
    assert get(f"{served}/status", "Bearer wrong")[0] == 401
    assert get(f"{served}/status", f"Bearer {engine.token}")[0] == 200
    assert get(f"{served}/status", basic(engine.token))[0] == 200


def test_the_page_shows_sources_and_outcomes_without_customer_data(
    served: str, engine: Engine
) -> None:
    status, headers, page = get(f"{served}/status", f"Bearer {engine.token}")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-store"
    assert 'data-source="shop_db"' in page and 'data-source="broken_db"' in page
    broken = page.split('data-source="broken_db"', 1)[1].split("</div>", 1)[0]
    assert "failing" in broken and "nowhere.db" in broken  # its last error, and when
    orders = page.split('data-lookup="order_status"', 1)[1].split("</tr>", 1)[0]
    assert "ok 3 · not_found 1" in orders
    assert 'data-lookup="broken_order"' in page and "fallback 1" in page
    other = page.split('data-lookup="(other jobs)"', 1)[1].split("</tr>", 1)[0]
    assert "refused 1" in other  # the typo: no such lookup, and no tenant fallback
    for secret in (PHONE, TYPED, "5550123", "55501", "99999", engine.token):
        assert secret not in page


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: scripts/test.sh installs Debian's")
def test_a_browser_draws_the_page_on_a_phone_screen(
    served: str, engine: Engine, tmp_path: Path
) -> None:
    shot = tmp_path / "status.png"
    url = served.replace("http://", f"http://me:{engine.token}@") + "/status"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=412,915",
    ]  # fmt: skip
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60
    ).stdout
    assert 'data-lookup="order_status"' in dom and "broken_db" in dom  # got past the login
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=60)
    ink, colours = ink_share(read_png(shot))
    assert ink > 0.02 and colours > 20, f"the screenshot looks blank ({ink:.1%} ink)"
