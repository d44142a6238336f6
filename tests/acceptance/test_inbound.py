"""A customer's free text at ``POST /webhook/inbound`` (contract §6), on the local engine
(route, enqueue; then a real ``worker run`` answers) and on the worker (push mode)."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.acceptance.conftest import (
    REPO,
    TOKEN,
    WORKER,
    Engine,
    WorkerProcs,
    _env,
    answers,
    serve_engine,
    wait_until,
)

pytestmark = pytest.mark.slow

SHIPPED = "Your order #12345 has been shipped!"
ROUTES = {
    "order_status": {
        "keywords": ["order", "order status", "where is my order", "pedido", "encomenda"],
        "extract": {"order_id": "#?([0-9]{3,12})"},
    },
    "faq": {
        "keywords": ["hours", "open", "horario"],
    },
}


@pytest.fixture
def tenant_config(tenant_config: Path) -> Path:
    """The acceptance tenant, its lookups given route blocks."""
    document = yaml.safe_load(tenant_config.read_text(encoding="utf-8"))
    for name, route in ROUTES.items():
        document["lookups"][name]["route"] = route
    tenant_config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return tenant_config


@pytest.fixture
def engine(tmp_path: Path, tenant_config: Path) -> Iterator[Engine]:
    """`worker engine serve` whose config folder holds the routed tenant (``shop``)."""
    with serve_engine(tmp_path / "engine.db", tenant_config.parent) as served:
        yield served


@pytest.fixture
def running(workers: WorkerProcs) -> Iterator[str]:
    """A `worker run` serving the routed tenant; yields its HTTP base URL."""
    proc = workers.start()
    url: str = proc.http  # type: ignore[attr-defined]
    wait_until(lambda: answers(f"{url}/healthz"), what="the worker's HTTP endpoints")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, workers.log_of(proc)


def post(
    url: str, body: Any, token: str | None = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST")  # noqa: S310
    req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def inbound(message: str, sender: str = "+1234567890", **extra: Any) -> dict[str, Any]:
    return {"from": sender, "message": message, "tenant_id": "shop", **extra}


# --- the local engine ----------------------------------------------------------------------------


def test_engine_inbound__the_seeds_curl_is_routed_enqueued_and_answered_by_a_worker(
    engine: Engine, workers: WorkerProcs
) -> None:
    # The seed's own call, byte for byte but the tenant: curl sends no JSON content type.
    body = '{"from":"+1234567890","message":"Order status 12345","tenant_id":"shop"}'
    status, answer = engine.curl_inbound(body)
    assert status == "202", answer
    assert answer["query_type"] == "order_status"
    assert answer["parameters"] == {"order_id": "12345", "customer_phone": "+1234567890"}
    queued = engine.job(answer["job_id"])
    assert queued["status"] == "pending"
    assert queued["payload"]["reply_to"] == "+1234567890"

    proc = workers.start("--once", "--listen", "")
    assert proc.wait(timeout=60) == 0, workers.log_of(proc)
    done = engine.job(answer["job_id"])
    assert (done["status"], done["outcome"]) == ("done", "ok")
    [reply] = engine.messages()
    assert reply["to"] == "+1234567890"
    assert reply["message"].startswith(SHIPPED)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("hi", id="greeting"),
        pytest.param("thanks! 👍", id="thanks-emoji"),
        pytest.param("", id="empty"),
    ],
)
def test_engine_inbound__small_talk_is_not_routed_and_nothing_is_queued(
    engine: Engine, message: str
) -> None:
    status, answer = post(f"{engine.url}/webhook/inbound", inbound(message))
    assert (status, answer) == (200, {"routed": False})
    assert engine.messages() == []
    with pytest.raises(urllib.error.HTTPError):
        engine.job("1")


def test_engine_inbound__a_tie_is_not_routed_and_names_the_lookups(engine: Engine) -> None:
    status, answer = post(f"{engine.url}/webhook/inbound", inbound("order hours"))
    assert status == 200
    assert answer == {"routed": False, "ambiguous": ["faq", "order_status"]}


def test_engine_inbound__spanish_with_accents_and_a_hash(engine: Engine) -> None:
    status, answer = post(
        f"{engine.url}/webhook/inbound", inbound("¿Dónde está mi PEDIDO #12346?", "+5491112345678")
    )
    assert status == 202
    assert answer["parameters"] == {"order_id": "12346", "customer_phone": "+5491112345678"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"message": "Order status 12345", "tenant_id": "shop"}, 422, id="no-from"),
        pytest.param(inbound("order 12345", sender="robert'); --"), 422, id="from-not-a-phone"),
        pytest.param(inbound("x" * 4097), 422, id="message-too-long"),
        pytest.param(inbound(["order"]), 422, id="message-not-text"),
        pytest.param(["not", "an", "object"], 422, id="not-an-object"),
        pytest.param(inbound("order 12345") | {"tenant_id": "nobody"}, 404, id="unknown-tenant"),
        pytest.param(b'{"from": "+1234567890", "message": ', 400, id="malformed-json"),
        pytest.param(b"[" * 200 + b"]" * 200, 400, id="deep-json"),
    ],
)
def test_engine_inbound__bad_bodies_are_refused_clearly(
    engine: Engine, body: Any, status: int
) -> None:
    got, answer = post(f"{engine.url}/webhook/inbound", body)
    assert got == status, answer
    assert answer["error"]


def test_engine_inbound__needs_a_token(engine: Engine) -> None:
    assert post(f"{engine.url}/webhook/inbound", inbound("order 12345"), token=None)[0] == 401
    assert post(f"{engine.url}/webhook/inbound", inbound("order 12345"), token="nope")[0] == 401


def test_engine_inbound__a_scoped_token_routes_only_for_its_tenant(engine: Engine) -> None:
    issued = subprocess.run(
        [*WORKER, "engine", "token", "--tenant", "shop", "--db", str(engine.db)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    token = issued.stdout.strip().splitlines()[-1].strip()
    url = f"{engine.url}/webhook/inbound"
    # Without tenant_id the message is for the token's tenant.
    status, answer = post(url, {"from": "+15550001", "message": "order 12345"}, token=token)
    assert (status, answer["query_type"]) == (202, "order_status")
    status, _ = post(url, inbound("order 12345") | {"tenant_id": "demo"}, token=token)
    assert status == 403
    # The engine's own token has no tenant of its own: it must say which.
    status, answer = post(url, {"from": "+15550001", "message": "order 12345"})
    assert status == 422 and "tenant_id" in answer["error"]


def test_engine_inbound__an_edited_config_routes_at_once(
    engine: Engine, tenant_config: Path
) -> None:
    url = f"{engine.url}/webhook/inbound"
    assert post(url, inbound("encomenda 12345"))[0] == 202
    document = yaml.safe_load(tenant_config.read_text(encoding="utf-8"))
    document["lookups"]["order_status"]["route"]["keywords"] = ["where is my order"]
    tenant_config.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert post(url, inbound("encomenda 12345")) == (200, {"routed": False})
    assert post(url, inbound("Where is my order 12345?"))[0] == 202


# --- the worker (push mode) ----------------------------------------------------------------------


def test_worker_inbound__routes_answers_and_sends_the_reply_once(
    running: str, engine: Engine
) -> None:
    body = inbound("where's my order #12345??", message_id="wamid.1")
    for _ in range(2):  # the provider's message id keys the reply: a retry sends nothing new
        status, answer = post(f"{running}/webhook/inbound", body)
        assert status == 200, answer
        assert answer["outcome"] == "ok"
        assert answer["sent"] is True
        assert answer["query_type"] == "order_status"
        assert answer["parameters"] == {"order_id": "12345", "customer_phone": "+1234567890"}
        assert answer["message"].startswith(SHIPPED)
    [reply] = engine.messages()
    assert reply["to"] == "+1234567890"
    assert reply["message"].startswith(SHIPPED)


def test_worker_inbound__idempotency_key_header_keys_the_reply(
    running: str, engine: Engine
) -> None:
    body = {"from": "+15550002", "message": "Qual o status da minha encomenda 12346?"}
    for _ in range(2):
        status, answer = post(
            f"{running}/webhook/inbound", body, headers={"Idempotency-Key": "msg-7"}
        )
        assert (status, answer["outcome"], answer["sent"]) == (200, "ok", True)
    assert [m["to"] for m in engine.messages()] == ["+15550002"]


def test_worker_inbound__unrouted_text_sends_nothing(running: str, engine: Engine) -> None:
    status, answer = post(f"{running}/webhook/inbound", inbound("thanks!! 🙏"))
    assert (status, answer) == (200, {"outcome": "unrouted", "sent": False})
    status, answer = post(f"{running}/webhook/inbound", inbound("order hours"))
    assert (status, answer["outcome"], answer["ambiguous"]) == (
        200,
        "unrouted",
        ["faq", "order_status"],
    )
    assert engine.messages() == []


def test_worker_inbound__a_missing_detail_asks_for_it(running: str, engine: Engine) -> None:
    status, answer = post(f"{running}/webhook/inbound", inbound("Where is my order?"))
    assert status == 200
    assert (answer["outcome"], answer["query_type"], answer["sent"]) == (
        "invalid_input",
        "order_status",
        True,
    )
    assert answer["message"] == "Bad order number: the order id is missing."
    assert [m["message"] for m in engine.messages()] == [answer["message"]]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(inbound("order 12345") | {"tenant_id": "demo"}, 422, id="another-tenant"),
        pytest.param(inbound("order 12345", sender="not a phone"), 422, id="from-not-a-phone"),
        pytest.param(inbound("x" * 5000), 422, id="message-too-long"),
        pytest.param(b'{"from": ', 400, id="malformed-json"),
        pytest.param(b'{"a":' * 200 + b"1" + b"}" * 200, 400, id="deep-json"),
    ],
)
def test_worker_inbound__bad_bodies_are_refused_and_nothing_is_sent(
    running: str, engine: Engine, body: Any, status: int
) -> None:
    got, answer = post(f"{running}/webhook/inbound", body)
    assert got == status, answer
    assert answer["error"]
    assert engine.messages() == []


def test_worker_inbound__needs_the_bearer_token(running: str, engine: Engine) -> None:
    for token in (None, "wrong"):
        status, _ = post(f"{running}/webhook/inbound", inbound("order 12345"), token=token)
        assert status == 401
    assert engine.messages() == []
