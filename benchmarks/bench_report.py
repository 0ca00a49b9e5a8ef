"""The report: ``BENCHMARKS.md`` (each row's mean and spread over the seeds, the sampler, the ablations, sahs
against sahs-fast, the targets) and the plot."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from bench_config import ABLATIONS, FULL_ROW, NERFACE_ROWS, ROW_NOTES, SAMPLER_PAIRS, BenchmarkConfig
from bench_plot import make_plot
from bench_rows import STOCK_ROWS
from bench_stats import Comparison, Stat, compare, failures, group_runs, metric

KEPT_SECTIONS = ("## Preprocessing", "## Memory")
"""Sections of BENCHMARKS.md written by other benchmarks (``benchmarks/process_speed.py``,
``benchmarks/memory.py``): kept, after this benchmark's sections, when the file is rewritten."""

MOUTH_TARGET_DB = 1.0
"""The semantic sampler's target: this much mouth PSNR over uniform at equal wall-clock (issue 15)."""

Grouped = dict[str, list[dict[str, Any]]]


def machine_description(cfg: BenchmarkConfig) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    desc = f"{cpu}, {cores} cores available, torch {torch.__version__}"
    if cfg.resolved_device() == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    try:
        import tinycudann  # noqa: F401

        desc += ", tiny-cuda-nn"
    except Exception:
        desc += ", no tiny-cuda-nn (torch hash grids)"
    threads = cfg.threads if cfg.threads is not None else torch.get_num_threads()
    return desc + f"; {cfg.jobs} runs at a time, {threads} torch thread(s) each"


def _cell(s: Stat | None, fmt: str = "{:.2f}") -> str:
    """``mean ± std`` (one seed: the value)."""
    if s is None:
        return "–"
    return fmt.format(s.mean) if s.n == 1 else f"{fmt.format(s.mean)} ± {fmt.format(s.std)}"


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if value is None or not math.isfinite(value) else fmt.format(value)


def _range(s: Stat | None) -> str:
    return "–" if s is None else f"{s.lo:.2f}–{s.hi:.2f}"


def _rays(ok: Grouped) -> str:
    values = sorted({int(r["rays"]) for runs in ok.values() for r in runs if r.get("rays")})
    return "/".join(str(v) for v in values) or "?"


def rewrite_report(cli: BenchmarkConfig) -> None:
    """``--report-only``: the report and plot of the output dir's last run."""
    saved = BenchmarkConfig.from_json(json.loads((cli.output_dir / "benchmark_config.json").read_text()))
    cfg = dataclasses.replace(saved, label=cli.label, markdown=cli.markdown, plot=cli.plot)
    info = json.loads((cli.output_dir / "run_info.json").read_text())
    results = [json.loads(p.read_text()) for p in sorted((cli.output_dir / "rows").glob("*.json"))]
    started = datetime.datetime.fromisoformat(info["started"])
    finished = datetime.datetime.fromisoformat(info["finished"])
    write_outputs(cfg, results, info["command"], started, finished)
    print(f"wrote {cfg.markdown} and {cfg.plot}")


def write_outputs(
    cfg: BenchmarkConfig,
    results: list[dict[str, Any]],
    command: str,
    started: datetime.datetime,
    finished: datetime.datetime,
) -> None:
    """The plot and the markdown (keeping the other benchmarks' sections of an existing file)."""
    grouped = group_runs(results, cfg.rows)
    plot = make_plot(cfg, grouped)
    text = render_markdown(cfg, results, command, started, finished, plot)
    kept = kept_sections(cfg.markdown.read_text()) if cfg.markdown.is_file() else ""
    cfg.markdown.parent.mkdir(parents=True, exist_ok=True)
    cfg.markdown.write_text(text + ("\n" + kept if kept else ""))


def kept_sections(text: str) -> str:
    """The ``KEPT_SECTIONS`` of an existing report, each up to the next ``## `` heading."""
    out: list[str] = []
    keep = False
    for line in text.splitlines():
        if line.startswith("## "):
            keep = line.startswith(KEPT_SECTIONS)
        if keep:
            out.append(line)
    return "\n".join(out).rstrip() + "\n" if out else ""


