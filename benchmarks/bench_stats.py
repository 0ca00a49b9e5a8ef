"""Statistics over training seeds: each row's mean and spread, and whether two rows are separated by more than
their seed spread."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stat:
    """One metric of one row over its seeds."""

    values: tuple[float, ...]
    """Per-seed values, in seed order."""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0 for a single seed."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)


def stat(values: Sequence[float | None]) -> Stat | None:
    """The finite values' Stat, or None when there are none."""
    kept = tuple(float(v) for v in values if v is not None and math.isfinite(float(v)))
    return Stat(kept) if kept else None


def metric(runs: Sequence[dict[str, Any]], key: str, reading: str | None = "equal_time") -> Stat | None:
    """``key`` over a row's runs: from each run's ``reading`` (``equal_time`` / ``equal_steps``), or a top-level
    value of the run when ``reading`` is None. Runs without that reading are left out."""
    values: list[float | None] = []
    for run in runs:
        source = run if reading is None else run.get(reading)
        values.append(None if not source else source.get(key))
    return stat(values)


@dataclass(frozen=True)
class Comparison:
    """Row ``a`` against row ``b`` on one metric."""

    a: Stat
    b: Stat

    @property
    def diff(self) -> float:
        """Difference of the means, a - b."""
        return self.a.mean - self.b.mean

    @property
    def separated(self) -> bool:
        """The seed ranges do not overlap: every seed of one row is above every seed of the other. Needs at
        least two seeds a row (one seed has no spread to be outside of)."""
        if self.a.n < 2 or self.b.n < 2:
            return False
        return self.a.lo > self.b.hi or self.a.hi < self.b.lo

    @property
    def spread(self) -> float:
        """The larger of the two rows' sample standard deviations."""
        return max(self.a.std, self.b.std)

    def verdict(self, better: str, worse: str) -> str:
        """``better`` / ``worse`` when a is above / below b outside the seed spread, else 'within the seed spread'."""
        if not self.separated:
            return "within the seed spread"
        return better if self.diff > 0 else worse


def compare(a: Stat | None, b: Stat | None) -> Comparison | None:
    return None if a is None or b is None else Comparison(a, b)


def group_runs(results: Sequence[dict[str, Any]], rows: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Successful runs per row, in ``rows`` order, each row's runs in seed order."""
    out: dict[str, list[dict[str, Any]]] = {row: [] for row in rows}
    for run in results:
        if "error" not in run and run.get("row") in out:
            out[run["row"]].append(run)
    for runs in out.values():
        runs.sort(key=lambda r: r.get("seed", 0))
    return out


def failures(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [run for run in results if "error" in run]
