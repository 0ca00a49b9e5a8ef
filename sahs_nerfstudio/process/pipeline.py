"""The stages of ``sahs-process`` in order, each skipped when its outputs exist (unless ``force``).

Each stage is a small function of the :class:`Clip` it reads and fills; :data:`STAGES` lists them in
the order they run. Work files live in ``<output>/work``; the datasets in ``<output>/nerface`` and
``<output>/adnerf``; ``<output>/report.json`` and ``<output>/contact_sheet.png`` at the end. Notes a
person must know (gaps, several faces, no audio, the crop) are printed once as ``sahs-process: ...``
lines and kept in the report. A dataset's last file (``transforms_val.json``) is written last, so a
run stopped half-way never leaves a layout that looks complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional

import numpy as np
import tyro

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.formats import write_rgb
from sahs_nerfstudio.errors import FormatError
from sahs_nerfstudio.process import audio as pau
from sahs_nerfstudio.process import background as bgm
from sahs_nerfstudio.process import decode as dec
from sahs_nerfstudio.process import images
from sahs_nerfstudio.process import landmarks as lmk
from sahs_nerfstudio.process.expression import BASIS_FILE, LEADING, expression_codes
from sahs_nerfstudio.process.face_mesh import to_68
from sahs_nerfstudio.process.framing import choose_crop
from sahs_nerfstudio.process.layouts import LayoutInputs, write_adnerf, write_nerface
from sahs_nerfstudio.process.parallel import cpu_seconds, run_indexed
from sahs_nerfstudio.process.pose import PoseResult, camera_to_world, solve_poses
from sahs_nerfstudio.process.regions import FaceRegions
from sahs_nerfstudio.process.report import contact_sheet, write_report
from sahs_nerfstudio.process.segmentation import ColourModels, fit_colour_models, frame_labels
from sahs_nerfstudio.process.shape import SubjectShape, subject_shape

PROG = "sahs-process"


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
    """Frames are cropped to a square and resized to this many pixels (0 keeps the size)."""
    crop: Literal["auto", "face", "centre", "none"] = "auto"
    """``face``: one square around the head and shoulders for the whole clip; ``centre``: the centre
    square; ``none``: no crop (the shorter side is scaled to ``size``); ``auto``: ``face`` when the face
    is small in the frame, else ``centre``."""
    fps: float = 25.0
    """Target frame rate; variable-rate video is resampled to it."""
    min_seconds: float = 1.0
    """Refuse videos shorter than this (and fewer kept frames than this)."""
    max_gap_seconds: float = 0.2
    """Gaps without a face up to this long are interpolated; longer ones are dropped."""
    landmark_smoothing: float = 0.75
    """Temporal Gaussian smoothing of the landmarks, in frames (0: none)."""
    focal: Optional[float] = None
    """Focal length in pixels of the output frames; estimated over the sequence when omitted."""
    pose_smoothness: float = 1.0
    """Weight of the frame-to-frame pose change against the reprojection error (0: per-frame PnP only)."""
    expression_dim: int = 76
    """Width of the expression code (8 interpretable channels, then PCA scores)."""
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
    if config.expression_dim < len(LEADING):
        raise flag_error("--expression-dim", f"at least {len(LEADING)}", config.expression_dim)
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


@dataclass
class Clip:
    """What the stages know about the clip so far; each stage reads some fields and fills others."""

    config: ProcessConfig
    runner: Runner
    notes: List[str] = field(default_factory=list)
    info: Optional[dec.DecodeInfo] = None
    frame_files: List[Path] = field(default_factory=list)
    layouts: List[str] = field(default_factory=list)
    mesh: np.ndarray = field(default_factory=lambda: np.zeros((0, 478, 3)))
    """Smoothed, gap-filled meshes, [N, 478, 3] pixels (NaN where dropped)."""
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 68, 2)))
    """The 68 points of :attr:`mesh`."""
    kept_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    track: Dict[str, Any] = field(default_factory=dict)
    shape: Optional[SubjectShape] = None
    pose: Optional[PoseResult] = None
    c2w: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    names: List[str] = field(default_factory=list)
    background: Optional[np.ndarray] = None
    colours: Optional[ColourModels] = None
    split_counts: Dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.config.work

    def note(self, message: str) -> None:
        note(self.notes, message)

    def read_frame(self, f: int) -> np.ndarray:
        return images.read_image(self.frame_files[f])

    def read_matte(self, f: int) -> np.ndarray:
        return images.read_image(lmk.matte_path(self.work / "matte", f), "<matte>", grey=True)

    def read_labels_kept(self, i: int) -> np.ndarray:
        path = self.work / "labels" / f"{self.kept_idx[i]:06d}.png"
        return images.read_image(path, "<labels>", grey=True).astype(np.int64)

    def sample_frames(self) -> List[int]:
        """Every ``--background-stride``-th kept frame, at most 60, evenly spread."""
        picks = self.kept_idx[:: max(1, self.config.background_stride)].tolist()
        if len(picks) > 60:
            picks = [picks[int(round(i))] for i in np.linspace(0, len(picks) - 1, 60)]
        return picks


def decode_stage(clip: Clip) -> None:
    config, work = clip.config, clip.work
    decode_json = work / "decode.json"

    def compute() -> None:
        mode, box = choose_crop(config.crop, config.video, config.fps)
        info = dec.decode(
            config.video,
            work / "frames",
            work / "audio.wav",
            config.size,
            mode != "none",
            config.fps,
            config.min_seconds,
            on_frame=clip.runner.tick("decode", 0),
            box=box,
        )
        info.save(decode_json)

    clip.runner.stage("decode", decode_json, compute)
    info = clip.info = dec.DecodeInfo.load(decode_json)
    for line in info.decode_errors:
        clip.note(line)
    if info.crop == "face" and info.crop_box is not None:
        x, y, side = info.crop_box
        clip.note(f"the face is small in the frame: cropped to the {side}x{side} square at ({x}, {y}) around it")
    clip.frame_files = [dec.frame_path(work / "frames", k) for k in range(info.num_frames)]
    clip.layouts = ["nerface", "adnerf"] if config.layout == "both" else [config.layout]
    if not info.has_audio:
        if config.layout == "adnerf":
            raise FormatError(
                config.video, "<audio stream>", "an audio track (the AD-NeRF layout is audio-driven)", "none"
            )
        if "adnerf" in clip.layouts:
            clip.note("no audio track: writing the NeRFace (expression) layout only; AD-NeRF needs audio")
            clip.layouts = ["nerface"]


def track_stage(clip: Clip) -> None:
    """Face mesh and matte per frame; gaps filled or dropped; the mesh smoothed over time."""
    config, n = clip.config, len(clip.frame_files)
    lm_file = clip.work / "landmarks.npz"

    def compute() -> None:
        res = lmk.track(clip.frame_files, images.read_image, clip.work / "matte", clip.runner.tick("landmarks", n))
        filled, kept, gaps = lmk.fill_gaps(res.mesh, int(round(config.max_gap_seconds * config.fps)))
        smooth = lmk.smooth(filled, kept, config.landmark_smoothing)
        np.savez(
            lm_file,
            raw=res.mesh.astype(np.float32),
            mesh=smooth,
            points=to_68(smooth)[..., :2],
            kept=kept,
            interpolated=np.array(gaps.interpolated, dtype=np.int64).reshape(-1, 2),
            dropped=np.array(gaps.dropped, dtype=np.int64).reshape(-1, 2),
            max_faces=res.max_faces,
            multi_face_frame=res.multi_face_frame,
        )

    clip.runner.stage("landmarks", lm_file, compute)
    lm = np.load(lm_file)
    clip.mesh, clip.points = lm["mesh"], lm["points"]
    kept = lm["kept"].astype(bool)
    interpolated = [(int(r[0]), int(r[1])) for r in lm["interpolated"]]
    dropped = [(int(r[0]), int(r[1])) for r in lm["dropped"]]
    clip.track = {
        "frames_without_face": int((~np.isfinite(lm["raw"]).all(axis=(1, 2))).sum()),
        "interpolated_ranges": interpolated,
        "dropped_ranges": dropped,
    }
    if int(lm["max_faces"]) > 1:
        clip.note(
            f"{int(lm['max_faces'])} faces found (first in frame {int(lm['multi_face_frame'])}): "
            "following the largest one"
        )
    if interpolated:
        clip.note(f"no face in {lmk.format_ranges(interpolated, config.fps)}: interpolated (short gaps)")
    if dropped:
        clip.note(f"no face in {lmk.format_ranges(dropped, config.fps)}: dropped from the dataset")
    clip.kept_idx = np.flatnonzero(kept)
    min_frames = int(np.ceil(config.min_seconds * config.fps))
    if len(clip.kept_idx) < max(2, min_frames):
        raise FormatError(
            config.video,
            "<faces>",
            f"a face in at least {max(2, min_frames)} frames (--min-seconds {config.min_seconds:g})",
            f"a face in {len(clip.kept_idx)} of {n} frames",
        )


def _kept_mask(clip: Clip) -> np.ndarray:
    kept = np.zeros(len(clip.frame_files), bool)
    kept[clip.kept_idx] = True
    return kept


def pose_stage(clip: Clip) -> None:
    """The subject's 3-D face, then a head pose per frame against it."""
    assert clip.info is not None
    config, info = clip.config, clip.info
    shape_file, pose_file = clip.work / "shape.npz", clip.work / "pose.npz"

    def compute() -> None:
        kept = _kept_mask(clip)
        shape = subject_shape(clip.mesh, kept)
        shape.save(shape_file)
        p = solve_poses(clip.mesh[..., :2], kept, shape, info.width, info.height, config.focal, config.pose_smoothness)
        c2w, _ = camera_to_world(p)
        problems = np.array(p.problems, dtype=str)
        np.savez(
            pose_file,
            rvecs=p.rvecs,
            tvecs=p.tvecs,
            focal=p.focal,
            reprojection=p.reprojection,
            c2w=c2w,
            problems=problems,
        )
        for line in p.problems:
            clip.note(line)

    clip.runner.stage("pose", pose_file, compute)
    clip.shape = SubjectShape.load(shape_file)
    pz = np.load(pose_file)
    problems = [str(x) for x in pz["problems"]] if "problems" in pz else []
    clip.pose = PoseResult(pz["rvecs"], pz["tvecs"], float(pz["focal"]), pz["reprojection"], problems)
    clip.c2w = pz["c2w"]


