"""End-to-end benchmark of the data-lookup worker on PostgreSQL (issue 6).

Run it from the repository:  ``.venv/bin/python bench/e2e.py [--quick] [--profile DIR]``
(``BENCH_PG_DSN`` names the server; bench/README.md says what each figure means).

It creates its own databases on the local PostgreSQL (``lookup_bench_<random>_shop``,
``_queue`` and ``_pgq``, dropped at the end), a tenant config in a temporary folder
(a PostgreSQL ``orders`` table, a lookup by primary key, a short inline template),
starts real ``worker run`` / ``worker engine serve`` subprocesses on loopback, and
prints tables. Every loop is bounded in jobs and seconds; nothing asserts a time.

Latency is "enqueue → reply stored": from the ``jobs`` row's ``created_at`` to the
``outbound_messages`` row's ``created_at`` (both the server's clock), so the load
generator's own delays do not count. The generator keeps N jobs outstanding (a
closed loop) by watching the reply table's sequence, which costs no extra query
on the worker's path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import itertools
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import yaml
from aiohttp import web
from samples import Samples  # bench/samples.py, beside this script

try:
    import psutil
except ImportError:  # CPU figures are then left out
    psutil = None

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
ADMIN_DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
TENANT = "bench"
ORDERS = 10_000
#: the same text for the worker and the pgqueuer peer (so no worker-only filter in it)
TEMPLATE = (
    "Your order #{{ params.order_id }} is {{ row.status }}. "
    "Tracking: {{ row.tracking }}, expected {{ row.estimated_delivery }}."
)
SELECT = "SELECT status, tracking, estimated_delivery FROM orders WHERE order_id = $1"
SLOW_SELECT = (
    "SELECT o.status, o.tracking, o.estimated_delivery FROM orders o, pg_sleep(2) "
    "WHERE o.order_id = $1"
)
#: connections the worker's queue store pools (PostgresStore's default), LISTEN, audit
WORKER_FIXED_CONNECTIONS = 10 + 1 + 2
#: connections left free for the other users of this server
SPARE_CONNECTIONS = 20
FLOOR_POOL = 20
SLOW_REST_SOURCES = 10  # httpx pools at most 100 connections per source
#: how often the closed loop looks at the reply count (a short poll at low concurrency)
POLL_S = {1: 0.001, 10: 0.002}
#: the benchmark's own process when it only generates load (left out of the CPU totals)
LOAD = "load"
#: what ``--only`` can pick, in the order a full run takes them
PHASES = ("direct", "engine", "webhook", "pickup", "floor", "pgqueuer", "slow", "scale")


# -- what to run ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    webhook_levels: tuple[int, ...]
    warmup_s: float
    measure_s: float
    pickup_samples: int
    slow_jobs: int
    scale_workers: tuple[int, ...]
    scale_in_flight: int
    log_level: str
    #: where py-spy profiles of the worker go (one per direct, engine and webhook phase)
    profile: Path | None = None
    #: the scale-out matrix runs this many times, interleaved (the machine is shared)
    scale_rounds: int = 1
    #: the phases to run (empty: all of `PHASES`)
    only: tuple[str, ...] = ()

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        only = tuple(args.only or ())
        if args.quick:
            return cls(
                (10, 100), (10,), 0.5, 1.5, 10, 1000, (1, 2), 200, args.worker_log_level,
                args.profile, only=only,
            )  # fmt: skip
        return cls(
            (1, 10, 100, 1000), (1, 10, 100), 1.5, 5.0, 40, 1000, (1, 2, 4), 200,
            args.worker_log_level, args.profile, scale_rounds=2, only=only,
        )  # fmt: skip


# -- figures ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Row:
    """One line of a results table."""

    path: str
    in_flight: int
    rate: float
    latencies_s: list[float]
    cpu: dict[str, float] = field(default_factory=dict)
    rss_mb: float | None = None
    note: str = ""

    def p(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    body = [list(map(str, r)) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print(("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))).rstrip())
    print("  " + "  ".join("-" * w for w in widths))
    for r in body:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print(("  " + "  ".join(cells)).rstrip())
    sys.stdout.flush()


def cpu_text(cpu: dict[str, float], rate: float) -> str:
    """CPU milliseconds each lookup cost, per process and in all (2 cores = 2,000 ms/s)."""
    if not cpu or not rate or rate != rate:
        return "-"
    per_job = {k: 10 * v / rate for k, v in cpu.items()}
    parts = " ".join(f"{k} {v:.2f}" for k, v in per_job.items())
    total = sum(v for k, v in per_job.items() if k != LOAD)
    return f"{parts}; system {total:.2f}"


def print_rows(title: str, rows: Sequence[Row]) -> None:
    headers = ["path", "in flight", "lookups/s", "p50 ms", "p95 ms", "p99 ms", "peak RSS MB",
               "CPU ms per lookup", "note"]  # fmt: skip
    print_table(
        title,
        headers,
        [
            [r.path, str(r.in_flight), fmt(r.rate, 0), fmt(r.p(0.5), 2), fmt(r.p(0.95), 2),
             fmt(r.p(0.99), 2), fmt(r.rss_mb), cpu_text(r.cpu, r.rate), r.note]
            for r in rows
        ],
    )  # fmt: skip


# -- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water mark of resident memory (``VmHWM``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def worker_command() -> list[str]:
    script = Path(sys.executable).with_name("worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    url: str = ""
    peak_mb: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, grace_s: float = 25) -> None:
        self.peak_mb = peak_rss_mb(self.pid)
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def spawn(name: str, args: Sequence[str], env: dict[str, str], logs: Path) -> Proc:
    log = logs / f"{name}-{secrets.token_hex(3)}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    return Proc(name, process, log)


async def wait_http(proc: Proc, url: str, *, timeout_s: float = 30, poll_s: float = 0.05) -> None:
    """Until ``url`` answers 200 (the process is up), or fail with its log."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while loop.time() < give_up:
            if proc.process.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(poll_s)
    raise RuntimeError(f"{proc.name} did not come up at {url}:\n{proc.tail()}")


