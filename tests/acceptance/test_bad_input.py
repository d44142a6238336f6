"""Bad input: its contract outcome or a clear failure, no source touched, serving goes on."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.acceptance.conftest import TOKEN, Engine, WorkerProcs, _request, job, wait_until

pytestmark = pytest.mark.slow

SHIPPED_START = "Your order #12345 has been shipped!"


@pytest.fixture
def running(workers: WorkerProcs) -> Iterator[str]:
    """A `worker run` serving the test tenant; yields its HTTP base URL."""
    proc = workers.start()
    url: str = proc.http  # type: ignore[attr-defined]

    def up() -> bool:
        try:
            _request(f"{url}/healthz", None)
        except OSError:
            return False
        return True

    wait_until(up, what="the worker's HTTP endpoints")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, workers.log_of(proc)


def post_raw(url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST")  # noqa: S310
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def source_reads(url: str, source: str = "shop_db") -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    match = re.search(rf'worker_lookup_seconds_count{{source="{source}"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


INJECTION = "1; DROP TABLE orders; --"
BAD_JOBS = [
    pytest.param(
        {"order_id": "abc"}, "the order id is not in the expected format", id="wrong-pattern"
    ),
    pytest.param(
        {"order_id": ["12345"]}, "the order id must be text or a number", id="wrong-type-list"
    ),
    pytest.param(
        {"order_id": {"$ne": None}}, "the order id must be text or a number", id="operator-object"
    ),
    pytest.param({}, "the order id is missing", id="missing"),
    pytest.param({"order_id": ""}, "the order id is missing", id="empty"),
    pytest.param({"order_id": "9" * 1_000_000}, "the order id is too long", id="one-megabyte"),
    pytest.param({"order_id": INJECTION}, "the order id is too long", id="sql-injection"),
    pytest.param({"order_id": "1 OR 1=1"}, "not in the expected format", id="sql-tautology"),
]


@pytest.mark.parametrize(("params", "error"), BAD_JOBS)
def test_push__bad_parameters_answer_invalid_input_without_touching_the_source(
    running: str, engine: Engine, params: dict[str, Any], error: str
) -> None:
    body = json.dumps({"parameters": params, "customer_context": {"phone": "+15550001"}})
    status, answer = post_raw(f"{running}/webhook/data/order-status", body.encode())
    assert status == 200
    assert answer["outcome"] == "invalid_input"
    assert answer["message"].startswith("Bad order number: ")
    assert error in answer["message"]
    assert "9" * 50 not in answer["message"]
    assert source_reads(running) == 0
    # the worker keeps serving
    ok = json.dumps({"parameters": {"order_id": "12345"}, "reply_to": "+15550001"}).encode()
    status, answer = post_raw(f"{running}/webhook/data/order_status", ok)
    assert (status, answer["outcome"]) == (200, "ok")
    assert answer["message"].startswith(SHIPPED_START)
    assert source_reads(running) == 1


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        pytest.param(b"{not json", 400, "not valid JSON", id="malformed-json"),
        pytest.param(b"[1, 2]", 422, "JSON object", id="not-an-object"),
        pytest.param(
            json.dumps({"tenant_id": "other", "parameters": {"order_id": "1"}}).encode(),
            422,
            "tenant 'other'",
            id="other-tenant",
        ),
        pytest.param(
            json.dumps({"job_type": "send_email", "parameters": {}}).encode(),
            422,
            "job_type 'send_email'",
            id="other-job-type",
        ),
        pytest.param(
            json.dumps(
                {
                    "parameters": {"order_id": "1"},
                    "data_source_config": {"id": "shop_db", "host": "evil.example"},
                }
            ).encode(),
            422,
            "connection settings in a job are refused",
            id="credentials-in-job",
        ),
    ],
)
def test_push__malformed_or_foreign_jobs_are_refused_clearly(
    running: str, body: bytes, status: int, error: str
) -> None:
    got, answer = post_raw(f"{running}/webhook/data/order_status", body)
    assert got == status
    assert error in answer["error"]
    assert source_reads(running) == 0


def test_push__unknown_lookup_is_404(running: str) -> None:
    status, answer = post_raw(f"{running}/webhook/data/teleport", b'{"reply_to": "+1555"}')
    assert status == 404
    assert "teleport" in answer["error"]


def test_push__needs_the_bearer_token(running: str) -> None:
    for token in (None, "wrong"):
        status, _ = post_raw(f"{running}/webhook/data/order_status", b"{}", token=token)
        assert status == 401
    status, _ = post_raw(
        f"{running}/webhook/data/test-connection", b'{"data_source": "shop_db"}', token=None
    )
    assert status == 401


def test_push__sends_the_reply_to_the_engine_once(running: str, engine: Engine) -> None:
    body = json.dumps({"parameters": {"order_id": "12345"}, "reply_to": "+15550002"}).encode()
    req = urllib.request.Request(f"{running}/webhook/data/order_status", data=body, method="POST")  # noqa: S310
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Idempotency-Key", "push-1")
    for _ in range(2):
        with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
            assert json.loads(resp.read())["sent"] is True
    sent = [m for m in engine.messages() if m["to"] == "+15550002"]
    assert len(sent) == 1 and sent[0]["message"].startswith(SHIPPED_START)


def test_push__no_reply_address_is_invalid_input_and_nothing_sent(
    running: str, engine: Engine
) -> None:
    body = json.dumps({"parameters": {"order_id": "12345"}}).encode()
    status, answer = post_raw(f"{running}/webhook/data/order_status", body)
    assert (status, answer["outcome"], answer["message"], answer["sent"]) == (
        200,
        "invalid_input",
        None,
        False,
    )
    assert engine.messages() == []
    assert source_reads(running) == 0


def test_test_connection_webhook__reports_each_source(running: str) -> None:
    status, answer = post_raw(
        f"{running}/webhook/data/test-connection",
        b'{"data_source": "shop_db", "test_query": "DELETE FROM orders"}',
    )
    assert status == 200 and answer["status"] == "success" and answer["response_time_ms"] >= 0
    status, answer = post_raw(
        f"{running}/webhook/data/test-connection", b'{"data_source": "broken_db"}'
    )
    assert answer["status"] == "error" and "nowhere.db" in answer["error"]
    status, answer = post_raw(f"{running}/webhook/data/test-connection", b'{"data_source": "nope"}')
    assert status == 404 and answer["status"] == "error"


def test_queue__bad_jobs_get_their_outcome_and_serving_goes_on(
    engine: Engine, workers: WorkerProcs
) -> None:
    bad = {
        "wrong_type": engine.enqueue(job("order_status", order_id=["12345"])),  # type: ignore[arg-type]
        "huge": engine.enqueue(job("order_status", order_id="9" * 1_000_000)),
        "injection": engine.enqueue(job("order_status", order_id=INJECTION)),
        "no_address": engine.enqueue(
            {**job("order_status", order_id="12345"), "customer_context": {}}
        ),
        "params_not_a_map": engine.enqueue({**job("order_status"), "parameters": "order 12345"}),
        "unknown_lookup": engine.enqueue(job("teleport", order_id="12345")),
    }
    garbage = engine.insert("{this is not json")
    good = engine.enqueue(job("order_status", order_id="12345"))
    proc = workers.start("--once")
    assert proc.wait(timeout=60) == 0, workers.log_of(proc)

    outcomes = {
        name: (engine.job(i)["status"], engine.job(i)["outcome"]) for name, i in bad.items()
    }
    assert outcomes == {
        "wrong_type": ("done", "invalid_input"),
        "huge": ("done", "invalid_input"),
        "injection": ("done", "invalid_input"),
        "no_address": ("done", "invalid_input"),
        "params_not_a_map": ("done", "invalid_input"),
        "unknown_lookup": ("failed", None),
    }
    assert "teleport" in engine.job(bad["unknown_lookup"])["error"]
    assert engine.job(garbage)["status"] == "failed"
    assert "not a JSON object" in engine.job(garbage)["error"]
    replies = engine.replies()
    assert bad["no_address"] not in replies and bad["unknown_lookup"] not in replies
    assert replies[good][0].startswith(SHIPPED_START)
    with engine_db(engine) as db:
        assert db.execute("SELECT count(*) FROM jobs WHERE status = 'pending'").fetchone() == (0,)


def engine_db(engine: Engine) -> Any:
    import contextlib
    import sqlite3

    return contextlib.closing(sqlite3.connect(engine.db))


def test_cli_lookup__prints_json_and_refuses_bad_values(tenant_config: Any) -> None:
    from tests.acceptance.conftest import REPO, WORKER, _env

    def lookup(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WORKER, "lookup", "--config", str(tenant_config), *args],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = lookup("order_status", "order_id=12345", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) == {"outcome", "message", "data", "source", "response_time_ms"}
    assert (answer["outcome"], answer["source"]) == ("ok", "shop_db")
    assert answer["data"] == [
        {"status": "shipped", "tracking": "UPS123456", "estimated_delivery": "2025-09-12"}
    ]
    bad = json.loads(lookup("order_status", f"order_id={INJECTION}", "--json").stdout)
    assert bad["outcome"] == "invalid_input" and bad["data"] is None
    unknown = lookup("teleport", "x=1")
    assert unknown.returncode == 2 and "order_status" in unknown.stderr
    malformed = lookup("order_status", "order_id")
    assert malformed.returncode == 2 and "key=value" in malformed.stderr


@pytest.mark.parametrize(
    ("body", "to"),
    [
        pytest.param({"order_id": "12345", "customer_phone": "+15550011"}, "+15550011", id="flat"),
        pytest.param({"order_id": 12345, "phone": "+15550012"}, "+15550012", id="flat-phone"),
        pytest.param(
            {
                "headers": {"content-type": "application/json"},
                "params": {},
                "query": {},
                "body": {"order_id": "12345", "from": "+15550013"},
            },
            "+15550013",
            id="n8n-webhook-item",
        ),
    ],
)
def test_push__n8n_flat_body_is_the_parameters(
    running: str, engine: Engine, body: dict[str, Any], to: str
) -> None:
    status, answer = post_raw(f"{running}/webhook/data/order-status", json.dumps(body).encode())

    assert (status, answer["outcome"], answer["sent"]) == (200, "ok", True), answer
    assert answer["message"].startswith(SHIPPED_START)
    sent = [m["message"] for m in engine.messages() if m["to"] == to]
    assert sent == [answer["message"]]


def test_push__n8n_flat_body_with_a_bad_value_is_invalid_input(running: str) -> None:
    body = {"order_id": "12 OR 1=1", "customer_phone": "+15550014"}
    status, answer = post_raw(f"{running}/webhook/data/order-status", json.dumps(body).encode())

    assert (status, answer["outcome"]) == (200, "invalid_input")
    assert answer["message"] == "Bad order number: the order id is not in the expected format."
    assert source_reads(running) == 0
