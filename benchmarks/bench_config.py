"""The benchmark's settings (``BenchmarkConfig``, the command-line flags of ``benchmarks/run.py``) and its rows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ALL_ROWS: tuple[str, ...] = (
    "sahs",
    "sahs-fast",
    "sahs-no-hyper",
    "sahs-no-warp",
    "sahs-nerface",
    "sahs-uniform",
    "sahs-fast-uniform",
    "nerfacto",
    "dnerf",
)
DEFAULT_ROWS: tuple[str, ...] = ALL_ROWS

ROW_NOTES: dict[str, str] = {
    "sahs": "full model: warp + hyper-space + semantic head, coarse/fine MLPs, semantic ray sampler",
    "sahs-fast": "hash grids + (x', w) planes, proposal sampling, same semantic head / background / sampler",
    "sahs-no-hyper": "sahs without the hyper-space (ambient) MLP",
    "sahs-no-warp": "sahs without the warp MLP (x' = x)",
    "sahs-nerface": "neither warp nor hyper: driving code into the canonical MLP (NeRFace / AD-NeRF style)",
    "sahs-uniform": "sahs with uniform ray sampling instead of the semantic sampler",
    "sahs-fast-uniform": "sahs-fast with uniform ray sampling",
    "nerfacto": "nerfstudio nerfacto, static (ignores the driver); LPIPS disabled at start-up",
    "dnerf": "nerfstudio dnerf, time-conditioned (per-split frame time, no driver); LPIPS disabled at start-up",
}


@dataclass
class BenchmarkConfig:
    """Train every row for an equal step count and an equal wall-clock budget; write a table and a plot."""

    output_dir: Path = Path("benchmarks/runs")
    """Working folder: the synthetic subject (unless ``--data``), the runs and the per-row JSON."""
    data: Path | None = None
    """Root of a synthetic subject (holding ``nerface/`` and ``adnerf/``); None generates one in the output dir."""
    layout: Literal["nerface", "adnerf"] = "nerface"
    """Which layout to train on: expression-driven (NeRFace) or audio-driven (AD-NeRF)."""
    resolution: int = 64
    """Side of the synthetic subject's square frames."""
    num_train: int = 60
    """Training frames of the synthetic subject (the held-out split has num_train // 10 novel-expression frames)."""
    seed: int = 0
    """Seed of the synthetic subject."""
    rows: tuple[str, ...] = DEFAULT_ROWS
    """Rows to run, from: sahs, sahs-fast, sahs-no-hyper, sahs-no-warp, sahs-nerface, sahs-uniform,
    sahs-fast-uniform, nerfacto, dnerf."""
    time_budget_s: float = 100.0
    """Equal wall-clock training budget per row (seconds, evaluation excluded)."""
    equal_steps: int = 150
    """Equal step budget per row."""
    rays: int = 512
    """Rays per training step, every row (512: more steps in a short CPU budget)."""
    scale: Literal["auto", "cpu", "gpu"] = "auto"
    """Model sizes: the CPU presets, or the methods' own (GPU) defaults. auto: gpu when CUDA is available."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device (auto: cuda when available)."""
    threads: int | None = None
    """torch CPU threads per row process (None: torch's default, all cores)."""
    curve_points: int = 5
    """Evaluations at T/2^(n-1), ..., T/4, T/2, T of the time budget T, for the PSNR-vs-time plot and the
    time sahs-fast needs to reach sahs's PSNR."""
    curve_frames: int = 2
    """Held-out frames scored at the intermediate curve points (all of them at the two budgets)."""
    eval_chunk: int | None = None
    """Rays per forward pass when rendering, every row (None: 1024 on a CPU, where small chunks stay in cache
    and render ~2x faster than 8192; each method's own default on a GPU)."""
    max_time_factor: float = 1.5
    """A row stops after this many time budgets even without reaching ``equal_steps`` (its equal-steps
    columns are then empty): keeps a very slow row from dominating the run."""
    refine: bool = False
    """Also run Stage II (texture refiner) on ``refine_rows``: test PSNR before/after refinement."""
    refine_rows: tuple[str, ...] = ("sahs", "sahs-fast")
    """Rows whose final model (end of the row's run) gets a Stage II refiner when ``--refine``."""
    refine_epochs: int = 1
    """Refiner epochs at constant lr (then as many decayed epochs)."""
    markdown: Path = Path("BENCHMARKS.md")
    """Where the results table goes."""
    plot: Path = Path("benchmarks/psnr_vs_time.png")
    """Where the PSNR-vs-wall-clock plot goes."""
    label: str = ""
    """A line printed at the top of the report (e.g. 'SMOKE RUN: timings meaningless')."""
    reuse: bool = False
    """Reuse rows whose JSON already exists in the output dir (to resume an interrupted benchmark)."""
    report_only: bool = False
    """Train nothing: rewrite the report and plot from the output dir's last run (its settings; this command's
    ``--label``, ``--markdown`` and ``--plot``)."""

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_scale(self) -> str:
        if self.scale == "auto":
            return "gpu" if self.resolved_device() == "cuda" else "cpu"
        return self.scale

    def data_root(self) -> Path:
        return self.data if self.data is not None else self.output_dir / "data"

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, values: dict) -> "BenchmarkConfig":
        out = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:  # written by an older version of this script: keep the default
                continue
            v = values[f.name]
            if f.name in ("output_dir", "data", "markdown", "plot") and v is not None:
                v = Path(v)
            if isinstance(v, list):
                v = tuple(v)
            out[f.name] = v
        return cls(**out)
