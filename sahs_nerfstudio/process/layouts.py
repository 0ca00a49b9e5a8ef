"""Stage 8: the kept frames written as the NeRFace and/or AD-NeRF layouts, and their splits.

Everything goes through :mod:`sahs_nerfstudio.data.formats` (file names, JSON fields) and
:mod:`sahs_nerfstudio.data.semantics` (mask colours). Kept frames are renumbered ``0..K-1`` in
time order; AD-NeRF's ``aud.wav`` holds the kept frames' audio in that order and ``aud.npy`` one
window per kept frame computed from it (:mod:`.audio`), so ``aud_id == img_id``. Both layouts share
one camera-to-world per frame, a positive focal and the principal point at the image centre. Files
with the same bytes (a decoded frame and ``ori_imgs``, the mask both layouts hold, a NeRFace frame
in two splits) are hard links to one file (:mod:`.images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from jaxtyping import Float, Int, UInt8

from sahs_nerfstudio.data import eye, formats
from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.process import images
from sahs_nerfstudio.process.expression import EYE_CHANNELS
from sahs_nerfstudio.process.parallel import run_indexed
from sahs_nerfstudio.process.regions import face_rect, nerface_bbox

NERFACE_MAX_VAL = 5
"""NeRFace validation frames: at most this many, evenly spaced over the held-out tail."""


def held_out_count(num: int, val_fraction: Optional[float]) -> int:
    """Frames of the held-out tail: ``val_fraction`` of them, or AD-NeRF's 1/11 by default (at least 1)."""
    if val_fraction is None:
        return len(formats.adnerf_split_indices(num)["val"])
    return min(num - 1, max(1, int(round(num * val_fraction))))


def split_indices(num: int, layout: str, val_fraction: Optional[float] = None) -> Dict[str, List[int]]:
    """Each layout's split of ``num`` kept frames into a training head and a held-out tail."""
    if num < 2:
        raise ValueError(f"a split needs at least 2 frames, got {num}")
    tail = held_out_count(num, val_fraction)
    train, held = list(range(num - tail)), list(range(num - tail, num))
    if layout == "adnerf":
        if val_fraction is None:
            return formats.adnerf_split_indices(num)
        return {"train": train, "val": held}
    picks = np.linspace(0, len(held) - 1, min(NERFACE_MAX_VAL, len(held))).round().astype(int)
    return {"train": train, "val": [held[i] for i in sorted(set(picks.tolist()))], "test": held}


@dataclass
class LayoutInputs:
    """What both writers need, indexed by kept-frame number ``0..K-1``."""

    read_frame: Callable[[int], UInt8[np.ndarray, "H W 3"]]
    frame_file: Callable[[int], Path]
    """The decoded JPEG of a kept frame (AD-NeRF's ``ori_imgs`` holds the same file, linked)."""
    read_labels: Callable[[int], Int[np.ndarray, "H W"]]
    landmarks: Float[np.ndarray, "K 68 2"]
    c2w: Float[np.ndarray, "K 4 4"]
    expressions: Float[np.ndarray, "K D"]
    focal: float
    width: int
    height: int
    background: UInt8[np.ndarray, "H W 3"]
    val_fraction: Optional[float] = None
    mask_file: Optional[Callable[[int], Path]] = None
    """The 12-class colour mask PNG of a kept frame, linked into both layouts (None: encoded from the labels)."""

    @property
    def num(self) -> int:
        return len(self.c2w)

    def write_mask(self, i: int, labels: Int[np.ndarray, "H W"], target: Path) -> None:
        """Kept frame ``i``'s 12-class mask at ``target``: a link to :attr:`mask_file`, or encoded."""
        if self.mask_file is not None:
            images.link_or_copy(self.mask_file(i), target)
        else:
            images.write_png(target, images.colour(labels, _MASK_COLOURS))


_MASK_COLOURS = images.class_colours(sem.encode_mask, sem.NUM_CLASSES)
_PARSING_COLOURS = images.class_colours(sem.encode_adnerf_parsing, sem.NUM_CLASSES)
# AD-NeRF's com_imgs keep the person, head_imgs the head (everything but background, neck and torso).
_PERSON = (np.arange(sem.NUM_CLASSES) != sem.BACKGROUND).astype(np.uint8)
_HEAD = (~np.isin(np.arange(sem.NUM_CLASSES), (sem.BACKGROUND, sem.NECK, sem.TORSO))).astype(np.uint8)


def _val_last(item: tuple) -> bool:
    """Sort key that puts the val split last: ``transforms_val.json`` is what ``sahs-process`` takes as
    "this layout is complete", so it is written after every other file of the layout."""
    return item[0] == "val"


def _composite(
    rgb: UInt8[np.ndarray, "H W 3"], background: UInt8[np.ndarray, "H W 3"], labels: np.ndarray, keep: np.ndarray
) -> UInt8[np.ndarray, "H W 3"]:
    """``rgb`` where ``keep[label]``, else ``background`` (OpenCV's masked copy: 5x ``np.where``)."""
    import cv2

    out = background.copy()
    cv2.copyTo(rgb, np.take(keep, labels), out)
    return out