async def wait_line(proc: Proc, text: str, *, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while loop.time() < give_up and proc.process.returncode is None:
        if proc.log.exists() and text in proc.log.read_text(errors="replace"):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not say {text!r}:\n{proc.tail()}")


def py_spy() -> str:
    script = Path(sys.executable).with_name("py-spy")
    return str(script) if script.exists() else (shutil.which("py-spy") or "py-spy")


@contextlib.asynccontextmanager
async def profiled(plan: Plan, name: str, pid: int) -> AsyncIterator[None]:
    """With ``--profile DIR``: py-spy samples ``pid`` over the measured window."""
    if plan.profile is None:
        yield
        return
    out = plan.profile / (name.replace(" ", "-") + ".txt")

    async def record() -> None:
        await asyncio.sleep(plan.warmup_s)
        spy = await asyncio.create_subprocess_exec(
            # Blocking mode: each sample pauses the worker for a moment, but its stacks
            # are whole (non-blocking reads race the interpreter and cut stacks short).
            py_spy(), "record", "--pid", str(pid), "--rate", "250",
            "--duration", str(max(1, round(plan.measure_s))), "--format", "raw",
            "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await spy.wait()

    task = asyncio.create_task(record(), name=f"profile {name}")
    try:
        yield
    finally:
        await task


class CpuMeter:
    """CPU time of named processes (with their children) and of every ``postgres`` process
    over a window.

    Postgres processes are sampled every 0.2 s and each keeps its last figure: a backend
    that exits inside the window (a pool shrinking) would otherwise take its CPU time
    with it, and two snapshots of the live ones could even go down.
    """

    def __init__(self, pids: dict[str, int], *, me: str = LOAD) -> None:
        self.pids = {me: os.getpid(), **pids}
        self._t0 = 0.0
        self._named: dict[str, float] = {}
        self._pg_start: dict[int, float] = {}
        self._pg_last: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def _cpu(pid: int) -> float:
        """The process's CPU seconds, its children's (``--processes N``) included."""
        if psutil is None:
            return 0.0
        total = 0.0
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for member in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = member.cpu_times()
                    total += times.user + times.system
        return total

    @staticmethod
    def _postgres() -> dict[int, float]:
        found: dict[int, float] = {}
        if psutil is None:
            return found
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] == "postgres":
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    found[proc.pid] = times.user + times.system
        return found

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self._pg_last.update(self._postgres())

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._named = {name: self._cpu(pid) for name, pid in self.pids.items()}
        self._pg_start = self._postgres()
        self._pg_last = dict(self._pg_start)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="cpu meter")

    def stop(self) -> dict[str, float]:
        """Percent of one core each used in the window (those under 0.5% left out)."""
        if psutil is None:
            return {}
        if self._task is not None:
            self._task.cancel()
        self._pg_last.update(self._postgres())
        elapsed = time.perf_counter() - self._t0
        used = {name: self._cpu(pid) - self._named[name] for name, pid in self.pids.items()}
        used["postgres"] = sum(v - self._pg_start.get(pid, 0.0) for pid, v in self._pg_last.items())
        percent = {k: 100 * v / elapsed for k, v in used.items()}
        return {k: v for k, v in percent.items() if v >= 0.5}


# -- databases ----------------------------------------------------------------------


def dsn_for(database: str) -> str:
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path="/" + database))