def expression_stage(clip: Clip) -> None:
    assert clip.shape is not None
    expr_file = clip.work / "expression.npz"

    def compute() -> None:
        assert clip.shape is not None
        code = expression_codes(clip.mesh, _kept_mask(clip), clip.shape, clip.config.expression_dim)
        np.savez(expr_file, codes=code.codes, names=np.array(code.names))
        code.basis.save(clip.work / BASIS_FILE)  # last: the stage's done marker

    clip.runner.stage("expression", clip.work / BASIS_FILE, compute)
    ez = np.load(expr_file)
    clip.codes, clip.names = ez["codes"], [str(s) for s in ez["names"]]
    if clip.codes.shape[1] != clip.config.expression_dim:
        raise FormatError(
            expr_file,
            "codes",
            f"{clip.config.expression_dim} values per frame (--expression-dim)",
            str(clip.codes.shape[1]),
        )


def background_stage(clip: Clip) -> None:
    """The clean plate from the matte, and the clip's skin / hair / clothes colours."""
    bg_file, colour_file = clip.work / "background.png", clip.work / "colours.npz"

    def compute() -> None:
        picks = clip.sample_frames()  # the same frames for the plate and the colours

        def face_width(f: int) -> float:
            return FaceRegions.from_mesh(clip.mesh[f]).face_width

        model = bgm.background_model(picks, clip.read_frame, clip.read_matte, face_width)
        write_rgb(bg_file, model.image)
        fit_colour_models(picks, clip.read_frame, clip.read_matte, clip.mesh).save(colour_file)

    clip.runner.stage("background", colour_file, compute)
    clip.background = images.read_image(bg_file)
    clip.colours = ColourModels.load(colour_file)


