"""``python benchmarks/process_speed.py``: the numbers of BENCHMARKS.md's Preprocessing section.

1. **Speed**: the moving astronaut photo (:mod:`.moving_photo`) at 512x512 through every stage;
   wall and CPU milliseconds per frame per stage, and the projection to a 5-minute video at 25 fps.
   BENCHMARKS.md's table is :data:`COMMAND` (a 1-minute video, ``--workers 2``); ``--frames 7500``
   runs the full five minutes.
2. **Accuracy on the synthetic subject**: its AD-NeRF frames and ``aud.wav`` encoded to an mp4 and
   processed; the recovered landmarks and head yaw/pitch/roll against the subject's ground truth
   (``ori_imgs/<i>.lms`` and ``subject.json``) on the frames where the detector found the face.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import moving_photo as mp  # a sibling module: this script's folder is first on sys.path
import numpy as np
import torch
import tyro

from sahs_nerfstudio.data.formats import adnerf_image_path, adnerf_landmarks_path, read_landmarks, read_rgb
from sahs_nerfstudio.data.pose import euler_xyz_from_rotation
from sahs_nerfstudio.process.pipeline import ProcessConfig, run
from sahs_nerfstudio.utils.face_landmarks import interocular

FIVE_MINUTES = 5 * 60 * 25
PARALLEL = ("segmentation", "layout_nerface", "layout_adnerf")
"""Stages split over ``--workers`` processes; the others run on one core."""
COMMAND = "python benchmarks/process_speed.py --frames 1500 --workers 2 --no-synthetic"
"""The measurement of BENCHMARKS.md's speed table (a 1-minute video), as one command."""


@dataclass
class BenchmarkConfig:
    """Where to work and how big to go."""

    output: Path = Path("outputs/process_benchmark")
    """Scratch folder (videos, processed datasets, ``benchmark.json``)."""
    frames: int = 150
    """Frames of the 512x512 speed run (1500: one minute at 25 fps; 7500: five minutes)."""
    workers: int = 2
    """``sahs-process --workers`` of the speed run (1: every stage on one core)."""
    speed: bool = True
    """Run the speed measurement."""
    synthetic: bool = True
    """Run the accuracy measurement on the synthetic subject."""
    synthetic_frames: int = 100
    """Training frames of the synthetic subject (plus its held-out tenth)."""
    synthetic_resolution: int = 256
    """Its image size."""


