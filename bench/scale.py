"""The scale benchmark of issue 13: every phase in one run, printed as tables.

Run it from the repository:  ``.venv/bin/python bench/scale.py [--quick] [--only PHASE…]``
(``BENCH_PG_DSN`` names the server; bench/README.md says what each figure means).

Phases, in order:

- ``idle``: 1 / 20 / 50 idle tenant workers on one queue, each ``worker run --tenant tN``
  with its own config and ``QUEUE_DSN``: connections to the queue database, idle queue
  transactions a second, resident memory, ready time, pickup when a job arrives.
- ``burst``: 200 and 1,000 jobs at once on sources that take 1 s and 2 s, the worker at
  its defaults (no ``--max-in-flight``, no ``pool_size``).
- ``replicas``: 1, 2 and 4 processes of one tenant on one queue: throughput, CPU per
  lookup, lock waits and wasted claims.
- ``compare``: the direct queue and the push webhook next to pgqueuer, the bare driver
  and ``shared/bench/floor_push.py``, as ``bench/e2e.py`` measures them.

It runs against the CLI and the contract, so it measures whatever worker is checked
out. It creates its own databases (dropped at the end, even on Ctrl-C), starts real
``worker`` subprocesses on loopback, and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import e2e  # bench/e2e.py: the script's own folder is on sys.path
import psutil
import yaml
from e2e import ROOT, Bench, Proc, fmt, percentile, print_table

PHASES = ("idle", "burst", "replicas", "compare")
FLOOR_PUSH = ROOT.parent / "shared" / "bench" / "floor_push.py"
#: connections left free for the other users of this server
SPARE_CONNECTIONS = 20
#: ``application_name`` of the benchmark's own sessions (left out of every count)
PROBE_APP = "scale-bench probe"
PUSH_ORDERS = 10_000
PUSH_SELECT = "SELECT status, tracking, estimated_delivery FROM push_orders WHERE order_id = $1"
#: the REST source of a burst: ``GET /slow{n}/orders/{id}`` answers after n seconds
SLOW_ROUTE = "/slow{seconds:[0-9]}/orders/{order_id}"


# -- what to run ------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    idle_levels: tuple[int, ...]
    idle_window_s: float
    pickup_samples: int
    bursts: tuple[tuple[str, int], ...]  # (source, jobs): source is pg1, pg2, rest1, rest2
    burst_cutoff_s: float
    replicas: tuple[int, ...]
    replica_in_flight: int
    replica_rounds: int
    compare_levels: tuple[int, ...]
    warmup_s: float
    measure_s: float
    only: tuple[str, ...] = ()

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        only = tuple(args.only or ())
        if args.quick:
            return cls(
                (1, 20, 50), 4.0, 5, (("pg1", 200), ("pg2", 1000), ("rest2", 1000)), 15.0,
                (1, 2, 4), 200, args.rounds, (10, 100), 0.5, 2.0, only,
            )  # fmt: skip
        return cls(
            (1, 20, 50), 10.0, 12,
            (("pg1", 200), ("pg2", 1000), ("rest1", 200), ("rest2", 1000)), 100.0,
            (1, 2, 4), 200, args.rounds, (1, 10, 100), 1.5, 4.0, only,
        )  # fmt: skip

    def e2e_plan(self, log_level: str) -> e2e.Plan:
        """The same windows for the phases ``bench/e2e.py`` runs."""
        return e2e.Plan(
            self.compare_levels, self.compare_levels, self.warmup_s, self.measure_s,
            self.pickup_samples, 1000, self.replicas, self.replica_in_flight, log_level,
        )  # fmt: skip


# -- the server: what the probe reads -------------------------------------------------


def dsn_on_port(dsn: str, port: int) -> str:
    """``dsn`` with another port (PgBouncer's) on the same host."""
    parts = urlsplit(dsn)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}{parts.hostname or '127.0.0.1'}:{port}"))


def database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


class Probe:
    """One session on the admin database: it reads the statistics views, so none of its
    own transactions count in the queue database's."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls) -> AsyncIterator[Probe]:
        conn = await asyncpg.connect(e2e.ADMIN_DSN, server_settings={"application_name": PROBE_APP})
        try:
            yield cls(conn)
        finally:
            await conn.close()

    async def xacts(self, database: str) -> int:
        """Committed and rolled-back transactions of ``database`` since the stats reset."""
        await self.conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await self.conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", database
        )
        return int(value or 0)

    async def backends(self) -> list[asyncpg.Record]:
        """Every client session but the benchmark's own: its database and client port."""
        return list(
            await self.conn.fetch(
                """SELECT datname, client_port FROM pg_stat_activity
                   WHERE backend_type = 'client backend' AND application_name <> $1""",
                PROBE_APP,
            )
        )

    async def lock_sample(self, database: str) -> tuple[int, int]:
        """Sessions of ``database`` waiting on a lock now (heavyweight, lightweight)."""
        row = await self.conn.fetchrow(
            """SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),
                      count(*) FILTER (WHERE wait_event_type = 'LWLock')
               FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2""",
            database,
            PROBE_APP,
        )
        return int(row[0]), int(row[1])


async def queue_session(dsn: str) -> asyncpg.Connection:
    """A session of the benchmark's on the queue database (left out of the counts)."""
    return await asyncpg.connect(dsn, server_settings={"application_name": PROBE_APP})


#: every UPDATE statement on ``jobs``, logged with the rows it moved pending → running;
#: a statement-level trigger fires even when the statement changed no row, so a claim
#: that found nothing is logged too
_CLAIM_LOG = """
CREATE UNLOGGED TABLE IF NOT EXISTS bench_updates (query text NOT NULL, claimed int NOT NULL);
CREATE OR REPLACE FUNCTION bench_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_updates (query, claimed)
    SELECT md5(current_query()), count(*)
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE o.status = 'pending' AND n.status = 'running';
    RETURN NULL;
END $$;
CREATE TRIGGER bench_updates AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bench_updates();
"""
_CLAIM_UNLOG = """
DROP TRIGGER IF EXISTS bench_updates ON jobs;
DROP FUNCTION IF EXISTS bench_updates();
DROP TABLE IF EXISTS bench_updates;
"""


@contextlib.asynccontextmanager
async def claim_log(conn: asyncpg.Connection) -> AsyncIterator[None]:
    await conn.execute(_CLAIM_LOG)
    try:
        yield
    finally:
        await conn.execute(_CLAIM_UNLOG)


