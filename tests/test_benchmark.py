"""The benchmark (``benchmarks/``): its statistics over seeds, its report's verdicts, and one real run.

The report tests feed hand-made per-run results (the JSON ``bench_worker.run_row`` writes) whose seed
spreads are known, so every mean, spread and verdict has one right answer. The run test trains the
NeRFace-style ``sahs-fast`` row (the switches the ablations need) for about a second on the shared subject.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import pytest
from bench_config import BenchmarkConfig, run_name
from bench_report import kept_sections, render_markdown, write_outputs
from bench_stats import compare, stat


def _run(row: str, seed: int, psnr: float, mouth: float) -> dict[str, Any]:
    """One run's result as ``bench_worker.run_row`` writes it (the fields the report reads)."""
    reading = {"kind": "time", "step": 100, "train_time_s": 10.0, "psnr": psnr, "ssim": 0.5, "mouth_psnr": mouth}
    reading |= {"head_psnr": psnr - 3, "miou": 0.5, "render_fps": 2.0, "num_frames": 6, "mouth_open_psnr": mouth}
    return {
        "row": row,
        "seed": seed,
        "notes": "",
        "num_params": 10**6,
        "steps_total": 100,
        "planned_schedule_steps": 100,
        "rays_per_s": 3000.0,
        "seconds_per_step": 0.1,
        "train_cpu_s": 9.5,
        "cpu_per_wall": 0.95,
        "setup_s": 20.0,
        "eval_s": 5.0,
        "equal_steps": None,
        "equal_time": reading,
        "render_fps": 2.0,
        "peak_memory_mb": 1000.0,
        "memory_kind": "peak RSS of the run process",
        "curve": [dict(reading, kind="start", train_time_s=0.0, psnr=psnr - 5), reading],
    }


def _report(tmp_path: Path, rows: dict[str, list[tuple[float, float]]]) -> str:
    cfg = BenchmarkConfig(
        rows=tuple(rows), device="cpu", markdown=tmp_path / "B.md", plot=tmp_path / "p.png", time_budget_s=10.0
    )
    results = [_run(row, seed, p, m) for row, values in rows.items() for seed, (p, m) in enumerate(values)]
    now = datetime.datetime(2026, 12, 2, 5, 10)
    return render_markdown(cfg, results, "benchmarks/run.py", now, now, "p.png")


def test_stat_and_separation():
    s = stat([20.0, 21.0, 22.0, None, math.nan])
    assert s is not None and s.n == 3
    assert s.mean == pytest.approx(21.0) and s.std == pytest.approx(1.0) and (s.lo, s.hi) == (20.0, 22.0)
    apart = compare(stat([23.0, 24.0, 25.0]), s)
    overlapping = compare(stat([21.5, 23.0, 24.0]), s)
    single = compare(stat([30.0]), stat([20.0]))
    assert apart is not None and apart.separated and apart.diff == pytest.approx(3.0)
    assert overlapping is not None and not overlapping.separated
    assert single is not None and not single.separated  # one seed has no spread to be outside of
    assert stat([None]) is None and compare(None, s) is None


def test_report_sampler_target_and_paper_claim(tmp_path):
    text = _report(
        tmp_path,
        {
            # mouth gain 1.5 dB, ranges apart, full-frame PSNR equal: the sampler target is met.
            "sahs-fast": [(24.0, 18.0), (24.5, 18.5), (25.0, 19.0)],
            "sahs-fast-uniform": [(24.2, 16.5), (24.5, 17.0), (24.8, 17.4)],
            # The NeRFace-style field is better outside the spread: the paper's claim does not hold.
            "sahs-fast-nerface": [(26.0, 19.0), (26.5, 19.5), (27.0, 20.0)],
        },
    )
    assert "| sahs-fast | 3 | 100 ± 0 | 24.50 ± 0.50 |" in text
    assert "seed 0 | seed 1 | seed 2" in text and "24.00 / 18.00" in text
    target = next(line for line in text.splitlines() if line.startswith("- semantic sampler"))
    assert "+1.53 dB" in target and "outside the seed spread" in target and target.endswith("**met**")
    claim = next(line for line in text.splitlines() if line.startswith("- the paper's claim"))
    assert "does not hold here" in claim and "-2.00" in claim


def test_report_within_spread_is_not_met(tmp_path):
    text = _report(
        tmp_path,
        {
            # A 1.2 dB mean gain whose seed ranges overlap: not outside the spread, so not met.
            "sahs-fast": [(24.0, 16.0), (24.5, 18.5), (25.0, 20.0)],
            "sahs-fast-uniform": [(24.2, 16.5), (24.5, 17.0), (24.8, 17.4)],
            "sahs-fast-nerface": [(24.0, 16.0), (24.4, 17.0), (25.2, 18.0)],
        },
    )
    target = next(line for line in text.splitlines() if line.startswith("- semantic sampler"))
    assert "not outside the seed spread" in target and target.endswith("**not met**")
    claim = next(line for line in text.splitlines() if line.startswith("- the paper's claim"))
    assert "within the seed spread" in claim


def test_rewrite_keeps_other_benchmarks_sections(tmp_path):
    old = "# Benchmarks\n\n## At equal steps\n\nstale\n\n## Memory (frames)\n\nkeep me\n\n## Targets\n\nstale too\n"
    assert kept_sections(old) == "## Memory (frames)\n\nkeep me\n"
    cfg = BenchmarkConfig(rows=("sahs-fast",), device="cpu", markdown=tmp_path / "B.md", plot=tmp_path / "p.png")
    cfg.markdown.write_text(old)
    now = datetime.datetime(2026, 12, 2, 5, 10)
    write_outputs(cfg, [_run("sahs-fast", 0, 24.0, 18.0)], "cmd", now, now)
    text = cfg.markdown.read_text()
    assert "stale" not in text and text.rstrip().endswith("keep me") and "| sahs-fast | 1 |" in text
    assert cfg.plot.is_file()


def test_nerface_style_fast_row_trains(subject_train, tmp_path):
    """One real run of the NeRFace-style ``sahs-fast`` row (neither warp nor hyper-space) for ~1 s of training:
    the switches reach the field and the run yields every reading the report needs."""
    from bench_worker import run_row

    cfg = BenchmarkConfig(
        output_dir=tmp_path,
        data=subject_train,
        rows=("sahs-fast-nerface",),
        seeds=(3,),
        time_budget_s=1.0,
        curve_points=2,
        curve_frames=1,
        device="cpu",
    )
    result = run_row(cfg, "sahs-fast-nerface", 3, started=0.0)
    assert result["seed"] == 3 and result["steps_total"] >= 1 and result["train_time_total_s"] >= 1.0
    final = result["equal_time"]
    assert math.isfinite(final["psnr"]) and math.isfinite(final["mouth_psnr"]) and final["num_frames"] >= 1
    assert 0.0 <= final["miou"] <= 1.0
    assert (tmp_path / "runs" / run_name("sahs-fast-nerface", 3)).is_dir()
    # what the run ran on travels with its numbers
    assert result["kernel"] == "built" and result["dtype"] == "float32" and result["threads"] >= 1
    assert len(result["commit"].removesuffix("+dirty")) >= 7
    # Neither warp nor hyper-space: no deformation network, no planes; the code goes into the canonical field.
    from bench_rows import ROW_BUILDERS

    field = ROW_BUILDERS["sahs-fast-nerface"](cfg, subject_train / "nerface", 10).pipeline.model.expression_field
    assert (field.use_warp, field.use_hyper, field.canonical_code) == (False, False, True)
