"""The numbers ``benchmarks/real_video.py`` computes itself: dataset-only baselines, label flicker, pose jitter.

Baselines (what an avatar must beat to have learned anything), each scored on every held-out frame with the
project's PSNR (:func:`sahs_nerfstudio.utils.metrics.psnr`, capped at 100 dB for identical images) and averaged
over frames like the demo's held-out metrics:

- ``mean_image``: the mean of the training images;
- ``nearest_pose``: the training frame whose camera is nearest (:func:`pose_distance`);
- ``best_frame``: an oracle picking, for each held-out frame, the training frame with the highest PSNR to it.

From ``sahs-process``'s work folder: label flicker (:func:`flicker_counts`), pose jitter
(:func:`rotation_accelerations_deg`) and CPU time per frame per stage (:func:`stage_cpu_ms_per_frame`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, UInt8
from torch import Tensor

from sahs_nerfstudio.utils.metrics import psnr

STATIC_LEVELS = 3
"""A pixel is static between two frames when no channel of the 3x3-blurred frames differs by more than this
(8-bit levels): the blur keeps JPEG noise from counting as motion."""

# ----------------------------------------------------------------------------------------------
# Dataset-only baselines


@dataclass
class SplitImages:
    """One split of a dataset as the model is scored on it."""

    images: Float[Tensor, "n h w 3"]
    """Floats in [0, 1] at the render resolution."""
    c2w: Float[np.ndarray, "n 4 4"]
    """Camera-to-world matrices."""
    paths: list[Path]
    """The image files."""


def load_split(
    root: Path, split: str, size: tuple[int, int] | None = None, max_frames: int | None = None
) -> SplitImages:
    """``split`` of the dataset at ``root`` through the project's dataparser (its ``read_split``, which reads the
    layouts with ``data/formats.py`` and applies AD-NeRF's ``test`` -> ``val`` and ``testskip``), so the held-out
    frames are the ones ``sahs-demo`` scores. Images are area-averaged to ``size = (width, height)`` (None: the
    dataset's) with the dataparser's own reader; ``max_frames`` keeps the first frames (``sahs-demo --max-frames``)."""
    from sahs_nerfstudio.data.frame_store import read_frame_rgb
    from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig

    parser = SAHSDataParserConfig(data=root, load_semantics=False).setup()
    rec = parser.read_split(split)
    frames = rec.frames if max_frames is None else rec.frames[:max_frames]
    wh = (rec.width, rec.height) if size is None else size
    rgb = np.stack([read_frame_rgb(f.image, wh) for f in frames])
    return SplitImages(
        images=torch.from_numpy(rgb).float() / 255.0,
        c2w=np.stack([np.asarray(f.c2w, dtype=np.float64) for f in frames]),
        paths=[f.image for f in frames],
    )


def rotation_angle(rot: Float[np.ndarray, "*bs 3 3"]) -> Float[np.ndarray, "*bs"]:
    """Angle (radians) of rotation matrices; atan2 of sine and cosine, exact near 0 where arccos is not."""
    cos = (np.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = rot - np.swapaxes(rot, -1, -2)
    sin = np.linalg.norm(np.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], axis=-1), axis=-1) / 2.0
    return np.arctan2(sin, cos)


def pose_distance(
    a: Float[np.ndarray, "n 4 4"], b: Float[np.ndarray, "m 4 4"], length_scale: float
) -> Float[np.ndarray, "n m"]:
    """Camera distance: translation distance plus the relative rotation's angle times ``length_scale``.

    With ``length_scale`` the cameras' distance from the subject, the rotation term is roughly how far the turn
    moves the subject in the view, so both terms are lengths and neither unit dominates.
    """
    shift = np.linalg.norm(a[:, None, :3, 3] - b[None, :, :3, 3], axis=-1)
    relative = np.swapaxes(a[:, None, :3, :3], -1, -2) @ b[None, :, :3, :3]
    return shift + length_scale * rotation_angle(relative)


def nearest_pose(train_c2w: Float[np.ndarray, "n 4 4"], held_c2w: Float[np.ndarray, "m 4 4"]) -> Int[np.ndarray, " m"]:
    """For each held-out camera, the index of the nearest training camera (:func:`pose_distance`, scaled by the
    training cameras' mean distance from the origin: the subject sits there in both layouts)."""
    scale = float(np.linalg.norm(train_c2w[:, :3, 3], axis=-1).mean())
    return pose_distance(held_c2w, train_c2w, scale).argmin(axis=1)


def best_frame(train: Float[Tensor, "n h w 3"], held: Float[Tensor, "m h w 3"]) -> Int[np.ndarray, " m"]:
    """For each held-out frame, the training frame with the highest PSNR to it (the lowest MSE: the same order,
    without n x m calls)."""
    picks = [int(((train - frame[None]) ** 2).mean(dim=(1, 2, 3)).argmin()) for frame in held]
    return np.asarray(picks, dtype=np.int64)


def frame_psnrs(preds: Float[Tensor, "m h w 3"], held: Float[Tensor, "m h w 3"]) -> list[float]:
    """The project's PSNR of each prediction against its held-out frame."""
    return [float(psnr(p, t)) for p, t in zip(preds, held, strict=True)]


def baselines(train: SplitImages, held: SplitImages) -> dict[str, Any]:
    """Mean PSNR over the held-out frames of the mean training image, the nearest-pose training frame and the
    best single training frame (``*_psnr``), and which training frames the last two picked (``*_picks``)."""
    mean_image = train.images.mean(dim=0)
    near = nearest_pose(train.c2w, held.c2w)
    best = best_frame(train.images, held.images)
    scores = {
        "mean_image": frame_psnrs(mean_image[None].expand_as(held.images), held.images),
        "nearest_pose": frame_psnrs(train.images[near], held.images),
        "best_frame": frame_psnrs(train.images[best], held.images),
    }
    out: dict[str, Any] = {f"{name}_psnr": float(np.mean(v)) for name, v in scores.items()}
    out |= {"nearest_pose_picks": near.tolist(), "best_frame_picks": best.tolist(), "held_out_frames": len(held.paths)}
    return out


# ----------------------------------------------------------------------------------------------
# Label flicker


def static_mask(a: UInt8[np.ndarray, "h w 3"], b: UInt8[np.ndarray, "h w 3"]) -> Bool[np.ndarray, "h w"]:
    """Pixels that did not move between frames ``a`` and ``b`` (:data:`STATIC_LEVELS`)."""
    import cv2

    blur_a = cv2.blur(a.astype(np.float32), (3, 3))
    blur_b = cv2.blur(b.astype(np.float32), (3, 3))
    return np.abs(blur_a - blur_b).max(axis=-1) <= STATIC_LEVELS


def flicker_counts(
    frame_a: UInt8[np.ndarray, "h w 3"],
    frame_b: UInt8[np.ndarray, "h w 3"],
    labels_a: Int[np.ndarray, "h w"],
    labels_b: Int[np.ndarray, "h w"],
) -> tuple[int, int]:
    """``(static pixels whose label changed, static pixels)`` between two consecutive frames: on a static pixel
    the segmentation should not change, so every change there is flicker."""
    static = static_mask(frame_a, frame_b)
    return int((static & (labels_a != labels_b)).sum()), int(static.sum())


def consecutive_pairs(kept: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs ``(f, f + 1)`` of frame numbers both kept."""
    have = set(kept)
    return [(f, f + 1) for f in sorted(have) if f + 1 in have]


def label_flicker(work: Path, kept: Sequence[int]) -> dict[str, float]:
    """Flicker over a processing work folder: changed static pixels over static pixels, pooled over every pair
    of consecutive kept frames (``work/frames/<f:06d>.jpg``, labels ``work/labels/<f:06d>.png``)."""
    from sahs_nerfstudio.process.images import read_image

    def frame(f: int) -> np.ndarray:
        return read_image(work / "frames" / f"{f:06d}.jpg")

    def labels(f: int) -> np.ndarray:
        return read_image(work / "labels" / f"{f:06d}.png", "<labels>", grey=True)

    changed = static = pixels = 0
    pairs = consecutive_pairs(kept)
    for f, g in pairs:
        a = frame(f)
        c, s = flicker_counts(a, frame(g), labels(f), labels(g))
        changed, static, pixels = changed + c, static + s, pixels + a.shape[0] * a.shape[1]
    nan = float("nan")
    return {
        "label_flicker": changed / static if static else nan,
        "flicker_pairs": float(len(pairs)),
        "static_fraction": static / pixels if pixels else nan,
    }


# ----------------------------------------------------------------------------------------------
# Pose jitter


def rotation_accelerations_deg(rvecs: Float[np.ndarray, "N 3"], kept: Sequence[int]) -> Float[np.ndarray, " T"]:
    """Angle (degrees) of the rotation's second difference at every kept frame ``k`` whose neighbours ``k - 1``
    and ``k + 1`` are kept too: ``(R[k+1] R[k]^T) (R[k] R[k-1]^T)^T``, the change of the frame-to-frame rotation.
    A steady turn gives 0; a head pose that jumps by a on one frame gives a, 2a, a around it."""
    from sahs_nerfstudio.process.pose import rodrigues

    have = {f for f in kept if np.isfinite(rvecs[f]).all()}
    centres = np.asarray([k for k in sorted(have) if k - 1 in have and k + 1 in have], dtype=np.int64)
    if centres.size == 0:
        return np.zeros(0)
    rot = rodrigues(rvecs.astype(np.float64))
    step_next = rot[centres + 1] @ np.swapaxes(rot[centres], -1, -2)
    step_prev = rot[centres] @ np.swapaxes(rot[centres - 1], -1, -2)
    return np.degrees(rotation_angle(step_next @ np.swapaxes(step_prev, -1, -2)))


def pose_jitter(rvecs: Float[np.ndarray, "N 3"], kept: Sequence[int]) -> dict[str, float]:
    """Mean and max of :func:`rotation_accelerations_deg` (NaN without a kept triple) and how many triples."""
    acc = rotation_accelerations_deg(rvecs, kept)
    nan = float("nan")
    return {
        "pose_jitter_mean_deg": float(acc.mean()) if acc.size else nan,
        "pose_jitter_max_deg": float(acc.max()) if acc.size else nan,
        "pose_jitter_triples": float(acc.size),
    }


# ----------------------------------------------------------------------------------------------
# Processing time


def stage_cpu_ms_per_frame(stage_seconds: Mapping[str, float], frames: int, layout: str | None) -> dict[str, float]:
    """CPU milliseconds per decoded frame of every ``sahs-process`` stage (its ``<stage>_cpu`` keys), and their
    ``total``. One denominator (the decoded frames) for every stage, so the stages add up to the total; another
    layout's ``layout_<other>`` stage is left out (it is not part of this layout's cost)."""
    out: dict[str, float] = {}
    for key, seconds in stage_seconds.items():
        if not key.endswith("_cpu"):
            continue
        stage = key.removesuffix("_cpu")
        if layout is not None and stage.startswith("layout_") and stage != f"layout_{layout}":
            continue
        out[stage] = 1000.0 * float(seconds) / max(frames, 1)
    out["total"] = sum(out.values())
    return out
