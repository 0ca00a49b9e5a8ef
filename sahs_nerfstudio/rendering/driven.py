"""Driven rendering (``sahs-render``): any driver through a camera path into an mp4.

The driver is an expression sequence, an ``aud.npy``, an audio file (:mod:`sahs_nerfstudio.driving.sequence`)
or, by default, the run's own split; the cameras follow :mod:`.camera_paths`. The mp4 gets the
driver's audio when there is audio. Models with an eye channel get one eye closure per frame
(:func:`sahs_nerfstudio.driving.driving_eyes`: an ``au.csv``, the split's own track, open eyes or
natural blinks), so driven videos blink.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.data import keys
from sahs_nerfstudio.data.formats import ADNERF_AUDIO, EXPRESSION_BASIS
from sahs_nerfstudio.data.pose import pose_code
from sahs_nerfstudio.driving.sequence import (
    VIDEO_SUFFIXES,
    BlinkMode,
    DrivingSequence,
    attach_sibling_audio,
    driving_eyes,
    encode_sequence,
    load_driver,
    load_video_driver,
)
from sahs_nerfstudio.errors import FormatError, flag_error
from sahs_nerfstudio.rendering.camera_paths import CAMERA_PATHS, CameraPath, camera_path
from sahs_nerfstudio.rendering.common import Split, render_progress, sahs_model, split_dataset
from sahs_nerfstudio.utils.images import to_uint8
from sahs_nerfstudio.utils.run_loader import load_run
from sahs_nerfstudio.utils.video import VideoInfo, write_video


@dataclass
class DrivenResult:
    """What :func:`render_driven_video` did."""

    num_frames: int
    """Frames rendered."""
    width: int
    """Width of a rendered frame (all panels side by side)."""
    height: int
    """Height of a rendered frame."""
    render_seconds: float
    """Seconds spent rendering the frames: the model's rendering and assembling the panels (no loading, no
    video encoding)."""
    total_fps: float
    """Frames per second including encoding the video."""
    video: VideoInfo | None
    """The mp4 written (None when rendering only)."""
    driver: DrivingSequence
    """The driving rows used, after ``max_frames``."""
    has_ground_truth: bool
    """Whether the frames are the split's own (so a ground-truth panel exists)."""
    eye: np.ndarray | None = None
    """The eye closure given to each frame ``[T]`` (None: the model takes no eye channel)."""
    eye_source: str | None = None
    """Where :attr:`eye` came from (a file, the split's own track, natural blinks, open)."""
    device: str = "cpu"
    """The device the model rendered on."""
    threads: int = 1
    """torch's CPU threads while rendering (what bounds the frame rate on a CPU)."""

    @property
    def render_fps(self) -> float:
        """Frames per second of the model's rendering alone (:attr:`render_seconds`)."""
        return self.num_frames / max(self.render_seconds, 1e-9)

    def summary_line(self) -> str:
        """The line ``sahs-render`` ends with, e.g. ``Rendered 120 frames at 128x128 in 23.40 s: 5.13 frames/s
        (2 threads)``; on a GPU the device instead of the threads."""
        on = self.device
        if on == "cpu":
            on = f"{self.threads} thread" + ("" if self.threads == 1 else "s")
        return (
            f"Rendered {self.num_frames} frames at {self.width}x{self.height} in {self.render_seconds:.2f} s: "
            f"{self.render_fps:.2f} frames/s ({on})"
        )


def split_driver(pipeline: Pipeline, split: str, fps: float = 25.0) -> DrivingSequence:
    """The split's own driving rows (its expressions or audio windows), with its audio when contiguous."""
    model = sahs_model(pipeline)
    dataset = split_dataset(pipeline, split)
    meta = dataset.cameras.metadata or {}
    rows = meta[keys.DRIVER].cpu().numpy().astype(np.float32)
    datamanager: Any = pipeline.datamanager
    data_root = Path(datamanager.config.dataparser.data)
    source = data_root / f"transforms_{split}.json"
    if model.driver_kind != "audio":
        return DrivingSequence("expression", rows, source, "frames[k].expression", fps)
    seq = DrivingSequence("audio", rows.reshape(rows.shape[0], *model.audio_window), source, "frames[k].aud_id", fps)
    ids = [int(v) for v in meta[keys.AUDIO_INDEX][:, 0].tolist()]
    if all(b == a + 1 for a, b in zip(ids, ids[1:], strict=False)):
        attach_sibling_audio(seq, data_root / ADNERF_AUDIO, ids[0])
    return seq


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def check_render_flags(
    output: Path | None, cameras: str, fps: float, resolution_scale: float, max_frames: int | None
) -> None:
    """Refuse impossible settings before the run is loaded: a FormatError naming the flag."""
    if cameras not in CAMERA_PATHS:
        raise flag_error("--cameras", f"one of {', '.join(CAMERA_PATHS)}", cameras)
    if not _positive(fps):
        raise flag_error("--fps", "a positive frame rate (frames per second)", fps)
    if not _positive(resolution_scale):
        raise flag_error(
            "--resolution-scale", "a positive scale of the dataset's resolution (1.0: as is)", resolution_scale
        )
    if max_frames is not None and max_frames < 1:
        raise flag_error("--max-frames", "at least 1 frame (leave it out to render every frame)", max_frames)
    if output is not None and Path(output).is_dir():
        raise FormatError(output, "--output", "the path of an mp4 file to write", "an existing folder")


