"""``worker run`` end to end: real engine over HTTP, real worker subprocesses."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from typing import Any

import pytest

from tests.acceptance.conftest import (
    ENDLESS_LOOPS,
    SLOW_LOOPS,
    Engine,
    WorkerProcs,
    job,
    wait_until,
)

pytestmark = pytest.mark.slow

SHIPPED = (
    "Your order #12345 has been shipped! 📦\nTracking: UPS123456\nExpected delivery: September 12th"
)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _answered(log: str, job_id: str) -> int | None:
    """The job's own ``response_time_ms``, from its "answered" log line (None before it)."""
    for line in _json_lines(log):
        if line.get("action") == "answer" and line.get("job_id") == job_id:
            return int(line["ms"])
    return None


def _running(engine: Engine, ids: list[str]) -> bool:
    return all(engine.job(i)["status"] == "running" for i in ids)


def test_run_once__answers_each_outcome_with_its_exact_reply(
    engine: Engine, workers: WorkerProcs
) -> None:
    ids = {
        "ok": engine.enqueue(job("order_status", order_id="12345")),
        "alias": engine.enqueue(
            {**job("ignored", order_id="12345"), "query_type": None, "query": "Order Status"}
        ),
        "not_found": engine.enqueue(job("order_status", order_id="99999")),
        "invalid_input": engine.enqueue(job("order_status", order_id="1' OR '1'='1")),
        "fallback": engine.enqueue(job("broken_order", order_id="12345")),
        "seed_insert": engine.insert(json.dumps(job("order_status", order_id="12347"))),
    }
    proc = workers.start("--once")
    assert proc.wait(timeout=60) == 0, workers.log_of(proc)

    replies = engine.replies()
    assert replies[ids["ok"]] == [SHIPPED]
    assert replies[ids["alias"]] == [SHIPPED]
    assert replies[ids["not_found"]] == ["No order #99999 here."]
    assert replies[ids["invalid_input"]] == [
        "Bad order number: the order id is not in the expected format."
    ]
    assert replies[ids["fallback"]] == ["Orders are offline; we'll write back about #12345."]
    assert replies[ids["seed_insert"]][0].startswith("Your order #12347 has been delivered!")
    outcomes = {name: engine.job(i)["outcome"] for name, i in ids.items()}
    assert outcomes == {
        "ok": "ok",
        "alias": "ok",
        "not_found": "not_found",
        "invalid_input": "invalid_input",
        "fallback": "fallback",
        "seed_insert": "ok",
    }
    assert engine.job(ids["ok"])["result"] == [
        {"status": "shipped", "tracking": "UPS123456", "estimated_delivery": "2025-09-12"}
    ]
    assert "nowhere.db" in engine.job(ids["fallback"])["result"]
    audit = workers.config.parent / "shop.audit.db"
    with contextlib.closing(sqlite3.connect(audit)) as db:
        logged = db.execute(
            "SELECT data_source_id, query_type, customer_identifier, outcome FROM data_access_logs"
        ).fetchall()
    assert len(logged) == len(ids)
    assert {r[3] for r in logged} == {"ok", "not_found", "invalid_input", "fallback"}
    assert {r[2] for r in logged} == {"+******7890"}


def test_run__leaves_other_tenants_and_job_types_alone(
    engine: Engine, workers: WorkerProcs
) -> None:
    other_tenant = engine.enqueue(job("order_status", tenant="someone_else", order_id="12345"))
    other_type = engine.enqueue({**job("order_status", order_id="12345"), "job_type": "send_email"})
    mine = engine.enqueue(job("order_status", order_id="12345"))
    proc = workers.start("--once")
    assert proc.wait(timeout=60) == 0, workers.log_of(proc)
    assert engine.job(mine)["status"] == "done"
    for untouched in (other_tenant, other_type):
        row = engine.job(untouched)
        assert (row["status"], row["attempt"], row["outcome"]) == ("pending", 0, None)
    assert set(engine.replies()) == {mine}


def test_run__sigkill_mid_job_is_answered_once_by_another_worker(
    engine: Engine, workers: WorkerProcs
) -> None:
    job_id = engine.enqueue(job("slow_order", order_id="12345", loops=SLOW_LOOPS))
    first = workers.start()
    wait_until(lambda: _running(engine, [job_id]), what="the first worker to claim the job")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert engine.replies() == {}

    second = workers.start()  # picks the job up once its lease (2 s) runs out
    wait_until(lambda: engine.job(job_id)["status"] == "done", timeout_s=30, what="redelivery")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0, workers.log_of(second)
    row = engine.job(job_id)
    assert (row["status"], row["outcome"], row["attempt"]) == ("done", "ok", 2)
    assert engine.replies() == {job_id: [SHIPPED]}


