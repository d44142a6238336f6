"""The pipeline in-process, on real SQLite / CSV / JSON sources and real templates."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from worker.config import Tenant, load_tenant
from worker.metrics import Metrics
from worker.pipeline import Outcome, Pipeline, UnknownLookup
from worker.sources import Sources

REPO = Path(__file__).resolve().parents[2]

CONFIG = """
tenant_id: shop
templates_dir: {templates}
data_sources:
  - id: db
    type: sqlite
    connection: {{path: shop.db}}
    queries:
      order_status: SELECT status, tracking, estimated_delivery FROM orders WHERE order_id = $1
      endless: >-
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
        SELECT count(*) AS n FROM c WHERE x = $1
      long_form: {{query: "SELECT name FROM customers WHERE phone = $1", args: [phone]}}
  - id: gone
    type: sqlite
    connection: {{path: nowhere.db}}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
      by_id: SELECT status FROM orders WHERE lower(order_id) = $1
      twice: SELECT status FROM orders WHERE order_id = $1
  - id: more
    type: sqlite
    connection: {{path: shop.db}}
    queries:
      twice: SELECT status FROM orders WHERE order_id = $1
      by_column: SELECT status, tracking FROM orders WHERE order_id = $1
lookups:
  order_status:
    source: db
    args: [order_id]
    params: {{order_id: {{pattern: '[0-9]+', max_length: 12}}}}
    template: order_status.j2
    not_found: "No order #{{{{ params.order_id }}}}."
    fallback: "Offline, {{{{ customer.name }}}}."
  slow:
    source: db
    query: endless
    args: [n]
    params: {{n: {{type: integer}}}}
    timeout_s: 0.5
    fallback: "Too slow."
  down:
    source: gone
    query: order_status
    args: [order_id]
    fallback: "Down."
  broken_template:
    source: db
    query: order_status
    args: [order_id]
    template: "{{{{ ''.__class__.__mro__ }}}}"
    fallback: "Template trouble."
