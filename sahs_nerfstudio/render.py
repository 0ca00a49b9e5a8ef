"""Rendering a trained run: a dataset split with metrics, or a driven video.

* :func:`render_split_video`: every frame of a split with its own code and camera; metrics + mp4.
* :func:`render_driven_video`: any driver (:mod:`sahs_nerfstudio.driving`: expression sequence,
  ``aud.npy``, audio file; the run's own split by default) through the dataset's cameras, one fixed
  frame's camera or an orbit around it; mp4 with the audio muxed in when there is audio.
* :func:`load_run`: ``eval_setup`` with clear one-line errors (another method's config, a missing
  or mismatched checkpoint) instead of tracebacks.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from sahs_nerfstudio.data.formats import ADNERF_AUDIO, FormatError
from sahs_nerfstudio.data.pose import pose_code
from sahs_nerfstudio.driving import DrivingSequence, attach_sibling_audio, encode_sequence, load_driver
from sahs_nerfstudio.models.sahs_model import SAHSModel
from sahs_nerfstudio.utils.video import VideoInfo, write_video

CameraPath = Literal["dataset", "frame", "orbit"]
Split = Literal["train", "val", "test"]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Loading a run


def load_run(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "test", data: Path | None = None
) -> tuple[TrainerConfig, Pipeline, Path, int]:
    """nerfstudio's ``eval_setup`` for SAHS runs, with one-line :class:`FormatError` messages.

    Checks that ``config_path`` is a SAHS run's ``config.yml`` and that its checkpoint matches the
    model before loading; ``data`` replaces the dataset path stored in the config (a moved dataset).
    """
    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.utils.eval_utils import eval_load_checkpoint

    import sahs_nerfstudio.sahs_config  # noqa: F401  (checkpoint loading under torch's weights-only unpickler)
    from sahs_nerfstudio.models.sahs_model import SAHSModelConfig

    config_path = Path(config_path)
    if not config_path.is_file():
        raise FormatError(
            config_path, "<file>", "a run's config.yml (outputs/<name>/sahs/<time>/config.yml)", "no such file"
        )
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, AttributeError, ModuleNotFoundError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FormatError(config_path, "<file>", "a nerfstudio config.yml", f"{type(err).__name__}: {first}") from None
    if not isinstance(config, TrainerConfig):
        raise FormatError(config_path, "<file>", "a nerfstudio TrainerConfig", type(config).__name__)
    model_config = config.pipeline.model
    if not isinstance(model_config, SAHSModelConfig):
        raise FormatError(
            config_path,
            "method_name",
            "a SAHS run ('sahs' or 'sahs-fast')",
            f"'{config.method_name}' ({type(model_config).__name__})",
        )
    if config.method_name in all_methods:
        config.pipeline.datamanager._target = all_methods[config.method_name].pipeline.datamanager._target
    if data is not None:
        datamanager: Any = config.pipeline.datamanager
        datamanager.data = Path(data)
        datamanager.dataparser.data = Path(data)
    config.load_dir = config.get_checkpoint_dir()
    checkpoints = sorted(Path(config.load_dir).glob("step-*.ckpt")) if Path(config.load_dir).is_dir() else []
    if not checkpoints:
        raise FormatError(config.load_dir, "step-*.ckpt", "a checkpoint of this run", "no checkpoint files")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = config.pipeline.setup(device=device, test_mode=test_mode)
    assert isinstance(pipeline, Pipeline)
    pipeline.eval()
    _check_checkpoint(config, pipeline)
    checkpoint_path, step = eval_load_checkpoint(config, pipeline)
    return config, pipeline, checkpoint_path, step


def _check_checkpoint(config: TrainerConfig, pipeline: Pipeline) -> None:
    """The latest checkpoint's pipeline state has the keys and shapes of this pipeline, or a FormatError."""
    load_dir = Path(config.load_dir)  # type: ignore[arg-type]
    if config.load_step is not None:
        path = load_dir / f"step-{config.load_step:09d}.ckpt"
    else:
        path = max(load_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[-1]))
    try:
        loaded = torch.load(path, map_location="cpu")
    except Exception as err:  # noqa: BLE001  (any unpickling failure is a bad file here)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise FormatError(path, "<file>", "a nerfstudio checkpoint", f"{type(err).__name__}: {first[:160]}") from None
    if not isinstance(loaded, dict) or "pipeline" not in loaded:
        keys = sorted(loaded)[:5] if isinstance(loaded, dict) else type(loaded).__name__
        raise FormatError(path, "pipeline", "a nerfstudio checkpoint with a 'pipeline' state", f"keys {keys}")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in loaded["pipeline"].items()}
    own = pipeline.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. '{k}' {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise FormatError(
            path, "pipeline", f"the weights of the model in {config.method_name} config.yml", "; ".join(parts) + " keys"
        )


def _dataset(pipeline: Pipeline, split: str) -> Any:
    """The loaded split's ``InputDataset`` (the train split, or the evaluation split ``load_run`` asked for)."""
    datamanager: Any = pipeline.datamanager
    return datamanager.train_dataset if split == "train" else datamanager.eval_dataset


def _model(pipeline: Pipeline) -> SAHSModel:
    model = pipeline.model
    assert isinstance(model, SAHSModel), type(model).__name__
    return model


# ----------------------------------------------------------------------------------------------
# A dataset split with metrics


def render_split_video(
    config_path: Path,
    video: Path | None,
    split: str = "test",
    side_by_side: bool = True,
    max_frames: int | None = None,
    fps: float = 25.0,
) -> dict[str, float]:
    """Render every frame of ``split`` with its own driving code and camera; return mean metrics.

    With ``side_by_side`` each video frame is render | ground truth | semantics.
    """
    _, pipeline, _, _ = load_run(config_path, test_mode="test" if split == "test" else "val")
    dataset = _dataset(pipeline, split)
    model = _model(pipeline)
    model.eval()
    count = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    sums: dict[str, list[float]] = defaultdict(list)
    frames: list[np.ndarray] = []
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(split, total=count, fps=0.0)
        for i in range(count):
            camera = dataset.cameras[i : i + 1].to(model.device)
            outputs = model.get_outputs_for_camera(camera)
            batch = dataset[i]
            metrics, _ = model.get_image_metrics_and_images(outputs, batch)
            for key, value in metrics.items():
                sums[key].append(float(value))
            parts = [outputs["rgb"]]
            if side_by_side:
                parts.append(batch["image"][..., :3].to(outputs["rgb"].device))
                if "semantics" in outputs:
                    parts.append(outputs["semantics"])
            frames.append(to_uint8(torch.cat(parts, dim=1)))
            progress.update(task, advance=1, fps=(i + 1) / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    result = {key: float(np.nanmean(values)) for key, values in sums.items()}
    result["render_fps"] = count / elapsed
    result["num_frames"] = count
    if video is not None:
        info = write_video(video, iter(frames), fps=fps)
        CONSOLE.print(f"wrote {info.num_frames} frames ({info.width}x{info.height}) to {video}")
    return result


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]rendering {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}  {task.fields[fps]:.2f} frames/s"),
        TimeRemainingColumn(),
        console=CONSOLE,
    )


