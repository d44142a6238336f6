"""Knowledge-base fallbacks: when the primary source fails, a FAQ answers.

The primary source is a real PostgreSQL database that is dropped in the middle
of the test (its connections terminated), or a port nobody listens on; the
knowledge base is a JSON FAQ file. The outcome stays ``fallback``; its
``source`` is the knowledge base's id when the FAQ answered.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.databases import ADMIN
from worker.config import ConfigErrors, load_tenant
from worker.metrics import Metrics
from worker.pipeline import Answer, Pipeline
from worker.sources import Sources

FAQ = {
    "faqs": [
        {"topic": "orders", "answer": "Orders ship within 2 business days; tracking comes by SMS."},
        {"topic": "hours", "text": "We're open 9:00-18:00."},
        {"topic": "table", "opening": "9:00", "closing": "18:00"},
    ]
}
STATIC = "Our order system is down; we'll write back soon."


def _config(dsn_db: str, port: int, fallback: str, defaults: str = "") -> str:
    return f"""
tenant_id: kb_shop
data_sources:
  - id: shop_db
    type: postgresql
    connection: {{host: 127.0.0.1, port: {port}, username: postgres, database: {dsn_db}}}
    queries:
      order_status: SELECT status FROM orders WHERE order_id = $1
  - id: faq
    type: json
    connection: {{path: faq.json}}
    queries:
      faq_orders: {{items: faqs, filter: {{topic: orders}}}}
      faq_topic: {{items: faqs, filter: {{topic: "{{topic}}"}}}}
      faq_nothing: {{items: faqs, filter: {{topic: nothing_here}}}}
  - id: gone_faq
    type: json
    connection: {{path: no-such-faq.json}}
    queries:
      faq_orders: {{items: faqs, filter: {{topic: orders}}}}
lookups:
  order_status:
    source: shop_db
    args: [order_id]
    params:
      order_id: {{pattern: '[0-9]{{1,12}}'}}
    template: "Order {{{{ params.order_id }}}}: {{{{ row.status }}}}."
    timeout_s: 8
{fallback}
  plain_status:
    source: shop_db
    query: order_status
    args: [order_id]
    timeout_s: 8
    fallback: Plain static text.
{defaults}
"""


def _fallback(source: str = "faq", query: str = "faq_orders", extra: str = "") -> str:
    return (
        f"    fallback:\n      source: {source}\n      query: {query}\n"
        f'      text: "{STATIC}"\n{extra}'
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Shop:
    pipeline: Pipeline
    database: str

    async def ask(self, lookup: str = "order_status", **params: Any) -> Answer:
        return await self.pipeline.lookup(lookup, {"order_id": "12345", **params})


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database with the order 12345; the test may drop it (cleanup tolerates that)."""
    name = f"kb_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}")
        try:
            await conn.execute("CREATE TABLE orders (order_id text PRIMARY KEY, status text)")
            await conn.execute("INSERT INTO orders VALUES ('12345', 'shipped')")
        finally:
            await conn.close()
        yield name
    finally:
        await _drop(admin, name)
        await admin.close()


async def _drop(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
    )
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


async def _shop(tmp_path: Path, text: str, database: str) -> AsyncIterator[Shop]:
    (tmp_path / "faq.json").write_text(json.dumps(FAQ), encoding="utf-8")
    path = tmp_path / "kb_shop.yaml"
    path.write_text(text, encoding="utf-8")
    tenant = load_tenant(path)
    sources = Sources(tenant, Metrics())
    try:
        yield Shop(Pipeline(tenant, sources), database)
    finally:
        await sources.close()


@pytest.fixture
async def shop(tmp_path: Path, database: str) -> AsyncIterator[Shop]:
    async for made in _shop(tmp_path, _config(database, 5432, _fallback()), database):
        yield made


# -- the primary database goes away ------------------------------------------------


async def test_fallback__database_dropped_mid_test_answers_from_the_faq(shop: Shop) -> None:
    before = await shop.ask()
    assert (before.outcome, before.message, before.source_id) == (
        "ok",
        "Order 12345: shipped.",
        "shop_db",
    )
    admin = await asyncpg.connect(ADMIN)
    try:
        await _drop(admin, shop.database)
    finally:
        await admin.close()

    answer = await shop.ask()

    assert answer.outcome == "fallback"
    assert answer.message == FAQ["faqs"][0]["answer"]
    assert answer.source_id == "faq"
    assert answer.as_json()["source"] == "faq"
    assert "answered from the knowledge base 'faq'" in str(answer.result)
    assert str(answer.result) != "answered from the knowledge base 'faq'"  # the error is there