def segmentation_stage(clip: Clip) -> None:
    """Class indices as grey PNGs, and the colour masks both layouts link to."""
    labels_dir, masks_dir = clip.work / "labels", clip.work / "masks"
    done = clip.work / "labels.done"
    mask_colours = images.class_colours(sem.encode_mask, sem.NUM_CLASSES)
    colours, plate = clip.colours, clip.background
    assert colours is not None

    def segment(j: int) -> None:
        f = int(clip.kept_idx[j])
        labels = frame_labels(clip.read_frame(f), clip.read_matte(f), clip.mesh[f], colours, plate)
        images.write_png(labels_dir / f"{f:06d}.png", labels.astype(np.uint8))
        images.write_png(masks_dir / f"{f:06d}.png", images.colour(labels, mask_colours))

    def compute() -> None:
        count = len(clip.kept_idx)
        run_indexed(segment, count, clip.config.workers, clip.runner.tick("segmentation", count))
        done.write_text("")

    clip.runner.stage("segmentation", done, compute)


def audio_stage(clip: Clip) -> None:
    """The kept frames' spans of the track, and one feature window per kept frame."""
    assert clip.info is not None
    if not clip.info.has_audio:
        return
    work = clip.work
    clip.runner.stage(
        "audio",
        work / "aud_kept.npy",
        lambda: pau.kept_audio(
            work / "audio.wav", clip.kept_idx, clip.config.fps, work / "aud_kept.wav", work / "aud_kept.npy"
        ),
    )
    tail = pau.silent_tail_note(clip.kept_idx, clip.config.fps, clip.info.audio_seconds)
    if tail and "adnerf" in clip.layouts:
        clip.note(tail)