"""


@pytest.fixture
def tenant(tmp_path: Path) -> Tenant:
    shutil.copy(REPO / "config" / "demo" / "shop.db", tmp_path / "shop.db")
    path = tmp_path / "shop.yaml"
    path.write_text(CONFIG.format(templates=REPO / "templates"), encoding="utf-8")
    return load_tenant(path)


@pytest.fixture
async def pipeline(tenant: Tenant) -> AsyncIterator[Pipeline]:
    sources = Sources(tenant)
    try:
        yield Pipeline(tenant, sources, Metrics())
    finally:
        await sources.close()


def job(query_type: str, **params: Any) -> dict[str, Any]:
    return {
        "job_type": "data_lookup",
        "tenant_id": "shop",
        "query_type": query_type,
        "parameters": params,
        "customer_context": {"phone": "+15550001", "name": "Ana"},
    }


def reads(pipeline: Pipeline, source: str) -> float:
    for metric in pipeline.metrics.latency.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("source") == source:
                return sample.value
    return 0.0


async def test_answer__ok_renders_the_seed_reply(pipeline: Pipeline) -> None:
    answer = await pipeline.answer(job("order_status", order_id="12345"))
    assert answer.outcome == Outcome.OK
    assert answer.message == (
        "Your order #12345 has been shipped! 📦\nTracking: UPS123456\n"
        "Expected delivery: September 12th"
    )
    assert answer.result == [
        {"status": "shipped", "tracking": "UPS123456", "estimated_delivery": "2025-09-12"}
    ]
    assert (answer.source_id, answer.reply_to, answer.lookup) == ("db", "+15550001", "order_status")


async def test_answer__not_found_uses_the_lookups_text(pipeline: Pipeline) -> None:
    answer = await pipeline.answer(job("order_status", order_id="99999"))
    assert (answer.outcome, answer.message) == (Outcome.NOT_FOUND, "No order #99999.")


async def test_answer__invalid_input_never_reaches_the_source(pipeline: Pipeline) -> None:
    answer = await pipeline.answer(job("order_status", order_id="1 OR 1=1"))
    assert answer.outcome == Outcome.INVALID_INPUT
    assert "the order id is not in the expected format" in (answer.message or "")
    assert reads(pipeline, "db") == 0


async def test_answer__deadline_gives_fallback_and_stops_the_read(pipeline: Pipeline) -> None:
    started = time.monotonic()
    answer = await pipeline.answer(job("slow", n=-1))
    assert time.monotonic() - started < 0.5 + 4
    assert (answer.outcome, answer.message) == (Outcome.FALLBACK, "Too slow.")
    assert "0.5 s" in answer.result
    # the interrupted connection serves the next read
    again = await pipeline.answer(job("order_status", order_id="12345"))
    assert again.outcome == Outcome.OK


async def test_answer__source_failure_gives_fallback(pipeline: Pipeline) -> None:
    answer = await pipeline.answer(job("down", order_id="1"))
    assert (answer.outcome, answer.message) == (Outcome.FALLBACK, "Down.")
    assert "nowhere.db" in answer.result


async def test_answer__template_escape_gives_fallback(pipeline: Pipeline) -> None:
    answer = await pipeline.answer(job("broken_template", order_id="12345"))
    assert (answer.outcome, answer.message) == (Outcome.FALLBACK, "Template trouble.")


async def test_answer__implicit_lookup_runs_a_source_query_by_name(pipeline: Pipeline) -> None:
    payload = {**job("long_form", phone="+1234567890"), "data_source": "db"}
    answer = await pipeline.answer(payload)
    assert answer.outcome == Outcome.OK
    assert answer.result == [{"name": "Ana Souza"}]
    assert answer.message == "Name: Ana Souza"


@pytest.mark.parametrize(
    "data_source",
    [
        pytest.param(None, id="no-data-source"),
        pytest.param("crm_api", id="not-a-configured-source"),
        pytest.param("db", id="a-source-without-that-query"),
        pytest.param("more", id="the-source-itself"),
    ],
)
async def test_answer__query_in_one_source_runs_there_binding_by_column(
    pipeline: Pipeline, data_source: str | None
) -> None:
    payload: dict[str, Any] = {**job("by_column", order_id="12345")}
    if data_source:
        payload["data_source"] = data_source
    answer = await pipeline.answer(payload)
    assert (answer.outcome, answer.source_id) == (Outcome.OK, "more")
    assert answer.message == "Status: shipped\nTracking: UPS123456"


async def test_answer__query_in_two_sources_needs_a_data_source(pipeline: Pipeline) -> None:
    answer = await pipeline.answer(job("twice", order_id="12345"))
    assert answer.outcome == Outcome.INVALID_INPUT
    assert "say which data source" in str(answer.result)
    assert "(gone, more)" in str(answer.result)

    named = await pipeline.answer({**job("twice", order_id="12345"), "data_source": "more"})
    assert (named.outcome, named.source_id) == (Outcome.OK, "more")


async def test_answer__implicit_dollar_query_without_args_is_invalid_input(
    pipeline: Pipeline,
) -> None:
    payload = {**job("by_id", order_id="12345"), "data_source": "gone"}
    answer = await pipeline.answer(payload)
    assert answer.outcome == Outcome.INVALID_INPUT
    assert reads(pipeline, "gone") == 0


async def test_answer__unknown_lookup_without_tenant_fallback_is_refused(
    pipeline: Pipeline,
) -> None:
    with pytest.raises(UnknownLookup, match="teleport"):
        await pipeline.answer(job("teleport"))


async def test_answer__unknown_lookup_with_tenant_fallback_answers_it(tmp_path: Path) -> None:
    shutil.copy(REPO / "config" / "demo" / "shop.db", tmp_path / "shop.db")
    text = CONFIG.format(templates=REPO / "templates")
    text = text.replace(
        "tenant_id: shop\n", "tenant_id: shop\ndefaults: {fallback: 'Ask a human.'}\n"
    )
    path = tmp_path / "shop.yaml"
    path.write_text(text, encoding="utf-8")
    tenant = load_tenant(path)
    sources = Sources(tenant)
    try:
        answer = await Pipeline(tenant, sources).answer(job("teleport"))
    finally:
        await sources.close()
    assert (answer.outcome, answer.message) == (Outcome.FALLBACK, "Ask a human.")


async def test_lookup__runs_without_a_queue(pipeline: Pipeline) -> None:
    answer = await pipeline.lookup("order_status", {"order_id": "12347"})
    assert answer.as_json()["data"] == [
        {"status": "delivered", "tracking": "DHL998877", "estimated_delivery": "2025-09-01"}
    ]
    assert set(answer.as_json()) == {"outcome", "message", "data", "source", "response_time_ms"}


async def test_answer__metrics_count_outcomes(pipeline: Pipeline) -> None:
    await pipeline.answer(job("order_status", order_id="12345"))
    await pipeline.answer(job("order_status", order_id="x"))
    counts = {
        s.labels["outcome"]: s.value
        for m in pipeline.metrics.jobs.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counts == {"ok": 1.0, "invalid_input": 1.0}
