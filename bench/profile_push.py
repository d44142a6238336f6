"""The push webhook's cost per request, beside the least a Python service does for it.

Run it from the repository:  ``.venv/bin/python bench/profile_push.py [--levels 1 10 100]
[--seconds 5] [--rounds R] [--processes N] [--before TREE] [--profile DIR]
[--only worker|before|floor]``

It starts, on loopback, ``worker engine serve`` on a fresh PostgreSQL queue database,
``worker run`` (push mode: ``ENGINE_URL`` at the engine), ``../shared/bench/floor_push.py``
(aiohttp + asyncpg + Jinja2, nothing else) and, with ``--before TREE``, a ``worker run``
from an older source tree (``git worktree add ../before <commit>``), all on the same
tenant config, and loads each in turn with wrk (``apt-get install wrk``): ``POST
/webhook/data/order_status`` with a contract job body, a fresh order id, phone and
``Idempotency-Key`` per request. For each level it prints requests a second, wrk's
latency percentiles and the CPU milliseconds each process spent per request (psutil,
over wrk's window) — the figure that holds on a busy machine when throughput does not.

``--profile DIR`` writes a py-spy profile (collapsed stacks, 250 Hz, ``--native`` off)
of the server under test at each level. Databases and processes are removed at the end,
even on Ctrl-C. Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil

# bench/e2e.py (the script's own folder is on sys.path): the same server, tenant and seed
from e2e import ADMIN_DSN, ORDERS, ROOT, SELECT, TEMPLATE, TENANT, bench_databases, free_port

FLOOR = ROOT.parent / "shared" / "bench" / "floor_push.py"
#: wrk's request: the seed's job shape (the phone in ``parameters.customer_phone``, where
#: floor_push.py reads it, and in ``customer_context``), a fresh order id, phone and
#: idempotency key each time, so every reply is a new message the engine stores
WRK_SCRIPT = """
wrk.method = "POST"
math.randomseed(os.time() + os.clock() * 1000000)
request = function()
  local id = math.random(1, %(orders)d)
  local phone = string.format("+1555%%07d", math.random(0, 9999999))
  local body = string.format('{"job_type":"data_lookup","tenant_id":"%(tenant)s",'
    .. '"query_type":"order_status","parameters":{"order_id":"ORD-%%06d",'
    .. '"customer_phone":"%%s"},"customer_context":{"phone":"%%s","locale":"en"}}',
    id, phone, phone)
  local key = string.format("%%08x%%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  local headers = {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %(token)s", ["Idempotency-Key"] = key}
  return wrk.format(nil, nil, headers, body)