async def admin(sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def free_connections() -> int:
    rows = await admin(
        """SELECT current_setting('max_connections')::int
                  - current_setting('superuser_reserved_connections')::int
                  - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"""
    )
    return int(rows[0][0])


async def seed_shop(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"""CREATE TABLE orders (order_id int PRIMARY KEY, status text NOT NULL,
                    tracking text NOT NULL, estimated_delivery date NOT NULL);
                INSERT INTO orders
                SELECT g, (ARRAY['shipped','processing','delivered'])[1 + g % 3],
                       'TRK' || lpad(g::text, 8, '0'), date '2025-09-12' + (g % 30)
                FROM generate_series(1, {ORDERS}) g;
                CREATE TABLE floor_replies (id bigserial PRIMARY KEY, "to" text NOT NULL,
                    message text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
                ANALYZE orders;"""
        )
    finally:
        await conn.close()


async def seed_pgq_replies(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """CREATE TABLE pgq_replies (id bigserial PRIMARY KEY, job_id bigint NOT NULL,
                   enqueued_at timestamptz NOT NULL, "to" text NOT NULL, message text NOT NULL,
                   created_at timestamptz NOT NULL DEFAULT now())"""
        )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def bench_databases(
    roles: Sequence[str] = ("shop", "queue", "pgq"), prefix: str = "lookup_bench"
) -> AsyncIterator[dict[str, str]]:
    """A fresh database for each role, dropped (connections and all) on the way out."""
    prefix = f"{prefix}_{secrets.token_hex(4)}"
    names = {role: f"{prefix}_{role}" for role in roles}
    try:
        for name in names.values():
            await admin(f'CREATE DATABASE "{name}"')
        yield {role: dsn_for(name) for role, name in names.items()}
    finally:
        for name in names.values():
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the tenant config --------------------------------------------------------------


def tenant_config(
    shop_dsn: str, *, pool_size: int, rest_urls: Sequence[str] = ()
) -> dict[str, Any]:
    lookup = {
        "source": "shop",
        "args": ["order_id"],
        "params": {"order_id": {"type": "string", "pattern": "[0-9]{1,9}", "max_length": 9}},
        "template": TEMPLATE,
        "not_found": "I couldn't find order #{{ params.order_id }}.",
        "fallback": "Our order system is not answering; we'll get back to you.",
    }
    config: dict[str, Any] = {
        "tenant_id": TENANT,
        "data_sources": [
            {
                "id": "shop",
                "type": "postgresql",
                "connection": {"dsn": shop_dsn, "pool_size": pool_size},
                "queries": {"order_status": SELECT, "slow_order": SLOW_SELECT},
            }
        ],
        "lookups": {
            "order_status": lookup,
            "slow_order": {**lookup, "query": "slow_order", "timeout_s": 10},
        },
    }
    for i, url in enumerate(rest_urls):
        config["data_sources"].append(
            {"id": f"api{i}", "type": "rest_api", "connection": {"base_url": url},
             "queries": {"order": "/orders/{order_id}"}}
        )  # fmt: skip
        rest_lookup = {k: v for k, v in lookup.items() if k != "args"}
        config["lookups"][f"slow_api{i}"] = {
            **rest_lookup, "source": f"api{i}", "query": "order", "timeout_s": 10,
        }  # fmt: skip
    return config


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / f"{TENANT}-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def job_payload(query_type: str = "order_status") -> dict[str, Any]:
    return {
        "job_type": "data_lookup",
        "tenant_id": TENANT,
        "query_type": query_type,
        "parameters": {"order_id": str(random.randint(1, ORDERS))},
        "customer_context": {"phone": f"+1555{random.randint(0, 9_999_999):07d}", "locale": "en"},
    }


# -- load: keep N jobs outstanding --------------------------------------------------


class Target(Protocol):
    """A queue the closed loop feeds and watches."""

    async def enqueue(self, count: int) -> list[int]: ...

    async def completed(self) -> int: ...

    async def latencies(self, first_id: int, last_id: int) -> list[float]: ...


class JobsTarget:
    """The contract §4 tables: ``jobs`` in, ``outbound_messages`` out."""

    def __init__(self, conn: asyncpg.Connection, query_types: Sequence[str] = ("order_status",)):
        self.conn = conn
        self.query_types = itertools.cycle(query_types)  # round robin over the lookups

    async def enqueue(self, count: int) -> list[int]:
        payloads = [json.dumps(job_payload(next(self.query_types))) for _ in range(count)]
        rows = await self.conn.fetch(
            "INSERT INTO jobs (payload) SELECT p::jsonb FROM unnest($1::text[]) p RETURNING id",
            payloads,
        )
        return [int(r[0]) for r in rows]

    async def completed(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
                " FROM outbound_messages_id_seq"
            )
        )

    async def latencies(self, first_id: int, last_id: int) -> list[float]:
        rows = await self.conn.fetch(
            """SELECT extract(epoch FROM m.created_at - j.created_at)::float8
               FROM outbound_messages m JOIN jobs j ON j.id = m.job_id
               WHERE j.id BETWEEN $1 AND $2""",
            first_id,
            last_id,
        )
        return [float(r[0]) for r in rows]


class PgqTarget:
    """pgqueuer's table in, the consumer's ``pgq_replies`` out."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.conn = conn
        self.queries = Queries(AsyncpgDriver(conn))

    async def enqueue(self, count: int) -> list[int]:
        payloads: list[bytes | None] = [json.dumps(job_payload()).encode() for _ in range(count)]
        ids = await self.queries.enqueue(["lookup"] * count, payloads, [0] * count)
        return [int(i) for i in ids]

    async def completed(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM pgq_replies_id_seq"
            )
        )

    async def latencies(self, first_id: int, last_id: int) -> list[float]:
        rows = await self.conn.fetch(
            """SELECT extract(epoch FROM created_at - enqueued_at)::float8 FROM pgq_replies
               WHERE job_id BETWEEN $1 AND $2""",
            first_id,
            last_id,
        )
        return [float(r[0]) for r in rows]


@dataclass
class Window:
    rate: float
    latencies_s: list[float]
    cpu: dict[str, float]
    lost: int


async def closed_loop(
    target: Target, in_flight: int, plan: Plan, meter: CpuMeter, *, drain_s: float = 60
) -> Window:
    """Keep ``in_flight`` jobs outstanding: warm up, then measure for ``plan.measure_s``."""
    base = await target.completed()
    sent, first_id, last_id = 0, 0, 0
    start = time.perf_counter()
    measuring_since, done_at_start = 0.0, 0
    while True:
        done = await target.completed() - base
        now = time.perf_counter()
        if not measuring_since and now - start >= plan.warmup_s:
            measuring_since, done_at_start = now, done
            meter.start()
        if measuring_since and now - measuring_since >= plan.measure_s:
            break
        deficit = in_flight - (sent - done)
        if deficit > 0:
            ids = await target.enqueue(deficit)
            sent += len(ids)
            if measuring_since and not first_id:
                first_id = ids[0]
            last_id = ids[-1]
        else:
            await asyncio.sleep(POLL_S.get(in_flight, 0.005))
    rate = (done - done_at_start) / (now - measuring_since)
    cpu = meter.stop()
    lost = await drain(target, base + sent, drain_s)
    return Window(rate, await target.latencies(first_id or last_id, last_id), cpu, lost)


async def drain(target: Target, expected: int, timeout_s: float) -> int:
    """Wait for the outstanding jobs; how many were still not answered at the end."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while True:  # polling a sequence: the worker's path gets no extra query
        left = expected - await target.completed()
        if left <= 0 or loop.time() >= give_up:
            return max(0, left)
        await asyncio.sleep(0.02)


# -- the benchmark ------------------------------------------------------------------