def render_markdown(
    cfg: BenchmarkConfig,
    results: list[dict[str, Any]],
    command: str,
    started: datetime.datetime,
    finished: datetime.datetime,
    plot: str | None,
) -> str:
    grouped = group_runs(results, cfg.rows)
    ok = {row: runs for row, runs in grouped.items() if runs}
    first = next(iter(ok.values()))[0] if ok else None
    held = first["equal_time"]["num_frames"] if first else "?"
    lines = ["# Benchmarks", ""]
    if cfg.label:
        lines += [f"> **{cfg.label}**", ""]
    lines += [
        f"- date: {started:%Y-%m-%d %H:%M} – {finished:%H:%M} ({(finished - started).total_seconds() / 60:.1f} min)",
        f"- machine: {machine_description(cfg)}",
        f"- command: `{command}`",
        f"- training seeds (`machine.seed`): {', '.join(str(s) for s in cfg.seeds)}; every table gives the mean ± "
        "sample standard deviation over them, every comparison says whether the seed ranges (min–max) overlap",
        f"- data: synthetic subject, {cfg.layout} layout ({'expression' if cfg.layout == 'nerface' else 'audio'} "
        + (
            f"driver), {cfg.resolution}x{cfg.resolution}, {cfg.num_train} training frames, subject seed "
            f"{cfg.subject_seed}; "
            if cfg.data is None
            else f"driver) read from {cfg.data}; "
        )
        + f"held-out split = {held} frames of novel expression combinations",
        f"- budget: **{cfg.time_budget_s:.0f} s of training** per run (equal wall-clock, evaluation excluded), "
        + (f"{cfg.rays} rays a step" if cfg.rays else f"{_rays(ok)} rays a step (the presets')")
        + (f", and a reading at {cfg.equal_steps} steps" if cfg.equal_steps else "")
        + "; sizes: "
        + (
            "the GPU defaults"
            if cfg.resolved_scale() == "gpu"
            else "`presets.demo_trainer_config` (what `sahs-demo` trains)"
            if cfg.preset == "demo"
            else "`presets.fast_cpu_trainer_config` / `presets.cpu_trainer_config`"
        )
        + f"; device: {cfg.resolved_device()}",
        "- metrics: full frame, no pasting; mouth = GT mouth interior + lips pixels (mouth open: frames whose GT "
        "shows mouth-interior pixels); head = GT head classes; LPIPS only when AlexNet weights are on disk"
        + ("" if any("lpips" in r["equal_time"] for runs in ok.values() for r in runs) else " (they are not here)"),
        "",
    ]
    lines += _results_table(ok)
    lines += _per_seed_table(ok)
    if plot:
        lines += [f"![held-out PSNR against training wall-clock; final PSNR per seed]({plot})", ""]
    lines += _sampler_section(ok)
    lines += _ablation_section(ok)
    lines += _sahs_vs_fast(ok)
    if cfg.equal_steps:
        lines += _equal_steps_table(ok, cfg.equal_steps)
    lines += _speedup_section(ok, cfg.equal_steps)
    lines += ["## Targets", ""] + targets(ok) + [""]
    lines += _refine_section(ok)
    lines += _rows_section(cfg, ok, results)
    return "\n".join(lines)


