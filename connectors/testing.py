"""A contract test suite every connector can run against a live source.

Subclass `ConnectorContract` in a test module (its name must start with
``Test`` so pytest collects it) and override the fixtures that describe your
source; the inherited tests then check what the worker relies on::

    class TestSQLiteContract(ConnectorContract):
        @pytest.fixture
        async def connector(self, tmp_path):
            connector = SQLiteConnector("db", SQLiteSettings(path="shop.db"), base_dir=tmp_path)
            yield connector
            await connector.close()

        @pytest.fixture
        def found_query(self):
            return "SELECT status FROM orders WHERE order_id = $1"

        @pytest.fixture
        def found_params(self):
            return Bound(args=("12345",))

        @pytest.fixture
        def missing_params(self):
            return Bound(args=("nope",))

Required: ``connector`` (opened or not; the suite opens it and closes it again),
``found_query`` (a raw query, as written in a config, returning at least one
row with ``found_params``), ``found_params`` and ``missing_params`` (the same
query returns nothing with them). Optional, each skipping its tests when
``None``: ``slow_query`` (with ``slow_params``, a read that takes much longer
than a second, for the deadline tests) and ``write_query`` (a write in the
type's query language, that `Connector.prepare` must refuse).

Needs pytest and pytest-asyncio (``asyncio_mode = "auto"``).
"""

# A test suite: its checks are asserts (not rewritten by pytest here, so they say what failed).
# ruff: noqa: S101

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn

import pytest

from connectors.base import Bound, Connector, NotARead, ReadResult, SourceTimeout

__all__ = ["ConnectorContract", "RawQuery"]

#: a query as a tenant config writes it
RawQuery = str | Mapping[str, Any]

#: how long a read of `found_query` may take in these tests
_FAST_S = 10.0
#: the caller's deadline in the deadline tests, and how late it may end
_DEADLINE_S = 0.5
_DEADLINE_SLACK_S = 1.0


def _missing(name: str) -> NoReturn:
    pytest.fail(f"override the {name!r} fixture in your ConnectorContract subclass")


