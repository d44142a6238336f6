"""Stopping a server a test started: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess

__all__ = ["stop"]


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace_s: float = 10) -> None:
    """Ask ``proc`` to end; kill it if it has not within ``grace_s``; reap it either way."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