async def update_counts(conn: asyncpg.Connection) -> tuple[int, int]:
    """UPDATE statements on ``jobs`` so far, and claims among them that claimed nothing."""
    row = await conn.fetchrow(
        """SELECT count(*), count(*) FILTER (WHERE claimed = 0 AND query IN
                  (SELECT query FROM bench_updates WHERE claimed > 0))
           FROM bench_updates"""
    )
    return int(row[0]), int(row[1])


async def claim_counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """Claim statements, those that claimed nothing, jobs claimed. A claim statement is
    one whose text moved a job pending → running at least once in the window."""
    row = await conn.fetchrow(
        """SELECT count(*), count(*) FILTER (WHERE claimed = 0), coalesce(sum(claimed), 0)
           FROM bench_updates
           WHERE query IN (SELECT query FROM bench_updates WHERE claimed > 0)"""
    )
    return int(row[0]), int(row[1]), int(row[2])


# -- processes: the worker's family ----------------------------------------------------


def family(pid: int) -> list[psutil.Process]:
    """A process and its children (``worker run --processes N`` forks them)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def rss_mb(pid: int) -> float:
    total = 0
    for proc in family(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total / 2**20


def server_ports(pid: int, ports: set[int]) -> list[tuple[int, int]]:
    """(local port, remote port) of the process family's TCP sessions to ``ports``."""
    found = []
    for proc in family(pid):
        with contextlib.suppress(psutil.Error):
            for c in proc.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED:
                    found.append((c.laddr.port, c.raddr.port))
    return found


async def wait_ready(proc: Proc, url: str) -> None:
    """Until ``url`` answers 200, polled every 5 ms: ready time is a figure here."""
    await e2e.wait_http(proc, url, timeout_s=60, poll_s=0.005)


def worker_run_options() -> str:
    """``worker run --help``: which options the checked-out worker has."""
    done = subprocess.run(
        [*e2e.worker_command(), "run", "--help"], capture_output=True, text=True, check=False
    )
    return done.stdout


def worker_knows(name: str) -> bool:
    """Whether the checked-out worker reads an environment variable (part F's knobs)."""
    return any(name in p.read_text(errors="replace") for p in (ROOT / "worker").rglob("*.py"))


async def stop_all(procs: Sequence[Proc], grace_s: float = 25) -> None:
    await asyncio.gather(*(p.stop(grace_s) for p in procs), return_exceptions=True)


# -- PgBouncer --------------------------------------------------------------------------


@dataclass
class Bouncer:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path


