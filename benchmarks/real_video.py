"""The avatar on real clips: ``sahs-demo --video`` on every clip of a folder, against what the dataset alone gives.

One command (the defaults: every ``*.mp4`` of ``../shared/real``, NeRFace layout, the demo's 10-minute budget)::

    .venv/bin/python benchmarks/real_video.py

Per clip and layout it runs ``sahs-demo --video CLIP --layout L --data OUT/<stem>`` in a subprocess (threads
pinned with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``; log ``OUT/<stem>/renders/<layout>.log``), which processes
the clip (``sahs-process``: ``OUT/<stem>/{nerface,adnerf,work,report.json}``), trains, renders the held-out split
to ``OUT/<stem>/renders/<layout>.mp4`` and writes its held-out metrics next to it (the same name with ``.json``:
PSNR, SSIM, mouth PSNR, LMD, mIoU, Stage II ``stage2_psnr_after``, ...). Then, from the folders alone
(:mod:`real_metrics`): the dataset-only baselines at the render resolution (mean training image, nearest-pose
training frame, best single training frame), the headline margin ``PSNR - best frame PSNR`` (target >= +4 dB),
label flicker and pose jitter of the processing, and its CPU ms per frame per stage. ``--skip-train`` recomputes
those and the table from existing folders without training.

Outputs: ``OUT/real_video.json`` (everything), ``OUT/real_video.md`` (the table, also printed, to paste into
BENCHMARKS.md) and one held-out contact sheet per clip and layout, ``OUT/<stem>/heldout_<layout>.png``: a row
per picked held-out frame, columns ground truth | render (when rendered) | best single frame | nearest-pose frame.

A smoke run (minutes; numbers meaningless)::

    .venv/bin/python benchmarks/real_video.py --output-dir /tmp/real-smoke --train-minutes 0.2 --steps 20 \\
        --no-refine --max-frames 4 --threads 1
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from jaxtyping import UInt8

# The sibling modules are found because this script's folder is first on sys.path.
from real_metrics import SplitImages, baselines, label_flicker, load_split, pose_jitter, stage_cpu_ms_per_frame

REPO = Path(__file__).resolve().parent.parent
MARGIN_TARGET_DB = 4.0
"""The avatar's target margin over the best single training frame (held-out PSNR, dB)."""


@dataclass
class RealVideoConfig:
    """Run ``sahs-demo`` on real clips and compare its held-out metrics with dataset-only baselines."""

    clips: Path = Path("../shared/real")
    """Folder whose ``*.mp4`` files are the clips."""
    output_dir: Path = Path("benchmarks/runs/real")
    """OUT: ``OUT/<clip stem>`` is each clip's ``sahs-demo --data`` folder (dataset, work folder, renders, runs)."""
    layouts: Literal["nerface", "adnerf", "both"] = "nerface"
    """Layouts to train: expression-driven (NeRFace), audio-driven (AD-NeRF; skipped for a clip without audio)."""
    only: tuple[str, ...] = ()
    """Run only the clips with these stems (empty: every clip)."""
    train_minutes: float = 10.0
    """``sahs-demo --train-minutes``: wall-clock budget of the training steps."""
    steps: Optional[int] = None
    """``sahs-demo --steps``: training steps (None: what the budget allows)."""
    refine: bool = True
    """Run Stage II (``sahs-demo --refine``)."""
    refine_epochs: Optional[int] = None
    """``sahs-demo --refine-epochs`` (None: the refiner's default schedule)."""
    max_frames: Optional[int] = None
    """``sahs-demo --max-frames``: render and score at most this many held-out frames (None: all)."""
    process_size: int = 128
    """``sahs-demo --process-size``: side of the square frames ``sahs-process`` writes, the render resolution."""
    threads: int = 2
    """``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of the demo process (torch's CPU threads), and of this one."""
    skip_train: bool = False
    """Train nothing: recompute baselines, flicker, jitter and timing from the existing folders, keep the demo's
    metrics found there, and rewrite the JSON, table and contact sheets."""
    contact_frames: int = 4
    """Held-out frames on each contact sheet (evenly spaced)."""
    json_path: Optional[Path] = None
    """Where the results go (None: ``OUT/real_video.json``)."""
    markdown: Optional[Path] = None
    """Where the table goes (None: ``OUT/real_video.md``)."""


# ----------------------------------------------------------------------------------------------
# Running the demo