def render_driven_video(
    config_path: Path,
    output: Path | None,
    driver: Path | None = None,
    audio: Path | None = None,
    cameras: CameraPath = "dataset",
    split: Split = "test",
    frame: int = 0,
    orbit_degrees: float = 15.0,
    pose: Literal["follow", "frozen"] = "follow",
    side_by_side: bool = False,
    max_frames: int | None = None,
    fps: float = 25.0,
    resolution_scale: float = 1.0,
    data: Path | None = None,
    loaded: tuple[TrainerConfig, Pipeline] | None = None,
    eyes: Path | None = None,
    blink: BlinkMode = "auto",
    blink_seed: int = 0,
    skip_missing: bool = False,
    driver_neutral_frame: int | None = None,
) -> DrivenResult:
    """Render ``driver`` (None: the split's own frames) through a camera path into an mp4.

    Args:
        config_path: the run's ``config.yml``.
        output: the mp4 to write (None: render only, e.g. to time it).
        driver: a driving file (see :mod:`sahs_nerfstudio.driving.sequence`); None drives with ``split`` itself.
        audio: an audio file to mux instead of the driver's own audio.
        cameras: ``dataset`` (the split's cameras, cycled), ``frame`` (camera ``frame`` of the split,
            fixed), ``orbit`` (that camera swung +-``orbit_degrees`` about the head, one period) or ``driver``
            (that camera turned as a driver video's head turns, relative to its median pose).
        split: the split whose cameras (and, without ``driver``, codes) are used.
        pose: ``follow``: the pose code is each camera's; ``frozen``: the first camera's throughout.
        side_by_side: each frame is render | ground truth | semantics (ground truth only when the
            split drives itself through its own cameras).
        max_frames: render at most this many frames (at least 1).
        fps: video frame rate, and the rate audio files are cut into windows at.
        resolution_scale: scale of the output resolution relative to the dataset's.
        data: dataset path replacing the one in the config.
        loaded: an already loaded ``(config, pipeline)`` (skips loading).
        eyes: an OpenFace ``au.csv`` whose row ``k`` gives frame ``k``'s eye closure (models with an eye channel).
        blink: the eyes without ``eyes``: ``auto`` (the split's own track when it drives itself, else natural
            blinks), ``natural`` or ``open``.
        blink_seed: seed of the natural blinks.
        skip_missing: a driver video's frames without a face are left out (with their sound) instead of
            being an error.
        driver_neutral_frame: a driver video's frame whose face counts as its resting face (default: the
            median face over the clip).
    """
    check_render_flags(output, cameras, fps, resolution_scale, max_frames)
    if loaded is None:
        _, pipeline, _, _ = load_run(config_path, test_mode="test", data=data)
    else:
        pipeline = loaded[1]
    model = sahs_model(pipeline)
    model.eval()
    dataset = split_dataset(pipeline, split)
    num_cameras = len(dataset.cameras)
    if not 0 <= frame < num_cameras:
        raise FormatError(config_path, "frame", f"a camera index 0..{num_cameras - 1} of the {split} split", str(frame))
    window: tuple[int, ...] = tuple(model.audio_window) if model.driver_kind == "audio" else (16, 29)
    video_driver = driver is not None and driver.suffix.lower() in VIDEO_SUFFIXES
    if driver is None:
        seq = split_driver(pipeline, split, fps)
    elif video_driver:
        seq = load_video_driver(
            driver,
            "audio" if model.driver_kind == "audio" else "expression",
            _dataset_root(pipeline) / EXPRESSION_BASIS,
            fps=fps,
            window=window[0],
            channels=window[1],
            skip_missing=skip_missing,
            neutral_frame=driver_neutral_frame,
            head_motion=cameras == "driver",
        )
    else:
        seq = load_driver(driver, fps=fps, audio=audio, window=window[0], channels=window[1])
    if audio is not None and (driver is None or video_driver):  # a driving file's loader takes --audio itself
        extra = load_driver(audio, fps=fps)
        seq.audio, seq.sample_rate, seq.audio_source = extra.audio, extra.sample_rate, extra.audio_source
    seq = seq.truncated(len(seq) if max_frames is None else max_frames)
    codes = encode_sequence(model, seq)
    eye, eye_source = _eyes(model, dataset, seq, driver, eyes, blink, blink_seed, fps)
    has_gt = driver is None and cameras == "dataset"
    count = len(seq)
    pivot = 0.5 * (float(model.near) + float(model.far))
    rotations = None
    if cameras == "driver":
        if seq.head_rotations is None:
            raise flag_error("--cameras", "driver only with a driver video (--driver clip.mp4)", cameras)
        rotations = torch.from_numpy(seq.head_rotations).float()
    camera_at = camera_path(
        dataset.cameras, cameras, frame, count, orbit_degrees, pivot, resolution_scale, head_rotations=rotations
    )
    frozen_pose = pose_code(camera_at(0).camera_to_worlds)
    render_seconds = 0.0
    shape: list[int] = []

    def frames() -> Iterator[np.ndarray]:
        nonlocal render_seconds
        with render_progress() as progress:
            task = progress.add_task(f"{seq.source.name} ({seq.kind})", total=count, fps=0.0)
            for t in range(count):
                tick = time.perf_counter()
                cam = camera_at(t)
                meta: dict[str, torch.Tensor] = {keys.DRIVING_CODE: codes[t : t + 1]}
                if eye is not None:
                    meta[keys.EYE] = torch.tensor([[float(eye[t])]], device=model.device)
                if pose == "frozen":
                    meta[keys.POSE] = frozen_pose
                cam.metadata = meta
                outputs = model.get_outputs_for_camera(cam.to(model.device))
                parts = [outputs["rgb"]]
                if side_by_side:
                    if has_gt:
                        parts.append(_ground_truth(dataset, t % num_cameras, outputs["rgb"]))
                    if "semantics" in outputs:
                        parts.append(outputs["semantics"])
                image = to_uint8(torch.cat(parts, dim=1))
                render_seconds += time.perf_counter() - tick
                if not shape:
                    shape.extend(image.shape[:2])
                progress.update(task, advance=1, fps=(t + 1) / max(render_seconds, 1e-9))
                yield image

    start = time.perf_counter()
    info: VideoInfo | None = None
    if output is not None:
        audio_samples = seq.audio if seq.audio is not None and len(seq.audio) > 0 else None
        info = write_video(
            output,
            frames(),
            fps=fps,
            audio=audio_samples,
            sample_rate=seq.sample_rate if audio_samples is not None else None,
        )
    else:
        for _ in frames():
            pass
    total = time.perf_counter() - start
    result = DrivenResult(
        num_frames=count,
        width=shape[1] if shape else 0,
        height=shape[0] if shape else 0,
        render_seconds=render_seconds,
        total_fps=count / max(total, 1e-9),
        video=info,
        driver=seq,
        has_ground_truth=has_gt,
        eye=eye,
        eye_source=eye_source,
        device=str(model.device),
        threads=torch.get_num_threads(),
    )
    CONSOLE.print(f"[bold green]{result.summary_line()}[/bold green]")
    notes = []
    if output is not None:
        notes.append(f"to {output} at {result.total_fps:.2f} frames/s with encoding")
    if info is not None and info.audio_seconds is not None:
        notes.append(f"audio {info.audio_seconds:.2f} s from {seq.audio_source}")
    if eye_source is not None:
        notes.append(f"eyes: {eye_source}")
    if notes:
        CONSOLE.print("  " + ", ".join(notes), markup=False, soft_wrap=True)
    return result