class Bench:
    """Everything one run holds: databases, config folder, logs, the results."""

    def __init__(self, plan: Plan, dsns: dict[str, str], folder: Path) -> None:
        self.plan = plan
        self.dsns = dsns
        self.folder = folder
        self.token = secrets.token_urlsafe(16)
        self.config = write_config(folder, tenant_config(dsns["shop"], pool_size=10))
        self.rows: dict[str, list[Row]] = {}
        self.notes: list[str] = []
        self.engine_proc: Proc | None = None

    # processes

    def worker_env(self, extra: Mapping[str, str] = MappingProxyType({})) -> dict[str, str]:
        env = {"WORKER_LOG_LEVEL": self.plan.log_level, "WORKER_SECRET_KEYS": "",
               "WORKER_CONFIG_DIR": str(self.folder), "WORKER_GRACE_S": "20"}  # fmt: skip
        for name in ("QUEUE_DSN", "ENGINE_URL", "ENGINE_TOKEN", "WORKER_TOKEN", "AUDIT_DSN"):
            env[name] = ""
        return {**env, **extra}

    @contextlib.asynccontextmanager
    async def workers(
        self, count: int, max_in_flight: int, env: Mapping[str, str], *, config: Path | None = None
    ) -> AsyncIterator[list[Proc]]:
        procs: list[Proc] = []
        try:
            for i in range(count):
                port = free_port()
                args = [
                    *worker_command(), "run", "--config", str(config or self.config),
                    "--max-in-flight", str(max_in_flight), "--listen", f"127.0.0.1:{port}",
                ]  # fmt: skip
                proc = await spawn(f"worker{i}", args, self.worker_env(env), self.folder)
                proc.url = f"http://127.0.0.1:{port}"
                procs.append(proc)
                await wait_http(proc, f"{proc.url}/readyz")
            yield procs
        finally:
            await asyncio.gather(*(p.stop() for p in procs))

    @contextlib.asynccontextmanager
    async def engine(self) -> AsyncIterator[str]:
        port = free_port()
        args = [*worker_command(), "engine", "serve", "--db", self.dsns["queue"],
                "--token", self.token, "--listen", f"127.0.0.1:{port}",
                "--config-dir", str(self.folder)]  # fmt: skip
        proc = await spawn("engine", args, {"WORKER_LOG_LEVEL": "WARNING"}, self.folder)
        try:
            await wait_http(proc, f"http://127.0.0.1:{port}/healthz")
            self.engine_proc = proc
            yield f"http://127.0.0.1:{port}"
        finally:
            await proc.stop()

    async def queue_init(self) -> None:
        args = [*worker_command(), "queue", "init", "--dsn", self.dsns["queue"]]
        proc = await spawn("queue-init", args, self.worker_env(), self.folder)
        if await proc.process.wait() != 0:
            raise RuntimeError(f"worker queue init failed:\n{proc.tail()}")

    @contextlib.asynccontextmanager
    async def queue_conn(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.dsns["queue"])
        try:
            await conn.execute("TRUNCATE jobs, outbound_messages RESTART IDENTITY")
            yield conn
        finally:
            await conn.close()

    def add(self, table: str, row: Row) -> None:
        self.rows.setdefault(table, []).append(row)
        lost = f" ({row.note})" if row.note else ""
        print(
            f"  {row.path:<22} {row.in_flight:>5} in flight: {row.rate:>8,.0f}/s  "
            f"p50 {row.p(0.5):7.2f} ms  p99 {row.p(0.99):8.2f} ms{lost}",
            flush=True,
        )


# -- (a) the direct queue, (b) the HTTP engine ---------------------------------------


async def queue_phase(
    bench: Bench, path: str, n: int, extra_pids: dict[str, int], env: Mapping[str, str]
) -> Row:
    async with bench.queue_conn() as conn, bench.workers(1, n, env) as procs:
        meter = CpuMeter({"worker": procs[0].pid, **extra_pids})
        async with profiled(bench.plan, f"{path}-{n}", procs[0].pid):
            window = await closed_loop(JobsTarget(conn), n, bench.plan, meter)
    note = f"{window.lost} unanswered" if window.lost else ""
    return Row(path, n, window.rate, window.latencies_s, window.cpu, procs[0].peak_mb, note)


async def run_direct(bench: Bench) -> None:
    print("\n(a) direct PostgreSQL queue: `worker run` subprocess with QUEUE_DSN", flush=True)
    for n in bench.plan.levels:
        row = await queue_phase(bench, "direct queue", n, {}, direct_env(bench))
        bench.add("e2e", row)


def direct_env(bench: Bench) -> dict[str, str]:
    return {"QUEUE_DSN": bench.dsns["queue"]}


def engine_env(bench: Bench, engine_url: str) -> dict[str, str]:
    return {"ENGINE_URL": engine_url, "ENGINE_TOKEN": bench.token}


def engine_pid(bench: Bench) -> dict[str, int]:
    return {"engine": bench.engine_proc.pid} if bench.engine_proc else {}


async def run_engine(bench: Bench, engine_url: str) -> None:
    print("\n(b) via the HTTP local engine (`worker engine serve --db <pg dsn>`)", flush=True)
    pids = engine_pid(bench)
    for n in bench.plan.levels:
        row = await queue_phase(bench, "HTTP engine", n, pids, engine_env(bench, engine_url))
        bench.add("e2e", row)


# -- (c) the push webhook -----------------------------------------------------------


