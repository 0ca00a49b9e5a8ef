"""The stages of ``sahs-process`` in order, each skipped when its outputs exist (unless ``force``).

Work files live in ``<output>/work``; the datasets in ``<output>/nerface`` and ``<output>/adnerf``;
``<output>/report.json`` and ``<output>/contact_sheet.png`` at the end. Notes a person must know
(gaps, several faces, no audio) are printed once as ``sahs-process: ...`` lines and kept in the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional

import numpy as np
import tyro

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.formats import FormatError, write_rgb
from sahs_nerfstudio.process import audio as pau
from sahs_nerfstudio.process import background as bgm
from sahs_nerfstudio.process import decode as dec
from sahs_nerfstudio.process import images
from sahs_nerfstudio.process import landmarks as lmk
from sahs_nerfstudio.process.expression import expression_codes
from sahs_nerfstudio.process.layouts import LayoutInputs, write_adnerf, write_nerface
from sahs_nerfstudio.process.parallel import cpu_seconds, run_indexed
from sahs_nerfstudio.process.pose import PoseResult, camera_to_world, solve_poses
from sahs_nerfstudio.process.report import contact_sheet, write_report
from sahs_nerfstudio.process.segmentation import frame_labels

PROG = "sahs-process"
STAGES = ("decode", "landmarks", "pose", "expression", "background", "segmentation", "audio", "layouts", "report")


@dataclass
class ProcessConfig:
    """``sahs-process VIDEO --output DIR``: a video to a talking-head dataset, offline, on a CPU."""

    video: tyro.conf.Positional[Path]
    """The input video (anything PyAV/FFmpeg reads)."""
    output: Path = Path("data/processed")
    """Output folder: ``nerface/``, ``adnerf/``, ``work/``, ``report.json``, ``contact_sheet.png``."""
    layout: Literal["nerface", "adnerf", "both"] = "both"
    """Which dataset layouts to write (AD-NeRF needs an audio track)."""
    size: int = 512
    """Frames are centre-cropped to a square and resized to this many pixels (0 keeps the size)."""
    crop: bool = True
    """Centre-crop to a square before resizing (otherwise the shorter side is scaled to ``size``)."""
    fps: float = 25.0
    """Target frame rate; variable-rate video is resampled to it."""
    min_seconds: float = 1.0
    """Refuse videos shorter than this (and fewer kept frames than this)."""
    max_gap_seconds: float = 0.2
    """Gaps without a face up to this long are interpolated; longer ones are dropped."""
    landmark_smoothing: float = 0.75
    """Temporal Gaussian smoothing of the landmarks, in frames (0: none)."""
    redetect_every: int = 25
    """Frames between detector checks while tracking."""
    focal: Optional[float] = None
    """Focal length in pixels of the output frames; estimated over the sequence when omitted."""
    pose_smoothness: float = 1.0
    """Weight of the frame-to-frame pose change against the reprojection error (0: per-frame PnP only)."""
    expression_dim: int = 76
    """Width of the expression code (6 interpretable channels, then PCA scores)."""
    val_fraction: Optional[float] = None
    """Held-out tail as a fraction of the kept frames; default each layout's own (AD-NeRF's last 1/11)."""
    background_stride: int = 10
    """Every this-many-th kept frame samples the background model."""
    contact_frames: int = 12
    """Frames on the contact sheet."""
    workers: int = 2
    """Processes for the per-frame stages (segmentation, layouts); tracking and poses are sequential."""
    force: bool = False
    """Redo every stage even when its outputs exist."""

    @property
    def work(self) -> Path:
        return self.output / "work"


def note(notes: List[str], message: str) -> None:
    """Say something once: printed now and kept for the report."""
    notes.append(message)
    print(f"{PROG}: {message}", flush=True)


def _check(config: ProcessConfig) -> None:
    from sahs_nerfstudio.errors import flag_error

    if config.fps <= 0:
        raise flag_error("--fps", "a positive frame rate", config.fps)
    if config.size < 0 or (0 < config.size < 64):
        raise flag_error("--size", "0 (keep) or at least 64 pixels", config.size)
    if config.expression_dim < 6:
        raise flag_error("--expression-dim", "at least 6", config.expression_dim)
    if config.val_fraction is not None and not 0 < config.val_fraction < 1:
        raise flag_error("--val-fraction", "a fraction between 0 and 1", config.val_fraction)
    if config.focal is not None and config.focal <= 0:
        raise flag_error("--focal", "a positive number of pixels", config.focal)


class Runner:
    """Runs the stages, timing each and skipping finished ones."""

    def __init__(self, config: ProcessConfig, progress: Optional[Callable[[str, int, int], None]] = None) -> None:
        self.config = config
        self.progress = progress or (lambda stage, done, total: None)
        self.seconds_file = config.work / "stage_seconds.json"
        self.seconds: Dict[str, Any] = {}
        if self.seconds_file.is_file() and not config.force:
            self.seconds = json.loads(self.seconds_file.read_text())
        self.skipped: List[str] = []

    def stage(self, name: str, done: Path, run: Callable[[], None]) -> None:
        if done.exists() and not self.config.force:
            self.skipped.append(name)
            return
        start, cpu = time.perf_counter(), cpu_seconds()
        run()
        self.seconds[name] = time.perf_counter() - start
        # CPU seconds of this process and its workers: what a stage costs on a machine shared with other work.
        self.seconds[f"{name}_cpu"] = cpu_seconds() - cpu
        self.config.work.mkdir(parents=True, exist_ok=True)
        self.seconds_file.write_text(json.dumps(self.seconds, indent=1))

    def tick(self, stage: str, total: int) -> Callable[[int], None]:
        return lambda n: self.progress(stage, n, total)


def run(config: ProcessConfig, progress: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, Any]:
    """All stages; returns the report (also written to ``<output>/report.json``)."""
    _check(config)
    work = config.work
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(config, progress)
    notes: List[str] = []
    frames_dir, audio_wav = work / "frames", work / "audio.wav"

    # 1. decode
    decode_json = work / "decode.json"
    runner.stage(
        "decode",
        decode_json,
        lambda: dec.decode(
            config.video,
            frames_dir,
            audio_wav,
            config.size,
            config.crop,
            config.fps,
            config.min_seconds,
            on_frame=runner.tick("decode", 0),
        ).save(decode_json),
    )
    info = dec.DecodeInfo.load(decode_json)
    n, w, h = info.num_frames, info.width, info.height
    frame_files = [dec.frame_path(frames_dir, k) for k in range(n)]
    layouts = ["nerface", "adnerf"] if config.layout == "both" else [config.layout]
    if not info.has_audio:
        if config.layout == "adnerf":
            raise FormatError(
                config.video, "<audio stream>", "an audio track (the AD-NeRF layout is audio-driven)", "none"
            )
        if "adnerf" in layouts:
            note(notes, "no audio track: writing the NeRFace (expression) layout only; AD-NeRF needs audio")
            layouts = ["nerface"]

    # 2. landmarks
    lm_file = work / "landmarks.npz"

    def landmarks_stage() -> None:
        tracker = lmk.FaceTracker(redetect_every=config.redetect_every)
        res = lmk.track(frame_files, images.read_image, tracker, on_frame=runner.tick("landmarks", n))
        max_gap = int(round(config.max_gap_seconds * config.fps))
        filled, kept, gaps = lmk.fill_gaps(res.points, max_gap)
        smooth = lmk.smooth(filled, kept, config.landmark_smoothing)
        np.savez(
            lm_file,
            raw=res.points,
            points=smooth,
            kept=kept,
            interpolated=np.array(gaps.interpolated, dtype=np.int64).reshape(-1, 2),
            dropped=np.array(gaps.dropped, dtype=np.int64).reshape(-1, 2),
            detections=res.detections,
            max_faces=res.max_faces,
            multi_face_frame=res.multi_face_frame,
        )

    runner.stage("landmarks", lm_file, landmarks_stage)
    lm = np.load(lm_file)
    points, kept = lm["points"], lm["kept"].astype(bool)
    interpolated = [(int(r[0]), int(r[1])) for r in lm["interpolated"]]
    dropped = [(int(r[0]), int(r[1])) for r in lm["dropped"]]
    if int(lm["max_faces"]) > 1:
        note(
            notes,
            f"{int(lm['max_faces'])} faces found (first in frame {int(lm['multi_face_frame'])}): "
            "following the largest one",
        )
    if interpolated:
        note(notes, f"no face in {lmk.format_ranges(interpolated, config.fps)}: interpolated (short gaps)")
    if dropped:
        note(notes, f"no face in {lmk.format_ranges(dropped, config.fps)}: dropped from the dataset")
    kept_idx = np.flatnonzero(kept)
    min_frames = int(np.ceil(config.min_seconds * config.fps))
    if len(kept_idx) < max(2, min_frames):
        raise FormatError(
            config.video,
            "<faces>",
            f"a face in at least {max(2, min_frames)} frames (--min-seconds {config.min_seconds:g})",
            f"a face in {len(kept_idx)} of {n} frames",
        )

    # 3. pose
    pose_file = work / "pose.npz"

    def pose_stage() -> None:
        p = solve_poses(points, kept, w, h, config.focal, config.pose_smoothness)
        c2w, scale = camera_to_world(p)
        np.savez(pose_file, rvecs=p.rvecs, tvecs=p.tvecs, focal=p.focal, reprojection=p.reprojection, c2w=c2w)

    runner.stage("pose", pose_file, pose_stage)
    pz = np.load(pose_file)
    pose = PoseResult(pz["rvecs"], pz["tvecs"], float(pz["focal"]), pz["reprojection"])
    c2w = pz["c2w"]

    # 4. expression
    expr_file = work / "expression.npz"

    def expression_stage() -> None:
        code = expression_codes(points, kept, pose, w, h, config.expression_dim)
        np.savez(expr_file, codes=code.codes, names=np.array(code.names), components=code.components)

    runner.stage("expression", expr_file, expression_stage)
    ez = np.load(expr_file)
    codes, names = ez["codes"], [str(s) for s in ez["names"]]
    if codes.shape[1] != config.expression_dim:
        raise FormatError(
            expr_file, "codes", f"{config.expression_dim} values per frame (--expression-dim)", str(codes.shape[1])
        )

    # 5. background
    bg_file = work / "background.png"

    def background_stage() -> None:
        model = bgm.background_model(
            kept_idx.tolist(), lambda f: images.read_image(frame_files[f]), points, stride=config.background_stride
        )
        write_rgb(bg_file, model.image)

    runner.stage("background", bg_file, background_stage)
    background = images.read_image(bg_file)

    # 6. segmentation: class indices as grey PNGs, and the colour masks both layouts link to
    labels_dir, masks_dir = work / "labels", work / "masks"
    seg_done = work / "labels.done"
    mask_colours = images.class_colours(sem.encode_mask, sem.NUM_CLASSES)

    def segment(j: int) -> None:
        f = int(kept_idx[j])
        labels = frame_labels(images.read_image(frame_files[f]), points[f], background)
        images.write_png(labels_dir / f"{f:06d}.png", labels.astype(np.uint8))
        images.write_png(masks_dir / f"{f:06d}.png", images.colour(labels, mask_colours))

    def segmentation_stage() -> None:
        run_indexed(segment, len(kept_idx), config.workers, runner.tick("segmentation", len(kept_idx)))
        seg_done.write_text("")

    runner.stage("segmentation", seg_done, segmentation_stage)

    def read_labels_kept(i: int) -> np.ndarray:
        return images.read_image(labels_dir / f"{kept_idx[i]:06d}.png", "<labels>", grey=True).astype(np.int64)

    # 7. audio: the kept frames' spans of the track, and one feature window per kept frame
    aud_file, kept_wav = work / "aud_kept.npy", work / "aud_kept.wav"
    if info.has_audio:
        runner.stage("audio", aud_file, lambda: pau.kept_audio(audio_wav, kept_idx, config.fps, kept_wav, aud_file))
        tail = pau.silent_tail_note(kept_idx, config.fps, info.audio_seconds)
        if tail and "adnerf" in layouts:
            note(notes, tail)

    # 8. layouts
    inputs = LayoutInputs(
        read_frame=lambda i: images.read_image(frame_files[kept_idx[i]]),
        frame_file=lambda i: frame_files[kept_idx[i]],
        mask_file=lambda i: masks_dir / f"{kept_idx[i]:06d}.png",
        read_labels=read_labels_kept,
        landmarks=points[kept_idx],
        c2w=c2w[kept_idx],
        expressions=codes[kept_idx],
        focal=pose.focal,
        width=w,
        height=h,
        background=background,
        val_fraction=config.val_fraction,
    )
    split_counts: Dict[str, Any] = {}
    for layout in layouts:
        root = config.output / layout
        done = root / "transforms_val.json"

        def layout_stage(layout: str = layout, root: Path = root) -> None:
            tick = runner.tick(f"layout {layout}", len(kept_idx))
            if layout == "nerface":
                split_counts[layout] = write_nerface(root, inputs, tick, config.workers)
            else:
                feats = np.load(aud_file)
                split_counts[layout] = write_adnerf(root, inputs, feats, kept_wav, tick, config.workers)

        runner.stage(f"layout_{layout}", done, layout_stage)

    # 9. report
    report: Dict[str, Any] = {
        "video": str(config.video),
        "frames_decoded": n,
        "frames_kept": int(len(kept_idx)),
        "frames_without_face": int((~np.isfinite(lm["raw"]).all(axis=(1, 2))).sum()),
        "interpolated_ranges": interpolated,
        "dropped_ranges": dropped,
        "kept_frames": kept_idx.tolist(),
        "fps": config.fps,
        "size": [w, h],
        "has_audio": info.has_audio,
        "layouts": layouts,
        "splits": split_counts,
        "focal_px": pose.focal,
        "reprojection_rms_px": float(np.nanmean(pose.reprojection)),
        "detector_runs": int(lm["detections"]),
        "expression_channels": names[:6],
        "expression_dim": int(codes.shape[1]),
        "notes": notes,
        "stage_seconds": runner.seconds,
        "skipped_stages": runner.skipped,
    }
    start = time.perf_counter()
    picks = np.linspace(0, len(kept_idx) - 1, min(config.contact_frames, len(kept_idx))).round().astype(int)
    contact_sheet(
        config.output / "contact_sheet.png",
        sorted(set(picks.tolist())),
        inputs.read_frame,
        read_labels_kept,
        inputs.landmarks,
        pose,
        kept_idx.tolist(),
    )
    report["stage_seconds"]["report"] = time.perf_counter() - start
    runner.seconds_file.write_text(json.dumps(runner.seconds, indent=1))
    write_report(config.output / "report.json", report)
    return report