def _loadavg() -> List[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def speed(cfg: BenchmarkConfig, speech: Path) -> Dict[str, Any]:
    """The moving photo at 512x512, ``cfg.frames`` frames with speech, through every stage.

    The video is rendered once per length and reused (rendering is deterministic and not part of
    the measurement). CPU seconds count the process and its workers; the load average before and
    after says how shared the machine was (wall times on a loaded machine overstate the cost).
    """
    import os

    import soundfile

    root = cfg.output / "speed"
    video = root / f"astronaut512_{cfg.frames}.mp4"
    if not video.is_file():
        samples, rate = soundfile.read(str(speech), dtype="float32")
        need = int(cfg.frames / 25 * rate)
        samples = np.tile(samples, need // len(samples) + 1)[:need]
        mp.write_moving_photo(video, mp.make_motion(cfg.frames, size=512), samples, rate)
    out = root / f"out_{cfg.frames}"
    shutil.rmtree(out, ignore_errors=True)
    load_before = _loadavg()
    start, cpu = time.perf_counter(), os.times()
    report = run(ProcessConfig(video=video, output=out, size=512, workers=cfg.workers))
    end_cpu = os.times()
    wall = time.perf_counter() - start
    total_cpu = sum(
        getattr(end_cpu, k) - getattr(cpu, k) for k in ("user", "system", "children_user", "children_system")
    )
    sec = report["stage_seconds"]
    n = int(report["frames_decoded"])
    stages = [k for k in sec if not k.endswith("_cpu") and f"{k}_cpu" in sec]
    per_frame = {k: {"wall_ms": 1000 * sec[k] / n, "cpu_ms": 1000 * sec[f"{k}_cpu"] / n} for k in stages}
    cpu_ms = sum(v["cpu_ms"] for v in per_frame.values())
    # On 2 idle cores: the parallel stages' CPU split over both, the rest on one.
    two_cores = sum(v["cpu_ms"] / (2 if k in PARALLEL else 1) for k, v in per_frame.items())
    scale = FIVE_MINUTES / n / 60
    return {
        "frames": n,
        "workers": cfg.workers,
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "cpu_count": os.cpu_count(),
        "wall_s": wall,
        "cpu_s": total_cpu,
        "per_frame": per_frame,
        "cpu_ms_per_frame": cpu_ms,
        "wall_ms_per_frame": 1000 * wall / n,
        # Linear in the frame count: the fixed costs (model loading, the background model's at most
        # 60 samples, librosa's start-up) are counted as if they grew with the video, an upper bound.
        "five_minutes_cpu_minutes": total_cpu * scale,
        "five_minutes_two_idle_cores_minutes": two_cores * FIVE_MINUTES / 1000 / 60,
        "five_minutes_wall_minutes_as_measured": wall * scale,
    }


def synthetic(cfg: BenchmarkConfig) -> Dict[str, Any]:
    from sahs_nerfstudio.data.synthetic import SyntheticConfig, generate_subject

    root = cfg.output / "synthetic"
    shutil.rmtree(root, ignore_errors=True)
    generate_subject(
        SyntheticConfig(
            output=root / "subject",
            resolution=cfg.synthetic_resolution,
            num_train=cfg.synthetic_frames,
            layouts=("adnerf",),
        )
    )
    subject = root / "subject" / "adnerf"
    meta = json.loads((root / "subject" / "subject.json").read_text())
    n = int(meta["num_frames"])
    import soundfile

    samples, rate = soundfile.read(str(subject / "aud.wav"), dtype="float32")
    frames = [read_rgb(adnerf_image_path(subject, k, "ori_imgs")) for k in range(n)]
    mp.write_video(root / "synthetic.mp4", frames, float(meta["fps"]), samples, rate)
    report = run(
        ProcessConfig(video=root / "synthetic.mp4", output=root / "out", size=cfg.synthetic_resolution, min_seconds=0.5)
    )
    kept = np.asarray(report["kept_frames"])
    points = np.load(root / "out" / "work" / "landmarks.npz")["points"][kept]
    truth = np.stack([read_landmarks(adnerf_landmarks_path(subject, int(k))) for k in kept])
    err = np.linalg.norm(points - truth, axis=-1)  # [K, 68]
    c2w = np.load(root / "out" / "work" / "pose.npz")["c2w"][kept]
    # Both worlds hold the head still and move the camera: the head's rotation is c2w's transposed.
    head = torch.from_numpy(np.swapaxes(c2w[:, :3, :3], -1, -2).copy())
    pitch_yaw_roll = euler_xyz_from_rotation(head).numpy()  # R = Rz(roll) Ry(yaw) Rx(pitch)
    ours = np.rad2deg(pitch_yaw_roll[:, [1, 0, 2]])  # yaw, pitch, roll
    gt = np.rad2deg(np.asarray(meta["head_yaw_pitch_roll"])[kept])
    angle_err = np.abs(ours - gt)
    centred = np.abs((ours - ours.mean(0)) - (gt - gt.mean(0)))
    return {
        "frames": n,
        "frames_kept": int(len(kept)),
        "landmark_error_px_mean": float(err.mean()),
        "landmark_error_px_median_frame": float(np.median(err.mean(1))),
        "landmark_error_iod": float((err.mean(1) / interocular(truth)).mean()),
        "mouth_error_px_mean": float(err[:, 48:68].mean()),
        "yaw_pitch_roll_error_deg_mean": angle_err.mean(0).tolist(),
        "yaw_pitch_roll_error_deg_mean_after_removing_offset": centred.mean(0).tolist(),
        "yaw_pitch_roll_range_deg": (gt.max(0) - gt.min(0)).tolist(),
        "focal_px": report["focal_px"],
    }


def main(cfg: BenchmarkConfig) -> None:
    speech = Path(__file__).resolve().parents[2] / "tests" / "data" / "speech.wav"
    cfg.output.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = {}
    if cfg.speed:
        result["speed_512"] = speed(cfg, speech)
    if cfg.synthetic:
        result["synthetic"] = synthetic(cfg)
    (cfg.output / "benchmark.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(tyro.cli(BenchmarkConfig))