def test_run__sigterm_lets_jobs_in_flight_finish(engine: Engine, workers: WorkerProcs) -> None:
    ids = [engine.enqueue(job("slow_order", order_id="12345", loops=SLOW_LOOPS)) for _ in range(3)]
    proc = workers.start("--grace", "30")
    wait_until(lambda: _running(engine, ids), what="all jobs to be claimed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0, workers.log_of(proc)
    assert [engine.job(i)["status"] for i in ids] == ["done"] * 3
    assert engine.replies() == {i: [SHIPPED] for i in ids}


def test_run__sigterm_hands_back_what_outlasts_the_grace_period(
    engine: Engine, workers: WorkerProcs
) -> None:
    job_id = engine.enqueue(job("slow_order", order_id="12345", loops=ENDLESS_LOOPS))
    proc = workers.start("--grace", "0.5")
    wait_until(lambda: _running(engine, [job_id]), what="the job to be claimed")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, workers.log_of(proc)
    assert time.monotonic() - started < 10
    row = engine.job(job_id)
    assert (row["status"], row["attempt"]) == ("pending", 1)
    assert "stopped" in row["error"]
    assert engine.replies() == {}


def test_run__hanging_source_gives_fallback_within_deadline(
    engine: Engine, workers: WorkerProcs
) -> None:
    proc = workers.start()
    job_id = engine.enqueue(job("hang_order", order_id="12345", loops=ENDLESS_LOOPS))
    wait_until(lambda: engine.job(job_id)["status"] == "done", timeout_s=30, what="the fallback")
    assert engine.replies() == {job_id: ["Timed out looking up #12345."]}
    assert engine.job(job_id)["outcome"] == "fallback"
    # Timed by the job itself (its response_time_ms, in the answer's log line), not by
    # a wall clock around the worker's start-up: the 1 s deadline, never the endless read.
    wait_until(lambda: _answered(workers.log_of(proc), job_id) is not None, what="the log line")
    took_ms = _answered(workers.log_of(proc), job_id)
    assert took_ms is not None and 1000 <= took_ms < 1000 + 4000, took_ms
    # the worker keeps serving after the deadline
    after = engine.enqueue(job("order_status", order_id="12345"))
    wait_until(lambda: engine.job(after)["status"] == "done", what="the next job")
    assert engine.replies()[after] == [SHIPPED]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_run__engine_rejecting_the_token_is_logged_and_retried(
    engine: Engine, workers: WorkerProcs
) -> None:
    proc = workers.start(ENGINE_TOKEN="wrong")
    time.sleep(2)
    assert proc.poll() is None, "the worker must not crash-loop on a bad token"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    log = workers.log_of(proc)
    assert "refused the token (401)" in log
    assert "wrong" not in log.replace("wrong bearer", "")


def test_run__config_error_exits_with_a_clear_message(engine: Engine, workers: WorkerProcs) -> None:
    workers.config.write_text("tenant_id: shop\nlookups: [not, a, map]\n", encoding="utf-8")
    proc = workers.start("--once")
    assert proc.wait(timeout=30) == 3  # an invalid config (contract §7)
    log = workers.log_of(proc)
    assert "shop.yaml:2" in log and "lookups" in log
    assert "Traceback" not in log


def test_run__json_log_lines_carry_action_tenant_and_job(
    engine: Engine, workers: WorkerProcs
) -> None:
    job_id = engine.enqueue(job("order_status", order_id="12345"))
    proc = workers.start("--once")
    assert proc.wait(timeout=60) == 0
    lines = [json.loads(line) for line in workers.log_of(proc).splitlines() if line.startswith("{")]
    answered = [x for x in lines if x.get("action") == "answer"]
    assert answered and answered[0]["tenant"] == "shop" and answered[0]["job_id"] == job_id
    assert answered[0]["outcome"] == "ok"


def test_run__serves_healthz_while_running(engine: Engine, workers: WorkerProcs) -> None:
    proc = workers.start()
    url = proc.http  # type: ignore[attr-defined]
    from tests.acceptance.conftest import _request

    wait_until(lambda: _try(lambda: _request(f"{url}/healthz", None)), what="healthz")
    assert _request(f"{url}/readyz", None)["status"] == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def _try(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def test_run__every_line_about_a_job_names_its_tenant_and_job(
    engine: Engine, workers: WorkerProcs
) -> None:
    ids = {
        "fallback": engine.enqueue(job("broken_order", order_id="12345")),
        "ok": engine.enqueue(job("order_status", order_id="12345")),
    }
    proc = workers.start("--once")
    assert proc.wait(timeout=60) == 0, workers.log_of(proc)
    assert [engine.job(i)["outcome"] for i in ids.values()] == ["fallback", "ok"]
    lines = _json_lines(workers.log_of(proc))
    assert lines and all(line.get("tenant") == "shop" for line in lines), lines
    about_jobs = [
        line
        for line in lines
        if line["logger"].startswith(("worker.pipeline", "worker.sources", "connectors"))
        or line.get("action") == "answer"
    ]
    [fell_back] = [line for line in about_jobs if "fell back" in line["msg"]]
    assert fell_back["job_id"] == ids["fallback"]
    named = {line.get("job_id") for line in about_jobs}
    assert named == set(ids.values()), about_jobs  # none without its job id
    opened = [line for line in about_jobs if line["msg"].startswith("opened source")]
    assert {line["job_id"] for line in opened} <= set(ids.values()) and opened
