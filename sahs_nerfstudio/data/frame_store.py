"""Frames in memory, compactly: uint8 images, int8 labels and one face rectangle per frame.

A 512x512 frame costs 4 bytes per pixel here (3 for the image, 1 for the labels) instead of the 20
of nerfstudio's default path (float32 image, int64 labels, a per-pixel face-rectangle image), and the
cache is allocated once and filled in place, so nothing is built as a list and then stacked (which
doubles the peak). Each image and each mask is decoded exactly once. Values become float32 / int64
only for the rays a batch samples (:func:`finish_ray_batch`), and only those rays move to the GPU.

Every reader here resizes to the camera's size, so a downscaled subject (``downscale_factor``,
nerfstudio's ``camera_res_scale_factor``) reads the same way for training, evaluation and the viewer:
images by area averaging (NeRFace's ``half_res`` uses OpenCV's INTER_AREA), labels by nearest neighbour.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from jaxtyping import Bool, Float, Int, UInt8
from torch import Tensor

from sahs_nerfstudio.data import formats
from sahs_nerfstudio.data.semantics import DecodedMask, decode_adnerf_parsing, decode_mask

LabelSource = Literal["palette", "adnerf_parsing"]
"""Where a semantic label image comes from, which decides how its colours are read."""

BYTES_PER_PIXEL = 4
"""What the cache holds per pixel: 3 (uint8 R, G, B) + 1 (int8 label)."""


# ----------------------------------------------------------------------------------------------
# Readers (one per kind of file, shared by the cache, the per-image eval path and the dataparser)


def resize_rgb(rgb: UInt8[np.ndarray, "H W 3"], size: Tuple[int, int]) -> UInt8[np.ndarray, "h w 3"]:
    """Area-average resize to ``size = (width, height)`` (a no-op at the same size)."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return cv2.resize(rgb, dsize=(int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)


def read_frame_rgb(path: Path, size: Tuple[int, int], field_name: str = "<image>") -> UInt8[np.ndarray, "h w 3"]:
    """An image as uint8 RGB at ``size = (width, height)``."""
    return np.ascontiguousarray(resize_rgb(formats.read_rgb(path, field_name), size))


def read_labels(path: Path, source: LabelSource) -> DecodedMask:
    """Decode a label image into class indices (IGNORE_LABEL where no palette colour matches); a file where
    most pixels match no class is a FormatError naming it."""
    rgb = formats.read_rgb(path, "<mask>")
    return decode_mask(rgb, path) if source == "palette" else decode_adnerf_parsing(rgb, path)


