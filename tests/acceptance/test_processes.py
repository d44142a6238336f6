"""``worker run --processes N``: N whole workers on one port (SO_REUSEPORT) and one queue."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.conftest import Engine, WorkerProcs, _request, answers, job, wait_until

pytestmark = pytest.mark.slow

_OK = re.compile(r'^worker_jobs_total\{outcome="ok"\} ([0-9.]+)$', re.MULTILINE)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _answered_ok(url: str) -> int:
    """``worker_jobs_total{outcome="ok"}`` of whichever process takes this connection."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        found = _OK.search(resp.read().decode())
    return int(float(found.group(1))) if found else 0


def _listeners(port: int) -> set[str]:
    """The socket inodes listening on loopback ``port`` (``/proc/net/tcp``, state 0A)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            found.add(fields[9])
    return found


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds one of the sockets listening on ``port``."""
    inodes = _listeners(port)
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


def _start_two(workers: WorkerProcs) -> subprocess.Popen[bytes]:
    proc = workers.start("--processes", "2")
    url = proc.http  # type: ignore[attr-defined]
    port = int(url.rsplit(":", 1)[1])
    wait_until(lambda: len(_children(proc.pid)) == 2, what="two worker processes")
    # /healthz answers as soon as one child listens: the kernel spreads connections
    # only over the children listening by then, so wait for both
    wait_until(
        lambda: all(_listens(child, port) for child in _children(proc.pid)),
        what="both workers to listen",
    )
    wait_until(lambda: answers(f"{url}/healthz"), what="the workers to answer")
    return proc


def test_processes__two_serve_one_port_and_stop_cleanly_on_sigterm(
    engine: Engine, workers: WorkerProcs
) -> None:
    proc = _start_two(workers)
    url = proc.http  # type: ignore[attr-defined]
    children = _children(proc.pid)
    pushes = 21  # odd: the two children's counts can never be equal (a set of one)
    for n in range(pushes):  # urllib opens a new connection each time: the kernel picks a child
        body = job("order_status", order_id="12345")
        answer = _request(f"{url}/webhook/data/order_status", engine.token, body)
        assert answer["outcome"] == "ok", (n, answer)
    counts = {_answered_ok(url) for _ in range(40)}
    # Each child counts its own answers: two counts, the whole between them.
    assert len(counts) == 2 and sum(counts) == pushes, counts
    queued = engine.enqueue(job("order_status", order_id="12345"))
    wait_until(lambda: engine.job(queued)["status"] == "done", what="a queued job answered")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, workers.log_of(proc)
    for child in children:
        assert not Path(f"/proc/{child}").exists() or _zombie(child), f"child {child} still runs"
    assert not answers(f"{url}/healthz")


def test_processes__a_child_that_dies_stops_the_others_and_fails_the_run(
    engine: Engine, workers: WorkerProcs
) -> None:
    proc = _start_two(workers)
    first, second = _children(proc.pid)
    os.kill(first, signal.SIGKILL)
    assert proc.wait(timeout=30) != 0
    assert not Path(f"/proc/{second}").exists() or _zombie(second), "the other child still runs"
    assert f"worker process {first} exited" in workers.log_of(proc)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def test_processes__children_end_when_the_parent_is_killed(
    engine: Engine, workers: WorkerProcs
) -> None:
    """SIGKILL leaves the parent no time to stop its children: each asked the kernel for
    a SIGTERM when its parent dies (PR_SET_PDEATHSIG), so none is left holding the port."""
    proc = _start_two(workers)
    url = proc.http  # type: ignore[attr-defined]
    children = _children(proc.pid)
    proc.kill()
    proc.wait(timeout=30)
    for child in children:
        wait_until(
            lambda child=child: not Path(f"/proc/{child}").exists() or _zombie(child),
            timeout_s=30,  # each drains as on SIGTERM (no job in flight): seconds of margin
            what=f"child {child} to end",
        )
    assert not answers(f"{url}/healthz")
