"""Log lines carry nothing of the customer: library loggers held back, job values masked."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import logs
from worker.jobs import read_payload

PHONE = "+19995550123"
EMAIL = "canary-7f3a@example.com"
ORDER = "CANARY-5d1e"


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """`logs.setup` writing JSON lines into a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {name: logging.getLogger(name).level for name in logs.LIBRARIES}
    buffer = io.StringIO()
    monkeypatch.delenv("WORKER_LOG_LIBRARIES", raising=False)
    try:
        yield buffer
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)


def _setup(buffer: io.StringIO, level: str, **options: str) -> None:
    logs.setup(level, json_lines=True, **options)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def _job() -> dict[str, object]:
    return {
        "job_type": "data_lookup",
        "tenant_id": "shop",
        "query_type": "order_status",
        "parameters": {"order_id": ORDER, "email": EMAIL, "n": 123456},
        "customer_context": {"phone": PHONE, "name": "Ana"},
    }


def test_setup__libraries_that_log_urls_are_held_at_warning(stream: io.StringIO) -> None:
    _setup(stream, "DEBUG")
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("asyncpg").getEffectiveLevel() == logging.WARNING
    logging.getLogger("httpx").info("HTTP Request: GET http://api/orders/%s", "x")
    logging.getLogger("worker.test").debug("ours at debug")
    assert [line["msg"] for line in _lines(stream)] == ["ours at debug"]


def test_setup__the_operator_may_ask_for_library_lines(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_LOG_LIBRARIES", "debug")
    _setup(stream, "DEBUG")
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.DEBUG
    with pytest.raises(ValueError, match="WORKER_LOG_LIBRARIES"):
        logs.setup("INFO", libraries="loud")


def test_mask__job_values_are_masked_in_every_spelling_ours_or_a_library(
    stream: io.StringIO,
) -> None:
    _setup(stream, "DEBUG", libraries="debug")

    def job() -> None:
        read_payload(_job(), "shop")
        logging.getLogger("httpx").info(
            'HTTP Request: GET http://api/orders/%s?email=%s&phone=%s "HTTP/1.1 200 OK"',
            ORDER,
            EMAIL.replace("@", "%40"),
            PHONE.replace("+", "%2B"),
        )
        logging.getLogger("worker.test").warning(
            "lookup failed for %s", {"phone": "1 999 555 0123"}, extra={"lookup": ORDER}
        )
        try:
            raise ValueError(f"bad value {123456}")
        except ValueError:
            logging.getLogger("worker.test").exception("crashed")
        logging.getLogger("worker.test").info("Ana and 2025 are short words, kept")

    contextvars.copy_context().run(job)
    text = stream.getvalue()
    for canary in (ORDER, EMAIL, "canary-7f3a%40", PHONE, "19995550123", "123456"):
        assert canary not in text
    lines = _lines(stream)
    url = "http://api/orders/***?email=***&phone=***"
    assert lines[0]["msg"] == f'HTTP Request: GET {url} "HTTP/1.1 200 OK"'
    assert lines[1]["lookup"] == "***"
    assert lines[2]["error"] == "ValueError: bad value ***"
    assert lines[3]["msg"] == "Ana and 2025 are short words, kept"


def test_mask__lines_outside_the_job_are_left_alone(stream: io.StringIO) -> None:
    _setup(stream, "INFO")
    contextvars.copy_context().run(read_payload, _job(), "shop")
    logging.getLogger("worker.test").info("order %s", ORDER)  # not in the job's context
    assert _lines(stream)[0]["msg"] == f"order {ORDER}"


async def test_mask__child_tasks_and_threads_inherit_the_jobs_values(
    stream: io.StringIO,
) -> None:
    _setup(stream, "INFO")

    async def job() -> None:
        read_payload(_job(), "shop")
        log = logging.getLogger("worker.test")
        await asyncio.create_task(asyncio.sleep(0, log.info("task %s", ORDER)))
        await asyncio.to_thread(log.info, "thread %s", EMAIL)

    await asyncio.create_task(job())
    assert [line["msg"] for line in _lines(stream)] == ["task ***", "thread ***"]


def test_mask__a_drivers_warning_goes_through_the_mask(stream: io.StringIO) -> None:
    import warnings

    _setup(stream, "INFO")

    def job() -> None:
        read_payload(_job(), "shop")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"Truncated incorrect INTEGER value: '{ORDER}'", Warning, stacklevel=1)

    contextvars.copy_context().run(job)
    assert ORDER not in stream.getvalue()
    assert "Truncated incorrect INTEGER value: '***'" in stream.getvalue()


async def test_job_context__every_line_in_the_job_carries_tenant_and_job_id(
    stream: io.StringIO,
) -> None:
    _setup(stream, "INFO")
    log = logging.getLogger("worker.test")

    async def job(job_id: str) -> None:
        with logs.job_context("shop", job_id):
            log.warning("lookup %s fell back: %s", "order_status", "down")
            await asyncio.to_thread(logging.getLogger("aiosqlite").warning, "in a thread")
            await asyncio.create_task(asyncio.sleep(0))
            log.info("explicit", extra={"tenant": "other", "job_id": "given"})

    await asyncio.gather(job("1"), job("2"))
    log.info("outside any job")
    await asyncio.sleep(0)  # the turn's lines are written after it
    lines = _lines(stream)
    inside = [
        line for line in lines if line["msg"] != "explicit" and line["msg"] != "outside any job"
    ]
    assert sorted((line["job_id"], line["tenant"]) for line in inside) == [
        ("1", "shop"), ("1", "shop"), ("2", "shop"), ("2", "shop"),
    ]  # fmt: skip
    explicit = [line for line in lines if line["msg"] == "explicit"]
    assert {(line["tenant"], line["job_id"]) for line in explicit} == {("other", "given")}
    [outside] = [line for line in lines if line["msg"] == "outside any job"]
    assert "job_id" not in outside and "tenant" not in outside


@given(st.text(min_size=1, max_size=40))
def test_mask__every_spelling_holds_the_values_core(value: str) -> None:
    """The cheap check that skips a line relies on this: a spelling of a value always
    contains the value's longest ASCII word, so a line without it needs no masking."""
    (core,) = logs._cores((value,))
    if core is not None:
        assert all(core in form for form in logs._spellings(value))


def test_turn_batched_handler__one_turns_lines_in_one_write_in_order() -> None:
    """Lines logged in one event-loop turn go out together, after the turn, in order;
    an error goes out at once with what waited before it; off the loop, at once."""
    import asyncio
    import io

    from worker.logs import TurnBatchedHandler

    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Counting.writes += 1
            return super().write(text)

    stream = Counting()
    handler = TurnBatchedHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.turns")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)

    async def turn() -> str:
        for n in range(5):
            logger.info("line %d", n)
        during = stream.getvalue()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return during

    try:
        assert asyncio.run(turn()) == ""
        assert stream.getvalue() == "".join(f"line {n}\n" for n in range(5))
        assert Counting.writes == 1

        async def error_after_info() -> str:
            logger.info("waiting")
            logger.error("now")
            return stream.getvalue()

        assert asyncio.run(error_after_info()).endswith("waiting\nnow\n")
        logger.info("off the loop")
        assert stream.getvalue().endswith("off the loop\n")
    finally:
        logger.handlers.clear()
