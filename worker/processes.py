"""``worker run --processes N``: N whole workers of one tenant in one container, one port.

One Python process answers on one core. To use more cores in a container, the parent
starts N children, each a complete ``worker run`` (its own event loop, claims, source
pools, audit writer and metrics), and does nothing else: the queue is built for many
claimers (contract §4), and the children share the HTTP port through ``SO_REUSEPORT``,
so the kernel spreads the push webhooks' connections across them. ``GET /metrics`` is
the metrics of whichever child answers that connection: scrape each one, or sum
``worker_jobs_total`` over scrapes.

The parent forwards SIGTERM and SIGINT to every child and waits for them (each gives its
jobs in flight their grace period). It exits 0 when every child stopped cleanly. A child
that dies, or that stops on its own while not told to (``--once`` excepted), takes the
others down with SIGTERM, and the parent exits with that child's status (1 when it was
killed by a signal): whatever runs the container then restarts a whole, known state
rather than a worker with fewer processes than asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence

from worker.runtime import stop_on_signals
from worker.settings import Settings, env_name

__all__ = ["REUSE_PORT_ENV", "run_processes"]

log = logging.getLogger(__name__)

#: set in a child's environment: bind the HTTP port with SO_REUSEPORT, beside its siblings
REUSE_PORT_ENV = env_name("http_reuse_port")
#: prctl(2): the signal a process gets when its parent dies
_PR_SET_PDEATHSIG = 1


async def run_processes(
    count: int, args: Sequence[str], *, once: bool = False, settings: Settings | None = None
) -> int:
    """Run ``worker <args>`` ``count`` times side by side until SIGTERM; the exit status.

    Each child gets the environment ``settings`` were loaded from, and `REUSE_PORT_ENV`.
    """
    env = {**(settings or Settings.load()).environ(), REUSE_PORT_ENV: "1"}
    # Ignored until a child's run loop takes it (children inherit this): a SIGHUP
    # passed on while a child still starts must not end it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    end_with_us = functools.partial(_end_with_parent, os.getpid())
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.cli", *args, env=env, preexec_fn=end_with_us
        )
        for _ in range(count)
    ]
    log.info(
        "started %d worker processes: %s",
        count,
        ", ".join(str(child.pid) for child in children),
        extra={"action": "start"},
    )
    stop = asyncio.Event()
    with stop_on_signals(stop), _passing_on(signal.SIGHUP, children):
        return await _watch(children, stop, once=once)


@contextlib.contextmanager
def _passing_on(
    signum: signal.Signals, children: Sequence[asyncio.subprocess.Process]
) -> Iterator[None]:
    """``signum`` sent to the parent goes to every child still running (SIGHUP: each
    reloads its config); the parent itself does not act on it."""
    loop = asyncio.get_running_loop()

    def pass_on() -> None:
        for child in children:
            if child.returncode is None:
                child.send_signal(signum)

    loop.add_signal_handler(signum, pass_on)
    try:
        yield
    finally:
        loop.remove_signal_handler(signum)


async def _watch(
    children: list[asyncio.subprocess.Process], stop: asyncio.Event, *, once: bool
) -> int:
    """Wait for every child; on ``stop`` or the first unexpected exit, stop the rest."""
    exits = {asyncio.ensure_future(child.wait()): child for child in children}
    stopping = asyncio.ensure_future(stop.wait())
    status = 0
    signalled = False
    try:
        while exits:
            watched = set(exits) if signalled else {*exits, stopping}
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for ended in done & exits.keys():
                code = _ended(exits.pop(ended), stop, once=once)
                status = status or code  # the first failure's
            if stop.is_set() and not signalled:
                signalled = True
                for child in exits.values():
                    child.send_signal(signal.SIGTERM)
    finally:
        stopping.cancel()
    return status


def _ended(child: asyncio.subprocess.Process, stop: asyncio.Event, *, once: bool) -> int:
    """The status a child's exit gives the parent; an unexpected one sets ``stop``."""
    code = child.returncode or 0
    as_ours = code if code >= 0 else 1  # killed by a signal
    if stop.is_set() or (once and code == 0):
        return as_ours
    log.error(
        "worker process %d exited with status %d; stopping the others",
        child.pid,
        code,
        extra={"action": "stop"},
    )
    stop.set()
    return as_ours or 1


def _end_with_parent(parent: int) -> None:
    """In a child, before it runs the worker: SIGTERM (a drain) when ``parent`` dies
    (Linux's ``PR_SET_PDEATHSIG``), so a parent killed with SIGKILL leaves no worker
    behind, claiming and holding the shared port. Elsewhere, nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the wish was made
        os.kill(os.getpid(), signal.SIGTERM)