def write_nerface(
    root: Path, data: LayoutInputs, on_frame: Optional[Callable[[int], None]] = None, workers: int = 1
) -> Dict:
    """``transforms_{train,val,test}.json``, ``<split>/f_XXXX.png`` + masks, ``bg/00050.png``."""
    splits = split_indices(data.num, "nerface", data.val_fraction)
    formats.write_rgb(root / formats.NERFACE_BACKGROUND, data.background)
    intr = (data.focal, data.focal, 0.5, 0.5)
    angle = formats.nerface_camera_angle_x(data.width, data.focal)
    membership: Dict[int, List[str]] = {}
    for split, ids in splits.items():
        for i in ids:
            membership.setdefault(i, []).append(split)
    frames: Dict[str, List[formats.NeRFaceFrame]] = {s: [] for s in splits}
    for i in range(data.num):
        bbox = nerface_bbox(face_rect(data.landmarks[i], data.width, data.height), data.width, data.height)
        for split in membership[i]:
            file_path = f"./{split}/f_{i:04d}"
            frames[split].append(formats.NeRFaceFrame(file_path, data.c2w[i], data.expressions[i], bbox))

    def write_frame(i: int) -> None:
        rgb, labels = data.read_frame(i), data.read_labels(i)
        first = f"./{membership[i][0]}/f_{i:04d}"
        images.write_png(formats.nerface_image_path(root, first), rgb)
        data.write_mask(i, labels, formats.nerface_mask_path(root, first))
        for split in membership[i][1:]:  # a val frame is a test frame too: the same files, linked
            file_path = f"./{split}/f_{i:04d}"
            images.link_or_copy(formats.nerface_image_path(root, first), formats.nerface_image_path(root, file_path))
            images.link_or_copy(formats.nerface_mask_path(root, first), formats.nerface_mask_path(root, file_path))

    run_indexed(write_frame, data.num, workers, on_frame)
    for split, fr in sorted(frames.items(), key=_val_last):
        formats.write_nerface_split(root, split, formats.NeRFaceSplit(angle, intr, fr))
    return {s: len(v) for s, v in splits.items()}


def write_adnerf(
    root: Path,
    data: LayoutInputs,
    audio_features: Float[np.ndarray, "K W C"],
    wav: Path,
    on_frame: Optional[Callable[[int], None]] = None,
    workers: int = 1,
) -> Dict:
    """``ori_imgs`` (+ ``.lms``), ``parsing``, ``com_imgs`` (+ masks), ``head_imgs``, ``bc.jpg``, audio, ``au.csv``,
    transforms."""
    import shutil

    from sahs_nerfstudio.data.adnerf_config import write_run_configs

    splits = split_indices(data.num, "adnerf", data.val_fraction)
    bg = data.background
    formats.write_rgb(root / formats.ADNERF_BACKGROUND, bg)

    def write_frame(i: int) -> None:
        rgb, labels = data.read_frame(i), data.read_labels(i)
        images.link_or_copy(data.frame_file(i), formats.adnerf_image_path(root, i, "ori_imgs"))
        formats.write_landmarks(formats.adnerf_landmarks_path(root, i), data.landmarks[i])
        images.write_png(formats.adnerf_parsing_path(root, i), images.colour(labels, _PARSING_COLOURS))
        data.write_mask(i, labels, formats.adnerf_mask_path(root, i))
        images.write_jpeg(formats.adnerf_image_path(root, i), _composite(rgb, bg, labels, _PERSON))
        images.write_jpeg(formats.adnerf_image_path(root, i, "head_imgs"), _composite(rgb, bg, labels, _HEAD))

    run_indexed(write_frame, data.num, workers, on_frame)
    frames = [
        formats.ADNeRFFrame(i, i, data.c2w[i], face_rect(data.landmarks[i], data.width, data.height))
        for i in range(data.num)
    ]
    formats.write_audio_features(root / formats.ADNERF_AUDIO, audio_features)
    # The eye track audio models drive blinks with (OpenFace's au.csv, from the expression's eye channels).
    eye.write_au_csv(root / eye.AU_CSV, eye.au45_from_openness(data.expressions[:, list(EYE_CHANNELS)].mean(axis=1)))
    shutil.copyfile(wav, root / formats.ADNERF_AUDIO_WAV)
    cx, cy = data.width / 2.0, data.height / 2.0
    write_run_configs(root, root.name, list(data.c2w), len(splits["val"]))
    for split, ids in sorted(splits.items(), key=_val_last):
        formats.write_adnerf_split(root, split, formats.ADNeRFSplit(data.focal, cx, cy, [frames[i] for i in ids]))
    return {s: len(v) for s, v in splits.items()}
