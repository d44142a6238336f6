"""The seed's "Customer Data Lookup" (Google Sheets) end to end: ``worker lookup`` as a subprocess.

The seed's workflow reads ``range: "Customers!A:E"`` with ``filter: "phone =
{{$json.customer_phone}}"`` and answers from the row. Here the worker runs it from a
tenant config written as the seed writes those parameters, against the Google Sheets
stand-in (`tests.standins.google_sheets`) served on loopback from a thread. The worker
is pointed at the stand-in by its config alone: ``api_base_url`` for the Sheets API
and ``token_uri`` for the OAuth token exchange — connection fields that default to
Google's endpoints. The service-account key is a real RSA key made here.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.acceptance.conftest import REPO, WORKER, _env
from tests.standins import serve_in_thread
from tests.standins.google_sheets import GoogleSheetsStandIn, Spreadsheet

pytestmark = pytest.mark.slow

SHEET_ID = "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms"
EMAIL = "lookups@tenant-project.iam.gserviceaccount.com"
CUSTOMERS = [
    ["name", "email", "phone", "plan", "balance"],
    ["Ana Lima", "ana@example.com", "+1234567890", "Pro", 42.5],
    ["Ben Ode", "ben@example.com", "+1987654321", "Free", 0],
]

TENANT = """
tenant_id: whappstream
templates_dir: {templates}
data_sources:
  - id: customer_sheet
    name: Customer spreadsheet
    type: google_sheets
    connection:
      service_account_file: service-account.json
      spreadsheet_id: {sheet_id}
      api_base_url: {base}/v4          # test override: Google's by default
      token_uri: {base}/token          # test override: the key's by default
    queries:
      customer_lookup:
        range: "Customers!A:E"
        filter: "phone = {{{{$json.customer_phone}}}}"
lookups:
  customer_lookup:
    source: customer_sheet
    params:
      customer_phone: {{type: phone}}
    template: customer_lookup.j2
    not_found: I couldn't find an account for this number.
    fallback: Our customer records aren't available right now.
"""


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def stand(key: rsa.RSAPrivateKey) -> Iterator[GoogleSheetsStandIn]:
    book = Spreadsheet("CRM export", {"Customers": CUSTOMERS}, readers={EMAIL})
    standin = GoogleSheetsStandIn({SHEET_ID: book})
    standin.register(EMAIL, key.public_key())
    with serve_in_thread(standin.app) as url:
        standin.base_url = url
        yield standin


@pytest.fixture
def tenant(tmp_path: Path, stand: GoogleSheetsStandIn, key: rsa.RSAPrivateKey) -> Path:
    folder = tmp_path / "tenant"
    folder.mkdir()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    service_account = {
        "type": "service_account",
        "project_id": "tenant-project",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": EMAIL,
        "token_uri": "https://oauth2.googleapis.com/token",  # what Google writes; overridden
    }
    (folder / "service-account.json").write_text(json.dumps(service_account), encoding="utf-8")
    config = folder / "whappstream.yaml"
    config.write_text(
        TENANT.format(templates=REPO / "templates", sheet_id=SHEET_ID, base=stand.base_url),
        encoding="utf-8",
    )
    return config


def lookup(config: Path, *pairs: str) -> dict[str, Any]:
    done = subprocess.run(
        [*WORKER, "lookup", "--config", str(config), "customer_lookup", *pairs, "--json"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr
    answer = dict(json.loads(done.stdout))
    assert done.returncode == (0 if answer["outcome"] == "ok" else 1), done.stderr  # §7
    return answer


def test_seed_customer_lookup__answers_from_the_sheet_row(
    tenant: Path, stand: GoogleSheetsStandIn
) -> None:
    answer = lookup(tenant, "customer_phone=+1234567890")

    assert answer["outcome"] == "ok"
    assert answer["source"] == "customer_sheet"
    assert answer["message"] == (
        "Hi Ana Lima! Here is what we have on file for you:\n"
        "📧 Email: ana@example.com\n"
        "📱 Phone: +12******90\n"
        "⭐ Plan: Pro\n"
        "💳 Balance: $42.50"
    )
    assert answer["data"] == [
        {
            "name": "Ana Lima",
            "email": "ana@example.com",
            "phone": "+1234567890",
            "plan": "Pro",
            "balance": 42.5,
        }
    ]
    (read,) = stand.seen_at(f"/v4/spreadsheets/{SHEET_ID}/values/")
    assert read.raw_path.startswith(f"/v4/spreadsheets/{SHEET_ID}/values/Customers%21A%3AE?")
    assert len(stand.seen_at("/token")) == 1


def test_seed_customer_lookup__unknown_phone_is_not_found(tenant: Path) -> None:
    answer = lookup(tenant, "customer_phone=+1999999999")

    assert answer["outcome"] == "not_found"
    assert answer["message"] == "I couldn't find an account for this number."


def test_seed_customer_lookup__sheets_down_gives_the_fallback(
    tenant: Path, stand: GoogleSheetsStandIn
) -> None:
    stand.reject_all_tokens = True

    answer = lookup(tenant, "customer_phone=+1234567890")

    assert answer["outcome"] == "fallback"
    assert answer["message"] == "Our customer records aren't available right now."