def read_frame_labels(path: Path, source: LabelSource, size: Tuple[int, int]) -> Tuple[Int[np.ndarray, "h w"], int]:
    """Labels as int8 at ``size = (width, height)`` (nearest neighbour) and the unmatched pixel count."""
    decoded = read_labels(path, source)
    labels = decoded.labels.astype(np.int8)
    if (labels.shape[1], labels.shape[0]) != tuple(size):
        labels = cv2.resize(labels, dsize=(int(size[0]), int(size[1])), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(labels), int(decoded.num_unmatched)


# ----------------------------------------------------------------------------------------------
# Face rectangles


def rect_contains(
    rects: Float[Tensor, "R 4"], rows: Int[Tensor, " R"], cols: Int[Tensor, " R"], height: int, width: int
) -> Bool[Tensor, " R"]:
    """Whether pixel ``(row, col)`` (its centre) lies in ``(x0, y0, x1, y1)``, fractions of width/height."""
    ys = (rows.to(rects.dtype) + 0.5) / height
    xs = (cols.to(rects.dtype) + 0.5) / width
    return (ys >= rects[:, 1]) & (ys <= rects[:, 3]) & (xs >= rects[:, 0]) & (xs <= rects[:, 2])


def rect_image(rect: Float[Tensor, " 4"], height: int, width: int) -> Bool[Tensor, "H W 1"]:
    """The per-pixel inside mask of one frame (full-image evaluation only; training uses rectangles)."""
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    inside = rect_contains(rect[None].expand(rows.shape[0], 4), rows, cols, height, width)
    return inside.view(height, width, 1)


class FaceRectLookup:
    """The inside-the-face-rectangle test for flat ``(image, row, col)`` indices of a batch, without a
    per-pixel image: ``lookup[flat]`` is what ``face_rect_image.reshape(-1)[flat]`` would be."""

    def __init__(self, rects: Float[Tensor, "B 4"], height: int, width: int) -> None:
        self.rects = rects
        self.height = int(height)
        self.width = int(width)
        self.device = rects.device

    def __getitem__(self, flat: Int[Tensor, " R"]) -> Bool[Tensor, " R"]:
        flat = flat.long()
        hw = self.height * self.width
        image, pixel = flat // hw, flat % hw
        return rect_contains(self.rects[image], pixel // self.width, pixel % self.width, self.height, self.width)

    def regions_present(self) -> Tuple[bool, bool]:
        """Whether any pixel of the batch lies inside / outside its frame's rectangle."""

        # Pixel centres covered along each axis: inside exists iff some frame covers a centre on both axes.
        def covered(lo: Tensor, hi: Tensor, n: int) -> Tuple[Tensor, Tensor]:
            first = torch.ceil(lo * n - 0.5).clamp(min=0)
            last = torch.floor(hi * n - 0.5).clamp(max=n - 1)
            count = (last - first + 1).clamp(min=0)
            return count > 0, count >= n

        any_x, all_x = covered(self.rects[:, 0], self.rects[:, 2], self.width)
        any_y, all_y = covered(self.rects[:, 1], self.rects[:, 3], self.height)
        inside = bool((any_x & any_y).any())
        outside = not bool((all_x & all_y).all())
        return inside, outside


# ----------------------------------------------------------------------------------------------
# The cache


@dataclass
class FrameStore:
    """Every frame of a split, decoded once into preallocated compact tensors (CPU)."""

    images: UInt8[Tensor, "N H W 3"]
    labels: Optional[Int[Tensor, "N H W 1"]]
    """int8 class indices, -1 = ignore; None when the split has no masks."""
    face_rects: Float[Tensor, "N 4"]
    """``(x0, y0, x1, y1)`` as fractions of width and height; ``(0, 0, 1, 1)`` for no rectangle."""
    num_unmatched: int = 0
    """Mask pixels that matched no palette colour (they are ignored by the semantic loss)."""

    @classmethod
    def fill(
        cls,
        image_paths: Sequence[Path],
        label_paths: Sequence[Optional[Path]],
        label_sources: Sequence[LabelSource],
        face_rects: Float[Tensor, "N 4"],
        size: Tuple[int, int],
        workers: int = 2,
    ) -> "FrameStore":
        """Decode every frame (and its mask) once, at ``size = (width, height)``, straight into the cache."""
        n = len(image_paths)
        width, height = int(size[0]), int(size[1])
        images = torch.empty((n, height, width, 3), dtype=torch.uint8)
        with_labels = n > 0 and all(p is not None for p in label_paths)
        labels = torch.empty((n, height, width, 1), dtype=torch.int8) if with_labels else None
        unmatched = [0] * n

        def load(k: int) -> None:
            images[k] = torch.from_numpy(read_frame_rgb(image_paths[k], (width, height), f"frames[{k}] image"))
            if labels is not None:
                path = label_paths[k]
                assert path is not None
                lab, unmatched[k] = read_frame_labels(path, label_sources[k], (width, height))
                labels[k, ..., 0] = torch.from_numpy(lab)

        # Threads, not processes: decoding releases the GIL and the results land in shared tensors.
        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            for _ in pool.map(load, range(n)):
                pass
        return cls(images=images, labels=labels, face_rects=face_rects.float().clone(), num_unmatched=sum(unmatched))

    def nbytes(self) -> int:
        """Bytes of every per-frame tensor held."""
        tensors: List[Tensor] = [self.images, self.face_rects] + ([] if self.labels is None else [self.labels])
        return sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, indices: Optional[Int[Tensor, " B"]] = None) -> Dict[str, Tensor]:
        """An image batch for the pixel sampler: views of the cache (all frames) or a copy of a subset."""
        if indices is None:
            out = {"image_idx": torch.arange(len(self)), "image": self.images, "face_rects": self.face_rects}
            if self.labels is not None:
                out["semantics"] = self.labels
            return out
        out = {
            "image_idx": indices,
            "image": self.images[indices],
            "face_rects": self.face_rects[indices],
        }
        if self.labels is not None:
            out["semantics"] = self.labels[indices]
        return out


def finish_ray_batch(
    collated: Dict[str, Tensor], batch: Dict[str, Tensor], c: Tensor, y: Tensor, x: Tensor
) -> Dict[str, Tensor]:
    """Sampled rays of a compact batch in the model's types: float32 RGB in [0, 1], int64 labels, and
    ``face_rect`` per ray from the frames' rectangles (``c`` batch-local image, ``y``/``x`` pixel)."""
    image = collated.get("image")
    if image is not None and image.dtype == torch.uint8:
        collated["image"] = image.float() / 255.0
    labels = collated.get("semantics")
    if labels is not None and labels.dtype != torch.long:
        collated["semantics"] = labels.long()
    rects = batch.get("face_rects")
    if rects is not None:
        height, width = batch["image"].shape[1:3]
        collated["face_rect"] = rect_contains(rects[c.long()], y, x, int(height), int(width))[:, None]
    return collated


PER_FRAME_KEYS = ("image_idx", "face_rects")
"""Batch keys holding one value per frame (not per pixel): not gathered at ``[c, y, x]``."""
