"""The refiner's image inputs: folders of frames, (render, ground truth) pairs, PNG output.

Pairs come from two folders, matched by file *stem* (``renders/0001.png`` pairs with
``gt/0001.jpg``). Every render needs a ground-truth frame; extra ground-truth frames are ignored
(a GT folder may hold the whole video). Each pair must have one size; different pairs may differ
(batch 1, the published setting). Every problem is a :class:`FormatError` naming the folder or file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from sahs_nerfstudio.data.formats import image_size, read_rgb, write_rgb
from sahs_nerfstudio.errors import FormatError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def list_images(folder: Path, what: str) -> dict[str, Path]:
    """Maps stem -> path for the images in ``folder``; errors name the folder and the flag (``what``) it came from."""
    folder = Path(folder)
    if not folder.exists():
        raise FormatError(folder, what, "a folder of images", "no such folder")
    if not folder.is_dir():
        raise FormatError(folder, what, "a folder of images", "a file")
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in images:
                raise FormatError(
                    folder,
                    what,
                    "one image per name",
                    f"two images named '{path.stem}' ({images[path.stem].name}, {path.name})",
                )
            images[path.stem] = path
    if not images:
        raise FormatError(folder, what, f"images ({', '.join(IMAGE_SUFFIXES)})", "none")
    return dict(sorted(images.items(), key=lambda kv: _sort_key(kv[0])))


def _sort_key(stem: str) -> tuple[int, Any]:
    """Integer stems in numeric order (2 before 10), then the others by name."""
    return (0, int(stem)) if stem.isdigit() else (1, stem)


def load_image(path: Path) -> Float[Tensor, "3 H W"]:
    """Image file -> float tensor in [0, 1] (greyscale expanded, alpha dropped)."""
    arr = read_rgb(Path(path))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def save_png(path: Path, image: UInt8[np.ndarray, "H W 3"]) -> None:
    """Writes a PNG under a temporary name, then renames it: a frame on disk is always complete,
    which is what lets Stage-I rendering reuse frames after an interruption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    write_rgb(tmp, image)
    os.replace(tmp, path)


@dataclass
class FramePair:
    """One training/evaluation pair."""

    name: str
    """File stem shared by the render and the ground truth."""
    render: Path
    """The Stage-I render."""
    gt: Path
    """The ground-truth frame."""
    audio_row: int | None = None
    """Row of the audio feature array for this frame (audio variant)."""


def pair_frames(renders_dir: Path, gt_dir: Path) -> tuple[list[FramePair], int]:
    """Matches renders to ground-truth frames by stem and checks sizes.

    Returns the pairs (sorted by name) and the number of ground-truth frames without a render.
    """
    renders = list_images(renders_dir, "--renders")
    gts = list_images(gt_dir, "--ground-truth")
    missing = [name for name in renders if name not in gts]
    if missing:
        example = ", ".join(renders[n].name for n in missing[:3])
        raise FormatError(
            gt_dir,
            "--ground-truth",
            f"a frame with the name of every render in {renders_dir}",
            f"{len(missing)} of {len(renders)} renders without one (e.g. {example})",
        )
    pairs = []
    for name, render_path in renders.items():
        rs, gs = image_size(render_path, "--renders"), image_size(gts[name], "--ground-truth")
        if rs != gs:
            raise FormatError(
                gts[name], "--ground-truth", f"the size of {render_path}, {rs[0]}x{rs[1]}", f"{gs[0]}x{gs[1]}"
            )
        pairs.append(FramePair(name=name, render=render_path, gt=gts[name]))
    return pairs, len(gts) - len(pairs)