def _results_table(ok: Grouped) -> list[str]:
    lines = [
        "## At equal wall-clock (mean ± std over seeds)",
        "",
        "| row | seeds | steps done | PSNR | SSIM | LPIPS | mouth PSNR | mouth open | mouth closed | head PSNR | mIoU "
        "| train rays/s | render FPS | peak mem (MB) | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, runs in ok.items():

        def m(key: str, fmt: str = "{:.2f}") -> str:
            return _cell(metric(runs, key), fmt)  # noqa: B023 (used at once, inside the loop)

        def top(key: str, fmt: str) -> str:
            return _cell(metric(runs, key, None), fmt)  # noqa: B023

        lines.append(
            f"| {row} | {len(runs)} | {_cell(metric(runs, 'step'), '{:.0f}')} | {m('psnr')} | {m('ssim', '{:.3f}')} | "
            f"{m('lpips', '{:.3f}')} | {m('mouth_psnr')} | {m('mouth_open_psnr')} | {m('mouth_closed_psnr')} | "
            f"{m('head_psnr')} | {m('miou', '{:.3f}')} | {top('rays_per_s', '{:.0f}')} | {top('render_fps', '{:.2f}')} | "
            f"{top('peak_memory_mb', '{:.0f}')} | {runs[0]['num_params'] / 1e6:.2f}M |"
        )
    return lines + [""]


def _per_seed_table(ok: Grouped) -> list[str]:
    seeds = sorted({r["seed"] for runs in ok.values() for r in runs})
    lines = [
        "Per seed (held-out PSNR / mouth PSNR, dB):",
        "",
        "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for row, runs in ok.items():
        by_seed = {r["seed"]: r["equal_time"] for r in runs}
        cells = [
            f"{by_seed[s]['psnr']:.2f} / {_f(by_seed[s].get('mouth_psnr'))}" if s in by_seed else "–" for s in seeds
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines + [""]


def _pair_cells(c: Comparison | None, better: str, worse: str) -> str:
    if c is None:
        return "– | –"
    return f"{c.diff:+.2f} | {c.verdict(better, worse)}"


def _sampler_section(ok: Grouped) -> list[str]:
    pairs = [(s, u) for s, u in SAMPLER_PAIRS if s in ok and u in ok]
    if not pairs:
        return []
    lines = [
        "## Semantic vs uniform ray sampler (equal wall-clock)",
        "",
        "| model | mouth PSNR semantic | uniform | difference | seed ranges | PSNR semantic | uniform | difference "
        "| seed ranges |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sem, uni in pairs:
        ms, mu = metric(ok[sem], "mouth_psnr"), metric(ok[uni], "mouth_psnr")
        ps, pu = metric(ok[sem], "psnr"), metric(ok[uni], "psnr")
        lines.append(
            f"| {sem} | {_cell(ms)} | {_cell(mu)} | {_pair_cells(compare(ms, mu), 'semantic higher', 'uniform higher')} "
            f"| {_cell(ps)} | {_cell(pu)} | {_pair_cells(compare(ps, pu), 'semantic higher', 'uniform higher')} |"
        )
    return lines + [""]


def _ablation_section(ok: Grouped) -> list[str]:
    lines: list[str] = []
    for full, ablations in ABLATIONS.items():
        present = [a for a in ablations if a in ok]
        if full not in ok or not present:
            continue
        lines += [
            f"## Ablations of {full} (equal wall-clock; difference = full - ablation)",
            "",
            "| ablation | PSNR | full - ablation | verdict | mouth PSNR | full - ablation | verdict | head PSNR "
            "| full - ablation |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for abl in present:
            cells = []
            for key in ("psnr", "mouth_psnr"):
                a, b = metric(ok[full], key), metric(ok[abl], key)
                cells.append(f"{_cell(b)} | {_pair_cells(compare(a, b), 'full better', 'ablation better')}")
            ha, hb = metric(ok[full], "head_psnr"), metric(ok[abl], "head_psnr")
            hc = compare(ha, hb)
            lines.append(
                f"| {abl} | {cells[0]} | {cells[1]} | {_cell(hb)} | {_f(hc.diff if hc else None, '{:+.2f}')} |"
            )
        lines.append("")
    return lines


def _sahs_vs_fast(ok: Grouped) -> list[str]:
    if "sahs" not in ok or "sahs-fast" not in ok:
        return []
    slow, fast = ok["sahs"], ok["sahs-fast"]
    lines = [
        "## sahs against sahs-fast (equal wall-clock)",
        "",
        "| measure | sahs | sahs-fast | sahs-fast / sahs or difference |",
        "|---|---|---|---|",
    ]
    for label, key, reading in (
        ("held-out PSNR", "psnr", "equal_time"),
        ("mouth PSNR", "mouth_psnr", "equal_time"),
        ("head PSNR", "head_psnr", "equal_time"),
        ("mIoU", "miou", "equal_time"),
        ("steps in the budget", "steps_total", None),
        ("train rays/s", "rays_per_s", None),
        ("render FPS", "render_fps", None),
    ):
        a, b = metric(slow, key, reading), metric(fast, key, reading)
        c = compare(b, a)
        if c is None:
            continue
        if reading is None:
            rel = f"{c.a.mean / c.b.mean:.1f}x" if c.b.mean else "–"
        else:
            rel = f"{c.diff:+.2f} ({c.verdict('sahs-fast higher', 'sahs higher')})"
        fmt = "{:.0f}" if key in ("steps_total", "rays_per_s") else "{:.2f}"
        lines.append(f"| {label} | {_cell(a, fmt)} | {_cell(b, fmt)} | {rel} |")
    return lines + [""]


SPEEDUP_PAIRS: tuple[tuple[str, str], ...] = (
    ("sahs-fast", "sahs-fast-reference"),
    ("sahs-fast-no-occupancy", "sahs-fast-reference"),
    ("sahs-fast", "sahs-fast-no-occupancy"),
)
"""(faster path, its reference) rows: the compiled kernel + occupancy grid, the kernel alone, the grid alone."""
RAYS_TARGET = 4.0
"""Issue 20's target: training rays/s of sahs-fast at least this many times the torch reference's."""


def _speedup_section(ok: Grouped, steps: int) -> list[str]:
    """Each fast path against its reference: training rays/s, and quality at equal steps and equal time."""
    pairs = [(a, b) for a, b in SPEEDUP_PAIRS if a in ok and b in ok]
    if not pairs:
        return []
    lines = [
        "## Compiled kernel and occupancy grid against the torch reference",
        "",
        f"| row | reference | train rays/s | ratio (target >= {RAYS_TARGET:.0f}x for sahs-fast) | PSNR at "
        f"{steps} steps: difference | verdict | PSNR at equal time: difference | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fast, ref in pairs:
        rays = compare(metric(ok[fast], "rays_per_s", None), metric(ok[ref], "rays_per_s", None))
        cells = []
        for reading in ("equal_steps", "equal_time"):
            c = compare(metric(ok[fast], "psnr", reading), metric(ok[ref], "psnr", reading))
            cells += [
                _f(c.diff if c else None, "{:+.2f}"),
                c.verdict("faster path higher", "reference higher") if c else "–",
            ]
        ratio = f"{rays.a.mean / rays.b.mean:.2f}x" if rays and rays.b.mean else "–"
        rays_cell = f"{_cell(rays.a, '{:.0f}')} vs {_cell(rays.b, '{:.0f}')}" if rays else "–"
        lines.append(f"| {fast} | {ref} | {rays_cell} | {ratio} | " + " | ".join(cells) + " |")
    return lines + [""]


def _equal_steps_table(ok: Grouped, steps: int) -> list[str]:
    lines = [
        f"## At equal steps ({steps})",
        "",
        "| row | seeds reached | PSNR | mouth PSNR | time to reach (s) |",
        "|---|---|---|---|---|",
    ]
    for row, runs in ok.items():
        p = metric(runs, "psnr", "equal_steps")
        lines.append(
            f"| {row} | {p.n if p else 0} | {_cell(p)} | {_cell(metric(runs, 'mouth_psnr', 'equal_steps'))} | "
            f"{_cell(metric(runs, 'train_time_s', 'equal_steps'), '{:.0f}')} |"
        )
    return lines + [""]


def targets(ok: Grouped) -> list[str]:
    out: list[str] = []
    sem, uni = SAMPLER_PAIRS[0]
    if sem in ok and uni in ok:
        mouth = compare(metric(ok[sem], "mouth_psnr"), metric(ok[uni], "mouth_psnr"))
        full = compare(metric(ok[sem], "psnr"), metric(ok[uni], "psnr"))
        if mouth and full:
            gain = mouth.diff >= MOUTH_TARGET_DB
            outside = mouth.separated and mouth.diff > 0
            # "No loss": the mean full-frame PSNR is not lower by more than the larger seed std.
            no_loss = full.diff >= -full.spread
            met = gain and outside and no_loss
            out.append(
                f"- semantic sampler on {sem}: mouth PSNR {mouth.diff:+.2f} dB over uniform (target >= "
                f"+{MOUTH_TARGET_DB:.0f} dB: {'yes' if gain else 'no'}), seed ranges {_range(mouth.a)} vs "
                f"{_range(mouth.b)} ({'outside' if outside else 'not outside'} the seed spread), full-frame PSNR "
                f"{full.diff:+.2f} dB ({'no loss' if no_loss else 'a loss'}: counted as a loss when lower by more "
                f"than the larger seed std, {full.spread:.2f}): " + ("**met**" if met else "**not met**")
            )
    for full_row, nerface in NERFACE_ROWS.items():
        if full_row not in ok or nerface not in ok:
            continue
        c = compare(metric(ok[full_row], "psnr"), metric(ok[nerface], "psnr"))
        cm = compare(metric(ok[full_row], "mouth_psnr"), metric(ok[nerface], "mouth_psnr"))
        if c is None:
            continue
        holds = c.separated and c.diff > 0
        if holds:
            verdict = "**holds here**"
        elif c.separated:
            verdict = "**does not hold here: the NeRFace-style field is better**"
        else:
            verdict = "**not shown here: the difference is within the seed spread**"
        out.append(
            f"- the paper's claim (deformation + hyper-space beat a code-concatenating NeRFace-style field on novel "
            f"expressions), on {full_row}: held-out PSNR {c.a.mean:.2f} vs {c.b.mean:.2f} dB ({c.diff:+.2f}; seed "
            f"ranges {_range(c.a)} vs {_range(c.b)})" + (f", mouth {cm.diff:+.2f} dB" if cm else "") + f": {verdict}"
        )
    if FULL_ROW in ok:
        for abl in ABLATIONS[FULL_ROW]:
            if abl in ok and abl != NERFACE_ROWS[FULL_ROW]:
                c = compare(metric(ok[FULL_ROW], "psnr"), metric(ok[abl], "psnr"))
                if c:
                    out.append(
                        f"- {FULL_ROW} against {abl}: {c.diff:+.2f} dB held-out PSNR, "
                        f"{c.verdict('the full model is better', 'the ablation is better')}"
                    )
    for name in ("sahs", "sahs-fast"):
        for ref in STOCK_ROWS:
            if name in ok and ref in ok:
                c = compare(metric(ok[name], "psnr"), metric(ok[ref], "psnr"))
                if c:
                    out.append(
                        f"- {name} against {ref} on held-out novel expressions: {c.diff:+.2f} dB, "
                        f"{c.verdict(f'{name} better', f'{ref} better')}"
                    )
    return out or ["- (needs the sahs-fast rows)"]


def _refine_section(ok: Grouped) -> list[str]:
    refined = {row: r["refine"] for row, runs in ok.items() for r in runs if "refine" in r}
    lines = ["## Stage II refinement (optional, `--refine`, first seed)", ""]
    if not refined:
        return lines + ["Not run (pass `--refine`).", ""]
    lines += [
        "Refiner trained on the Stage-I renders (the run's final model) of the training frames, scored on the "
        "held-out renders.",
        "",
        "| row | epochs | test PSNR before | after | SSIM before | after | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, r in refined.items():
        lines.append(
            f"| {row} | {r['epochs']}+{r['epochs']} | {_f(r['psnr_before'])} | {_f(r['psnr_after'])} | "
            f"{_f(r['ssim_before'], '{:.3f}')} | {_f(r['ssim_after'], '{:.3f}')} | {_f(r['seconds'], '{:.0f}')} |"
        )
    return lines + [""]


def _rows_section(cfg: BenchmarkConfig, ok: Grouped, results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Rows", ""]
    for row, runs in ok.items():
        steps = metric(runs, "steps_total", None)
        sps = metric(runs, "seconds_per_step", None)
        sched = metric(runs, "planned_schedule_steps", None)
        lines.append(
            f"- `{row}`: {ROW_NOTES.get(row, '')}. {_cell(steps, '{:.0f}')} steps in {cfg.time_budget_s:.0f} s "
            f"({_cell(sps, '{:.3f}')} s/step); decaying lr schedules stretched to {_cell(sched, '{:.0f}')} steps."
            + (" LPIPS disabled inside the run process (offline)." if runs[0].get("lpips_disabled_at_startup") else "")
        )
    for run in failures(results):
        last = run["error"].splitlines()[-1] if run["error"] else ""
        lines.append(f"- `{run['row']}` seed {run.get('seed')}: **failed**: `{last}`")
    cpu_wall = metric([r for runs in ok.values() for r in runs], "cpu_per_wall", None)
    setup = metric([r for runs in ok.values() for r in runs], "setup_s", None)
    evals = metric([r for runs in ok.values() for r in runs], "eval_s", None)
    first = next(iter(ok.values()))[0] if ok else {}
    lines += [
        "",
        f"Notes: every run trains in its own process, {cfg.jobs} at a time; training time excludes evaluation. "
        f"CPU time / wall time of the training loops: {_cell(cpu_wall)} (range {_range(cpu_wall)}; below ~0.9 a "
        f"run waited for a core). Start-up (imports, data, model) {_cell(setup, '{:.0f}')} s and evaluation "
        f"{_cell(evals, '{:.0f}')} s a run, outside the budget. Memory is {first.get('memory_kind', 'n/a')}. On the "
        "expression driver every sahs / sahs-fast row feeds the expression code into the canonical field too (the "
        "published NeRFace-derived choice); the NeRFace-style rows drop the warp and the hyper-space around it.",
        "",
    ]
    if any(r in ok for r in STOCK_ROWS):
        lines += [
            "The stock models read the data through the `sahs-data` dataparser (ordinary cameras + per-split times);"
            " at CPU scale nerfacto uses sahs-fast's CPU grid/sample sizes and dnerf the sahs CPU sample counts. "
            "dnerf's times are per split, so it cannot know the held-out expressions; nerfacto ignores time and "
            "driver.",
            "",
        ]
    return lines
