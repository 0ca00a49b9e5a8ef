"""Side-by-side benchmark of ``sahs``, ``sahs-fast``, the SAHS ablations and nerfstudio's nerfacto / dnerf.

One command (CPU sizes are picked automatically without a GPU; the same command reruns on a GPU)::

    .venv/bin/python benchmarks/run.py

Every row trains on the same synthetic subject (``sahs_nerfstudio.data.synthetic``, written once under
``--output-dir``) read through the ``sahs-data`` dataparser, in its own subprocess (so peak memory is per row and
nothing leaks between rows), with one training run per row that goes on until it has done both
``--equal-steps`` steps and ``--time-budget-s`` seconds of training. The held-out split (novel expression
combinations) is scored when the run crosses each budget (equal steps / equal wall-clock) and at a few
intermediate times for the PSNR-vs-time plot. Timings exclude evaluation. Each run's learning-rate schedule is
stretched to the longer of its two budgets (measured from its first steps), so both readings come from one
schedule.

Metrics, all computed here the same way for every row, full frame, nothing pasted: PSNR, SSIM, LPIPS (AlexNet,
only if its weights are on disk: these machines are offline), mouth PSNR (pixels labelled mouth interior or lips
in the ground-truth masks), head PSNR (head classes), mIoU (rows with a semantic head), training rays/s, render FPS
at the dataset resolution, peak memory (CUDA: max allocated; CPU: the row process's peak RSS).

Outputs: ``BENCHMARKS.md`` (``--markdown``), ``benchmarks/psnr_vs_time.png`` (``--plot``) and the raw per-row
JSON under ``<output-dir>/rows``.

Modules, one job each: ``bench_config`` (settings, rows and their notes), ``bench_rows`` (one TrainerConfig
per row), ``bench_heldout`` (scoring, through ``sahs_nerfstudio.utils.metrics``), ``bench_worker`` (one row's
training loop in its own process, and Stage II), ``bench_report`` (BENCHMARKS.md and the plot); this file
generates the subject and drives the row processes.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The sibling modules (bench_*) are found because this script's folder is first on sys.path.
from bench_config import BenchmarkConfig
from bench_report import make_plot, render_markdown, rewrite_report
from bench_rows import ROW_BUILDERS

REPO = Path(__file__).resolve().parent.parent


def ensure_subject(cfg: BenchmarkConfig) -> Path:
    """The synthetic subject: ``--data`` as given, or generated under the output dir (regenerated when an earlier
    benchmark left one of another size / frame count / seed there)."""
    root = cfg.data_root()
    wanted = {"resolution": cfg.resolution, "num_train": cfg.num_train, "seed": cfg.seed}
    marker = root / "benchmark_subject.json"
    present = (root / cfg.layout / "transforms_train.json").is_file()
    if cfg.data is not None and present:
        return root
    if present and marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject

    print(f"generating the synthetic subject in {root} ({cfg.resolution}x{cfg.resolution}, {cfg.num_train} frames)")
    generate_subject(SyntheticConfig(output=root, resolution=cfg.resolution, num_train=cfg.num_train, seed=cfg.seed))
    marker.write_text(json.dumps(wanted))
    return root


def main(cfg: BenchmarkConfig, argv: list[str]) -> None:
    unknown = [r for r in cfg.rows if r not in ROW_BUILDERS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROW_BUILDERS)}")
    # Absolute paths: the row processes run from the repository root.
    cfg = dataclasses.replace(
        cfg,
        output_dir=cfg.output_dir.resolve(),
        data=None if cfg.data is None else cfg.data.resolve(),
        markdown=cfg.markdown.resolve(),
        plot=cfg.plot.resolve(),
    )
    if cfg.report_only:
        rewrite_report(cfg)
        return
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    ensure_subject(cfg)
    cfg_json = cfg.output_dir / "benchmark_config.json"
    cfg_json.write_text(json.dumps(cfg.to_json(), indent=2))
    rows_dir = cfg.output_dir / "rows"
    rows_dir.mkdir(exist_ok=True)
    started = datetime.datetime.now()
    results: dict[str, dict[str, Any]] = {}
    for row in cfg.rows:
        out_json = rows_dir / f"{row}.json"
        if cfg.reuse and out_json.is_file():
            results[row] = json.loads(out_json.read_text())
            continue
        out_json.unlink(missing_ok=True)
        print(f"==== {row}", flush=True)
        t0 = time.perf_counter()
        log = cfg.output_dir / f"{row}.log"
        with open(log, "w") as fh:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "_worker", row, str(cfg_json), str(out_json)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        if proc.returncode == 0 and out_json.is_file():
            results[row] = json.loads(out_json.read_text())
            results[row]["wall_s"] = time.perf_counter() - t0
            out_json.write_text(json.dumps(results[row], indent=2))
            r = results[row]
            at_steps = f"{r['equal_steps']['psnr']:.2f}" if r["equal_steps"] else "not reached"
            print(
                f"     psnr@steps {at_steps}  psnr@time {r['equal_time']['psnr']:.2f}  "
                f"{r['rays_per_s']:.0f} rays/s  {r['render_fps']:.2f} fps  ({r['wall_s']:.0f}s)",
                flush=True,
            )
        else:
            tail = log.read_text().strip().splitlines()[-15:]
            results[row] = {"row": row, "error": "\n".join(tail)}
            print(f"     FAILED (see {log}):\n" + "\n".join(tail), flush=True)
    finished = datetime.datetime.now()
    command = "benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv)
    info = {"started": started.isoformat(), "finished": finished.isoformat(), "command": command}
    (cfg.output_dir / "run_info.json").write_text(json.dumps(info, indent=2))
    plot_rel = make_plot(cfg, results)
    cfg.markdown.write_text(render_markdown(cfg, results, command, started, finished, plot_rel))
    print(f"wrote {cfg.markdown} and {cfg.plot}")


def entrypoint() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "_worker":
        row, cfg_json, out_json = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        cfg = BenchmarkConfig.from_json(json.loads(cfg_json.read_text()))
        from bench_worker import run_row

        result = run_row(cfg, row)
        out_json.write_text(json.dumps(result, indent=2))
        return
    import tyro

    main(tyro.cli(BenchmarkConfig), sys.argv[1:])


if __name__ == "__main__":
    entrypoint()
