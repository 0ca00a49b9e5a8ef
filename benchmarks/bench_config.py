"""The benchmark's settings (``BenchmarkConfig``, the command-line flags of ``benchmarks/run.py``) and its rows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_ROWS: tuple[str, ...] = (
    "sahs-fast",
    "sahs-fast-uniform",
    "sahs-fast-no-warp",
    "sahs-fast-no-hyper",
    "sahs-fast-nerface",
    "sahs",
)
"""The variant people train (``sahs-fast``), its sampler and conditioning ablations, and the faithful ``sahs``."""
ALL_ROWS: tuple[str, ...] = DEFAULT_ROWS + (
    "sahs-fast-reference",
    "sahs-fast-no-occupancy",
    "sahs-uniform",
    "sahs-no-hyper",
    "sahs-no-warp",
    "sahs-nerface",
    "nerfacto",
    "dnerf",
)

FULL_ROW = "sahs-fast"
"""The row the ablations and the sampler are compared against."""
SAMPLER_PAIRS: tuple[tuple[str, str], ...] = (("sahs-fast", "sahs-fast-uniform"), ("sahs", "sahs-uniform"))
"""(semantic sampler row, uniform sampler row) pairs, same model."""
ABLATIONS: dict[str, tuple[str, ...]] = {
    "sahs-fast": ("sahs-fast-no-warp", "sahs-fast-no-hyper", "sahs-fast-nerface"),
    "sahs": ("sahs-no-warp", "sahs-no-hyper", "sahs-nerface"),
}
"""Full model -> its conditioning ablations."""
NERFACE_ROWS: dict[str, str] = {"sahs-fast": "sahs-fast-nerface", "sahs": "sahs-nerface"}
"""Full model -> its NeRFace-style counterpart (the paper's claim: warp + hyper-space beat it)."""

ROW_NOTES: dict[str, str] = {
    "sahs-fast": "hash grids + (x', w) planes, proposal sampling, semantic head, background, semantic ray sampler "
    "(the CPU preset chosen by `--preset`)",
    "sahs-fast-uniform": "sahs-fast with uniform ray sampling instead of the semantic sampler",
    "sahs-fast-no-warp": "sahs-fast without the warp (x' = x; the deformation grid/MLP only outputs w)",
    "sahs-fast-no-hyper": "sahs-fast without the hyper-space (no w, no (x', w) planes)",
    "sahs-fast-nerface": "sahs-fast with neither warp nor hyper-space: the driving code concatenated into the "
    "canonical field (NeRFace / AD-NeRF style)",
    "sahs-fast-reference": "sahs-fast on the torch reference paths: torch hash grids (not the compiled kernel) "
    "and no occupancy grid (what sahs-fast trained before issue 20)",
    "sahs-fast-no-occupancy": "sahs-fast with the compiled hash-grid kernel but without the occupancy grid",
    "sahs": "full MLP model: warp + hyper-space + semantic head, coarse/fine MLPs, semantic ray sampler "
    "(the CPU preset chosen by `--preset`)",
    "sahs-uniform": "sahs with uniform ray sampling instead of the semantic sampler",
    "sahs-no-hyper": "sahs without the hyper-space (ambient) MLP",
    "sahs-no-warp": "sahs without the warp MLP (x' = x)",
    "sahs-nerface": "sahs with neither warp nor hyper: driving code into the canonical MLP (NeRFace / AD-NeRF style)",
    "nerfacto": "nerfstudio nerfacto, static (ignores the driver); LPIPS disabled at start-up",
    "dnerf": "nerfstudio dnerf, time-conditioned (per-split frame time, no driver); LPIPS disabled at start-up",
}


@dataclass
class BenchmarkConfig:
    """Train every row, once per training seed, for an equal wall-clock budget; write a table and a plot."""

    output_dir: Path = Path("benchmarks/runs")
    """Working folder: the synthetic subject (unless ``--data``), the runs and the per-run JSON."""
    data: Path | None = None
    """Root of a synthetic subject (holding ``nerface/`` and ``adnerf/``); None generates one in the output dir."""
    layout: Literal["nerface", "adnerf"] = "nerface"
    """Which layout to train on: expression-driven (NeRFace) or audio-driven (AD-NeRF)."""
    resolution: int = 64
    """Side of the synthetic subject's square frames."""
    num_train: int = 60
    """Training frames of the synthetic subject (the held-out split has num_train // 10 novel-expression frames)."""
    subject_seed: int = 0
    """Seed of the synthetic subject (the same subject for every row and training seed)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds (``machine.seed``: initial weights, ray sampling); every row runs once per seed."""
    rows: tuple[str, ...] = DEFAULT_ROWS
    """Rows to run, from: sahs-fast, sahs-fast-uniform, sahs-fast-no-warp, sahs-fast-no-hyper, sahs-fast-nerface,
    sahs-fast-reference, sahs-fast-no-occupancy, sahs, sahs-uniform, sahs-no-hyper, sahs-no-warp, sahs-nerface,
    nerfacto, dnerf."""
    jobs: int = 2
    """Runs trained at the same time, each in its own process (with ``threads`` torch threads). The queue keeps
    ``jobs`` runs going until it is empty, so every run shares the machine with the same number of others."""
    threads: int | None = 1
    """torch CPU threads per run process (None: torch's default, all cores)."""
    time_budget_s: float = 150.0
    """Equal wall-clock training budget per run (seconds, evaluation excluded)."""
    equal_steps: int = 0
    """Also score every run after this many steps (an equal-step reading); 0: none."""
    rays: int | None = None
    """Rays per training step, every row; None: each preset's own (the demo's and the CPU presets': 1024)."""
    preset: Literal["demo", "cpu"] = "demo"
    """CPU sizes of sahs / sahs-fast: what ``sahs-demo`` trains (``presets.demo_trainer_config``: the tuned
    ``sahs-fast``, and ``sahs`` at the tiny sizes), or the plain CPU presets (``presets.fast_cpu_trainer_config``,
    ``presets.cpu_trainer_config``)."""
    scale: Literal["auto", "cpu", "gpu"] = "auto"
    """Model sizes: the CPU presets, or the methods' own (GPU) defaults. auto: gpu when CUDA is available."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device (auto: cuda when available)."""
    curve_points: int = 3
    """Evaluations at T/2^(n-1), ..., T/4, T/2, T of the time budget T, for the PSNR-vs-time plot."""
    curve_frames: int = 2
    """Held-out frames scored at the intermediate curve points (all of them at the budgets)."""
    eval_chunk: int | None = None
    """Rays per forward pass when rendering, every row (None: 1024 on a CPU, where small chunks stay in cache
    and render ~2x faster than 8192; each method's own default on a GPU)."""
    max_time_factor: float = 1.5
    """With ``equal_steps``: a run stops after this many time budgets even without reaching ``equal_steps`` (its
    equal-steps columns are then empty): keeps a very slow row from dominating the run."""
    refine: bool = False
    """Also run Stage II (texture refiner) on ``refine_rows``: test PSNR before/after refinement."""
    refine_rows: tuple[str, ...] = ("sahs", "sahs-fast")
    """Rows whose final model (end of the run) gets a Stage II refiner when ``--refine`` (first seed only)."""
    refine_epochs: int = 1
    """Refiner epochs at constant lr (then as many decayed epochs)."""
    markdown: Path = Path("BENCHMARKS.md")
    """Where the results go (the benchmark's sections; a ``## Preprocessing`` or ``## Memory`` section already
    in the file, written by other benchmarks, is kept)."""
    plot: Path = Path("benchmarks/psnr_vs_time.png")
    """Where the plot goes (PSNR against wall-clock per row, and the final PSNRs per seed)."""
    label: str = ""
    """A line printed at the top of the report (e.g. 'SMOKE RUN: timings meaningless')."""
    reuse: bool = False
    """Reuse runs whose JSON already exists in the output dir (to resume an interrupted benchmark)."""
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


def run_name(row: str, seed: int) -> str:
    """One training run's name: its row and its training seed."""
    return f"{row}_seed{seed}"