def layout_inputs(clip: Clip) -> LayoutInputs:
    assert clip.info is not None and clip.pose is not None and clip.background is not None
    kept = clip.kept_idx
    return LayoutInputs(
        read_frame=lambda i: clip.read_frame(int(kept[i])),
        frame_file=lambda i: clip.frame_files[kept[i]],
        mask_file=lambda i: clip.work / "masks" / f"{kept[i]:06d}.png",
        read_labels=clip.read_labels_kept,
        landmarks=clip.points[kept],
        c2w=clip.c2w[kept],
        expressions=clip.codes[kept],
        focal=clip.pose.focal,
        width=clip.info.width,
        height=clip.info.height,
        background=clip.background,
        val_fraction=clip.config.val_fraction,
    )


def layouts_stage(clip: Clip) -> None:
    inputs = layout_inputs(clip)
    work = clip.work
    for layout in clip.layouts:
        root = clip.config.output / layout

        def compute(layout: str = layout, root: Path = root) -> None:
            tick = clip.runner.tick(f"layout {layout}", inputs.num)
            # The subject's expression basis travels with the dataset: drivers are mapped into it.
            images.link_or_copy(work / BASIS_FILE, root / BASIS_FILE)
            if layout == "nerface":
                clip.split_counts[layout] = write_nerface(root, inputs, tick, clip.config.workers)
            else:
                feats = np.load(work / "aud_kept.npy")
                clip.split_counts[layout] = write_adnerf(
                    root, inputs, feats, work / "aud_kept.wav", tick, clip.config.workers
                )

        clip.runner.stage(f"layout_{layout}", root / "transforms_val.json", compute)


STAGES: List[Callable[[Clip], None]] = [
    decode_stage,
    track_stage,
    pose_stage,
    expression_stage,
    background_stage,
    segmentation_stage,
    audio_stage,
    layouts_stage,
]
"""The stages in the order they run (the report comes last, in :func:`run`)."""


def report_stage(clip: Clip) -> Dict[str, Any]:
    assert clip.info is not None and clip.pose is not None
    config, info, pose, kept = clip.config, clip.info, clip.pose, clip.kept_idx
    reproj = pose.reprojection[kept]
    report: Dict[str, Any] = {
        "video": str(config.video),
        "frames_decoded": info.num_frames,
        "frames_kept": int(len(kept)),
        **clip.track,
        "kept_frames": kept.tolist(),
        "fps": config.fps,
        "size": [info.width, info.height],
        "crop": info.crop,
        "crop_box": info.crop_box,
        "has_audio": info.has_audio,
        "layouts": clip.layouts,
        "splits": clip.split_counts,
        "focal_px": pose.focal,
        "reprojection_rms_px": float(np.nanmean(reproj)),
        "reprojection_median_px": float(np.nanmedian(reproj)),
        "reprojection_max_px": float(np.nanmax(reproj)),
        "reprojection_px": [None if not np.isfinite(v) else float(v) for v in pose.reprojection],
        "rigid_vertices": int(len(clip.shape.rigid)) if clip.shape is not None else 0,
        "colour_models": sorted(k for k, v in (clip.colours.models if clip.colours else {}).items() if v is not None),
        "expression_channels": clip.names[: len(LEADING)],
        "expression_dim": int(clip.codes.shape[1]),
        "notes": clip.notes,
        "stage_seconds": clip.runner.seconds,
        "skipped_stages": clip.runner.skipped,
    }
    start = time.perf_counter()
    inputs = layout_inputs(clip)
    picks = np.linspace(0, len(kept) - 1, min(config.contact_frames, len(kept))).round().astype(int)
    contact_sheet(
        config.output / "contact_sheet.png",
        sorted(set(picks.tolist())),
        inputs.read_frame,
        clip.read_labels_kept,
        inputs.landmarks,
        pose,
        kept.tolist(),
    )
    report["stage_seconds"]["report"] = time.perf_counter() - start
    clip.runner.seconds_file.write_text(json.dumps(clip.runner.seconds, indent=1))
    write_report(config.output / "report.json", report)
    return report


def run(config: ProcessConfig, progress: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, Any]:
    """All stages; returns the report (also written to ``<output>/report.json``)."""
    _check(config)
    config.work.mkdir(parents=True, exist_ok=True)
    clip = Clip(config, Runner(config, progress))
    for stage in STAGES:
        stage(clip)
    return report_stage(clip)
