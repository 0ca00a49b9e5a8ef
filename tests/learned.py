"""Learned quantities in the tests: the seed and thread count the suite trains with, and bounds that record what
they measured.

A test that trains something and then asserts a number about it (a PSNR, an mIoU, a correlation, a ratio) calls
``learned.above(name, value, bound)`` or ``learned.below(...)``. The assertion is a plain one; with
``SAHS_TEST_RECORD=<file.jsonl>`` the measured value, the bound, the seed and the thread count are appended to that
file first, so ``benchmarks/learned_bounds.py`` can run the learning tests over several seeds and thread counts and
print the table of ``tests/README.md`` (worst measured value against each bound).

Environment:
- ``SAHS_TEST_SEED`` (default 0): nerfstudio's ``machine.seed`` and the refiner's seed in every training.
- ``SAHS_TEST_THREADS`` (default 1): torch's thread count in the test process.
- ``SAHS_TEST_RECORD``: where to append the measured values (unset: nothing is written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SEED_VAR = "SAHS_TEST_SEED"
THREADS_VAR = "SAHS_TEST_THREADS"
RECORD_VAR = "SAHS_TEST_RECORD"


def _int_from_env(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}: expected an integer, found {raw!r}") from None
    if value < minimum:
        raise SystemExit(f"{name}: expected an integer >= {minimum}, found {value}")
    return value


def test_seed() -> int:
    """The seed every training in the suite uses (``SAHS_TEST_SEED``, default 0)."""
    return _int_from_env(SEED_VAR, 0, 0)


def test_threads() -> int:
    """torch's thread count in the test process (``SAHS_TEST_THREADS``, default 1)."""
    return _int_from_env(THREADS_VAR, 1, 1)


# pytest would collect the two helpers above as tests from a module that imports them by these names.
test_seed.__test__ = False  # type: ignore[attr-defined]
test_threads.__test__ = False  # type: ignore[attr-defined]


class LearnedBounds:
    """Bounds on learned quantities of one test, recorded when ``SAHS_TEST_RECORD`` is set."""

    def __init__(self, test: str) -> None:
        self.test = test

    def _record(self, name: str, value: float, op: str, bound: float) -> None:
        path = os.environ.get(RECORD_VAR)
        if not path:
            return
        row = {
            "test": self.test,
            "name": name,
            "value": float(value),
            "op": op,
            "bound": float(bound),
            "seed": test_seed(),
            "threads": test_threads(),
        }
        with Path(path).open("a") as f:
            f.write(json.dumps(row) + "\n")

    def above(self, name: str, value: float, bound: float, context: object = None) -> None:
        """Assert ``value > bound`` (recorded first)."""
        self._record(name, value, ">", bound)
        assert value > bound, (name, value, bound, context)

    def below(self, name: str, value: float, bound: float, context: object = None) -> None:
        """Assert ``value < bound`` (recorded first)."""
        self._record(name, value, "<", bound)
        assert value < bound, (name, value, bound, context)
