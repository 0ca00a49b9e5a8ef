"""Memory benchmark: peak RSS, start-up seconds and s/step against the number of training frames.

One command (CPU; the same runs on a GPU machine)::

    .venv/bin/python benchmarks/memory.py --frames 500 2000 5500 --methods sahs --layouts nerface

What it does:

1. writes a small 512x512 subject once with ``sahs-synth`` (``<work-dir>/base``);
2. for each frame count N builds a subject of N training frames from it: the base frames repeated, as
   hard links (no extra disk), with N entries in the transforms JSON (and for AD-NeRF an ``aud.npy`` of
   N + val windows, the base windows repeated);
3. for each (method, layout, N) trains ``--steps`` steps in a fresh subprocess (the CPU presets of
   ``sahs_nerfstudio.presets``) and records the process's peak RSS, the start-up time (config to first
   step: dataparser, frame cache, model; Python imports timed apart) and the mean seconds per step
   after the first.

Outputs: ``<work-dir>/memory.json`` (all rows), ``benchmarks/memory.png`` (``--plot``) and a Markdown
table on stdout (pasted into BENCHMARKS.md's "Memory" section).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

BASE_TRAIN = 20
"""Distinct training frames of the base subject (repeated to size)."""


# ----------------------------------------------------------------------------------------------
# Subjects


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.link(src, dst)


def make_base(work: Path, resolution: int) -> Path:
    base = work / "base"
    if not (base / "adnerf" / "transforms_train.json").is_file():
        cmd = [
            str(Path(sys.executable).with_name("sahs-synth")),
            "--output",
            str(base),
            "--resolution",
            str(resolution),
        ]
        cmd += ["--num-train", str(BASE_TRAIN), "--num-test", "2", "--num-val", "2"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return base


def replicate_nerface(base: Path, out: Path, n: int) -> Path:
    """``n`` training frames cycling through the base's, hard-linked; val/test as the base's."""
    src = base / "nerface"
    meta = json.loads((src / "transforms_train.json").read_text())
    frames = []
    for k in range(n):
        fr = dict(meta["frames"][k % len(meta["frames"])])
        name = Path(fr["file_path"]).name
        new = f"./train/r_{k:05d}"
        _link(src / "train" / f"{name}.png", out / "train" / f"r_{k:05d}.png")
        _link(src / "train" / "masks" / f"{name}.png", out / "train" / "masks" / f"r_{k:05d}.png")
        fr["file_path"] = new
        frames.append(fr)
    (out / "transforms_train.json").write_text(json.dumps({**meta, "frames": frames}))
    for split in ("val", "test"):
        (out / f"transforms_{split}.json").write_text((src / f"transforms_{split}.json").read_text())
        for path in (src / split).rglob("*.png"):
            _link(path, out / path.relative_to(src))
    _link(src / "bg" / "00050.png", out / "bg" / "00050.png")
    return out


def replicate_adnerf(base: Path, out: Path, n: int) -> Path:
    """``n`` training frames (img_id = aud_id = 0..n-1) cycling through the base's; its val frames after them."""
    src = base / "adnerf"
    train = json.loads((src / "transforms_train.json").read_text())
    val = json.loads((src / "transforms_val.json").read_text())
    table = np.load(src / "aud.npy")

    def entry(fr: Dict[str, Any], k: int) -> Dict[str, Any]:
        img = int(fr["img_id"])
        _link(src / "com_imgs" / f"{img}.jpg", out / "com_imgs" / f"{k}.jpg")
        _link(src / "com_imgs" / "masks" / f"{img}.png", out / "com_imgs" / "masks" / f"{k}.png")
        return {**fr, "img_id": k, "aud_id": k}

    frames = [entry(train["frames"][k % len(train["frames"])], k) for k in range(n)]
    val_frames = [entry(fr, n + k) for k, fr in enumerate(val["frames"])]
    ids = [int(fr["aud_id"]) for fr in train["frames"]]
    rows = [table[ids[k % len(ids)]] for k in range(n)] + [table[int(fr["aud_id"])] for fr in val["frames"]]
    np.save(out / "aud.npy", np.stack(rows).astype(np.float32))
    (out / "transforms_train.json").write_text(json.dumps({**train, "frames": frames}))
    (out / "transforms_val.json").write_text(json.dumps({**val, "frames": val_frames}))
    for name in ("bc.jpg", "aud.wav", "HeadNeRF_config.txt", "TorsoNeRF_config.txt"):
        if (src / name).is_file():
            _link(src / name, out / name)
    return out