# ----------------------------------------------------------------------------------------------
# Driven rendering


@dataclass
class DrivenResult:
    """What :func:`render_driven_video` did."""

    num_frames: int
    width: int
    height: int
    render_fps: float
    """Frames per second of the model's rendering alone."""
    total_fps: float
    """Frames per second including encoding the video."""
    video: VideoInfo | None
    driver: DrivingSequence
    has_ground_truth: bool


def split_driver(pipeline: Pipeline, split: str, fps: float = 25.0) -> DrivingSequence:
    """The split's own driving rows (its expressions or audio windows), with its audio when contiguous."""
    model = _model(pipeline)
    dataset = _dataset(pipeline, split)
    meta = dataset.cameras.metadata or {}
    rows = meta["driver"].cpu().numpy().astype(np.float32)
    datamanager: Any = pipeline.datamanager
    data_root = Path(datamanager.config.dataparser.data)
    source = data_root / f"transforms_{split}.json"
    if model.driver_kind != "audio":
        return DrivingSequence("expression", rows, source, "frames[k].expression", fps)
    seq = DrivingSequence("audio", rows.reshape(rows.shape[0], *model.audio_window), source, "frames[k].aud_id", fps)
    ids = [int(v) for v in meta["audio_index"][:, 0].tolist()]
    if all(b == a + 1 for a, b in zip(ids, ids[1:], strict=False)):
        attach_sibling_audio(seq, data_root / ADNERF_AUDIO, ids[0])
    return seq


def camera_for_frame(dataset_cameras: Cameras, index: int) -> Cameras:
    """Camera ``index`` of a dataset, without its conditioning metadata: shape (1,)."""
    cam = dataset_cameras[index : index + 1]
    return Cameras(
        camera_to_worlds=cam.camera_to_worlds.clone(),
        fx=cam.fx.clone(),
        fy=cam.fy.clone(),
        cx=cam.cx.clone(),
        cy=cam.cy.clone(),
        width=cam.width.clone(),
        height=cam.height.clone(),
        camera_type=cam.camera_type.clone(),
    )