def _eyes(
    model: Any,
    dataset: Any,
    seq: DrivingSequence,
    driver: Path | None,
    eyes: Path | None,
    blink: BlinkMode,
    seed: int,
    fps: float,
) -> tuple[np.ndarray | None, str | None]:
    """The per-frame eye closures for a model with an eye channel; (None, None) for one without."""
    if not getattr(model, "uses_eye", False):
        if eyes is not None:
            raise flag_error(
                "--eyes", "a model whose field takes the eye channel (an audio model trained with an au.csv)", eyes
            )
        if blink == "natural":
            CONSOLE.print("--blink natural: this model has no eye channel (its driving code moves the eyes)")
        return None, None
    meta = dataset.cameras.metadata or {}
    own = seq.eye_closure  # a driver video's tracked blinks
    if driver is None and keys.EYE in meta:
        own = meta[keys.EYE][:, 0].cpu().numpy().astype(np.float64)
    return driving_eyes(len(seq), fps, eyes, blink, seed, own)


def _dataset_root(pipeline: Pipeline) -> Path:
    """The dataset folder the run trained on (the one ``--data`` names when it moved)."""
    return Path(pipeline.datamanager.dataparser.config.data)  # type: ignore[union-attr]


def _ground_truth(dataset: Any, index: int, like: torch.Tensor) -> torch.Tensor:
    """Dataset image ``index`` at the size of the render ``like`` (area-averaged when scaled)."""
    image = dataset.get_image_float32(index)[..., :3].to(like.device)
    if image.shape[:2] != like.shape[:2]:
        image = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=like.shape[:2], mode="area")
        image = image[0].permute(1, 2, 0)
    return image
