"""Per-frame work on several CPU cores: forked workers run one task over frame indices.

The task is a closure (it reads frames and writes files), which a process pool cannot pickle; with
the ``fork`` start method the workers inherit it as a module global set just before the pool starts.
Tasks return nothing: they write their results to files, so the order of completion does not matter.
"""

from __future__ import annotations

import multiprocessing
from typing import Callable, Optional

_TASK: Optional[Callable[[int], None]] = None


def _call(index: int) -> int:
    assert _TASK is not None
    _TASK(index)
    return index


def run_indexed(
    task: Callable[[int], None], count: int, workers: int = 1, on_done: Optional[Callable[[int], None]] = None
) -> None:
    """``task(i)`` for ``i`` in ``range(count)``, on ``workers`` processes (1: in this process)."""
    global _TASK
    done = on_done or (lambda n: None)
    if workers <= 1 or count < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for i in range(count):
            task(i)
            done(i + 1)
        return
    _TASK = task
    pool = multiprocessing.get_context("fork").Pool(min(workers, count))
    try:
        for n, _ in enumerate(pool.imap_unordered(_call, range(count), chunksize=4), start=1):
            done(n)
        # A clean exit (not terminate): the workers are waited for, so their CPU time is counted
        # in this process's children (``cpu_seconds``).
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _TASK = None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished (waited-for) workers."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
