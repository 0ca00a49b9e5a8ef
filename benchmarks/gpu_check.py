"""``make gpu-check``'s measurement: ``sahs-fast`` at its GPU defaults on a 512x512 synthetic subject, one JSON.

What ``benchmarks/gpu_check.sh`` runs after the test suite (not run on a GPU yet)::

    .venv/bin/python benchmarks/gpu_check.py --junit benchmarks/runs/gpu_check/pytest.xml

It writes the synthetic subject (``run.ensure_subject``: ``generate_subject`` at ``--resolution``, seed 0), trains
``sahs-fast`` (the method's own GPU config, ``sahs_config.sahs_fast_trainer_config``, through the benchmark's
``bench_worker.run_row``: learning-rate schedule fitted to the budget) for ``--minutes`` of training wall time,
renders and scores every held-out frame (``bench_heldout.HeldOut``), and writes ``--output``: the GPU's name,
torch and CUDA versions, whether tinycudann imports, steps, steps/s, rays/s, render frames/s at the subject's
resolution, held-out PSNR / SSIM / mouth PSNR, peak GPU memory (``torch.cuda.max_memory_allocated``), the test
suite's pass / fail counts (``--junit``), the date, and the benchmark's whole per-run record.

Without CUDA it prints one line and exits with status 2 (``--device cpu`` runs the same steps at the CPU
presets' sizes; it exists for this script's own test).
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # run_row's start-up time (imports, data, model) counts from here

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import xml.etree.ElementTree as ElementTree  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

NO_CUDA = "gpu-check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine"
METHOD = "sahs-fast"
SEED = 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (every option documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="gpu_check.py",
        description="Train sahs-fast at its GPU defaults on a synthetic subject for a fixed wall time, render the "
        "held-out frames, and write one JSON of speed, quality, memory and test counts.",
    )
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="training wall time in minutes, evaluation excluded (5)"
    )
    parser.add_argument(
        "--resolution", type=int, default=512, help="side of the synthetic subject's square frames, in pixels (512)"
    )
    parser.add_argument(
        "--num-train",
        type=int,
        default=60,
        help="training frames of the synthetic subject; the held-out split gets num_train // 10 (60)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("benchmarks/runs/gpu_check/gpu_check.json"),
        help="the JSON to write (benchmarks/runs/gpu_check/gpu_check.json)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the subject (<work-dir>/data, reused while its size matches) and the run (<work-dir>/runs) go "
        "(default: the folder of --output)",
    )
    parser.add_argument(
        "--junit",
        type=Path,
        default=None,
        help="pytest's --junitxml report of the test suite, whose pass / fail counts go into the JSON "
        "(default: none, 'tests' is null)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own, all cores)")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda (the check); cpu only for this script's test: the same steps at the CPU presets' sizes",
    )
    parser.add_argument(
        "--check-device",
        action="store_true",
        help="only check for a CUDA device: status 0, or the no-CUDA line and status 2 (gpu_check.sh runs this "
        "before the test suite)",
    )
    return parser.parse_args(argv)


def cuda_missing(device: str) -> bool:
    """Whether ``device`` is CUDA and there is none (imports only torch: the shell script's quick check)."""
    import torch

    return device == "cuda" and not torch.cuda.is_available()


def junit_counts(path: Path) -> dict[str, Any]:
    """Pass / fail counts of a pytest ``--junitxml`` report (summed over its test suites)."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    return {
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": counts["failures"],
        "errors": counts["errors"],
        "skipped": counts["skipped"],
        "total": counts["tests"],
        "junit": str(path),
    }


def tinycudann_importable() -> bool:
    """Whether ``import tinycudann`` works (the hash grids then run on tcnn instead of torch)."""
    try:
        import tinycudann  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # not installed, or built for another CUDA / GPU: both mean torch grids
        return False
    return True


def summarize(
    result: dict[str, Any],
    *,
    device: str,
    resolution: int,
    minutes: float,
    tests: dict[str, Any] | None,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The check's JSON from ``bench_worker.run_row``'s record of the run (kept whole under ``run``)."""
    import torch

    final = result["equal_time"]  # the reading at the end of the budget: every held-out frame
    return {
        "date": now.isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tinycudann_importable": tinycudann_importable(),
        "method": result["method_name"],
        "resolution": resolution,
        "train_minutes": minutes,
        "steps": result["steps_total"],
        "train_seconds": result["train_time_total_s"],
        "steps_per_s": 1.0 / result["seconds_per_step"],
        "rays_per_step": result["rays"],
        "rays_per_s": result["rays_per_s"],
        "render_fps": final["render_fps"],
        "render_frames": final["num_frames"],
        "heldout_psnr": final["psnr"],
        "heldout_ssim": final.get("ssim"),
        "heldout_mouth_psnr": final.get("mouth_psnr"),
        "peak_memory_mb": result["peak_memory_mb"],
        "memory_kind": result["memory_kind"],
        "tests": tests,
        "run": result,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when the JSON is written, 2 without CUDA."""
    args = parse_args(argv)
    if cuda_missing(args.device):
        print(NO_CUDA, file=sys.stderr)
        return 2
    if args.check_device:
        return 0
    # The benchmark's modules sit beside this file; imported here so that the no-CUDA answer stays quick.
    from bench_config import BenchmarkConfig
    from bench_worker import run_row
    from run import ensure_subject

    work = args.work_dir if args.work_dir is not None else args.output.parent
    cfg = BenchmarkConfig(
        output_dir=work,
        resolution=args.resolution,
        num_train=args.num_train,
        subject_seed=0,
        seeds=(SEED,),
        rows=(METHOD,),
        jobs=1,
        threads=args.threads,
        time_budget_s=60.0 * args.minutes,
        device=args.device,
        scale="auto",  # the GPU config on CUDA, the CPU preset on a CPU
        curve_points=1,  # one reading, at the end of the budget
    )
    tests = junit_counts(args.junit) if args.junit is not None else None
    ensure_subject(cfg)
    result = run_row(cfg, METHOD, SEED, _STARTED)
    now = datetime.datetime.now(datetime.UTC)
    report = summarize(
        result, device=args.device, resolution=args.resolution, minutes=args.minutes, tests=tests, now=now
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(
        f"gpu-check: {report['gpu'] or args.device}: {report['steps']} steps in {report['train_seconds']:.0f} s "
        f"({report['steps_per_s']:.1f} steps/s, {report['rays_per_s']:.0f} rays/s), held-out PSNR "
        f"{report['heldout_psnr']:.2f} dB, {report['render_fps']:.2f} frames/s at {args.resolution}x{args.resolution}, "
        f"peak {report['peak_memory_mb']:.0f} MB; {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
