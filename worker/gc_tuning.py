"""The garbage collector while serving: collect less often, never re-scan start-up objects."""

from __future__ import annotations

import gc

from worker.settings import Settings

__all__ = ["GC_THRESHOLD", "tune_gc"]

#: The young generation's collection threshold while serving (CPython's default is 700).
GC_THRESHOLD = (10_000, 50, 100)


def tune_gc(settings: Settings | None = None) -> None:
    """Collect cyclic garbage less often while serving, and never re-scan start-up objects.

    A job allocates a few hundred short-lived objects that reference counting frees;
    at CPython's default threshold the collector still ran so often under load that
    it took about a fifth of the worker's CPU (bench/README.md). ``gc.freeze`` moves
    everything alive after start-up (modules, config, compiled templates) out of the
    collector's reach; ``WORKER_GC=default`` leaves the interpreter as it is.
    """
    if (settings or Settings.load()).gc_default():
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
