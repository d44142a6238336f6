"""The seed's own ``POST /webhook/inbound`` call, verbatim, on the local engine serving the
repository's tenant configs (the seed's ``whappstream.json`` has no route blocks)."""

from __future__ import annotations

import json

import pytest

from tests.acceptance.conftest import Engine

pytestmark = pytest.mark.slow

SEED_BODY = '{"from":"+1234567890","message":"Order status 12345","tenant_id":"whappstream"}'


def test_seed_curl__routes_the_seeds_sentence_with_the_seeds_config(engine: Engine) -> None:
    status, answer = engine.curl_inbound(SEED_BODY)
    assert status == "202", answer
    assert answer["query_type"] == "order_status"
    assert answer["parameters"] == {"order_id": "12345", "customer_phone": "+1234567890"}
    payload = engine.job(str(answer["job_id"]))["payload"]
    assert payload["tenant_id"] == "whappstream"
    assert payload["reply_to"] == "+1234567890"


def test_seed_curl__the_demo_tenant_routes_spanish(engine: Engine) -> None:
    body = json.dumps(
        {"from": "+5491112345678", "message": "¿Dónde está mi PEDIDO 12346?", "tenant_id": "demo"}
    )
    status, answer = engine.curl_inbound(body)
    assert (status, answer["query_type"]) == ("202", "order_status")
    assert answer["parameters"] == {"order_id": "12346", "customer_phone": "+5491112345678"}