async def push_loop(http: aiohttp.ClientSession, url: str, samples: Samples) -> int:
    errors = 0
    while (started := time.perf_counter()) < samples.until:
        body = job_payload()
        headers = {"Idempotency-Key": secrets.token_hex(8)}
        async with http.post(url, json=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                errors += 1
        samples.add(started)
    return errors


async def push_phase(bench: Bench, engine_url: str, n: int) -> Row:
    env = {**engine_env(bench, engine_url), "WORKER_TOKEN": bench.token}
    async with bench.queue_conn(), bench.workers(1, 10, env) as procs:
        url = procs[0].url + "/webhook/data/order_status"
        meter = CpuMeter({"worker": procs[0].pid, **engine_pid(bench)})
        connector = aiohttp.TCPConnector(limit=n)
        headers = {"Authorization": f"Bearer {bench.token}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
            samples = Samples.window(bench.plan.warmup_s, bench.plan.measure_s)
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + bench.plan.warmup_s, meter.start)
            async with profiled(bench.plan, f"push webhook-{n}", procs[0].pid):
                errors = await asyncio.gather(*(push_loop(http, url, samples) for _ in range(n)))
            cpu = meter.stop()
    note = f"{sum(errors)} non-200" if sum(errors) else ""
    return Row("push webhook", n, samples.rate, samples.latencies_s, cpu, procs[0].peak_mb, note)


async def run_webhook(bench: Bench, engine_url: str) -> None:
    print("\n(c) push webhook: POST /webhook/data/order_status, reply posted to the engine")
    for n in bench.plan.webhook_levels:
        bench.add("e2e", await push_phase(bench, engine_url, n))


# -- the bare driver floor ----------------------------------------------------------


async def floor_once(pool: asyncpg.Pool) -> None:
    order_id = random.randint(1, ORDERS)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(SELECT, order_id)
        message = f"Your order #{order_id} is {row['status']}. Tracking: {row['tracking']}."
        await conn.execute(
            'INSERT INTO floor_replies ("to", message) VALUES ($1, $2)', "+15550000000", message
        )


async def floor_loop(pool: asyncpg.Pool, samples: Samples) -> None:
    while (started := time.perf_counter()) < samples.until:
        await floor_once(pool)
        samples.add(started)


async def floor_phase(bench: Bench, n: int) -> Row:
    size = min(n, FLOOR_POOL)
    pool = await asyncpg.create_pool(bench.dsns["shop"], min_size=size, max_size=size)
    try:
        meter = CpuMeter({}, me="asyncpg")
        samples = Samples.window(bench.plan.warmup_s, bench.plan.measure_s)
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + bench.plan.warmup_s, meter.start)
        await asyncio.gather(*(floor_loop(pool, samples) for _ in range(n)))
        cpu = meter.stop()
    finally:
        await pool.close()
    note = f"pool {size}"
    path = "bare asyncpg (floor)"
    return Row(path, n, samples.rate, samples.latencies_s, cpu, None, note)


async def run_floor(bench: Bench) -> None:
    print("\nbare driver floor: asyncpg, SELECT + INSERT of the reply per transaction")
    for n in bench.plan.levels:
        bench.add("e2e", await floor_phase(bench, n))


# -- pgqueuer -----------------------------------------------------------------------


def pgqueuer_version() -> str | None:
    try:
        import pgqueuer
    except ImportError:
        return None
    return str(getattr(pgqueuer, "__version__", "?"))


async def pgq_install(dsn: str) -> None:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()
    await seed_pgq_replies(dsn)


async def pgq_phase(bench: Bench, n: int) -> Row:
    args = [sys.executable, str(SELF), "--pgqueuer-consumer",
            "--queue-dsn", bench.dsns["pgq"], "--shop-dsn", bench.dsns["shop"],
            "--max-in-flight", str(n)]  # fmt: skip
    proc = await spawn("pgqueuer", args, {}, bench.folder)
    conn = await asyncpg.connect(bench.dsns["pgq"])
    try:
        await wait_line(proc, "ready")
        window = await closed_loop(PgqTarget(conn), n, bench.plan, CpuMeter({"consumer": proc.pid}))
    finally:
        await conn.close()
        await proc.stop()
    note = f"{window.lost} unanswered" if window.lost else ""
    version = pgqueuer_version()
    return Row(
        f"pgqueuer {version}", n, window.rate, window.latencies_s, window.cpu, proc.peak_mb, note
    )


async def run_pgqueuer(bench: Bench) -> None:
    version = pgqueuer_version()
    if version is None:
        bench.notes.append(
            "pgqueuer: not installed (`.venv/bin/pip install pgqueuer`); its rows are missing."
        )
        print("\npgqueuer: not installed, skipped")
        return
    print(f"\npgqueuer {version}: the same job (SELECT, render, INSERT reply) as its entrypoint")
    try:
        await pgq_install(bench.dsns["pgq"])
    except Exception as exc:  # an API change in pgqueuer: say exactly what failed
        bench.notes.append(f"pgqueuer {version}: install failed: {type(exc).__name__}: {exc}")
        print(f"  install failed: {exc!r}")
        return
    for n in bench.plan.levels:
        try:
            bench.add("e2e", await pgq_phase(bench, n))
        except Exception as exc:
            bench.notes.append(f"pgqueuer {version} at {n} in flight: {type(exc).__name__}: {exc}")
            print(f"  {n} in flight failed: {exc!r}")


async def pgqueuer_consumer(queue_dsn: str, shop_dsn: str, max_in_flight: int) -> None:
    """The peer: pgqueuer's QueueManager with one entrypoint doing the worker's job."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from pgqueuer.db import AsyncpgPoolDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    template = ImmutableSandboxedEnvironment().from_string(TEMPLATE)
    queue = await asyncpg.create_pool(queue_dsn, min_size=2, max_size=10)
    shop = await asyncpg.create_pool(shop_dsn, min_size=1, max_size=10)
    qm = QueueManager(Queries(AsyncpgPoolDriver(queue)))

    @qm.entrypoint("lookup")
    async def lookup(job: Job) -> None:
        payload = json.loads(job.payload or b"{}")
        params = payload["parameters"]
        row = await shop.fetchrow(SELECT, int(params["order_id"]))
        message = template.render(params=params, row=dict(row) if row else {})
        await queue.execute(
            'INSERT INTO pgq_replies (job_id, enqueued_at, "to", message) VALUES ($1, $2, $3, $4)',
            int(job.id), job.created, payload["customer_context"]["phone"], message,
        )  # fmt: skip

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    print("ready", flush=True)
    await qm.run(batch_size=10, max_concurrent_tasks=max(20, max_in_flight))
    await shop.close()
    await queue.close()


# -- pickup latency -----------------------------------------------------------------

_CLAIM_STAMP = """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS bench_claimed_at timestamptz;
CREATE OR REPLACE FUNCTION bench_claimed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'running' AND OLD.status = 'pending' THEN
        NEW.bench_claimed_at := clock_timestamp();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_claimed BEFORE UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION bench_claimed();
