"""What the status page counts and shows: `worker.status`."""

from __future__ import annotations

import html

from worker.status import (
    LATENCY_BOUNDS_MS,
    UNKNOWN,
    RecentLookups,
    SourceStatus,
    percentile_ms,
    render_status,
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_percentiles_read_the_bound_of_the_bucket_that_holds_them() -> None:
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[LATENCY_BOUNDS_MS.index(10)] = 90  # 90 answers in (7, 10] ms
    counts[LATENCY_BOUNDS_MS.index(500)] = 10  # 10 in (300, 500] ms
    assert percentile_ms(counts, 0.5) == 10
    assert percentile_ms(counts, 0.95) == 500
    assert percentile_ms([0] * len(counts), 0.5) is None
    counts[-1] = 1000  # slower than the last bound
    assert percentile_ms(counts, 0.95) == LATENCY_BOUNDS_MS[-1] + 1


def test_outcomes_and_latencies_are_summed_per_lookup_over_the_hour() -> None:
    clock = Clock()
    recent = RecentLookups(lambda name: name in {"order_status", "faq"}, clock=clock)
    for ms in (4, 4, 6, 9, 480):
        recent.record("order_status", "ok", ms)
    recent.record("order_status", "not_found", 3)
    clock.now += 1800
    recent.record("faq", "fallback", 10_000)
    [faq, orders] = recent.summaries()
    assert (orders.lookup, orders.total, orders.outcomes) == (
        "order_status",
        6,
        {"ok": 5, "not_found": 1},
    )
    assert (orders.p50_ms, orders.p95_ms) == (5, 500)
    assert (faq.lookup, faq.total, faq.p50_ms) == ("faq", 1, 10_000)
    clock.now += 1900  # order_status's minute is now over an hour old
    assert [s.lookup for s in recent.summaries()] == ["faq"]
    clock.now += 3600
    assert recent.summaries() == []


def test_a_name_the_config_does_not_have_never_becomes_a_row() -> None:
    recent = RecentLookups(lambda name: name == "order_status", clock=Clock())
    for i in range(1000):
        recent.record(f"what about my parcel +1555{i:04d}", "unknown_lookup", 1)
    recent.record(None, "invalid_input", 1)
    [row] = recent.summaries()
    assert (row.lookup, row.total) == (UNKNOWN, 1001)


def test_the_page_escapes_what_the_tenant_wrote() -> None:
    source = SourceStatus(
        "crm", "<script>alert(1)</script>", "postgresql", "open", 2, 1, 5,
        last_error="connection refused <b>", last_error_at=1.0, last_ok_at=None,
    )  # fmt: skip
    page = render_status("acme", [source], [], in_flight=3, queue="none", now=100.0)
    assert "<script>alert(1)" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert "connection refused &lt;b&gt;" in page
    assert 'class="card down"' in page and "2 of 5 reads in use, 1 waiting" in page


def test_a_source_is_failing_until_a_read_after_its_last_error_succeeds() -> None:
    failing = SourceStatus("s", "s", "rest", "closed", 0, 0, 5, last_error="x",
                           last_error_at=20.0, last_ok_at=10.0)  # fmt: skip
    recovered = SourceStatus("s", "s", "rest", "closed", 0, 0, 5, last_error="x",
                             last_error_at=20.0, last_ok_at=30.0)  # fmt: skip
    assert failing.health == "failing"
    assert recovered.health == "ok"
    assert SourceStatus("s", "s", "rest", "closed", 0, 0, 5).health == "unused"
    assert SourceStatus("s", "s", "rest", "closed", 0, 0, 5, problem="no driver").health == (
        "broken"
    )
