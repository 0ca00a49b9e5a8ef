"""The benchmark's plot: held-out PSNR against training wall-clock (every seed, and the mean), and each row's
final full-frame and mouth PSNR, one point per seed."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench_config import BenchmarkConfig
from bench_rows import STOCK_ROWS


def _points(run: dict[str, Any], with_steps: bool = True) -> list[tuple[float, float]]:
    """A run's (time, PSNR) readings, the PSNR over the curve frames (``subset_psnr``) where a reading has it:
    every point then scores the same frames."""
    return sorted(
        (c["train_time_s"], c.get("subset_psnr", c["psnr"])) for c in run["curve"] if with_steps or c["kind"] != "steps"
    )


def _mean_curve(runs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """The k-th readings of every seed averaged (the seeds are read at the same nominal times)."""
    curves = [_points(run, with_steps=False) for run in runs]
    length = min(len(c) for c in curves)
    times = [statistics.fmean(c[k][0] for c in curves) for k in range(length)]
    psnrs = [statistics.fmean(c[k][1] for c in curves) for k in range(length)]
    return times, psnrs


def make_plot(cfg: BenchmarkConfig, grouped: dict[str, list[dict[str, Any]]]) -> str | None:
    """Write ``cfg.plot``; its path relative to the markdown file (None without matplotlib or results)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return None
    rows = [row for row, runs in grouped.items() if runs]
    if not rows:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(rows):
        colour = colours[i % len(colours)]
        style = "--" if row in STOCK_ROWS else "-"
        for run in grouped[row]:
            pts = _points(run)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, lw=0.7, alpha=0.35, ls=style)
        times, psnrs = _mean_curve(grouped[row])
        ax.plot(times, psnrs, color=colour, lw=2, marker="o", ms=3, ls=style, label=f"{row} (n={len(grouped[row])})")
        for offset, key, marker in ((-0.15, "psnr", "o"), (0.15, "mouth_psnr", "s")):
            values = [run["equal_time"].get(key) for run in grouped[row]]
            values = [v for v in values if v is not None]
            if not values:
                continue
            mean = statistics.fmean(values)
            bx.errorbar(
                [i + offset],
                [mean],
                yerr=[[mean - min(values)], [max(values) - mean]],
                color=colour,
                marker=marker,
                ms=7,
                capsize=4,
                mfc="white" if key == "mouth_psnr" else colour,
            )
            bx.scatter([i + offset] * len(values), values, color=colour, s=10, zorder=3)
    ax.axvline(cfg.time_budget_s, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel(f"held-out PSNR (dB, {cfg.curve_frames} frames)")
    ax.set_title(f"held-out PSNR vs wall-clock (thin: seeds, bold: mean), {cfg.resolution}x{cfg.resolution}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.set_xticks(range(len(rows)))
    bx.set_xticklabels(rows, rotation=30, ha="right", fontsize=8)
    bx.set_ylabel("PSNR at the budget (dB)")
    bx.set_title("filled: full frame, open: mouth; bars: seed min-max, dots: seeds", fontsize=9)
    bx.grid(alpha=0.3, axis="y")
    cfg.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(cfg.plot, dpi=110)
    plt.close(fig)
    try:
        return os.path.relpath(cfg.plot, cfg.markdown.parent)
    except ValueError:
        return str(cfg.plot)
