"""The Redis connector: queries prepared (`commands`), read on the pool (`pool`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import redis.exceptions

from connectors.base import (
    Bound,
    ConfigError,
    ConnectionSettings,
    Connector,
    NotARead,
    PreparedQuery,
    ReadResult,
    SourceAuthError,
    SourceTimeout,
    SourceUnavailable,
    placeholder_names,
    validate_query,
)
from connectors.network import NetworkAccess
from connectors.redis.commands import (
    COMMANDS,
    BadArgument,
    BoundRead,
    InfoSpec,
    RedisInfoQuery,
    RedisQuery,
    RedisScanQuery,
    RedisSpec,
    ScanSpec,
    info_line,
    info_result,
    prepare_spec,
    refusal_message,
    scan_line,
    scan_pattern,
    scanned_rows,
    shape_reply,
    value_lines,
)
from connectors.redis.pool import Pool, PoolStats, connection_factory
from connectors.redis.settings import RedisSettings, RedisTarget, parse_url

__all__ = ["RedisConnector"]

_HEALTH_TIMEOUT_S = 10.0


class RedisConnector(Connector):
    """A Redis server (or anything speaking its protocol), read with allow-listed commands."""

    type_name: ClassVar[str] = "redis"
    Settings: ClassVar[type[ConnectionSettings]] = RedisSettings
    query_shape: ClassVar[str] = (
        '{"command": "HGETALL", "key": "order:{order_id}"} (read commands only; '
        '"field" for HGET/HEXISTS, "args" for the rest)'
    )

    settings: RedisSettings

    def setup(self) -> None:
        self._pool: Pool | None = None
        self._network = NetworkAccess(
            self.source_id, ssl=self.settings.ssl, ssh=self.settings.ssh, base_dir=self.base_dir
        )
        self._route: tuple[str, int] | None = None

    @classmethod
    def prepare(cls, raw: str | Mapping[str, Any]) -> PreparedQuery:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a redis query is a mapping: {cls.query_shape}")
        command = raw.get("command")
        word = command.strip().upper() if isinstance(command, str) else None
        if word == "SCAN" and not placeholder_names(command):
            scan = validate_query(RedisScanQuery, raw, cls)
            spec = ScanSpec(scan.match, scan.count, scan.max_keys, scan.type, scan.values)
            return PreparedQuery(spec=spec, names=placeholder_names(scan.match))
        if word == "INFO":
            info = validate_query(RedisInfoQuery, raw, cls)
            return PreparedQuery(spec=InfoSpec(info.section, info.rows))
        query = validate_query(RedisQuery, raw, cls)
        prepared = prepare_spec(query)
        return PreparedQuery(spec=prepared, names=prepared.names)

    async def open(self) -> None:
        # Only the pool object (and the SSH tunnel, if any): connections open on the
        # first reads, within their deadline.
        target = self._target()
        self._route = await self._network.route(target.host, target.port)
        self._ensure_pool()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        await self._network.close()
        self._route = None

    def pool_stats(self) -> PoolStats:
        """How many connections the source holds now (all zero before `open`)."""
        return self._pool.stats() if self._pool is not None else PoolStats(0, 0)

    async def health_check(self) -> None:
        with self._translating(_HEALTH_TIMEOUT_S):
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                try:
                    await self._ensure_pool().call(["PING"], _HEALTH_TIMEOUT_S)
                except redis.exceptions.NoPermissionError:
                    pass  # a read-only ACL user may not PING; the server answered it all the same

    async def run(self, query: PreparedQuery, bound: Bound, *, timeout_s: float) -> ReadResult:
        spec = query.spec
        if isinstance(spec, ScanSpec):
            return await self._scan(spec, bound.params, timeout_s)
        if isinstance(spec, InfoSpec):
            return await self._info(spec, timeout_s)
        if not isinstance(spec, RedisSpec):
            raise TypeError(f"not a query prepared by {type(self).__name__}.prepare")
        if spec.command not in COMMANDS:  # a hand-made spec: still only reads
            raise NotARead(f"{spec.command!r} is not a read command")
        cap = self.limits.max_rows
        call = BoundRead.bind(spec, bound.params)
        with self._translating(timeout_s, spec.command):
            async with asyncio.timeout(timeout_s):  # waiting for a connection counts too
                pool = self._ensure_pool()
                length_of = call.needs_length(cap)
                length = None
                if length_of is not None:
                    length = int(await pool.call([length_of, call.key], timeout_s))
                reply = await pool.call(call.line(cap, length), timeout_s)
                return shape_reply(call, reply, cap)

    async def _scan(
        self, spec: ScanSpec, params: Mapping[str, Any], timeout_s: float
    ) -> ReadResult:
        cap = self.limits.max_rows
        want = min(spec.max_keys or cap, cap)
        pattern = scan_pattern(spec, params)
        walk = _Walk()
        with self._translating(timeout_s, "SCAN"):
            try:
                async with asyncio.timeout(timeout_s):
                    keys = await self._walk(pattern, spec, want, walk, timeout_s)
                    if not keys:
                        return ReadResult(rows=[])
                    if not spec.values:
                        return ReadResult.of_rows([{"key": key} for key in keys])
                    rows = await self._values(keys, cap, timeout_s)
            except TimeoutError as exc:
                raise SourceTimeout(
                    self.source_id,
                    f"SCAN had not finished within {timeout_s:g} s ({walk.calls} calls, "
                    f"{walk.matched} keys matched): narrow the pattern or lower max_keys",
                ) from exc
        if len(json.dumps(rows)) > self.limits.max_bytes:
            raise self.fail(
                f"the values of the {len(rows)} keys SCAN matched are larger than "
                f"{self.limits.max_bytes} bytes: lower max_keys or leave out values"
            )
        return ReadResult(rows=rows, data=rows)

    async def _walk(
        self, pattern: str, spec: ScanSpec, want: int, walk: _Walk, timeout_s: float
    ) -> list[str]:
        """SCAN until the cursor is back at 0 or ``want`` keys matched; sorted, at most ``want``."""
        pool = self._ensure_pool()
        found: set[str] = set()  # SCAN may return a key twice
        cursor = "0"
        while True:
            cursor, batch = await pool.call(scan_line(cursor, pattern, spec), timeout_s)
            walk.calls += 1
            found.update(batch)
            walk.matched = len(found)
            if str(cursor) == "0" or len(found) >= want:
                return sorted(found)[:want]
            cursor = str(cursor)

    async def _values(self, keys: list[str], cap: int, timeout_s: float) -> list[dict[str, Any]]:
        """Each key's type and value, in two pipelined round trips."""
        pool = self._ensure_pool()
        types = await pool.call_many([["TYPE", key] for key in keys], timeout_s)
        lines = value_lines(keys, types, cap)
        replies = dict(
            zip(lines, await pool.call_many(list(lines.values()), timeout_s), strict=True)
        )
        return scanned_rows(keys, types, replies, cap)

    async def _info(self, spec: InfoSpec, timeout_s: float) -> ReadResult:
        with self._translating(timeout_s, "INFO"):
            async with asyncio.timeout(timeout_s):
                text = await self._ensure_pool().call(info_line(spec), timeout_s)
        return info_result(spec, str(text), self.limits.max_rows)

    def _target(self) -> RedisTarget:
        """Where to connect and as whom: the one place a tunnel or TLS settings plug in."""
        settings = self.settings
        if settings.url is not None:
            return parse_url(settings.url.get_secret_value())
        if settings.host is None:  # the settings model makes this impossible
            raise SourceUnavailable(self.source_id, "the source has no host")
        return RedisTarget(
            host=settings.host,
            port=settings.port,
            db=settings.db,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            tls=False,
        )

    def _ensure_pool(self) -> Pool:
        if self._pool is None:
            target = self._target()
            if self.settings.ssh is not None and self._route is None:
                raise SourceUnavailable(self.source_id, "the SSH tunnel is not open (call open())")
            make = connection_factory(self.settings, target, self._route, self.base_dir)
            self._pool = Pool(
                self.source_id, self.settings.pool_size, make, self.settings.connect_timeout_s
            )
        return self._pool

    @contextlib.contextmanager
    def _translating(self, timeout_s: float, command: str = "PING") -> Iterator[None]:
        """Driver errors into the `SourceError` family, in one place. No secret, no value."""
        target = self._target()
        where = f"{target.host}:{target.port}"
        try:
            yield
        except (TimeoutError, redis.exceptions.TimeoutError) as exc:
            raise SourceTimeout(
                self.source_id,
                f"Redis did not answer {command} within {timeout_s:g} s; the connection was closed",
            ) from exc
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise SourceAuthError(
                self.source_id,
                f"authentication failed at Redis {where}: check the username and password",
            ) from exc
        except redis.exceptions.BusyLoadingError as exc:
            raise SourceUnavailable(
                self.source_id, f"Redis at {where} is still loading its data"
            ) from exc
        except redis.exceptions.ConnectionError as exc:
            raise SourceUnavailable(self.source_id, f"cannot reach Redis at {where}") from exc
        except redis.exceptions.NoPermissionError as exc:
            raise self.fail(
                f"the Redis user may not run {command} or read its key (NOPERM)"
            ) from exc
        except redis.exceptions.ResponseError as exc:
            raise self.fail(refusal_message(str(exc), command)) from exc
        except BadArgument as exc:
            raise self.fail(f"{command}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise self.fail(f"{command} answered a value that is not UTF-8 text") from exc
        except json.JSONDecodeError as exc:
            raise self.fail(f"{command} answered something that is not JSON") from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            raise self.fail(f"{command} failed: {type(exc).__name__}") from exc


@dataclass
class _Walk:
    """How far a SCAN got, for the message when it runs out of time."""

    calls: int = 0
    matched: int = 0


#: the command that reads a scanned key's value, by its TYPE, fetching at most ``cap`` items