end
"""


async def admin(sql: str) -> str | None:
    """Run ``sql`` on the server; the first column of its first row, if any."""
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        return await conn.fetchval(sql)  # type: ignore[no-any-return]
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def databases() -> AsyncIterator[dict[str, str]]:
    """A shop (orders ``ORD-000001``…, wrk's ids) and a queue database, dropped at the end."""
    async with bench_databases(("shop", "queue"), prefix="lookup_prof") as dsns:
        conn = await asyncpg.connect(dsns["shop"])
        try:
            await conn.execute(
                f"""CREATE TABLE orders (order_id text PRIMARY KEY, status text NOT NULL,
                        tracking text NOT NULL, estimated_delivery date NOT NULL);
                    INSERT INTO orders
                    SELECT 'ORD-' || lpad(g::text, 6, '0'),
                           (ARRAY['shipped','processing','delivered'])[1 + g % 3],
                           'TRK' || lpad(g::text, 8, '0'), date '2025-09-12' + (g % 30)
                    FROM generate_series(1, {ORDERS}) g;
                    ANALYZE orders;"""
            )
        finally:
            await conn.close()
        yield dsns


def tenant_config(shop_dsn: str, pool_size: int) -> dict[str, object]:
    """One config both servers read (floor_push.py wants host/port/… connection fields)."""
    parts = urlsplit(shop_dsn)
    return {
        "tenant_id": TENANT,
        "data_sources": [
            {
                "id": "shop",
                "type": "postgresql",
                "connection": {
                    "host": parts.hostname,
                    "port": parts.port or 5432,
                    "database": parts.path.lstrip("/"),
                    "username": parts.username or "postgres",
                    "password": parts.password or "unused",
                    "pool_size": pool_size,
                },
                "queries": {"order_status": SELECT},
            }
        ],
        "lookups": {
            "order_status": {
                "source": "shop",
                "args": ["order_id"],
                "params": {"order_id": {"type": "string", "pattern": "ORD-[0-9]{6}"}},
                "template": TEMPLATE,
                "not_found": "I couldn't find order #{{ params.order_id }}.",
                "fallback": "Our order system is not answering; we'll get back to you.",
            }
        },
    }


class Server:
    """A subprocess with its log file; stopped with SIGTERM, then killed."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], folder: Path):
        self.name = name
        self.args = list(args)
        self.env = {**os.environ, **env}
        self.log = folder / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Server:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.args, cwd=ROOT, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    @property
    def pids(self) -> list[int]:
        """The process and its children (``worker run --processes N``)."""
        if self.process is None:
            return []
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(self.process.pid)
            return [parent.pid, *(c.pid for c in parent.children(recursive=True))]
        return []

    async def wait_http(self, url: str, timeout_s: float = 30) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        async with aiohttp.ClientSession() as http:
            while loop.time() < give_up:
                if self.process is not None and self.process.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{self.name} did not come up at {url}:\n{tail}")


def cpu_seconds(pids: Sequence[int] | None, *, kernel_only: bool = False) -> float:
    """CPU seconds of these processes; None: of every ``postgres`` process there is now."""
    if pids is None:
        pids = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.system if kernel_only else times.user + times.system
    return total


_WRK_LINE = re.compile(r"^\s*(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_figures(text: str) -> dict[str, float]:
    figures = {}
    for line in text.splitlines():
        found = _WRK_LINE.match(line)
        if found:
            figures[f"p{found[1]}"] = float(found[2]) * _UNIT_MS[found[3]]
        if line.startswith("Requests/sec:"):
            figures["rate"] = float(line.split()[1])
        if "Non-2xx" in line or "Socket errors" in line:
            figures["errors"] = figures.get("errors", 0) + sum(
                int(n) for n in re.findall(r"\d+", line)
            )
    return figures


async def load(
    url: str,
    connections: int,
    seconds: float,
    script: Path,
    watched: dict[str, list[int] | None],
) -> dict[str, float]:
    """wrk for ``seconds`` after 1 s of warm-up; the CPU of each watched process meanwhile."""
    warm = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", "-d1s", "-s", str(script), url,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await warm.wait()
    server = next(iter(watched))
    before = {name: cpu_seconds(pids) for name, pids in watched.items()}
    kernel_before = cpu_seconds(watched[server], kernel_only=True)
    wrk = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
        url, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    watched = {**watched, "wrk": [wrk.pid]}
    before["wrk"] = 0.0
    samples: dict[str, float] = {}

    async def sample_wrk() -> None:  # wrk's own CPU, read just before it exits
        while wrk.returncode is None:
            samples["wrk"] = cpu_seconds([wrk.pid]) or samples.get("wrk", 0.0)
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample_wrk())
    out, _ = await wrk.communicate()
    await sampler
    after = {name: cpu_seconds(pids) for name, pids in watched.items() if name != "wrk"}
    after["wrk"] = samples.get("wrk", 0.0)
    kernel = cpu_seconds(watched[server], kernel_only=True) - kernel_before
    figures = wrk_figures(out.decode())
    requests = figures.get("rate", 0.0) * seconds
    for name in watched:
        used = after[name] - before[name]
        figures[f"cpu:{name}"] = 1000 * used / requests if requests else float("nan")
    figures["kernel"] = 1000 * kernel / requests if requests else float("nan")
    return figures


async def py_spy(out: Path, pid: int, seconds: float) -> asyncio.subprocess.Process:
    """py-spy sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks)."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    args = ["record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    args += ["--duration", str(max(1, round(seconds))), "--output", str(out)]
    devnull = asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(spy, *args, stdout=devnull, stderr=devnull)


@contextlib.asynccontextmanager
async def profiled(
    directory: Path | None, name: str, pids: Sequence[int], seconds: float
) -> AsyncIterator[None]:
    """With ``--profile DIR``: each of ``pids`` sampled over wrk's measured window."""
    if directory is None:
        yield
        return

    async def record() -> None:
        await asyncio.sleep(1)  # wrk's warm-up
        spies = [await py_spy(directory / f"{name}-{pid}.txt", pid, seconds) for pid in pids]
        for spy in spies:
            await spy.wait()

    recording = asyncio.create_task(record())
    try:
        yield
    finally:
        await recording


def row(name: str, connections: int, f: dict[str, float]) -> str:
    cpu = " ".join(f"{k[4:]} {v:.2f}" for k, v in f.items() if k.startswith("cpu:") and v == v)
    errors = f"  {int(f['errors'])} errors" if f.get("errors") else ""
    return (
        f"  {name:<14} {connections:>4}  {f.get('rate', 0):>8,.0f}/s  "
        f"p50 {f.get('p50', 0):7.2f}  p90 {f.get('p90', 0):7.2f}  p99 {f.get('p99', 0):7.2f} ms"
        f"  CPU ms/request: {cpu} (kernel {f['kernel']:.2f} of {name}'s){errors}"
    )


