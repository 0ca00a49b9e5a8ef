"""The benchmark: ``sahs-fast``, its sampler and conditioning ablations and ``sahs``, three training seeds each.

One command (CPU sizes are picked automatically without a GPU; the same command reruns on a GPU)::

    .venv/bin/python benchmarks/run.py

Every run (a row and a training seed, ``machine.seed``) trains on the same synthetic subject
(``sahs_nerfstudio.data.synthetic``, written once under ``--output-dir``) read through the ``sahs-data``
dataparser, in its own subprocess (so peak memory is per run and nothing leaks between runs), for
``--time-budget-s`` seconds of training (evaluation excluded), and optionally ``--equal-steps`` steps. ``--jobs``
runs go at once (one torch thread each by default), from a queue that keeps that many going until it is empty,
so every run shares the machine alike. The held-out split (novel expression combinations) is scored at the end
and at a few earlier times for the PSNR-vs-time plot. Each run's learning-rate schedule is stretched to the
steps its first steps' speed predicts for the budget.

Metrics, all computed here the same way for every row, full frame, nothing pasted: PSNR, SSIM, LPIPS (AlexNet,
only if its weights are on disk: these machines are offline), mouth PSNR (pixels labelled mouth interior or lips
in the ground-truth masks; also over the frames with the mouth open / closed), head PSNR (head classes), mIoU
(rows with a semantic head), training rays/s, render FPS at the dataset resolution, peak memory (CUDA: max
allocated; CPU: the run process's peak RSS). The report gives each row's mean and spread over the seeds.

Outputs: ``BENCHMARKS.md`` (``--markdown``), ``benchmarks/psnr_vs_time.png`` (``--plot``) and the raw per-run
JSON under ``<output-dir>/rows``.

A smoke run (seconds; timings meaningless)::

    .venv/bin/python benchmarks/run.py --output-dir /tmp/bench-smoke --rows sahs-fast sahs-fast-uniform \
        --seeds 0 --time-budget-s 5 --markdown /tmp/bench-smoke/B.md --plot /tmp/bench-smoke/p.png

Modules, one job each: ``bench_config`` (settings, rows and their notes), ``bench_rows`` (one TrainerConfig
per row), ``bench_heldout`` (scoring, through ``sahs_nerfstudio.utils.metrics``), ``bench_worker`` (one run's
training loop in its own process, and Stage II), ``bench_stats`` (mean, spread and comparisons over seeds),
``bench_report`` (BENCHMARKS.md and the plot); this file generates the subject and drives the run processes.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # a run process's start-up is timed from here (imports included)

import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Any  # noqa: E402

# The sibling modules (bench_*) are found because this script's folder is first on sys.path.
from bench_config import BenchmarkConfig, run_name  # noqa: E402
from bench_report import rewrite_report, write_outputs  # noqa: E402
from bench_rows import ROW_BUILDERS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RUN_OVERHEAD_S = 35.0
"""A CPU run's wall time beyond its training budget (imports, data, model, evaluations; 64x64 subject), for the
duration printed at the start."""


def _generator_digest() -> str:
    """A digest of the synthetic generator's source: a subject left by another version of it is regenerated."""
    import hashlib

    package = REPO / "sahs_nerfstudio" / "data" / "synthetic"
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_subject(cfg: BenchmarkConfig) -> Path:
    """The synthetic subject: ``--data`` as given, or generated under the output dir (regenerated when an earlier
    benchmark left one of another size / frame count / seed there)."""
    root = cfg.data_root()
    wanted = {
        "resolution": cfg.resolution,
        "num_train": cfg.num_train,
        "seed": cfg.subject_seed,
        "generator": _generator_digest(),
    }
    marker = root / "benchmark_subject.json"
    present = (root / cfg.layout / "transforms_train.json").is_file()
    if cfg.data is not None and present:
        return root
    if present and marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject

    print(f"generating the synthetic subject in {root} ({cfg.resolution}x{cfg.resolution}, {cfg.num_train} frames)")
    generate_subject(
        SyntheticConfig(output=root, resolution=cfg.resolution, num_train=cfg.num_train, seed=cfg.subject_seed)
    )
    marker.write_text(json.dumps(wanted))
    return root


def run_queue(cfg: BenchmarkConfig) -> list[tuple[str, int]]:
    """Every (row, seed), seeds of a row together. ``sahs`` rows (slowest start-up and evaluation) go first, so
    the queue's tail, where fewer than ``jobs`` runs may be left, holds the runs that finish quickest."""

    def slow(row: str) -> bool:
        return row == "dnerf" or (row.startswith("sahs") and not row.startswith("sahs-fast"))

    rows = sorted(cfg.rows, key=lambda r: 0 if slow(r) else 1)
    return [(row, seed) for row in rows for seed in cfg.seeds]