@contextlib.contextmanager
def pgbouncer(pool_size: int) -> Iterator[Bouncer]:
    """A PgBouncer in transaction mode in front of the local PostgreSQL, for this run.

    It will not run as root, so it runs as ``postgres`` from a folder that user can read.
    """
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    folder = Path(tempfile.mkdtemp(prefix="scale-bouncer-"))
    folder.chmod(0o755)
    port = e2e.free_port()
    admin = urlsplit(e2e.ADMIN_DSN)
    (folder / "users.txt").write_text(f'"{admin.username or "postgres"}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={admin.hostname or "127.0.0.1"} port={admin.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
"""
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    user = ["-u", "postgres"] if os.geteuid() == 0 else []
    with (folder / "pgbouncer.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, *user, str(folder / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield Bouncer(port, process, folder)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


async def bouncer_ready(bouncer: Bouncer, dsn: str) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(dsn_on_port(dsn, bouncer.port), timeout=2)
            await conn.close()
            return
        await asyncio.sleep(0.1)
    log = bouncer.folder / "pgbouncer.log"
    raise RuntimeError(f"pgbouncer did not start:\n{log.read_text() if log.exists() else ''}")


# -- tenants ------------------------------------------------------------------------------


def tenant_config(tenant: str, shop_dsn: str) -> dict[str, Any]:
    """``bench/e2e.py``'s tenant at the worker's defaults: no ``pool_size``, no timeouts."""
    config = e2e.tenant_config(shop_dsn, pool_size=1)
    config["tenant_id"] = tenant
    source = config["data_sources"][0]
    source["connection"] = {"dsn": shop_dsn}
    return config


def write_tenant(folder: Path, config: dict[str, Any]) -> Path:
    """``<folder>/<tenant>.yaml``, where ``worker run --tenant T`` finds it."""
    path = folder / f"{config['tenant_id']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tenant_job(tenant: str, query_type: str = "order_status") -> dict[str, Any]:
    job = e2e.job_payload(query_type)
    job["tenant_id"] = tenant
    return job


@dataclass
class Started:
    proc: Proc
    ready_s: float


async def start_worker(
    bench: Bench, name: str, options: Sequence[str], env: Mapping[str, str]
) -> Started:
    """``worker run OPTIONS`` on a free port: exec → ``/healthz`` answering, then ``/readyz``."""
    port = e2e.free_port()
    args = [*e2e.worker_command(), "run", *options, "--listen", f"127.0.0.1:{port}"]
    started = time.perf_counter()
    proc = await e2e.spawn(name, args, bench.worker_env(env), bench.folder)
    proc.url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(proc, f"{proc.url}/healthz")
        ready = time.perf_counter() - started
        await wait_ready(proc, f"{proc.url}/readyz")
    except BaseException:
        await proc.stop(5)
        raise
    return Started(proc, ready)


# -- phase: idle tenants on one queue ------------------------------------------------------


@dataclass
class IdleRow:
    workers: int
    route: str
    queue_conns: list[int]  # each worker's sessions to the queue database (or PgBouncer)
    queue_backends: int  # server sessions in the queue database
    source_backends: int  # server sessions the workers hold in other databases
    xacts_s: float
    updates_s: float  # UPDATE statements on jobs (claims, sweeps, heartbeats)
    rss: list[float]
    ready: list[float]  # exec → /healthz of every worker started so far
    pickup: list[float] = field(default_factory=list)
    updates_per_job: float = float("nan")
    empty_per_job: float = float("nan")
    note: str = ""


@dataclass
class Fleet:
    """The idle tenants' workers, started one after the other (a start's ready time is
    then its own, not 50 imports fighting for 2 cores)."""

    bench: Bench
    env: dict[str, str]
    route: str
    ports: set[int]
    started: list[Started] = field(default_factory=list)

    @property
    def procs(self) -> list[Proc]:
        return [s.proc for s in self.started]

    #: server sessions one worker was seen to hold (the next start must find them free)
    need: int = 5

    async def grow(self, count: int) -> str:
        """Up to ``count`` workers, or as many as leave ``SPARE_CONNECTIONS`` free: why
        it stopped short ("" when it did not)."""
        while len(self.started) < count:
            try:
                free = await e2e.free_connections()
            except asyncpg.TooManyConnectionsError:
                return "the server was full"
            if free < SPARE_CONNECTIONS + self.need:
                return (
                    f"{free} connections were free, {SPARE_CONNECTIONS} kept for others,"
                    f" ~{self.need} a worker"
                )
            tenant = f"t{len(self.started) + 1}"
            options = ["--tenant", tenant]
            try:
                self.started.append(await start_worker(self.bench, tenant, options, self.env))
            except RuntimeError as exc:  # the server filled up under it, most likely
                return f"{tenant} did not start: {str(exc).splitlines()[-1][:200]}"
        return ""

    async def stop(self) -> None:
        await stop_all(self.procs)
        self.started.clear()


async def count_sessions(probe: Probe, fleet: Fleet, queue_db: str) -> tuple[list[int], int, int]:
    """Per worker: its sessions to the queue database (PgBouncer's port counts as that);
    in all: the queue database's server sessions, and the workers' in other databases."""
    backends = await probe.backends()
    database = {int(r["client_port"]): r["datname"] for r in backends if r["client_port"]}
    pg_port = urlsplit(e2e.ADMIN_DSN).port or 5432
    per_worker, on_server, elsewhere = [], [], 0
    for proc in fleet.procs:
        sessions = server_ports(proc.pid, fleet.ports)
        queue = sum(
            1 for local, remote in sessions if remote != pg_port or database.get(local) == queue_db
        )
        per_worker.append(queue)
        on_server.append(sum(1 for _, remote in sessions if remote == pg_port))
        elsewhere += sum(
            1
            for local, remote in sessions
            if remote == pg_port and database.get(local, queue_db) != queue_db
        )
    fleet.need = max(on_server, default=fleet.need)
    in_queue = sum(1 for r in backends if r["datname"] == queue_db)
    return per_worker, in_queue, elsewhere


#: PostgreSQL 15 flushes a quiet session's statistics up to 10 s late (PGSTAT_IDLE_INTERVAL)
STATS_SETTLE_S = 10.5
#: The worker's pools close a connection idle 30 s (what start-up opened included):
#: sessions are counted after the window, at least this long after the last start.
POOLS_SETTLE_S = 31.0


async def idle_window(
    probe: Probe, conn: asyncpg.Connection, queue_db: str, window_s: float
) -> tuple[float, float]:
    """Transactions and UPDATE statements on ``jobs`` a second in the queue database
    while nobody sends it work (after the start-ups' statistics have all arrived)."""
    await asyncio.sleep(max(STATS_SETTLE_S, POOLS_SETTLE_S - window_s))
    await conn.execute("TRUNCATE bench_updates")
    before = await probe.xacts(queue_db)
    await asyncio.sleep(window_s)
    xacts = await probe.xacts(queue_db) - before
    updates, _ = await update_counts(conn)
    return xacts / window_s, updates / window_s


async def pickups(
    conn: asyncpg.Connection, tenants: int, samples: int
) -> tuple[list[float], float, float]:
    """One job at a time for a random tenant of the fleet: created_at → running; and per
    job, the UPDATE statements on ``jobs`` and the claims that found nothing (workers
    woken for another tenant's job)."""
    await conn.execute("TRUNCATE bench_updates")
    ids = []
    for _ in range(samples):
        await asyncio.sleep(random.uniform(0.1, 0.3))
        job = tenant_job(f"t{random.randint(1, tenants)}")
        done = await conn.fetchval("SELECT count(*) FROM outbound_messages")
        ids.append(
            await conn.fetchval(
                "INSERT INTO jobs (payload) VALUES ($1::jsonb) RETURNING id", json.dumps(job)
            )
        )
        for _ in range(500):  # 10 s at most
            if await conn.fetchval("SELECT count(*) FROM outbound_messages") > done:
                break
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # the wake-ups that come after the reply
    updates, empty = await update_counts(conn)
    return await e2e.claim_delays(conn, ids), updates / samples, empty / samples


async def idle_level(
    fleet: Fleet, probe: Probe, conn: asyncpg.Connection, count: int, plan: Plan
) -> IdleRow | None:
    """The fleet grown to ``count`` workers (or as many as fit); None when not one more
    worker fits (the last row already measured this many)."""
    queue_db = database_of(fleet.bench.dsns["queue"])
    had = len(fleet.started)
    short = await fleet.grow(count)
    if len(fleet.started) == had:
        fleet.bench.notes.append(
            f"idle tenants ({fleet.route}): {count} wanted, not one more than {had}"
            f" started: {short}"
        )
        return None
    wanted, count = count, len(fleet.started)
    rate, updates = await idle_window(probe, conn, queue_db, plan.idle_window_s)
    per_worker, in_queue, elsewhere = await count_sessions(probe, fleet, queue_db)
    rss = [rss_mb(p.pid) for p in fleet.procs]
    row = IdleRow(
        count, fleet.route, per_worker, in_queue, elsewhere, rate, updates, rss,
        [s.ready_s for s in fleet.started],
    )  # fmt: skip
    if short:
        later = " / ".join(str(n) for n in plan.idle_levels if n >= wanted)
        row.note = f"{later} wanted, {count} fit: {short}"
    row.pickup, row.updates_per_job, row.empty_per_job = await pickups(
        conn, count, plan.pickup_samples
    )
    print(
        f"  {count:>3} workers ({fleet.route}): {sum(per_worker)} queue sessions,"
        f" {rate:.1f} idle transactions/s, pickup p50"
        f" {fmt(percentile(row.pickup, 0.5) * 1000)} ms",
        flush=True,
    )
    return row


async def idle_fleet(
    bench: Bench, plan: Plan, levels: Sequence[int], fleet: Fleet, rows: list[IdleRow]
) -> None:
    """Grow one fleet through ``levels`` (rows added as they are measured); stop at the
    first level that does not fit."""
    raw = await queue_session(bench.dsns["queue"])
    try:
        await raw.execute("TRUNCATE jobs, outbound_messages RESTART IDENTITY")
        async with Probe.open() as probe, e2e.claim_stamps(raw), claim_log(raw):
            for wanted in levels:
                row = await idle_level(fleet, probe, raw, wanted, plan)
                if row is not None:
                    rows.append(row)
                if row is None or row.workers < wanted:
                    break
    finally:
        await fleet.stop()
        await raw.close()


BOUNCER_KNOBS = ("QUEUE_LISTEN_DSN", "QUEUE_POOL_MODE")


async def run_idle(bench: Bench, plan: Plan, rows: list[IdleRow]) -> None:
    levels = plan.idle_levels
    print(f"\nidle tenants on one queue: {' / '.join(map(str, levels))} workers", flush=True)
    for i in range(1, max(levels) + 1):
        write_tenant(bench.folder, tenant_config(f"t{i}", bench.dsns["shop"]))
    queue = bench.dsns["queue"]
    pg_port = urlsplit(e2e.ADMIN_DSN).port or 5432
    direct = Fleet(bench, {"QUEUE_DSN": queue}, "direct", {pg_port})
    await idle_fleet(bench, plan, levels, direct, rows)
    short = [n for n in levels if not rows or n > rows[-1].workers]
    if not short:
        return
    if not all(worker_knows(k) for k in BOUNCER_KNOBS):
        bench.notes.append(
            "idle tenants through PgBouncer: not run, the worker has no "
            + " / ".join(BOUNCER_KNOBS)
        )
        return
    with pgbouncer(pool_size=10) as bouncer:
        await bouncer_ready(bouncer, queue)
        env = {
            "QUEUE_DSN": dsn_on_port(queue, bouncer.port),
            "QUEUE_LISTEN_DSN": queue,
            "QUEUE_POOL_MODE": "transaction",
        }
        fleet = Fleet(bench, env, "PgBouncer (transaction)", {pg_port, bouncer.port})
        await idle_fleet(bench, plan, short, fleet, rows)


def print_idle(rows: Sequence[IdleRow]) -> None:
    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    print_table(
        "idle tenant workers on one queue (each `worker run --tenant tN`, its own config)",
        ["workers", "queue via", "queue sessions each mean/max", "queue db sessions",
         "source sessions", "idle xacts/s all", "each", "idle UPDATEs/s", "RSS MB mean/max",
         "ready s mean/max", "pickup p50/max ms", "UPDATEs per job", "empty claims per job",
         "note"],
        [
            [str(r.workers), r.route, f"{fmt(mean(r.queue_conns))} / {max(r.queue_conns)}",
             str(r.queue_backends), str(r.source_backends), fmt(r.xacts_s, 2),
             fmt(r.xacts_s / r.workers, 3), fmt(r.updates_s, 2),
             f"{fmt(mean(r.rss))} / {fmt(max(r.rss))}",
             f"{fmt(mean(r.ready), 2)} / {fmt(max(r.ready), 2)}",
             f"{fmt(percentile(r.pickup, 0.5) * 1000)} / {fmt(max(r.pickup, default=0) * 1000)}",
             fmt(r.updates_per_job), fmt(r.empty_per_job), r.note]
            for r in rows
        ],
    )  # fmt: skip


# -- phase: bursts on slow sources at the worker's defaults --------------------------------


def slow_select(seconds: int) -> str:
    return (
        "SELECT o.status, o.tracking, o.estimated_delivery"
        f" FROM orders o, pg_sleep({seconds}) WHERE o.order_id = $1"
    )


SOURCES = {
    "pg1": "PostgreSQL, pg_sleep(1)",
    "pg2": "PostgreSQL, pg_sleep(2)",
    "rest1": "REST API, answers in 1 s",
    "rest2": "REST API, answers in 2 s",
}


def burst_config(shop_dsn: str, api_url: str | None) -> dict[str, Any]:
    """One lookup a slow source, every setting left at the worker's default."""
    config = tenant_config(e2e.TENANT, shop_dsn)
    lookup = config["lookups"]["order_status"]
    config["data_sources"][0]["queries"] = {"slow1": slow_select(1), "slow2": slow_select(2)}
    config["lookups"] = {
        "pg1": {**lookup, "query": "slow1"},
        "pg2": {**lookup, "query": "slow2"},
    }
    if api_url:
        config["data_sources"].append(
            {"id": "api", "type": "rest_api", "connection": {"base_url": api_url},
             "queries": {"slow1": "/slow1/orders/{order_id}", "slow2": "/slow2/orders/{order_id}"}}
        )  # fmt: skip
        rest = {k: v for k, v in lookup.items() if k != "args"}
        config["lookups"]["rest1"] = {**rest, "source": "api", "query": "slow1"}
        config["lookups"]["rest2"] = {**rest, "source": "api", "query": "slow2"}
    return config


@dataclass
class BurstRow:
    source: str
    jobs: int
    answered: int
    outcomes: dict[str, int]
    wall_s: float
    latencies_s: list[float]
    claimed_s: tuple[float, float]
    pending_at_1s: int
    peak_running: int
    peak_source_sessions: int
    rss_mb: float | None
    left: str = ""


@dataclass
class BurstWatch:
    """What the queue and the server looked like while a burst was answered."""

    pending_at_1s: int = -1
    peak_running: int = 0
    peak_sessions: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    async def sample(self, conn: asyncpg.Connection, probe: Probe, shop_db: str) -> None:
        rows = await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY status")
        self.counts = {str(r[0]): int(r[1]) for r in rows}
        self.peak_running = max(self.peak_running, self.counts.get("running", 0))
        sessions = sum(1 for r in await probe.backends() if r["datname"] == shop_db)
        self.peak_sessions = max(self.peak_sessions, sessions)

    async def until_done(
        self, conn: asyncpg.Connection, probe: Probe, shop_db: str, jobs: int, cutoff_s: float
    ) -> None:
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < cutoff_s:
            await self.sample(conn, probe, shop_db)
            if self.pending_at_1s < 0 and elapsed >= 1:
                self.pending_at_1s = self.counts.get("pending", 0)
            if self.counts.get("done", 0) + self.counts.get("failed", 0) >= jobs:
                return
            await asyncio.sleep(0.1)


async def burst(bench: Bench, plan: Plan, config: Path, kind: str, jobs: int) -> BurstRow:
    """``jobs`` jobs in one INSERT, a fresh worker at its defaults; watched until answered
    or ``plan.burst_cutoff_s``."""
    shop_db = database_of(bench.dsns["shop"])
    watch = BurstWatch()
    async with bench.queue_conn() as conn, e2e.claim_stamps(conn), Probe.open() as probe:
        options = ["--config", str(config), "--grace", "3"]
        worker = await start_worker(bench, "burst", options, {"QUEUE_DSN": bench.dsns["queue"]})
        try:
            await e2e.JobsTarget(conn, [kind]).enqueue(jobs)
            await watch.until_done(conn, probe, shop_db, jobs, plan.burst_cutoff_s)
            outcomes, wall = await e2e.burst_outcomes(conn)
            answered = await conn.fetchval("SELECT count(*) FROM outbound_messages")
            latencies = await e2e.JobsTarget(conn).latencies(1, jobs)
            claimed = await e2e.burst_claims(conn)
        finally:
            await worker.proc.stop(10)
    outcomes.pop("None", None)
    left = " ".join(f"{k}={v}" for k, v in sorted(watch.counts.items()) if k not in {"done"})
    return BurstRow(
        SOURCES[kind], jobs, int(answered), outcomes, wall, latencies, claimed,
        max(0, watch.pending_at_1s), watch.peak_running, watch.peak_sessions,
        worker.proc.peak_mb, left,
    )  # fmt: skip


async def run_bursts(bench: Bench, plan: Plan, rows: list[BurstRow]) -> None:
    print("\nbursts at the worker's defaults (no --max-in-flight, no pool_size)", flush=True)
    rest = e2e.rest_available()
    if not rest:
        bench.notes.append("bursts on the REST source: connectors.rest is not importable.")
    async with e2e.slow_api(1, SLOW_ROUTE, backlog=4096) as (url,):
        config = burst_config(bench.dsns["shop"], url if rest else None)
        path = bench.folder / "bursts.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        for kind, jobs in plan.bursts:
            if kind.startswith("rest") and not rest:
                continue
            row = await burst(bench, plan, path, kind, jobs)
            rows.append(row)
            print(
                f"  {jobs:>5} on {row.source}: {row.answered} answered in {row.wall_s:.1f} s"
                f" {row.outcomes} {row.left}",
                flush=True,
            )


def print_bursts(rows: Sequence[BurstRow], cutoff_s: float) -> None:
    print_table(
        f"jobs at once on a slow source, worker at its defaults (watched for {cutoff_s:.0f} s"
        " at most; lookup timeout 10 s)",
        ["source", "jobs", "answered", "ok", "not_found", "fallback", "wall s", "p50 s",
         "p99 s", "claimed p50/all s", "pending at 1 s", "peak running",
         "peak source sessions", "peak RSS MB", "unanswered at the end"],
        [
            [r.source, str(r.jobs), str(r.answered), str(r.outcomes.get("ok", 0)),
             str(r.outcomes.get("not_found", 0)), str(r.outcomes.get("fallback", 0)),
             fmt(r.wall_s, 2), fmt(percentile(r.latencies_s, 0.5), 2),
             fmt(percentile(r.latencies_s, 0.99), 2),
             f"{r.claimed_s[0]:.2f} / {r.claimed_s[1]:.2f}", str(r.pending_at_1s),
             str(r.peak_running), str(r.peak_source_sessions), fmt(r.rss_mb),
             r.left or "-"]
            for r in rows
        ],
    )  # fmt: skip


# -- phase: replicas of one tenant ----------------------------------------------------------

_SAMPLE = re.compile(r"^(\w*claim\w*)(?:\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


async def claim_metrics(procs: Sequence[Proc]) -> dict[str, float]:
    """The workers' ``/metrics`` samples whose name says claim, summed over workers."""
    totals: dict[str, float] = {}
    async with aiohttp.ClientSession() as http:
        for proc in procs:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{proc.url}/metrics") as response:
                    text = await response.text()
                for name, value in _SAMPLE.findall(text):
                    if name.endswith(("_count", "_total")):
                        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


@dataclass
class LockWatch:
    """pg_stat_activity sampled every 20 ms: sessions of the queue database waiting."""

    samples: int = 0
    lock_waiters: int = 0  # summed over samples
    lwlock_waiters: int = 0
    with_lock_wait: int = 0  # samples with at least one session waiting on a lock

    async def watch(self, probe: Probe, database: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            lock, lwlock = await probe.lock_sample(database)
            self.samples += 1
            self.lock_waiters += lock
            self.lwlock_waiters += lwlock
            self.with_lock_wait += lock > 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)


@dataclass
class Contention:
    """How replicas got in each other's way over one closed loop."""

    claims: tuple[int, int, int]  # claim statements, empty ones, jobs claimed
    metrics: dict[str, float]  # the workers' claim counters, summed
    locks: LockWatch
    slowest_s: float  # insert → reply of the slowest job, the drain included
    redelivered: int  # jobs claimed more than once (a lease ran out)

    def claim_text(self) -> str:
        statements, empty, jobs = self.claims
        if not statements:
            return "-"
        return (
            f"{statements:,} claims, {empty:,} empty ({100 * empty / statements:.0f}%),"
            f" {jobs / max(1, statements - empty):.1f} jobs a claim"
        )


@dataclass
class ReplicaRow:
    label: str
    row: e2e.Row
    contention: Contention
    #: the same round's one `worker run` (rounds take turns: the machine is shared)
    one: e2e.Row | None = None

    @property
    def ratio(self) -> float | None:
        return self.row.rate / self.one.rate if self.one and self.one.rate else None


async def stragglers(conn: asyncpg.Connection) -> tuple[float, int]:
    row = await conn.fetchrow(
        """SELECT extract(epoch FROM max(m.created_at - j.created_at))::float8,
                  count(*) FILTER (WHERE j.attempt > 1)
           FROM jobs j LEFT JOIN outbound_messages m ON m.job_id = j.id"""
    )
    return float(row[0] or 0), int(row[1])


async def replica_window(
    bench: Bench, plan: Plan, procs: Sequence[Proc], conn: asyncpg.Connection, probe: Probe
) -> tuple[e2e.Window, Contention]:
    meter = e2e.CpuMeter({f"w{i}": p.pid for i, p in enumerate(procs)})
    locks, stop = LockWatch(), asyncio.Event()
    before = await claim_metrics(procs)
    async with claim_log(conn):
        watcher = asyncio.create_task(
            locks.watch(probe, database_of(bench.dsns["queue"]), stop), name="lock watch"
        )
        try:
            window = await e2e.closed_loop(
                e2e.JobsTarget(conn), plan.replica_in_flight, bench.plan, meter
            )
        finally:
            stop.set()
            await watcher
        claims = await claim_counts(conn)
    after = await claim_metrics(procs)
    metrics = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return window, Contention(claims, metrics, locks, *await stragglers(conn))


async def replica_phase(
    bench: Bench, plan: Plan, config: Path, label: str, count: int, options: Sequence[str]
) -> ReplicaRow:
    """``count`` ``worker run`` commands (``options`` each) on one queue, a closed loop."""
    env = {"QUEUE_DSN": bench.dsns["queue"]}
    procs: list[Proc] = []
    async with bench.queue_conn() as conn, Probe.open() as probe:
        try:
            for i in range(count):
                args = ["--config", str(config), *options]
                procs.append((await start_worker(bench, f"replica{i}", args, env)).proc)
            window, contention = await replica_window(bench, plan, procs, conn, probe)
            # the largest process's high-water mark, a --processes child's included
            peak = max((e2e.peak_rss_mb(q.pid) or 0) for p in procs for q in family(p.pid))
        finally:
            await stop_all(procs)
    note = f"{window.lost} unanswered" if window.lost else ""
    row = e2e.Row(label, plan.replica_in_flight, window.rate, window.latencies_s, window.cpu,
                  peak, note)  # fmt: skip
    return ReplicaRow(label, row, contention)


async def run_replicas(bench: Bench, plan: Plan, rows: list[ReplicaRow]) -> None:
    n = plan.replica_in_flight
    print(f"\nreplicas of one tenant on one queue, {n} jobs in flight, worker defaults", flush=True)
    config = bench.folder / "replicas.yaml"
    config.write_text(yaml.safe_dump(tenant_config(e2e.TENANT, bench.dsns["shop"])))
    runs = [(f"{c} x worker run", c, []) for c in plan.replicas]
    if "--processes" in worker_run_options():
        runs += [(f"worker run --processes {c}", 1, ["--processes", str(c)])
                 for c in plan.replicas if c > 1]  # fmt: skip
    else:
        bench.notes.append("`worker run --processes N`: not in this worker; its rows are missing.")
    for number in range(1, plan.replica_rounds + 1):
        one = None
        for label, count, options in runs:
            row = await replica_phase(bench, plan, config, label, count, options)
            row.row.note = f"round {number}" + (f"; {row.row.note}" if row.row.note else "")
            one = row.one = one or row.row
            rows.append(row)
            print(
                f"  {label}: {row.row.rate:,.0f} lookups/s; {row.contention.claim_text()}",
                flush=True,
            )


def print_replicas(rows: Sequence[ReplicaRow]) -> None:
    e2e.print_rows("replicas of one tenant on one queue (direct queue, worker defaults)",
                   [r.row for r in rows])  # fmt: skip
    print_table(
        "claim contention in the same windows (warm-up and drain included)",
        ["processes", "round", "x of 1", "claim statements (trigger)",
         "claim counters (/metrics)", "lock waiters mean", "samples with a lock wait",
         "LWLock waiters mean", "slowest job s", "claimed twice"],
        [
            [r.label, r.row.note, fmt(r.ratio, 2), c.claim_text(),
             " ".join(f"{k}={v:,.0f}" for k, v in sorted(c.metrics.items())) or "-",
             fmt(c.locks.lock_waiters / max(1, c.locks.samples), 2),
             f"{c.locks.with_lock_wait}/{c.locks.samples}",
             fmt(c.locks.lwlock_waiters / max(1, c.locks.samples), 2),
             fmt(c.slowest_s, 2), str(c.redelivered)]
            for r in rows
            for c in [r.contention]
        ],
    )  # fmt: skip


# -- phase: the direct queue and the push webhook next to their peers -----------------------


async def seed_push_orders(shop_dsn: str) -> None:
    """The orders floor_push.py reads: ids like ``ORD-000123`` (it checks that shape)."""
    conn = await asyncpg.connect(shop_dsn)
    try:
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS push_orders (order_id text PRIMARY KEY,
                    status text NOT NULL, tracking text NOT NULL, estimated_delivery date NOT NULL);
                INSERT INTO push_orders
                SELECT 'ORD-' || lpad(g::text, 6, '0'), (ARRAY['shipped','processing'])[1 + g % 2],
                       'TRK' || lpad(g::text, 8, '0'), date '2025-09-12' + (g % 30)
                FROM generate_series(1, {PUSH_ORDERS}) g ON CONFLICT DO NOTHING;
                ANALYZE push_orders;"""
        )
    finally:
        await conn.close()


def push_config(shop_dsn: str) -> dict[str, Any]:
    """One config both the worker and floor_push.py serve: the seed's connection fields
    (floor_push reads host, port, database, username, password), pool 20 (its default)."""
    parts = urlsplit(shop_dsn)
    lookup = e2e.tenant_config(shop_dsn, pool_size=1)["lookups"]["order_status"]
    return {
        "tenant_id": e2e.TENANT,
        "data_sources": [
            {"id": "shop", "type": "postgresql",
             "connection": {"host": parts.hostname or "127.0.0.1", "port": parts.port or 5432,
                            "database": parts.path.lstrip("/"),
                            "username": parts.username or "postgres",
                            "password": parts.password or "", "pool_size": 20},
             "queries": {"order_status": PUSH_SELECT}},
        ],
        "lookups": {
            "order_status": {
                **lookup, "params": {"order_id": {"type": "string", "pattern": "ORD-[0-9]{6}"}},
            },
        },
    }  # fmt: skip


def push_job() -> dict[str, Any]:
    phone = f"+1555{random.randint(0, 9_999_999):07d}"
    return {
        "job_type": "data_lookup",
        "tenant_id": e2e.TENANT,
        "query_type": "order_status",
        "parameters": {
            "order_id": f"ORD-{random.randint(1, PUSH_ORDERS):06d}",
            "customer_phone": phone,
        },
        "customer_context": {"phone": phone, "locale": "en"},
    }


async def push_client(
    http: aiohttp.ClientSession, url: str, samples: e2e.Samples
) -> collections.Counter[str]:
    """POST jobs one after the other until the window ends; the answers that were not an
    ``ok`` reply sent, by what they were (an outcome, "not sent", or an HTTP status)."""
    errors: collections.Counter[str] = collections.Counter()
    while (started := time.perf_counter()) < samples.until:
        headers = {"Idempotency-Key": secrets.token_hex(8)}
        async with http.post(url, json=push_job(), headers=headers) as response:
            body = await response.read()
        answer = json.loads(body) if response.status == 200 else {}
        if response.status != 200:
            errors[f"HTTP {response.status}"] += 1
        elif answer.get("outcome") != "ok":
            errors[str(answer.get("outcome"))] += 1
        elif answer.get("sent") is False:
            errors["not sent"] += 1
        samples.add(started)
    return errors


async def push_load(bench: Bench, path: str, proc: Proc, n: int) -> e2e.Row:
    url = f"{proc.url}/webhook/data/order_status"
    meter = e2e.CpuMeter({proc.name: proc.pid, **e2e.engine_pid(bench)})
    headers = {"Authorization": f"Bearer {bench.token}"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=n), headers=headers
    ) as http:
        samples = e2e.Samples.window(bench.plan.warmup_s, bench.plan.measure_s)
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + bench.plan.warmup_s, meter.start)
        clients = await asyncio.gather(*(push_client(http, url, samples) for _ in range(n)))
        cpu = meter.stop()
    errors = sum(clients, collections.Counter[str]())
    note = " ".join(f"{k}={v}" for k, v in sorted(errors.items()))
    return e2e.Row(path, n, samples.rate, samples.latencies_s, cpu, e2e.peak_rss_mb(proc.pid),
                   note)  # fmt: skip


async def floor_push(bench: Bench, config: Path, env: Mapping[str, str]) -> Proc:
    """shared/bench/floor_push.py, started as its docstring says."""
    port = e2e.free_port()
    args = [sys.executable, str(FLOOR_PUSH), "run", "--tenant", e2e.TENANT, "--config", str(config)]
    proc = await e2e.spawn("floor", args, {**env, "WORKER_HTTP": f"127.0.0.1:{port}"}, bench.folder)
    proc.url = f"http://127.0.0.1:{port}"
    await wait_ready(proc, f"{proc.url}/healthz")
    return proc


async def run_push(bench: Bench, plan: Plan, engine_url: str) -> None:
    print("\npush webhook: the worker, then floor_push.py, on one config, the same load")
    await seed_push_orders(bench.dsns["shop"])
    config = bench.folder / "push.json"
    config.write_text(json.dumps(push_config(bench.dsns["shop"])))
    env = e2e.engine_env(bench, engine_url)
    for n in plan.compare_levels:
        async with bench.queue_conn():
            worker = await start_worker(bench, "worker", ["--config", str(config)], env)
            try:
                bench.add("e2e", await push_load(bench, "push webhook (worker)", worker.proc, n))
            finally:
                await worker.proc.stop()
        if not FLOOR_PUSH.exists():
            continue
        async with bench.queue_conn():
            floor = await floor_push(bench, config, env)
            try:
                bench.add("e2e", await push_load(bench, "push webhook (floor_push.py)", floor, n))
            finally:
                await floor.stop()
    if not FLOOR_PUSH.exists():
        bench.notes.append(f"floor_push.py: not found at {FLOOR_PUSH}; its rows are missing.")


async def run_compare(bench: Bench, plan: Plan) -> None:
    await e2e.run_direct(bench)
    await e2e.run_floor(bench)
    await e2e.run_pgqueuer(bench)
    async with bench.engine() as engine_url:
        await run_push(bench, plan, engine_url)


def print_compare(bench: Bench) -> None:
    rows = bench.rows.get("e2e", [])
    order = ["direct queue", "bare asyncpg (floor)", "pgqueuer", "push webhook (worker)",
             "push webhook (floor_push.py)"]  # fmt: skip
    rows = sorted(rows, key=lambda r: (next(
        (i for i, o in enumerate(order) if r.path.startswith(o)), 9), r.in_flight))  # fmt: skip
    e2e.print_rows("the direct queue and the push webhook next to their peers"
                   " (enqueue → reply stored; push: the client's round trip)", rows)  # fmt: skip
    ratios = []
    for n in sorted({r.in_flight for r in rows}):
        at = {r.path.split(" ")[0] + (" floor" if "floor_push" in r.path else ""): r
              for r in rows if r.in_flight == n}  # fmt: skip
        direct, pgq = at.get("direct"), at.get("pgqueuer")
        push, floor = at.get("push"), at.get("push floor")
        ratios.append([
            str(n),
            fmt(direct.rate / pgq.rate, 2) if direct and pgq and pgq.rate else "-",
            fmt(push.rate / floor.rate, 2) if push and floor and floor.rate else "-",
            fmt(direct.p(0.99), 1) if direct else "-",
            fmt(push.p(0.99), 1) if push else "-",
        ])  # fmt: skip
    print_table("ratios in this run", ["in flight", "direct / pgqueuer", "push worker / floor_push",
                "direct p99 ms", "push p99 ms"], ratios)  # fmt: skip


# -- issue 13's targets -------------------------------------------------------------------------


def idle_targets(rows: Sequence[IdleRow]) -> list[list[str]]:
    lines = []
    alone = rows[0].empty_per_job if rows else float("nan")
    for r in rows:
        at = f"{r.workers} workers, {r.route}"
        lines += [
            [f"≤ 2 queue sessions an idle worker ({at})",
             f"max {max(r.queue_conns)}; {r.queue_backends / r.workers:.2f} server sessions"
             " a worker"],
            [f"≤ 0.2 idle queue transactions a second a worker ({at})",
             f"{r.xacts_s / r.workers:.2f}"],
            [f"a wake-up only for its own tenant's jobs ({at})",
             f"{fmt(r.empty_per_job, 1)} empty claims per arriving job"
             f" (1 worker alone: {fmt(alone, 1)})"],
        ]  # fmt: skip
    if rows:
        rss = [m for r in rows for m in r.rss]
        ready = [s for r in rows for s in r.ready]
        lines.append(["idle worker ≤ 45 MB resident", f"{min(rss):.1f}–{max(rss):.1f} MB"])
        lines.append(["ready in ≤ 0.5 s (exec → /healthz)",
                      f"p50 {percentile(ready, 0.5):.2f} s, max {max(ready):.2f} s"])  # fmt: skip
    return lines


def burst_targets(rows: Sequence[BurstRow]) -> list[list[str]]:
    return [
        [f"{r.jobs:,} at once on {r.source} answered ok at defaults",
         f"{r.outcomes.get('ok', 0)} ok of {r.jobs} in {r.wall_s:.1f} s"
         + (f" (still {r.left} at the cut-off)" if r.left else "")]
        for r in rows
    ]  # fmt: skip


def replica_targets(rows: Sequence[ReplicaRow]) -> list[list[str]]:
    def worker_cpu(row: e2e.Row) -> float:
        workers = sum(v for k, v in row.cpu.items() if k not in {e2e.LOAD, "postgres"})
        return 10 * workers / row.rate if row.rate else float("nan")

    return [
        [f"{r.label} ({r.row.note}): throughput does not fall, worker CPU within 20% of 1",
         f"x{r.ratio:.2f}, {worker_cpu(r.row):.2f} ms against {worker_cpu(r.one):.2f} ms"
         " a lookup"]
        for r in rows if r.one is not None and r.one is not r.row and r.ratio is not None
    ]  # fmt: skip


def compare_targets(bench: Bench) -> list[list[str]]:
    rows = bench.rows.get("e2e", [])
    direct = e2e.by(rows, "direct queue")
    push = e2e.by(rows, "push webhook (worker)")
    pgq = next((e2e.by(rows, r.path) for r in rows if r.path.startswith("pgqueuer")), {})
    lines = []
    if 10 in push:
        lines.append(["push webhook ≥ 1,500/s at 10 connections", f"{push[10].rate:,.0f}/s"])
    if 100 in push:
        lines.append(["push webhook p99 ≤ 50 ms at 100", f"{push[100].p(0.99):.1f} ms"])
    if 100 in direct and 100 in pgq and pgq[100].rate:
        lines.append(["direct queue ≥ 2x pgqueuer at 100 in flight",
                      f"x{direct[100].rate / pgq[100].rate:.2f}"])  # fmt: skip
    if 100 in direct:
        lines.append(["direct queue p99 ≤ 50 ms at 100 in flight", f"{direct[100].p(0.99):.1f} ms"])
    return lines


def print_targets(bench: Bench, results: Results) -> None:
    lines = [
        *idle_targets(results.idle), *burst_targets(results.bursts),
        *replica_targets(results.replicas), *compare_targets(bench),
    ]  # fmt: skip
    if lines:
        print_table("issue 13's targets next to this run's figures", ["target", "this run"], lines)


# -- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    idle: list[IdleRow] = field(default_factory=list)
    bursts: list[BurstRow] = field(default_factory=list)
    replicas: list[ReplicaRow] = field(default_factory=list)


def report(
    bench: Bench, plan: Plan, header: Sequence[str], results: Results, took_s: float
) -> None:
    print("\n" + "=" * 100)
    print("\n".join(header))
    if results.idle:
        print_idle(results.idle)
    if results.bursts:
        print_bursts(results.bursts, plan.burst_cutoff_s)
    if results.replicas:
        print_replicas(results.replicas)
    if bench.rows.get("e2e"):
        print_compare(bench)
    print_targets(bench, results)
    for note in bench.notes:
        print(f"note: {note}")
    print(f"load:       {e2e.load_text()} at the end; the run took {took_s / 60:.1f} min")


def checkout() -> list[str]:
    """Which worker this run measures (its commit, and whether the tree had changes)."""

    def output(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, check=False).stdout
        except OSError:
            return ""

    git = ("git", "-C", str(ROOT))
    head = output(*git, "rev-parse", "--short", "HEAD").strip() or "?"
    dirty = output(*git, "status", "--porcelain", "--", "worker", "connectors").strip()
    changed = " + uncommitted changes in worker/ or connectors/" if dirty else ""
    bouncer = output(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "--version")
    version = bouncer.splitlines()[0] if bouncer else "not installed"
    return [f"worker:     commit {head}{changed}; {version}"]


async def survive(bench: Bench, name: str, phase: Coroutine[Any, Any, None]) -> None:
    """Run a phase; when the server or a worker fails it (the machine is shared: a test
    may restart PostgreSQL), say so and go on with the next (its rows so far are kept)."""
    try:
        await phase
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, RuntimeError) as exc:
        lines = str(exc).strip().splitlines() or [""]
        said = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"  # a log's last line
        bench.notes.append(f"phase {name} stopped: {type(exc).__name__}: {said[:400]}")
        print(f"  phase {name} stopped: {exc}", flush=True)


async def run(plan: Plan, log_level: str) -> None:
    started = time.perf_counter()
    header = [*await e2e.machine(), *checkout()]
    print("\n".join(header), flush=True)
    wanted = plan.only or PHASES
    results = Results()
    with tempfile.TemporaryDirectory(prefix="lookup-scale-") as tmp:
        async with e2e.bench_databases() as dsns:
            await e2e.seed_shop(dsns["shop"])
            bench = Bench(plan.e2e_plan(log_level), dsns, Path(tmp))
            await bench.queue_init()
            if "idle" in wanted:
                await survive(bench, "idle", run_idle(bench, plan, results.idle))
            if "burst" in wanted:
                await survive(bench, "burst", run_bursts(bench, plan, results.bursts))
            if "replicas" in wanted:
                await survive(bench, "replicas", run_replicas(bench, plan, results.replicas))
            if "compare" in wanted:
                await survive(bench, "compare", run_compare(bench, plan))
            report(bench, plan, header, results, time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows (~3.5 minutes)")
    parser.add_argument("--worker-log-level", default="INFO", help="the workers' WORKER_LOG_LEVEL")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the replicas matrix this many times, taking turns (a shared machine's noise)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PHASES,
        metavar="PHASE",
        help=f"run only these phases ({', '.join(PHASES)}); the default is all of them",
    )
    args = parser.parse_args(argv)
    e2e.same_tls_for_all()
    e2e.run_to_the_end(run(Plan.of(args), args.worker_log_level))


if __name__ == "__main__":
    main()