class ConnectorContract:
    """The tests every connector passes; see the module docstring."""

    # -- fixtures a subclass overrides -----------------------------------------

    @pytest.fixture
    def connector(self) -> Connector:
        _missing("connector")

    @pytest.fixture
    def found_query(self) -> RawQuery:
        _missing("found_query")

    @pytest.fixture
    def found_params(self) -> Bound:
        _missing("found_params")

    @pytest.fixture
    def missing_params(self) -> Bound:
        _missing("missing_params")

    @pytest.fixture
    def slow_query(self) -> RawQuery | None:
        return None

    @pytest.fixture
    def slow_params(self) -> Bound:
        return Bound()

    @pytest.fixture
    def write_query(self) -> RawQuery | None:
        return None

    # -- helpers -----------------------------------------------------------------

    @pytest.fixture
    async def opened(self, connector: Connector) -> AsyncIterator[Connector]:
        await connector.open()
        yield connector
        await connector.close()

    @staticmethod
    async def read(connector: Connector, raw: RawQuery, bound: Bound) -> ReadResult:
        query = type(connector).prepare(raw)
        async with asyncio.timeout(_FAST_S):
            return await connector.run(query, bound, timeout_s=_FAST_S)

    # -- the contract ------------------------------------------------------------

    async def test_health_check__passes(self, opened: Connector) -> None:
        await opened.health_check()

    async def test_run__found_rows_are_plain_json(
        self, opened: Connector, found_query: RawQuery, found_params: Bound
    ) -> None:
        result = await self.read(opened, found_query, found_params)

        assert result.found, f"found_query with found_params returned nothing: {result!r}"
        assert all(isinstance(row, dict) for row in result.rows), f"rows are not dicts: {result!r}"
        assert all(isinstance(k, str) for row in result.rows for k in row), "non-str column names"
        plain = json.loads(json.dumps(result.rows))
        assert plain == result.rows, f"rows change through JSON: {result.rows!r} -> {plain!r}"
        json.dumps(result.data)

    async def test_run__nothing_matching_is_not_found(
        self, opened: Connector, found_query: RawQuery, missing_params: Bound
    ) -> None:
        result = await self.read(opened, found_query, missing_params)

        assert not result.found, f"missing_params found something: {result!r}"
        assert result.rows == [], f"rows although not found: {result!r}"

    async def test_run__caller_deadline_stops_the_read(
        self,
        opened: Connector,
        slow_query: RawQuery | None,
        slow_params: Bound,
        found_query: RawQuery,
        found_params: Bound,
    ) -> None:
        if slow_query is None:
            pytest.skip("no slow_query for this connector")
        query = type(opened).prepare(slow_query)
        started = time.monotonic()

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(_DEADLINE_S):
                await opened.run(query, slow_params, timeout_s=60)

        elapsed = time.monotonic() - started
        assert elapsed < _DEADLINE_S + _DEADLINE_SLACK_S, f"the read went on for {elapsed:.1f} s"
        assert (await self.read(opened, found_query, found_params)).found, "unusable afterwards"

    async def test_run__own_timeout_raises_source_timeout(
        self,
        opened: Connector,
        slow_query: RawQuery | None,
        slow_params: Bound,
        found_query: RawQuery,
        found_params: Bound,
    ) -> None:
        if slow_query is None:
            pytest.skip("no slow_query for this connector")
        query = type(opened).prepare(slow_query)
        started = time.monotonic()

        with pytest.raises(SourceTimeout):
            await opened.run(query, slow_params, timeout_s=_DEADLINE_S)

        elapsed = time.monotonic() - started
        assert elapsed < _DEADLINE_S + _DEADLINE_SLACK_S, f"the read went on for {elapsed:.1f} s"
        assert (await self.read(opened, found_query, found_params)).found, "unusable afterwards"

    @pytest.mark.parametrize("yields", [0, 1, 2, 5, 20], ids=lambda n: f"after-{n}-yields")
    async def test_run__cancelled_read_leaves_connector_usable(
        self,
        opened: Connector,
        found_query: RawQuery,
        found_params: Bound,
        slow_query: RawQuery | None,
        slow_params: Bound,
        yields: int,
    ) -> None:
        raw, bound = (
            (found_query, found_params) if slow_query is None else (slow_query, slow_params)
        )
        query = type(opened).prepare(raw)
        task = asyncio.create_task(opened.run(query, bound, timeout_s=60))
        for _ in range(yields):
            await asyncio.sleep(0)

        task.cancel()
        # Cancelled in time, or (a fast read) finished first: both are fine.
        with contextlib.suppress(asyncio.CancelledError):
            await task

        assert (await self.read(opened, found_query, found_params)).found, "unusable afterwards"

    async def test_run__concurrent_reads_all_answer(
        self, opened: Connector, found_query: RawQuery, found_params: Bound
    ) -> None:
        query = type(opened).prepare(found_query)
        async with asyncio.timeout(_FAST_S):
            results = await asyncio.gather(
                *(opened.run(query, found_params, timeout_s=_FAST_S) for _ in range(10))
            )

        assert all(result.found for result in results)

    async def test_close__is_idempotent_after_use(
        self, connector: Connector, found_query: RawQuery, found_params: Bound
    ) -> None:
        await connector.open()
        assert (await self.read(connector, found_query, found_params)).found

        await connector.close()
        await connector.close()

    async def test_close__without_open_is_harmless(self, connector: Connector) -> None:
        await connector.close()
        await connector.close()

    def test_prepare__refuses_a_write(
        self, connector: Connector, write_query: RawQuery | None
    ) -> None:
        if write_query is None:
            pytest.skip("this connector's queries cannot express a write")

        with pytest.raises(NotARead):
            type(connector).prepare(write_query)