"""
_CLAIM_UNSTAMP = """
DROP TRIGGER IF EXISTS bench_claimed ON jobs;
DROP FUNCTION IF EXISTS bench_claimed();
ALTER TABLE jobs DROP COLUMN IF EXISTS bench_claimed_at;
"""


@contextlib.asynccontextmanager
async def claim_stamps(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Record when each job is claimed (a trigger of the benchmark's, removed after)."""
    await conn.execute(_CLAIM_STAMP)
    try:
        yield
    finally:
        await conn.execute(_CLAIM_UNSTAMP)


async def pickup_samples(conn: asyncpg.Connection, count: int) -> list[float]:
    """Insert one job at a time into an idle queue; the claim's time minus the insert's."""
    target = JobsTarget(conn)
    ids: list[int] = []
    for _ in range(count):
        await asyncio.sleep(random.uniform(0.05, 0.15))  # the worker is idle, waiting
        ids += await target.enqueue(1)
        await drain(target, len(ids), 10)
    return await claim_delays(conn, ids)


async def claim_delays(conn: asyncpg.Connection, ids: Sequence[int]) -> list[float]:
    """Seconds from insert to claim of these jobs (the claimed ones: `claim_stamps`)."""
    rows = await conn.fetch(
        """SELECT extract(epoch FROM bench_claimed_at - created_at)::float8 FROM jobs
           WHERE id = ANY($1::bigint[]) AND bench_claimed_at IS NOT NULL""",
        list(ids),
    )
    return [float(r[0]) for r in rows]


async def pickup_phase(bench: Bench, path: str, env: Mapping[str, str]) -> Row:
    async with bench.queue_conn() as conn, claim_stamps(conn):
        async with bench.workers(1, 100, env):
            await asyncio.sleep(1.0)  # past start-up: the worker is idle, listening
            samples = await pickup_samples(conn, bench.plan.pickup_samples)
    return Row(path, 1, float("nan"), samples, note=f"{len(samples)} samples")


async def run_pickup(bench: Bench, engine_url: str) -> None:
    print("\npickup latency: one insert into an idle queue → the claim (LISTEN/NOTIFY)")
    direct = await pickup_phase(bench, "direct queue", direct_env(bench))
    bench.add("pickup", direct)
    engine = await pickup_phase(bench, "HTTP engine", engine_env(bench, engine_url))
    bench.add("pickup", engine)


# -- 1,000 jobs on a source that takes 2 s ---------------------------------------------


@dataclass
class Burst:
    label: str
    jobs: int
    pool: str
    wall_s: float
    outcomes: dict[str, int]
    latencies_s: list[float]
    rss_mb: float | None
    answered: int
    #: when the worker had claimed half of the jobs, and all of them (s after the insert)
    claimed_s: tuple[float, float]


async def burst_outcomes(conn: asyncpg.Connection) -> tuple[dict[str, int], float]:
    outcomes = {
        str(r[0]): int(r[1])
        for r in await conn.fetch("SELECT outcome, count(*) FROM jobs GROUP BY outcome")
    }
    wall = await conn.fetchval(
        """SELECT extract(epoch FROM max(m.created_at) - min(j.created_at))::float8
           FROM jobs j JOIN outbound_messages m ON m.job_id = j.id"""
    )
    return outcomes, float(wall or 0)


async def burst_claims(conn: asyncpg.Connection) -> tuple[float, float]:
    row = await conn.fetchrow(
        """SELECT extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY claimed))::float8,
                  extract(epoch FROM max(claimed))::float8
           FROM (SELECT bench_claimed_at - min(created_at) OVER () AS claimed FROM jobs) c"""
    )
    return float(row[0] or 0), float(row[1] or 0)


async def burst(
    bench: Bench, label: str, config: Path, query_types: Sequence[str], pool: str
) -> Burst:
    jobs = bench.plan.slow_jobs
    async with bench.queue_conn() as conn, claim_stamps(conn):
        async with bench.workers(1, jobs, direct_env(bench), config=config) as procs:
            target = JobsTarget(conn, query_types)
            await target.enqueue(jobs)
            left = await drain(target, jobs, 60)
        outcomes, wall = await burst_outcomes(conn)
        latencies = await target.latencies(1, jobs)
        claimed = await burst_claims(conn)
    peak = procs[0].peak_mb
    return Burst(label, jobs, pool, wall, outcomes, latencies, peak, jobs - left, claimed)


async def slow_pg(bench: Bench) -> Burst:
    free = await free_connections()
    pool = max(1, min(100, free - WORKER_FIXED_CONNECTIONS - 2 - SPARE_CONNECTIONS))
    config = write_config(bench.folder, tenant_config(bench.dsns["shop"], pool_size=pool))
    note = f"{pool} (of {free} free connections)"
    return await burst(bench, "PostgreSQL pg_sleep(2)", config, ["slow_order"], note)