async def test_fallback__static_string_still_means_static_text(shop: Shop) -> None:
    admin = await asyncpg.connect(ADMIN)
    try:
        await _drop(admin, shop.database)
    finally:
        await admin.close()

    answer = await shop.ask("plain_status")

    assert (answer.outcome, answer.message, answer.source_id) == (
        "fallback",
        "Plain static text.",
        "shop_db",
    )


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        pytest.param(_fallback("gone_faq"), STATIC, id="knowledge-source-fails-too"),
        pytest.param(_fallback(query="faq_nothing"), STATIC, id="knowledge-finds-nothing"),
        pytest.param(
            _fallback(extra='      template: "{{ row.missing_field }}"\n'),
            STATIC,
            id="knowledge-renders-empty",
        ),
        pytest.param(
            "    fallback: {source: faq, query: faq_nothing}\n",
            "Sorry, I can't look that up right now",
            id="no-text-gives-the-default-text",
        ),
    ],
)
async def test_fallback__knowledge_failing_gives_the_static_text(
    tmp_path: Path, fallback: str, message: str
) -> None:
    text = _config("nowhere", _closed_port(), fallback)
    async for shop in _shop(tmp_path, text, "nowhere"):
        answer = await shop.ask()

        assert answer.outcome == "fallback"
        assert str(answer.message).startswith(message)
        assert answer.source_id == "shop_db"
        assert "knowledge base" not in str(answer.result)


@pytest.mark.parametrize(
    ("query", "template", "topic", "message"),
    [
        pytest.param("faq_orders", "", None, FAQ["faqs"][0]["answer"], id="answer-field"),
        pytest.param("faq_topic", "", "hours", "We're open 9:00-18:00.", id="text-field"),
        pytest.param(
            "faq_topic",
            "",
            "table",
            "Topic: table\nOpening: 9:00\nClosing: 18:00",
            id="readable-default",
        ),
        pytest.param(
            "faq_orders",
            '      template: "Sorry! {{ row.answer }} (order {{ params.order_id }})"\n',
            None,
            f"Sorry! {FAQ['faqs'][0]['answer']} (order 12345)",
            id="own-template",
        ),
    ],
)
async def test_fallback__knowledge_templates(
    tmp_path: Path, query: str, template: str, topic: str | None, message: str
) -> None:
    text = _config("nowhere", _closed_port(), _fallback(query=query, extra=template))
    text = text.replace(
        "      order_id: {pattern: '[0-9]{1,12}'}",
        "      order_id: {pattern: '[0-9]{1,12}'}\n      topic: {required: false}",
        1,
    )
    params = {"topic": topic} if topic else {}
    async for shop in _shop(tmp_path, text, "nowhere"):
        answer = await shop.ask(**params)

        assert (answer.outcome, answer.message, answer.source_id) == ("fallback", message, "faq")


async def test_fallback__tenant_default_knowledge_serves_lookups_without_their_own(
    tmp_path: Path,
) -> None:
    defaults = "defaults:\n  fallback: {source: faq, query: faq_orders, text: Tenant static.}\n"
    text = _config("nowhere", _closed_port(), "", defaults)
    async for shop in _shop(tmp_path, text, "nowhere"):
        inherits = await shop.ask()
        own_text = await shop.ask("plain_status")

    assert (inherits.outcome, inherits.message, inherits.source_id) == (
        "fallback",
        FAQ["faqs"][0]["answer"],
        "faq",
    )
    assert (own_text.message, own_text.source_id) == ("Plain static text.", "shop_db")


@pytest.mark.parametrize(
    ("fallback", "where", "problem"),
    [
        pytest.param(
            _fallback("nope"),
            "lookups.order_status.fallback.source",
            "names no configured",
            id="unknown-source",
        ),
        pytest.param(
            _fallback(query="DELETE FROM x"),
            "lookups.order_status.fallback.query",
            "",
            id="query-not-a-read",
        ),
        pytest.param(
            _fallback(extra='      template: "{{ row.answer "\n'),
            "lookups.order_status.fallback.template",
            "",
            id="template-does-not-compile",
        ),
        pytest.param(
            "    fallback: {source: faq}\n",
            "lookups.order_status.fallback.query",
            "say which query",
            id="several-queries-none-named",
        ),
    ],
)
def test_config__bad_knowledge_fallbacks_are_errors_with_their_path(
    tmp_path: Path, fallback: str, where: str, problem: str
) -> None:
    path = tmp_path / "kb_shop.yaml"
    path.write_text(_config("nowhere", 5432, fallback), encoding="utf-8")
    (tmp_path / "faq.json").write_text(json.dumps(FAQ), encoding="utf-8")

    with pytest.raises(ConfigErrors) as caught:
        load_tenant(path)

    text = str(caught.value)
    assert where in text, text
    assert problem in text, text
