"""Render speed of ``sahs-fast`` (pruned and reference renderer) and ``sahs`` at one resolution on N CPU threads.

One command (re-run it on a quiet machine: other processes inflate wall time; CPU time is printed next to it)::

    .venv/bin/python benchmarks/render_speed.py --threads 2 --frames 5 --resolution 128 \\
        --fast-config outputs/.../sahs-fast/<time>/config.yml

Without ``--fast-config`` / ``--sahs-config`` the models are the CPU presets, untrained, built on a synthetic subject
written under ``--work-dir``. An untrained ``sahs-fast`` is nearly empty, which flatters the pruned renderer, so
give it a trained run for numbers that mean something (``sahs`` evaluates every sample whatever it learned). Each
row: frames/s (wall), CPU seconds per frame, the load average, and for the pruned renderer its largest pixel
difference and PSNR against the reference renderer on the same frames.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

import torch


def _pipeline(config_path: Path | None, method: str, data: Path) -> Any:
    if config_path is not None:
        from sahs_nerfstudio.utils.run_loader import load_run

        return load_run(config_path, test_mode="test")[1]
    from sahs_nerfstudio.presets import cpu_trainer_config, fast_cpu_trainer_config

    make = fast_cpu_trainer_config if method == "sahs-fast" else cpu_trainer_config
    config = make(data, steps=1)
    return config.pipeline.setup(device="cpu", test_mode="test")


def _time(model: Any, cameras: Any, frames: int) -> tuple[list[dict], float, float]:
    model.get_outputs_for_camera(cameras[0:1])  # warm-up (allocator, first-call costs)
    outputs, wall, cpu = [], time.perf_counter(), time.process_time()
    for i in range(frames):
        k = i % len(cameras)
        outputs.append(model.get_outputs_for_camera(cameras[k : k + 1]))
    return outputs, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--fast-config", type=Path, default=None, help="a trained sahs-fast run's config.yml")
    parser.add_argument("--sahs-config", type=Path, default=None, help="a trained sahs run's config.yml")
    parser.add_argument("--methods", nargs="+", default=["sahs-fast", "sahs"], choices=["sahs-fast", "sahs"])
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/render_speed"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    data = args.work_dir / f"subject{args.resolution}"
    if not (args.fast_config and args.sahs_config) and not (data / "nerface" / "transforms_test.json").is_file():
        from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject

        generate_subject(SyntheticConfig(output=data, resolution=args.resolution, num_train=20, layouts=("nerface",)))
    for method in args.methods:
        config_path = args.fast_config if method == "sahs-fast" else args.sahs_config
        pipeline = _pipeline(config_path, method, data / "nerface")
        model = pipeline.model
        model.eval()
        cameras = pipeline.datamanager.eval_dataset.cameras
        scale = args.resolution / float(cameras.width[0])
        if scale != 1.0:
            cameras.rescale_output_resolution(scale)
        variants: list[tuple[str, bool | None]] = [(method, None)]
        if method == "sahs-fast":
            variants = [("sahs-fast (reference renderer)", False), ("sahs-fast", True)]
        reference = None
        for name, enabled in variants:
            if enabled is not None:
                model.config.render.enabled = enabled
            outputs, wall, cpu = _time(model, cameras, args.frames)
            note = ""
            if enabled is False:
                reference = outputs
            elif enabled and reference is not None:
                diff = torch.stack([(a["rgb"] - b["rgb"]).abs() for a, b in zip(outputs, reference, strict=True)])
                psnr = -10 * math.log10(float(diff.square().mean()) + 1e-12)
                note = f"  vs reference: max |diff| {float(diff.max()):.1e}, PSNR {psnr:.1f} dB"
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            print(
                f"{name:32s} {args.resolution}x{args.resolution}, {args.threads} threads: "
                f"{args.frames / wall:6.2f} frames/s, {cpu / args.frames:6.3f} CPU s/frame "
                f"(load {load}){note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