def subject(work: Path, base: Path, layout: str, n: int) -> Path:
    out = work / f"{layout}_{n}"
    if not (out / "transforms_train.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        (replicate_nerface if layout == "nerface" else replicate_adnerf)(base, out, n)
    return out


# ----------------------------------------------------------------------------------------------
# One measurement (in its own process)


def measure(data: Path, method: str, steps: int, rays: int, output_dir: Path) -> Dict[str, Any]:
    start = time.perf_counter()
    from sahs_nerfstudio.presets import cpu_trainer_config, fast_cpu_trainer_config

    imported = time.perf_counter()
    make = cpu_trainer_config if method == "sahs" else fast_cpu_trainer_config
    config = make(data, steps=steps, rays=rays, output_dir=output_dir)
    config.vis = "tensorboard"
    config.steps_per_save = 10**9
    config.save_only_latest_checkpoint = True
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    startup = time.perf_counter() - imported
    times: List[float] = []
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    trainer.pipeline.train()
    for step in range(steps):
        t = time.perf_counter()
        # As nerfstudio's training loop: callbacks (the semantic sampler's update among them) around the step.
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for callback in trainer.callbacks:
            callback.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        times.append(time.perf_counter() - t)
    store = getattr(trainer.pipeline.datamanager, "train_store", None)
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "startup_s": startup,
        "import_s": imported - start,
        "s_per_step": float(np.mean(times[1:] if len(times) > 1 else times)),
        "cache_bytes": None if store is None else store.nbytes(),
        "frames": len(trainer.pipeline.datamanager.train_dataset),
    }


def _worker(args: argparse.Namespace) -> None:
    row = measure(Path(args.data), args.method, args.steps, args.rays, Path(args.work_dir) / "runs")
    print("ROW " + json.dumps(row))


# ----------------------------------------------------------------------------------------------
# Driver


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    keys = sorted({(r["method"], r["layout"]) for r in rows if "peak_rss_bytes" in r})
    for method, layout in keys:
        sel = sorted((r for r in rows if (r["method"], r["layout"]) == (method, layout) and "peak_rss_bytes" in r),
                     key=lambda r: r["frames"])  # fmt: skip
        x = [r["frames"] for r in sel]
        label = f"{method} / {layout}"
        axes[0].plot(x, [r["peak_rss_bytes"] / 2**30 for r in sel], "o-", label=label)
        axes[1].plot(x, [r["startup_s"] for r in sel], "o-", label=label)
        axes[2].plot(x, [r["s_per_step"] for r in sel], "o-", label=label)
    for ax, title in zip(axes, ("peak RSS (GiB)", "start-up (s)", "s / step"), strict=True):
        ax.set_xlabel("training frames (512x512)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].axhline(8 * 1e9 / 2**30, color="k", ls="--", lw=0.8, label="8 GB target")
    axes[1].axhline(90, color="k", ls="--", lw=0.8, label="90 s target")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| method | layout | frames | peak RSS (GiB) | start-up (s) | imports (s) | s/step | frame cache (GiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["method"], r["layout"], r["frames"])):
        if "error" in r:
            lines.append(f"| {r['method']} | {r['layout']} | {r['frames']} | failed: {r['error']} | | | | |")
            continue
        cache = "" if r.get("cache_bytes") is None else f"{r['cache_bytes'] / 2**30:.2f}"
        imports = f"{r['import_s']:.1f}" if "import_s" in r else "(in start-up)"
        lines.append(
            f"| {r['method']} | {r['layout']} | {r['frames']} | {r['peak_rss_bytes'] / 2**30:.2f} | "
            f"{r['startup_s']:.1f} | {imports} | {r['s_per_step']:.2f} | {cache} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--work-dir", default="/tmp/sahs_memory_bench")
    parser.add_argument("--frames", type=int, nargs="+", default=[500, 1000, 2000, 3500, 5500])
    parser.add_argument("--methods", nargs="+", default=["sahs", "sahs-fast"], choices=["sahs", "sahs-fast"])
    parser.add_argument("--layouts", nargs="+", default=["nerface", "adnerf"], choices=["nerface", "adnerf"])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="training steps per row (s/step: mean after the first)")
    parser.add_argument("--rays", type=int, default=1024)
    parser.add_argument("--plot", default="benchmarks/memory.png")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    base = make_base(work, args.resolution)
    results = work / "memory.json"
    rows: List[Dict[str, Any]] = json.loads(results.read_text()) if results.is_file() else []
    for layout in args.layouts:
        for n in args.frames:
            data = subject(work, base, layout, n)
            for method in args.methods:
                cmd = [sys.executable, __file__, "--worker", "--work-dir", str(work), "--data", str(data)]
                cmd += ["--method", method, "--steps", str(args.steps), "--rays", str(args.rays)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
                row: Dict[str, Any] = {"method": method, "layout": layout, "frames": n}
                if proc.returncode == 0 and found:
                    row.update(json.loads(found[-1]))
                else:
                    row["error"] = f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:120]}"
                rows = [r for r in rows if (r["method"], r["layout"], r["frames"]) != (method, layout, n)] + [row]
                results.write_text(json.dumps(rows, indent=1))
                print(json.dumps(row), flush=True)
    if args.plot:
        plot(rows, Path(args.plot))
    print(f"\n{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