@contextlib.asynccontextmanager
async def slow_api(
    count: int, route: str = "/orders/{order_id}", backlog: int = 2048
) -> AsyncIterator[list[str]]:
    """``count`` loopback HTTP servers whose ``GET route`` answers an order after 2 s, or
    after the ``{seconds}`` the path names if ``route`` has them (bench/scale.py's
    ``/slow{seconds:[0-9]}/orders/{order_id}``)."""

    async def order(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info.get("seconds", 2)))
        order_id = request.match_info["order_id"]
        return web.json_response(
            {"status": "shipped", "tracking": f"TRK{order_id}", "estimated_delivery": "2025-09-12"}
        )

    app = web.Application()
    app.add_routes([web.get(route, order)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = [free_port() for _ in range(count)]
    try:
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port, backlog=backlog).start()
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        await runner.cleanup()


def rest_available() -> bool:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.util.find_spec("connectors.rest") is not None
    except ImportError:
        return False


async def slow_rest(bench: Bench) -> Burst | None:
    if not rest_available():
        bench.notes.append("REST 2 s source: connectors.rest is not importable; skipped.")
        return None
    async with slow_api(SLOW_REST_SOURCES) as urls:
        config = tenant_config(bench.dsns["shop"], pool_size=10, rest_urls=urls)
        path = write_config(bench.folder, config)
        kinds = [f"slow_api{i}" for i in range(len(urls))]
        pool = f"{len(urls)} sources x 100 (httpx)"
        return await burst(bench, "REST API, answers in 2 s", path, kinds, pool)


async def run_slow(bench: Bench) -> list[Burst]:
    print(f"\n{bench.plan.slow_jobs:,} jobs at once on a source that takes 2 s (timeout 10 s)")
    results = [await slow_pg(bench)]
    rest = await slow_rest(bench)
    if rest is not None:
        results.append(rest)
    for b in results:
        print(f"  {b.label}: {b.answered}/{b.jobs} answered in {b.wall_s:.1f} s {b.outcomes}")
    return results


# -- scale-out ------------------------------------------------------------------------


async def scale_phase(bench: Bench, count: int, pool: int) -> Row:
    config = write_config(bench.folder, tenant_config(bench.dsns["shop"], pool_size=pool))
    n = bench.plan.scale_in_flight
    async with bench.queue_conn() as conn:
        async with bench.workers(count, n, direct_env(bench), config=config) as procs:
            meter = CpuMeter({f"w{i}": p.pid for i, p in enumerate(procs)})
            window = await closed_loop(JobsTarget(conn), n, bench.plan, meter)
    peak = max((p.peak_mb or 0) for p in procs)
    note = f"source pool {pool} each"
    return Row(
        f"{count} worker process(es)", n, window.rate, window.latencies_s, window.cpu, peak, note
    )


async def scale_round(bench: Bench, number: int) -> None:
    base = 0.0
    for count in bench.plan.scale_workers:
        free = await free_connections() - SPARE_CONNECTIONS - 2
        pool = min(10, free // count - WORKER_FIXED_CONNECTIONS)
        if pool < 2:
            bench.notes.append(
                f"scale-out with {count} workers skipped: {free} connections free after a"
                f" {SPARE_CONNECTIONS}-connection margin; each worker needs"
                f" {WORKER_FIXED_CONNECTIONS}+2."
            )
            continue
        row = await scale_phase(bench, count, pool)
        base = base or row.rate
        row.note += f"; round {number}; x{row.rate / base:.2f} of 1 worker"
        bench.add("scale", row)


async def run_scale(bench: Bench) -> None:
    n = bench.plan.scale_in_flight
    print(f"\nscale-out: 1..N `worker run` processes on one queue, {n} jobs in flight")
    for number in range(1, bench.plan.scale_rounds + 1):
        await scale_round(bench, number)


# -- the report -----------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


async def machine() -> list[str]:
    rows = await admin(
        "SELECT version(), current_setting('max_connections'),"
        " current_setting('synchronous_commit'),"
        " current_setting('ssl') = 'on'"
    )
    model = cpu_model()
    version = str(rows[0][0]).split(" on ")[0]
    tls = f"server TLS {'on' if rows[0][3] else 'off'}, PGSSLMODE={os.environ.get('PGSSLMODE')}"
    return [
        f"date:       {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"machine:    {os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}",
        f"python:     {platform.python_version()} ({sys.executable}),"
        f" asyncpg {asyncpg.__version__}, aiohttp {aiohttp.__version__}",
        f"postgresql: {version}; max_connections {rows[0][1]},"
        f" synchronous_commit {rows[0][2]}, loopback TCP, {tls}",
        f"load:       {load_text()} at the start (other work on the machine shares its cores)",
    ]


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def by(rows: Sequence[Row], path: str) -> dict[int, Row]:
    return {r.in_flight: r for r in rows if r.path == path}


def print_overhead(bench: Bench) -> None:
    rows = bench.rows.get("e2e", [])
    floor = by(rows, "bare asyncpg (floor)")
    lines = []
    for path in ("direct queue", "HTTP engine"):
        for n, row in sorted(by(rows, path).items()):
            base = floor.get(n)
            if base is None:
                continue
            lines.append(
                [path, str(n), fmt(row.p(0.5), 2), fmt(base.p(0.5), 2),
                 fmt(row.p(0.5) - base.p(0.5), 2), fmt(row.p(0.99) - base.p(0.99), 2),
                 fmt(row.rate / base.rate * 100 if base.rate else None, 0)]
            )  # fmt: skip
    print_table(
        "worker overhead per job over the bare driver (enqueue → reply stored, minus one"
        " SELECT + INSERT transaction)",
        ["path", "in flight", "worker p50 ms", "floor p50 ms", "overhead p50 ms",
         "overhead p99 ms", "% of floor rate"],
        lines,
    )  # fmt: skip


def print_slow(bursts: Sequence[Burst]) -> None:
    print_table(
        "jobs at once on a source that takes 2 s each"
        " (lookup timeout 10 s, --max-in-flight = jobs)",
        ["source", "jobs", "pool", "answered", "wall s", "p50 s", "p99 s", "claimed p50/all s",
         "outcomes", "peak RSS MB"],
        [
            [b.label, str(b.jobs), b.pool, str(b.answered), fmt(b.wall_s, 2),
             fmt(percentile(b.latencies_s, 0.5), 2), fmt(percentile(b.latencies_s, 0.99), 2),
             f"{b.claimed_s[0]:.2f} / {b.claimed_s[1]:.2f}",
             " ".join(f"{k}={v}" for k, v in sorted(b.outcomes.items())), fmt(b.rss_mb)]
            for b in bursts
        ],
    )  # fmt: skip


def print_targets(bench: Bench, bursts: Sequence[Burst]) -> None:
    rows = bench.rows.get("e2e", [])
    direct, push = by(rows, "direct queue"), by(rows, "push webhook")
    floor = by(rows, "bare asyncpg (floor)")
    best = max(direct.values(), key=lambda r: r.rate, default=None)
    pickup = by(bench.rows.get("pickup", []), "direct queue").get(1)
    lines: list[list[str]] = []

    def add(target: str, value: str) -> None:
        lines.append([target, value])

    if best:
        add(
            "3,000+ lookups/s per worker, direct queue",
            f"{best.rate:,.0f}/s at {best.in_flight} in flight",
        )
    if 10 in push:
        add("1,500+/s through the push webhook at 10 in flight", f"{push[10].rate:,.0f}/s")
    if 100 in direct:
        add("p99 under 50 ms at 100 in flight (direct)", f"{direct[100].p(0.99):.1f} ms")
    if 1 in direct and 1 in floor:
        add("overhead over the bare driver under 1 ms p50 (1 in flight)",
            f"{direct[1].p(0.5) - floor[1].p(0.5):.2f} ms")  # fmt: skip
    if pickup:
        add(
            "pickup under 20 ms (idle worker)",
            f"p50 {pickup.p(0.5):.1f} ms, p99 {pickup.p(0.99):.1f} ms",
        )
    for b in bursts:
        add(f"{b.jobs:,} in flight on a 2 s source in ~2 s ({b.label})",
            f"{b.wall_s:.1f} s, {b.outcomes.get('ok', 0)} ok, pool {b.pool}")  # fmt: skip
    if 100 in direct:
        add("under 100 MB RSS at 100 in flight", f"{fmt(direct[100].rss_mb)} MB")
    held = [f"{fmt(b.rss_mb)} MB ({b.label})" for b in bursts]
    if 1000 in direct:  # jobs claimed, mostly waiting for a pooled connection
        held.insert(0, f"{fmt(direct[1000].rss_mb)} MB (fast source)")
    if held:
        add("under 150 MB RSS at 1,000 in flight", ", ".join(held))
    print_table("issue 6's targets next to this run's figures", ["target", "this run"], lines)


def report(bench: Bench, header: Sequence[str], bursts: Sequence[Burst]) -> None:
    print("\n" + "=" * 100)
    print("\n".join(header))
    print(f"workers:    real `worker run` subprocesses, WORKER_LOG_LEVEL={bench.plan.log_level},"
          " audit log on (its default place), source pool 10, queue pool 10")  # fmt: skip
    print_rows(
        "end-to-end: enqueue → reply stored (PostgreSQL lookup by primary key)",
        bench.rows.get("e2e", []),
    )
    print_overhead(bench)
    print_rows(
        "pickup latency: insert → claim, idle worker (LISTEN/NOTIFY)", bench.rows.get("pickup", [])
    )
    print_slow(bursts)
    scale = bench.rows.get("scale", [])
    if scale:
        print_rows("scale-out: worker processes on one queue (direct)", scale)
    print_targets(bench, bursts)
    for note in bench.notes:
        print(f"note: {note}")
    print(f"load:       {load_text()} at the end")


async def run(plan: Plan) -> None:
    header = await machine()
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="lookup-bench-") as tmp:
        async with bench_databases() as dsns:
            await seed_shop(dsns["shop"])
            bench = Bench(plan, dsns, Path(tmp))
            await bench.queue_init()
            wanted = plan.only or PHASES
            if "direct" in wanted:
                await run_direct(bench)
            if {"engine", "webhook", "pickup"} & set(wanted):
                async with bench.engine() as engine_url:
                    if "engine" in wanted:
                        await run_engine(bench, engine_url)
                    if "webhook" in wanted:
                        await run_webhook(bench, engine_url)
                    if "pickup" in wanted:
                        await run_pickup(bench, engine_url)
            if "floor" in wanted:
                await run_floor(bench)
            if "pgqueuer" in wanted:
                await run_pgqueuer(bench)
            bursts = await run_slow(bench) if "slow" in wanted else []
            if "scale" in wanted:
                await run_scale(bench)
            report(bench, header, bursts)


def same_tls_for_all() -> None:
    """``PGSSLMODE=disable`` for this process and every one it starts, unless set: the
    worker reads a server on loopback in plain TCP by itself (sslmode ``allow``), and
    the anchors (bare driver, pgqueuer, floor_push.py) must not pay TLS it does not."""
    os.environ.setdefault("PGSSLMODE", "disable")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced matrix (~2 minutes)")
    parser.add_argument("--worker-log-level", default="INFO", help="the workers' WORKER_LOG_LEVEL")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write py-spy profiles (collapsed stacks) of the worker in each phase to DIR",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PHASES,
        metavar="PHASE",
        help=f"run only these phases ({', '.join(PHASES)}); the default is all of them",
    )
    parser.add_argument("--pgqueuer-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue-dsn", help=argparse.SUPPRESS)
    parser.add_argument("--shop-dsn", help=argparse.SUPPRESS)
    parser.add_argument("--max-in-flight", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pgqueuer_consumer:
        asyncio.run(pgqueuer_consumer(args.queue_dsn, args.shop_dsn, args.max_in_flight))
        return
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    same_tls_for_all()
    run_to_the_end(run(Plan.of(args)))


def run_to_the_end(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main``; Ctrl-C exits 130 once its ``finally`` blocks have stopped the workers
    and dropped the databases (asyncio.run cancels it and waits for them)."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        print("\ninterrupted: the workers were stopped and the databases dropped", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