def worker_command(processes: int) -> list[str]:
    worker = str(Path(sys.executable).with_name("worker"))
    extra = ["--processes", str(processes)] if processes > 1 else []
    return [worker, "run", *extra]


async def run(args: argparse.Namespace) -> None:
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="profile-push-") as tmp:
        folder = Path(tmp)
        script = folder / "job.lua"
        script.write_text(WRK_SCRIPT % {"token": token, "orders": ORDERS, "tenant": TENANT})
        async with databases() as dsns:
            config = folder / f"{TENANT}.json"
            config.write_text(json.dumps(tenant_config(dsns["shop"], args.pool)))
            await (await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("worker")), "queue", "init", "--dsn",
                dsns["queue"], stdout=asyncio.subprocess.DEVNULL)).wait()  # fmt: skip
            engine_port = free_port()
            engine_args = [
                str(Path(sys.executable).with_name("worker")), "engine", "serve",
                "--db", dsns["queue"], "--token", token, "--listen",
                f"127.0.0.1:{engine_port}", "--config-dir", str(folder),
            ]  # fmt: skip
            engine_url = f"http://127.0.0.1:{engine_port}"
            async with Server("engine", engine_args, {"WORKER_LOG_LEVEL": "WARNING"}, folder) as e:
                await e.wait_http(engine_url + "/healthz")
                await measure(args, folder, config, token, engine_url, script, e)


async def measure(
    args: argparse.Namespace,
    folder: Path,
    config: Path,
    token: str,
    engine_url: str,
    script: Path,
    engine: Server,
) -> None:
    """Both servers up at once, loaded in turn at each level (``--rounds`` times): the
    machine is shared, so figures taken minutes apart say less than these side by side."""
    listen = {name: f"127.0.0.1:{free_port()}" for name in ("worker", "before", "floor")}
    env = {
        "ENGINE_URL": engine_url, "ENGINE_TOKEN": token, "WORKER_TOKEN": token,
        "WORKER_LOG_LEVEL": args.log_level, "QUEUE_DSN": "", "WORKER_SECRET_KEYS": "",
        "AUDIT_DSN": os.environ.get("AUDIT_DSN", ""),
    }  # fmt: skip
    commands = {
        "worker": [*worker_command(args.processes), "--config", str(config)],
        "before": [*worker_command(1), "--config", str(config)],
        "floor": [sys.executable, str(FLOOR), "run", "--tenant", TENANT, "--config", str(config)],
    }
    trees = {"before": {"PYTHONPATH": str(args.before)}} if args.before else {}
    names = [args.only] if args.only else [n for n in commands if n != "before" or args.before]
    # The test suite turns TLS on and off on this server: asyncpg uses it whenever offered.
    tls = await admin("SHOW ssl")
    print(
        f"push webhook, wrk -t1, {args.seconds:g} s a level after 1 s of warm-up; "
        f"PostgreSQL ssl={tls} (asyncpg's default sslmode=prefer)",
        flush=True,
    )
    async with contextlib.AsyncExitStack() as stack:
        servers = {}
        for name in names:
            own = {**env, "WORKER_HTTP": listen[name], **trees.get(name, {})}
            server = Server(name, commands[name], own, folder)
            servers[name] = await stack.enter_async_context(server)
            await server.wait_http(f"http://{listen[name]}/healthz")
        await asyncio.sleep(0.5)
        for n in args.levels:
            for turn in range(1, args.rounds + 1):
                for name, server in servers.items():
                    pids = server.pids
                    watched = {name: pids, "engine": engine.pids, "postgres": None}
                    url = f"http://{listen[name]}/webhook/data/order_status"
                    label = f"{name}-{n}-round{turn}"
                    async with profiled(args.profile, label, pids, args.seconds):
                        figures = await load(url, n, args.seconds, script, watched)
                    print(row(name, n, figures), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pool", type=int, default=20, help="source pool (floor_push's is 20)")
    parser.add_argument("--processes", type=int, default=1, help="worker run --processes N")
    parser.add_argument("--profile", type=Path, help="py-spy profiles into this folder")
    parser.add_argument("--only", choices=("worker", "before", "floor"))
    parser.add_argument(
        "--before",
        type=Path,
        help="also load a worker run from this source tree (git worktree of an older commit)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="turns of each server a level")
    parser.add_argument("--log-level", default="INFO", help="the worker's WORKER_LOG_LEVEL")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    started = time.time()
    asyncio.run(run(args))
    print(f"took {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