class _Running:
    """One run process and its log."""

    def __init__(self, cfg_json: Path, row: str, seed: int, out_json: Path, log: Path) -> None:
        self.row, self.seed, self.out_json, self.log = row, seed, out_json, log
        self.t0 = time.perf_counter()
        self.fh: IO[str] = open(log, "w")
        cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", row, str(seed), str(cfg_json), str(out_json)]
        self.proc = subprocess.Popen(cmd, stdout=self.fh, stderr=subprocess.STDOUT, cwd=REPO)

    def finish(self) -> dict[str, Any]:
        self.fh.close()
        name = run_name(self.row, self.seed)
        if self.proc.returncode == 0 and self.out_json.is_file():
            result = json.loads(self.out_json.read_text())
            result["wall_s"] = time.perf_counter() - self.t0
            self.out_json.write_text(json.dumps(result, indent=2))
            m = result["equal_time"]
            print(
                f"     {name}: psnr {m['psnr']:.2f}  mouth {m.get('mouth_psnr', float('nan')):.2f}  "
                f"{result['steps_total']} steps  {result['rays_per_s']:.0f} rays/s  cpu/wall "
                f"{result['cpu_per_wall']:.2f}  ({result['wall_s']:.0f} s: start-up {result['setup_s']:.0f}, "
                f"eval {result['eval_s']:.0f})",
                flush=True,
            )
            return result
        tail = self.log.read_text().strip().splitlines()[-15:]
        print(f"     {name} FAILED (see {self.log}):\n" + "\n".join(tail), flush=True)
        return {"row": self.row, "seed": self.seed, "error": "\n".join(tail)}


def main(cfg: BenchmarkConfig, argv: list[str]) -> None:
    unknown = [r for r in cfg.rows if r not in ROW_BUILDERS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROW_BUILDERS)}")
    if not cfg.seeds or cfg.jobs < 1:
        raise SystemExit("--seeds needs at least one seed and --jobs at least 1")
    # Absolute paths: the run processes start from the repository root.
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
    started = datetime.datetime.now()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    ensure_subject(cfg)
    cfg_json = cfg.output_dir / "benchmark_config.json"
    cfg_json.write_text(json.dumps(cfg.to_json(), indent=2))
    rows_dir = cfg.output_dir / "rows"
    rows_dir.mkdir(exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    pending = run_queue(cfg)
    total = len(pending)
    running: list[_Running] = []
    t_start = time.perf_counter()
    slots = -(-total // cfg.jobs)
    print(
        f"{total} runs, {cfg.jobs} at a time, {cfg.time_budget_s:.0f} s of training each: expect about "
        f"{slots * (cfg.time_budget_s + RUN_OVERHEAD_S) / 60:.0f} min on 2 quiet CPU cores",
        flush=True,
    )
    while pending or running:
        while pending and len(running) < cfg.jobs:
            row, seed = pending.pop(0)
            name = run_name(row, seed)
            out_json = rows_dir / f"{name}.json"
            if cfg.reuse and out_json.is_file():
                results[name] = json.loads(out_json.read_text())
                continue
            out_json.unlink(missing_ok=True)
            print(f"==== {name}", flush=True)
            running.append(_Running(cfg_json, row, seed, out_json, cfg.output_dir / f"{name}.log"))
        time.sleep(0.5)
        for run in [r for r in running if r.proc.poll() is not None]:
            running.remove(run)
            results[run_name(run.row, run.seed)] = run.finish()
            elapsed = time.perf_counter() - t_start
            print(f"     [{len(results)}/{total} done, {elapsed / 60:.1f} min]", flush=True)
    finished = datetime.datetime.now()
    command = "benchmarks/run.py " + " ".join(shlex.quote(a) for a in argv)
    info = {"started": started.isoformat(), "finished": finished.isoformat(), "command": command}
    (cfg.output_dir / "run_info.json").write_text(json.dumps(info, indent=2))
    write_outputs(cfg, list(results.values()), command, started, finished)
    print(f"wrote {cfg.markdown} and {cfg.plot} ({(finished - started).total_seconds() / 60:.1f} min)")


def entrypoint() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "_worker":
        row, seed, cfg_json, out_json = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
        cfg = BenchmarkConfig.from_json(json.loads(cfg_json.read_text()))
        from bench_worker import run_row

        result = run_row(cfg, row, seed, _STARTED)
        out_json.write_text(json.dumps(result, indent=2))
        return
    import tyro

    main(tyro.cli(BenchmarkConfig), sys.argv[1:])


if __name__ == "__main__":
    entrypoint()
