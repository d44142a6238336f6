"""What the connector tests share: one way to read through a connector, one to make them.

`read` prepares a raw query with the connector's class and runs it with named
parameters; `read_rows` keeps only the rows, `read_args` binds SQL ``$1…$n``.
`ConnectorFactory` builds connectors of one class from default settings with
overrides, keeps every one it made and closes them all at a fixture's teardown.
`ContractCase` is `ConnectorContract` with its fixtures read from class attributes.
`refused_port`, `silent_listener` and `serve_elsewhere` are the stand-ins the failure
tests point connectors at: a port that refuses, one that never answers, and a
second host on another loopback address that must never be reached.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pytest
from aiohttp import web

from connectors.base import Bound, ConnectionSettings, Connector, Limits, ReadResult
from connectors.testing import ConnectorContract, RawQuery
from tests.servers.hostile import Recorder, recorded_app, serve

__all__ = [
    "ConnectorFactory",
    "ContractCase",
    "read",
    "read_args",
    "read_rows",
    "refused_port",
    "run",
    "serve_elsewhere",
    "silent_listener",
]

C = TypeVar("C", bound=Connector)


async def run(connector: Connector, raw: RawQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
    """``raw`` prepared by the connector's class, run with ``bound``."""
    return await connector.run(type(connector).prepare(raw), bound, timeout_s=timeout_s)


async def read(
    connector: Connector, raw: RawQuery, timeout_s: float = 5, **params: Any
) -> ReadResult:
    """``raw`` run with ``{name}`` parameters."""
    return await run(connector, raw, Bound(params=params), timeout_s=timeout_s)


async def read_rows(
    connector: Connector, raw: RawQuery, timeout_s: float = 5, **params: Any
) -> list[dict[str, Any]]:
    """The rows of ``raw`` run with ``{name}`` parameters."""
    return (await read(connector, raw, timeout_s, **params)).rows


async def read_args(
    connector: Connector, raw: RawQuery, *args: object, timeout_s: float = 5
) -> list[dict[str, Any]]:
    """The rows of ``raw`` run with SQL ``$1…$n`` arguments."""
    result = await run(connector, raw, Bound(args=args), timeout_s=timeout_s)
    return result.rows


class ConnectorFactory(Generic[C]):
    """Connectors of one class, from ``defaults`` with overrides; `aclose` closes them all."""

    def __init__(
        self,
        cls: type[C],
        source_id: str,
        base_dir: Path,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.cls = cls
        self.source_id = source_id
        self.base_dir = base_dir
        self.defaults = dict(defaults or {})
        self.made: list[C] = []

    def settings(self, **overrides: Any) -> ConnectionSettings:
        """The class's settings model validated from the defaults and ``overrides``."""
        return self.cls.Settings.model_validate({**self.defaults, **overrides})

    def make(self, limits: Limits | None = None, **overrides: Any) -> C:
        """A connector on the defaults with ``overrides`` on top."""
        return self.build(self.settings(**overrides), limits=limits)

    def keep(self, connector: C) -> C:
        """``connector``, made elsewhere, closed with the others."""
        self.made.append(connector)
        return connector

    def build(
        self,
        settings: ConnectionSettings,
        *,
        limits: Limits | None = None,
        source_id: str | None = None,
        cls: type[C] | None = None,
        **more: Any,
    ) -> C:
        """A connector on ``settings`` as they are (``more``: `reach`), kept to close.

        ``cls`` and ``source_id`` replace the factory's for this one connector.
        """
        connector = (self.cls if cls is None else cls)(
            self.source_id if source_id is None else source_id,
            settings,
            base_dir=self.base_dir,
            limits=limits,
            **more,
        )
        return self.keep(connector)

    async def aclose(self) -> None:
        """Close every connector made, in the order they were made."""
        for connector in self.made:
            await connector.close()


class ContractCase(ConnectorContract):
    """`ConnectorContract` whose query and parameter fixtures return class attributes.

    A subclass sets ``FOUND_QUERY``, ``FOUND_PARAMS`` and ``MISSING_PARAMS`` (and
    the optional ``SLOW_QUERY``, ``SLOW_PARAMS``, ``WRITE_QUERY``) as values, and
    defines its ``connector`` fixture; a value that needs a fixture stays a fixture.
    """

    FOUND_QUERY: ClassVar[RawQuery]
    FOUND_PARAMS: ClassVar[Bound]
    MISSING_PARAMS: ClassVar[Bound]
    SLOW_QUERY: ClassVar[RawQuery | None] = None
    SLOW_PARAMS: ClassVar[Bound] = Bound()
    WRITE_QUERY: ClassVar[RawQuery | None] = None

    @pytest.fixture
    def found_query(self) -> RawQuery:
        return self.FOUND_QUERY

    @pytest.fixture
    def found_params(self) -> Bound:
        return self.FOUND_PARAMS

    @pytest.fixture
    def missing_params(self) -> Bound:
        return self.MISSING_PARAMS

    @pytest.fixture
    def slow_query(self) -> RawQuery | None:
        return self.SLOW_QUERY

    @pytest.fixture
    def slow_params(self) -> Bound:
        return self.SLOW_PARAMS

    @pytest.fixture
    def write_query(self) -> RawQuery | None:
        return self.WRITE_QUERY


def refused_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` nothing listens on: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def silent_listener(backlog: int) -> Iterator[int]:
    """A loopback port that accepts up to ``backlog`` connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        yield int(listener.getsockname()[1])


@asynccontextmanager
async def serve_elsewhere(
    recorder: Recorder, answer: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[str]:
    """A second server on 127.0.0.2 that records every request and gives ``answer``."""
    app = recorded_app(recorder)
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serve(app, host="127.0.0.2") as url:
        yield url