def orbit_pose(c2w: torch.Tensor, pivot_distance: float, angle: float) -> torch.Tensor:
    """``c2w`` (3x4) turned by ``angle`` radians about its own up axis through a point ahead of it."""
    rot, pos = c2w[:3, :3], c2w[:3, 3]
    up = rot[:, 1] / rot[:, 1].norm()
    pivot = pos - rot[:, 2] * pivot_distance  # nerfstudio cameras look along -z
    k = torch.tensor([[0.0, -up[2], up[1]], [up[2], 0.0, -up[0]], [-up[1], up[0], 0.0]], dtype=c2w.dtype)
    turn = torch.eye(3, dtype=c2w.dtype) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    out = c2w.clone()
    out[:3, :3] = turn @ rot
    out[:3, 3] = pivot + turn @ (pos - pivot)
    return out


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
) -> DrivenResult:
    """Render ``driver`` (None: the split's own frames) through a camera path into an mp4.

    Args:
        config_path: the run's ``config.yml``.
        output: the mp4 to write (None: render only, e.g. to time it).
        driver: a driving file (see :mod:`sahs_nerfstudio.driving`); None drives with ``split`` itself.
        audio: an audio file to mux instead of the driver's own audio.
        cameras: ``dataset`` (the split's cameras, cycled), ``frame`` (camera ``frame`` of the split,
            fixed) or ``orbit`` (that camera swung +-``orbit_degrees`` about the head, one period).
        split: the split whose cameras (and, without ``driver``, codes) are used.
        pose: ``follow``: the pose code is each camera's; ``frozen``: the first camera's throughout.
        side_by_side: each frame is render | ground truth | semantics (ground truth only when the
            split drives itself through its own cameras).
        max_frames: render at most this many frames.
        fps: video frame rate, and the rate audio files are cut into windows at.
        resolution_scale: scale of the output resolution relative to the dataset's.
        data: dataset path replacing the one in the config.
        loaded: an already loaded ``(config, pipeline)`` (skips loading).
    """
    if cameras not in ("dataset", "frame", "orbit"):
        raise ValueError(f"cameras must be dataset, frame or orbit, found {cameras!r}")
    if loaded is None:
        _, pipeline, _, _ = load_run(config_path, test_mode="test", data=data)
    else:
        pipeline = loaded[1]
    model = _model(pipeline)
    model.eval()
    dataset = _dataset(pipeline, split)
    num_cameras = len(dataset.cameras)
    if not 0 <= frame < num_cameras:
        raise FormatError(config_path, "frame", f"a camera index 0..{num_cameras - 1} of the {split} split", str(frame))
    window: tuple[int, ...] = tuple(model.audio_window) if model.driver_kind == "audio" else (16, 29)
    if driver is None:
        seq = split_driver(pipeline, split, fps)
        if audio is not None:
            extra = load_driver(audio, fps=fps)
            seq.audio, seq.sample_rate, seq.audio_source = extra.audio, extra.sample_rate, extra.audio_source
    else:
        seq = load_driver(driver, fps=fps, audio=audio, window=window[0], channels=window[1])
    seq = seq.truncated(len(seq) if max_frames is None else max_frames)
    codes = encode_sequence(model, seq)
    has_gt = driver is None and cameras == "dataset"
    count = len(seq)

    base = camera_for_frame(dataset.cameras, frame)
    pivot = 0.5 * (float(model.near) + float(model.far))

    def camera_at(t: int) -> Cameras:
        if cameras == "dataset":
            cam = camera_for_frame(dataset.cameras, t % num_cameras)
        else:
            cam = camera_for_frame(dataset.cameras, frame)
            if cameras == "orbit":
                angle = math.radians(orbit_degrees) * math.sin(2.0 * math.pi * t / max(count, 1))
                cam.camera_to_worlds[0] = orbit_pose(base.camera_to_worlds[0], pivot, angle)
        if resolution_scale != 1.0:
            cam.rescale_output_resolution(resolution_scale)
        return cam

    frozen_pose = pose_code(camera_at(0).camera_to_worlds)
    render_seconds = 0.0
    shape: list[int] = []

    def frames() -> Iterator[np.ndarray]:
        nonlocal render_seconds
        with _progress() as progress:
            task = progress.add_task(f"{seq.source.name} ({seq.kind})", total=count, fps=0.0)
            for t in range(count):
                tick = time.perf_counter()
                cam = camera_at(t)
                meta: dict[str, torch.Tensor] = {"driving_code": codes[t : t + 1]}
                if pose == "frozen":
                    meta["pose"] = frozen_pose
                cam.metadata = meta
                outputs = model.get_outputs_for_camera(cam.to(model.device))
                parts = [outputs["rgb"]]
                if side_by_side:
                    if has_gt:
                        image = dataset.get_image_float32(t % num_cameras)[..., :3].to(outputs["rgb"].device)
                        if image.shape[:2] != outputs["rgb"].shape[:2]:
                            image = torch.nn.functional.interpolate(
                                image.permute(2, 0, 1)[None], size=outputs["rgb"].shape[:2], mode="area"
                            )[0].permute(1, 2, 0)
                        parts.append(image)
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
        render_fps=count / max(render_seconds, 1e-9),
        total_fps=count / max(total, 1e-9),
        video=info,
        driver=seq,
        has_ground_truth=has_gt,
    )
    audio_note = ""
    if info is not None and info.audio_seconds is not None:
        audio_note = f", audio {info.audio_seconds:.2f} s from {seq.audio_source}"
    where = f" to {output}" if output is not None else ""
    CONSOLE.print(
        f"rendered {count} frames ({result.width}x{result.height}){where}: {result.render_fps:.2f} frames/s "
        f"rendering, {result.total_fps:.2f} frames/s with encoding{audio_note}"
    )
    return result