def has_audio(clip: Path, clip_dir: Path) -> bool:
    """Whether ``clip`` has an audio track: ``sahs-process``'s report when there is one, else the container."""
    report = clip_dir / "report.json"
    if report.is_file():
        return bool(json.loads(report.read_text()).get("has_audio", False))
    import av

    with av.open(str(clip)) as container:
        return len(container.streams.audio) > 0


def render_path(clip_dir: Path, layout: str) -> Path:
    """The demo's held-out video; its metrics JSON is the same path with ``.json`` (``DemoConfig.render_path``)."""
    return clip_dir / "renders" / f"{layout}.mp4"


def demo_command(cfg: RealVideoConfig, clip: Path, clip_dir: Path, layout: str) -> list[str]:
    """``sahs-demo`` (the console script next to this interpreter) with the budget flags passed through."""
    exe = Path(sys.executable).parent / "sahs-demo"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "sahs_nerfstudio.scripts.demo"]
    cmd += ["--video", str(clip), "--layout", layout, "--data", str(clip_dir)]
    cmd += ["--process-size", str(cfg.process_size), "--train-minutes", f"{cfg.train_minutes:g}"]
    cmd += ["--output-dir", str(clip_dir / "outputs"), "--render-path", str(render_path(clip_dir, layout))]
    cmd += ["--refine"] if cfg.refine else ["--no-refine"]
    for flag, value in (
        ("--steps", cfg.steps),
        ("--refine-epochs", cfg.refine_epochs),
        ("--max-frames", cfg.max_frames),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def run_demo(cfg: RealVideoConfig, clip: Path, clip_dir: Path, layout: str) -> dict[str, Any]:
    """Run the demo (output in its log); its return code, wall seconds, command and log path."""
    cmd = demo_command(cfg, clip, clip_dir, layout)
    log = render_path(clip_dir, layout).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = str(cfg.threads)
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    print(f"==== {clip.stem} / {layout}: {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    wall = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        print(f"     FAILED ({code}, see {log}):\n{tail}", flush=True)
    else:
        print(f"     done in {wall / 60:.1f} min", flush=True)
    return {"returncode": code, "wall_s": wall, "command": shlex.join(cmd), "log": str(log)}


# ----------------------------------------------------------------------------------------------
# Measuring one clip x layout from its folders


def read_metrics(clip_dir: Path, layout: str) -> Optional[dict[str, Any]]:
    """The demo's held-out metrics JSON, or None when it did not write one."""
    path = render_path(clip_dir, layout).with_suffix(".json")
    return json.loads(path.read_text()) if path.is_file() else None


def render_size(video: Path, data: Path) -> Optional[tuple[int, int]]:
    """``(width, height)`` the demo rendered at: the held-out video's frame height with the dataset's aspect
    (None: no video, use the dataset's size). The demo renders at the dataset's size (downscale factor 1), so this
    only matters for a video rendered otherwise."""
    from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
    from sahs_nerfstudio.utils.video import read_video_frames

    if not video.is_file():
        return None
    rec = SAHSDataParserConfig(data=data, load_semantics=False).setup().read_split("test")
    height = next(iter(read_video_frames(video)))[1].shape[0]
    return round(rec.width * height / rec.height), height


def render_frames(video: Path, picks: list[int], width: int) -> dict[int, np.ndarray]:
    """Frames ``picks`` of the demo's held-out video, render only (each video frame is render | ground truth |
    semantics, ``width`` pixels each)."""
    from sahs_nerfstudio.utils.video import read_video_frames

    wanted = set(picks)
    out: dict[int, np.ndarray] = {}
    for index, frame in read_video_frames(video):
        if index in wanted:
            out[index] = frame[:, :width]
        if len(out) == len(wanted):
            break
    return out


def write_contact_sheet(
    path: Path, held: SplitImages, train: SplitImages, base: dict[str, Any], video: Optional[Path], count: int
) -> Path:
    """Rows of evenly spaced held-out frames: ground truth | render (when ``video`` exists) | best single training
    frame | nearest-pose training frame, enlarged (nearest neighbour) to at least 256 pixels a tile."""
    from sahs_nerfstudio.data.formats import write_rgb

    def u8(image: Any) -> UInt8[np.ndarray, "h w 3"]:
        return (image.clamp(0, 1) * 255).round().byte().numpy()

    n = len(held.paths)
    picks = sorted({int(k) for k in np.linspace(0, n - 1, min(count, n)).round()})
    height, width = held.images.shape[1:3]
    renders = render_frames(video, picks, width) if video is not None and video.is_file() else {}
    rows = []
    for k in picks:
        tiles = [u8(held.images[k])]
        if renders:
            tiles.append(renders[k][:height] if k in renders else np.zeros_like(tiles[0]))
        tiles += [u8(train.images[base["best_frame_picks"][k]]), u8(train.images[base["nearest_pose_picks"][k]])]
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)
    scale = max(1, -(-256 // height))
    write_rgb(path, sheet.repeat(scale, axis=0).repeat(scale, axis=1))
    return path


def measure(cfg: RealVideoConfig, clip_dir: Path, layout: str) -> dict[str, Any]:
    """Everything about one clip x layout that its folders give (keys absent where the folder lacks their input)."""
    row: dict[str, Any] = {"clip": clip_dir.name, "layout": layout}
    metrics = read_metrics(clip_dir, layout)
    if metrics is not None:
        row["metrics"] = metrics
        row["metrics_path"] = str(render_path(clip_dir, layout).with_suffix(".json"))
    data = clip_dir / layout
    if (data / "transforms_train.json").is_file():
        # The frames the demo scored: its first num_frames held-out frames, at the size it rendered them.
        scored = int(metrics["num_frames"]) if metrics and "num_frames" in metrics else cfg.max_frames
        size = render_size(render_path(clip_dir, layout), data)
        train = load_split(data, "train", size=size)
        held = load_split(data, "test", size=size, max_frames=scored)
        base = baselines(train, held)
        row["baselines"] = base
        row["resolution"] = [int(held.images.shape[2]), int(held.images.shape[1])]
        if metrics is not None and "psnr" in metrics:
            row["margin_db"] = metrics["psnr"] - base["best_frame_psnr"]
            if "stage2_psnr_after" in metrics:
                row["stage2_margin_db"] = metrics["stage2_psnr_after"] - base["best_frame_psnr"]
        sheet = clip_dir / f"heldout_{layout}.png"
        row["contact_sheet"] = str(
            write_contact_sheet(sheet, held, train, base, render_path(clip_dir, layout), cfg.contact_frames)
        )
    report_path = clip_dir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        kept = [int(f) for f in report["kept_frames"]]
        work = clip_dir / "work"
        row["frames_decoded"], row["frames_kept"] = int(report["frames_decoded"]), len(kept)
        row["flicker"] = label_flicker(work, kept)
        if (work / "pose.npz").is_file():
            row["jitter"] = pose_jitter(np.load(work / "pose.npz")["rvecs"], kept)
        row["process_cpu_ms_per_frame"] = stage_cpu_ms_per_frame(
            report.get("stage_seconds", {}), int(report["frames_decoded"]), layout
        )
    return row


# ----------------------------------------------------------------------------------------------
# The table


def _get(row: dict[str, Any], *path: str) -> Optional[float]:
    value: Any = row
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, (int, float)) else None


def _fmt(value: Optional[float], digits: int = 2, sign: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


TABLE_COLUMNS = (
    "clip",
    "layout",
    "held-out frames",
    "PSNR",
    "SSIM",
    "Stage II PSNR",
    "mouth PSNR",
    "LMD (px)",
    "mean image",
    "nearest pose",
    "best frame",
    "PSNR - best frame",
    "label flicker %",
    "pose jitter mean / max (°)",
    "sahs-process CPU ms/frame",
)


def table_row(row: dict[str, Any]) -> str:
    """One markdown row (``–`` where a number is missing)."""
    flicker = _get(row, "flicker", "label_flicker")
    cells = [
        row["clip"],
        row["layout"],
        _fmt(_get(row, "baselines", "held_out_frames"), 0),
        _fmt(_get(row, "metrics", "psnr")),
        _fmt(_get(row, "metrics", "ssim"), 3),
        _fmt(_get(row, "metrics", "stage2_psnr_after")),
        _fmt(_get(row, "metrics", "mouth_psnr")),
        _fmt(_get(row, "metrics", "lmd")),
        _fmt(_get(row, "baselines", "mean_image_psnr")),
        _fmt(_get(row, "baselines", "nearest_pose_psnr")),
        _fmt(_get(row, "baselines", "best_frame_psnr")),
        _fmt(_get(row, "margin_db"), sign=True),
        _fmt(None if flicker is None else 100 * flicker),
        f"{_fmt(_get(row, 'jitter', 'pose_jitter_mean_deg'))} / {_fmt(_get(row, 'jitter', 'pose_jitter_max_deg'))}",
        _fmt(_get(row, "process_cpu_ms_per_frame", "total"), 0),
    ]
    return "| " + " | ".join(cells) + " |"


def render_markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The header line, the table, and what the columns mean."""
    lines = [header, "", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += [table_row(r) for r in rows]
    lines += [
        "",
        "PSNR columns in dB, held-out frames at the render resolution. Baselines from the dataset alone (project "
        "PSNR, per-frame mean): the mean training image, the training frame nearest in camera pose, and the best "
        f"single training frame per held-out frame (an oracle); target PSNR - best frame >= +{MARGIN_TARGET_DB:g} dB. "
        "Label flicker: share of static pixels (3x3-blurred RGB within 3 levels) whose class changes between "
        "consecutive kept frames. Pose jitter: angle of the head rotation's second difference over consecutive "
        "kept triples. sahs-process CPU ms per decoded frame, all stages (this layout's layout stage only).",
    ]
    return "\n".join(lines) + "\n"


def header_line(cfg: RealVideoConfig, command: str, when: datetime.datetime) -> str:
    """Date, machine (cores, the demo's threads) and the command."""
    from bench_config import BenchmarkConfig
    from bench_report import machine_description

    machine = machine_description(BenchmarkConfig(jobs=1, threads=cfg.threads))
    return f"- date: {when:%Y-%m-%d %H:%M}; machine: {machine}; command: `{command}`"


# ----------------------------------------------------------------------------------------------
# Driver


def clips_to_run(cfg: RealVideoConfig) -> list[Path]:
    clips = sorted(cfg.clips.glob("*.mp4"))
    if cfg.only:
        clips = [c for c in clips if c.stem in cfg.only]
    if not clips:
        raise SystemExit(f"no clips (*.mp4{', stems ' + ', '.join(cfg.only) if cfg.only else ''}) in {cfg.clips}")
    return clips


def main(cfg: RealVideoConfig, argv: list[str]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(cfg.threads)
    out_dir = cfg.output_dir.resolve()
    json_path = cfg.json_path or out_dir / "real_video.json"
    md_path = cfg.markdown or out_dir / "real_video.md"
    layouts = ["nerface", "adnerf"] if cfg.layouts == "both" else [cfg.layouts]
    # --skip-train keeps the demo runs recorded by the last full run.
    previous: dict[tuple[str, str], Any] = {}
    if cfg.skip_train and json_path.is_file():
        previous = {(r["clip"], r["layout"]): r.get("demo") for r in json.loads(json_path.read_text())["rows"]}
    started = datetime.datetime.now()
    rows, notes = [], []
    for clip in clips_to_run(cfg):
        clip_dir = out_dir / clip.stem
        audio = has_audio(clip.resolve(), clip_dir)
        for layout in layouts:
            if layout == "adnerf" and not audio:
                note = f"{clip.name}: no audio track, AD-NeRF (audio-driven) layout skipped"
                notes.append(note)
                print(note, flush=True)
                continue
            demo = previous.get((clip.stem, layout))
            if not cfg.skip_train:
                demo = run_demo(cfg, clip.resolve(), clip_dir, layout)
            elif not (clip_dir / layout).is_dir() and read_metrics(clip_dir, layout) is None:
                print(f"{clip.name} / {layout}: nothing under {clip_dir} to measure (--skip-train), no row", flush=True)
                continue
            row = measure(cfg, clip_dir, layout)
            row["has_audio"] = audio
            if demo is not None:
                row["demo"] = demo
            rows.append(row)
    command = "benchmarks/real_video.py " + shlex.join(argv)
    header = header_line(cfg, command, started)
    markdown = render_markdown(rows, header)
    result = {
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": header,
        "command": command,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "margin_target_db": MARGIN_TARGET_DB,
        "notes": notes,
        "rows": rows,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    md_path.write_text(markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")
    return result


def entrypoint() -> None:
    import tyro

    main(tyro.cli(RealVideoConfig), sys.argv[1:])


if __name__ == "__main__":
    entrypoint()
