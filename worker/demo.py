"""``worker demo``: the whole flow on the embedded default, with nothing set up.

A local engine on a temporary SQLite queue, the ``demo`` tenant (a SQLite shop
database, a CSV inventory, a JSON FAQ), customers' own sentences sent to the
engine's ``POST /webhook/inbound`` (routed to a lookup and queued), the seed's
sample questions as jobs, one real worker draining them over HTTP, and what
each customer would receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import click

from worker.answers import Answer
from worker.audit import AuditLog
from worker.config import Tenant, find_config, load_tenant
from worker.engine_client import EngineClient
from worker.engine_queue import EngineQueue
from worker.local_engine import LocalEngine, serve_engine
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.runtime import RunSettings, Runtime
from worker.sources import Sources
from worker.stores.base import ClaimedJob
from worker.stores.sqlite import SQLiteStore

__all__ = ["SAMPLE_JOBS", "SAMPLE_MESSAGES", "run_demo"]

TENANT = "demo"

SAMPLE_JOBS: list[tuple[str, dict[str, Any]]] = [
    (
        "Where is my order #12345?",
        {
            "job_type": "data_lookup",
            "tenant_id": TENANT,
            "query": "order status",
            "parameters": {"order_id": "12345", "customer_phone": "+1234567890"},
            "data_source": "shop_db",
        },
    ),
    (
        "Is SKU-789 in stock?",
        {
            "job_type": "data_lookup",
            "tenant_id": TENANT,
            "query_type": "check_stock",
            "parameters": {"sku": "SKU-789"},
            "customer_context": {"phone": "+1234567890", "name": "Ana", "locale": "en"},
        },
    ),
    (
        "What's on my account?",
        {
            "job_type": "data_lookup",
            "tenant_id": TENANT,
            "query_type": "customer_lookup",
            "parameters": {"customer_phone": "+1234567890"},
        },
    ),
    (
        "When are you open?",
        {
            "job_type": "data_lookup",
            "tenant_id": TENANT,
            "query_type": "faq",
            "parameters": {"topic": "opening_hours"},
            "reply_to": "+1987654321",
        },
    ),
    (
        "¿Dónde está mi pedido #12346?",
        {
            "job_type": "data_lookup",
            "tenant_id": TENANT,
            "query_type": "order_status",
            "parameters": {"order_id": "12346"},
            "customer_context": {"phone": "+5491112345678", "name": "Lucía", "locale": "es"},
        },
    ),
    (
        "Where is order #99999? (no such order)",
        {
            "job_type": "data_lookup",
            "tenant_id": TENANT,
            "query_type": "order_status",
            "parameters": {"order_id": "99999", "customer_phone": "+1234567890"},
        },
    ),
    (
        'Order "12345\' OR 1=1" (malformed)',
        {
            "job_type": "data_lookup",
            "tenant_id": TENANT,
            "query_type": "order_status",
            "parameters": {"order_id": "12345' OR 1=1 --", "customer_phone": "+1234567890"},
        },
    ),
]


#: Customers' own words (sender, text), as the engine's POST /webhook/inbound receives them.
SAMPLE_MESSAGES: list[tuple[str, str]] = [
    ("+1234567890", "Where is my order #12345?"),
    ("+5511987654321", "Qual o status da minha encomenda 12346?"),
    ("+5491112345678", "¿Tienen el SKU-789 en stock? 🙏"),
    ("+1234567890", "hi there 👋"),
]


class _Recording(EngineQueue):
    """The engine queue, remembering each answer for the demo's table."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: dict[str, Answer] = {}

    async def finish(self, job: ClaimedJob, answer: Answer) -> None:
        self.answers[job.id] = answer
        await super().finish(job, answer)


def _demo_config() -> Path:
    try:
        return find_config(TENANT)
    except Exception:
        bundled = Path(__file__).resolve().parents[1] / "config" / "tenants" / "demo.yaml"
        if bundled.is_file():
            return bundled
        raise


async def run_demo(keep: Path | None = None) -> int:
    config = _demo_config()
    tenant = load_tenant(config)
    with contextlib.ExitStack() as stack:
        folder = keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="worker-demo-"))
        )
        folder.mkdir(parents=True, exist_ok=True)
        async with SQLiteStore(folder / "queue.db") as store:
            return await _demo(tenant, store, config.parent)
    return 1


