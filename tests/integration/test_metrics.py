"""The metrics the run loop and the queues feed: retried reply sends against a real HTTP
engine stand-in that drops the first, and the bounded ``lookup`` label."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp import web

from tests.servers.hostile import serve
from worker.answers import Answer
from worker.engine_client import EngineClient
from worker.engine_queue import EngineQueue
from worker.errors import (
    SourceAuthError,
    SourceError,
    SourceFull,
    SourceTimeout,
    SourceUnavailable,
)
from worker.metrics import OTHER, Metrics, error_kind
from worker.stores.base import ClaimedJob


def flaky_engine(sends: list[str]) -> web.Application:
    """The §3 calls a finished job makes; the first ``/messages/send`` answers 503."""

    async def send(request: web.Request) -> web.Response:
        sends.append(request.headers["Idempotency-Key"])
        return web.json_response({}, status=503 if len(sends) == 1 else 202)

    async def complete(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.add_routes(
        [web.post("/messages/send", send), web.post("/queue/jobs/{id}/complete", complete)]
    )
    return app


async def test_send_retries__a_reply_send_the_engine_refused_once_is_counted() -> None:
    sends: list[str] = []
    metrics = Metrics()
    async with serve(flaky_engine(sends)) as url:
        queue = EngineQueue(EngineClient(url, "token"), "shop", "w1")
        queue.metrics = metrics
        try:
            job = ClaimedJob("7", {}, lease_s=10)
            await queue.finish(job, Answer("ok", "Shipped.", "+1234567890"))
        finally:
            await queue.close()
    assert sends == ["7", "7"]  # retried with the same idempotency key
    assert metrics.send_retries._value.get() == 1


def _lookup_labels(metrics: Metrics) -> dict[tuple[str, str], float]:
    [family] = [m for m in metrics.lookups.collect() if m.name == "worker_lookups"]
    return {
        (s.labels["lookup"], s.labels["outcome"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_lookup_label__typed_names_share_one_series_and_a_reload_changes_the_names() -> None:
    metrics = Metrics()
    metrics.recent.known = lambda name: name == "order_status"
    metrics.answered("ok", "order_status")
    for i in range(1000):
        metrics.answered("fallback", f"typed by a customer {i}")
    metrics.answered("invalid_input", None)
    assert _lookup_labels(metrics) == {
        ("order_status", "ok"): 1,
        (OTHER, "fallback"): 1000,
        (OTHER, "invalid_input"): 1,
    }
    assert len(metrics._by_lookup) == 3  # no memory per typed name either

    metrics.recent.known = lambda name: name == "stock"  # what a new pipeline sets
    metrics.answered("ok", "stock")
    metrics.answered("ok", "order_status")
    labels = _lookup_labels(metrics)
    assert labels[("stock", "ok")] == 1
    assert labels[(OTHER, "ok")] == 1
    assert labels[("order_status", "ok")] == 1  # what was counted stays


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(lambda: SourceTimeout("db", "slow"), "timeout", id="source-timeout"),
        pytest.param(TimeoutError, "timeout", id="deadline"),
        pytest.param(lambda: SourceFull("db", "too many clients"), "full", id="full"),
        pytest.param(lambda: SourceAuthError("db", "password"), "auth", id="auth"),
        pytest.param(lambda: SourceUnavailable("db", "refused"), "unavailable", id="down"),
        pytest.param(lambda: SourceError("db", "syntax"), "error", id="other-source-error"),
        pytest.param(lambda: KeyError("x"), "error", id="driver-error-let-through"),
    ],
)
def test_error_kind__a_small_fixed_set(make: Callable[[], BaseException], kind: str) -> None:
    assert error_kind(make()) == kind


def test_source_failed__refuses_a_kind_outside_the_set() -> None:
    with pytest.raises(ValueError, match="not a source error kind: 'oops'"):
        Metrics().source_failed("db", "oops")