async def _demo(tenant: Tenant, store: SQLiteStore, config_dir: Path) -> int:
    token = secrets.token_urlsafe(16)
    stop_engine = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    engine = LocalEngine(store, token=token, config_dir=config_dir)
    server = asyncio.create_task(
        serve_engine(engine, "127.0.0.1", 0, stop_engine, ready=bound.set_result), name="engine"
    )
    try:
        port = await bound
        click.echo(f"local engine on http://127.0.0.1:{port}; tenant {tenant.tenant_id!r}\n")
        routed = await _send_messages(f"http://127.0.0.1:{port}", token, tenant.tenant_id)
        ids = [str(await store.enqueue(payload)) for _, payload in SAMPLE_JOBS]
        queue = _Recording(
            EngineClient(f"http://127.0.0.1:{port}", token), tenant.tenant_id, "demo"
        )
        metrics = Metrics()
        sources = Sources(tenant, metrics)
        audit = AuditLog(str(store.path))  # the demo's audit rows sit beside its queue
        await audit.open()
        try:
            runtime = Runtime(
                queue, Pipeline(tenant, sources, metrics, audit), RunSettings(once=True)
            )
            await runtime.run(asyncio.Event())
        finally:
            await sources.close()
            await queue.close()
            await audit.close()
        sent = {str(m["job_id"]): m for m in await store.messages(tenant.tenant_id)}
        click.secho("A customer's own words, through the engine's POST /webhook/inbound:\n")
        for (sender, text), reply in zip(SAMPLE_MESSAGES, routed, strict=True):
            job_id = reply.get("job_id")
            _show_routed(sender, text, reply)
            if job_id is not None:
                _show_answer(queue.answers.get(job_id), sent.get(job_id))
        click.secho("The seed's sample jobs, as the engine queues them:\n")
        for (question, _), job_id in zip(SAMPLE_JOBS, ids, strict=True):
            _show(question, queue.answers.get(job_id), sent.get(job_id))
        ids += [str(r["job_id"]) for r in routed if r.get("job_id") is not None]
        answered = sum(1 for j in ids if j in queue.answers)
        click.echo(
            f"{answered} of {len(ids)} jobs answered; {len(sent)} replies in outbound_messages."
        )
        return 0 if answered == len(ids) else 1
    finally:
        stop_engine.set()
        await server


async def _send_messages(url: str, token: str, tenant_id: str) -> list[dict[str, Any]]:
    """Each sample sentence to the engine's ``/webhook/inbound``; its answers, in order."""
    answers = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        for sender, text in SAMPLE_MESSAGES:
            body = {"from": sender, "message": text, "tenant_id": tenant_id}
            async with http.post(f"{url}/webhook/inbound", json=body, headers=headers) as resp:
                answers.append(dict(await resp.json()))
    return answers


def _show_routed(sender: str, text: str, reply: dict[str, Any]) -> None:
    click.echo(click.style(f"❯ {text}", bold=True) + f"  (from {sender})")
    if reply.get("job_id") is None:
        click.secho("  no lookup matches: nothing queued, nothing sent\n", fg="yellow")
        return
    found = ", ".join(
        f"{k}={v}" for k, v in reply.get("parameters", {}).items() if k != "customer_phone"
    )
    click.echo(f"  routed to {reply['query_type']} ({found}) · job {reply['job_id']}")


def _show(question: str, answer: Answer | None, message: dict[str, Any] | None) -> None:
    click.echo(click.style(f"❯ {question}", bold=True))
    _show_answer(answer, message)


def _show_answer(answer: Answer | None, message: dict[str, Any] | None) -> None:
    if answer is None:
        click.secho("  (not answered)", fg="red")
        return
    colour = {"ok": "green", "not_found": "yellow", "invalid_input": "magenta"}.get(
        answer.outcome, "red"
    )
    click.echo(
        f"  outcome {click.style(answer.outcome, fg=colour)} · source {answer.source_id} "
        f"· {answer.response_time_ms} ms · to {answer.reply_to}"
    )
    text = message["message"] if message else "(no reply sent)"
    for line in text.splitlines():
        click.echo(f"  │ {line}")
    click.echo()
