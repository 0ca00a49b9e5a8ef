"""The 12 SAHS semantic classes, their mask palette, and AD-NeRF's 4-group parsing colours.

This module is the single home of every palette rule: the synthetic subject writes masks with
:func:`encode_mask`, the dataparser reads them with :func:`decode_mask`, and the model colours
its semantic output with :data:`DISPLAY_RGB`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8

from sahs_nerfstudio.errors import FormatError

CLASS_NAMES: Tuple[str, ...] = (
    "background",
    "face skin",
    "nose",
    "eyeglasses",
    "eyes",
    "eyebrows",
    "ears",
    "mouth interior",
    "lips",
    "hair",
    "neck",
    "torso",
)
NUM_CLASSES = len(CLASS_NAMES)

BACKGROUND = 0
SKIN = 1
NOSE = 2
EYEGLASSES = 3
EYES = 4
EYEBROWS = 5
EARS = 6
MOUTH_INTERIOR = 7
LIPS = 8
HAIR = 9
NECK = 10
TORSO = 11

MOUTH_CLASSES: Tuple[int, ...] = (MOUTH_INTERIOR, LIPS)
"""Classes that make up the mouth region (mouth-region PSNR, the extra mouth loss)."""

IGNORE_LABEL = -1
"""Label of a mask pixel in no palette colour (JPEG noise): excluded from the semantic loss."""

# Masks are written by OpenCV, so every triplet is in B, G, R order (as cv2.imread returns it).
PALETTE_BGR: UInt8[np.ndarray, "12 3"] = np.array(
    [
        (0, 0, 0),
        (204, 0, 0),
        (76, 153, 0),
        (204, 204, 0),
        (51, 51, 255),
        (0, 255, 255),
        (102, 51, 0),
        (102, 204, 0),
        (255, 255, 0),
        (0, 0, 204),
        (255, 153, 51),
        (0, 204, 0),
    ],
    dtype=np.uint8,
)
PALETTE_RGB: UInt8[np.ndarray, "12 3"] = PALETTE_BGR[:, ::-1].copy()
"""The same palette in the R, G, B order of a PNG as PIL/imageio read it."""

DISPLAY_RGB: Float[torch.Tensor, "12 3"] = torch.from_numpy(PALETTE_RGB.astype(np.float32) / 255.0)
"""Colours for showing rendered semantics: the mask palette itself, so renders and masks compare."""

# AD-NeRF's own parsing (`parsing/<i>.png`), also written by OpenCV in B, G, R order.
ADNERF_PARSING_BGR: UInt8[np.ndarray, "4 3"] = np.array(
    [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)], dtype=np.uint8
)
ADNERF_PARSING_TO_CLASS: Tuple[int, ...] = (SKIN, NECK, TORSO, BACKGROUND)
"""Nearest SAHS class for AD-NeRF's head, neck, torso and background groups."""


MASK_TOLERANCE = 25.0
"""How far (Euclidean, in 0..255 RGB units) a mask pixel may lie from its palette colour and still count as
it: JPEG noise and chroma bleeding stay well inside, and no two palette colours are closer than 57, so the
nearest colour within this distance is unambiguous."""

MAX_UNMATCHED_FRACTION = 0.5
"""A mask file where more than this fraction of pixels matches no class is refused (it is not a mask in
this palette: a photo, another palette, a label-index image)."""

_LUT_BITS = 6
"""Colours are looked up at 6 bits per channel (a 256 KiB table that stays in cache): within 2.6 units of the
exact distance."""


@dataclass
class DecodedMask:
    """A decoded label image and how many of its pixels matched no palette colour."""

    labels: Int[np.ndarray, "H W"]
    num_unmatched: int


@lru_cache(maxsize=4)
def _nearest_class_table(palette_bytes: bytes, classes: Tuple[int, ...], tolerance: float) -> np.ndarray:
    """For every 7-bit colour cell, the class of the nearest palette colour within ``tolerance`` (else ignore)."""
    palette = np.frombuffer(palette_bytes, dtype=np.uint8).reshape(-1, 3).astype(np.float32)
    step = 1 << (8 - _LUT_BITS)
    centres = np.arange(1 << _LUT_BITS, dtype=np.float32) * step + (step - 1) / 2.0
    best = np.full((1 << _LUT_BITS,) * 3, np.inf, dtype=np.float32)
    table = np.full(best.shape, IGNORE_LABEL, dtype=np.int8)
    for colour, cls in zip(palette, classes, strict=True):
        d2 = (
            ((centres - colour[0]) ** 2)[:, None, None]
            + ((centres - colour[1]) ** 2)[None, :, None]
            + ((centres - colour[2]) ** 2)[None, None, :]
        )
        closer = d2 < best
        best[closer] = d2[closer]
        table[closer] = cls
    table[best > tolerance**2] = IGNORE_LABEL
    return table.reshape(-1)


def _decode(
    rgb: UInt8[np.ndarray, "H W 3"],
    palette_rgb: np.ndarray,
    classes: Tuple[int, ...],
    source: Optional[Path],
    palette_name: str,
) -> DecodedMask:
    table = _nearest_class_table(np.ascontiguousarray(palette_rgb, dtype=np.uint8).tobytes(), classes, MASK_TOLERANCE)
    q = rgb >> (8 - _LUT_BITS)
    # In place: one uint32 buffer for the cell index (3x faster than the 12 exact-colour passes it replaces).
    cell = q[..., 0].astype(np.uint32)
    cell <<= _LUT_BITS
    cell |= q[..., 1]
    cell <<= _LUT_BITS
    cell |= q[..., 2]
    labels = np.take(table, cell).astype(np.int64)
    unmatched = int((labels == IGNORE_LABEL).sum())
    if source is not None and unmatched > MAX_UNMATCHED_FRACTION * labels.size:
        raise FormatError(
            source,
            "<mask colours>",
            f"pixels in the {palette_name} (within {MASK_TOLERANCE:g} of a class colour)",
            f"{unmatched / labels.size:.0%} of the pixels in no class colour",
        )
    return DecodedMask(labels=labels, num_unmatched=unmatched)


def decode_mask(rgb: UInt8[np.ndarray, "H W 3"], source: Optional[Path] = None) -> DecodedMask:
    """Decode a 12-class SAHS mask read as R, G, B (PIL order) to the nearest palette colour within
    :data:`MASK_TOLERANCE`; other pixels get IGNORE_LABEL. With ``source`` (the file), a mask where most
    pixels match no class is a FormatError."""
    return _decode(rgb, PALETTE_RGB, tuple(range(NUM_CLASSES)), source, "12-colour SAHS mask palette")


def decode_adnerf_parsing(rgb: UInt8[np.ndarray, "H W 3"], source: Optional[Path] = None) -> DecodedMask:
    """Decode AD-NeRF's 4-group parsing (read as R, G, B) into the nearest SAHS classes, as :func:`decode_mask`."""
    return _decode(rgb, ADNERF_PARSING_BGR[:, ::-1], ADNERF_PARSING_TO_CLASS, source, "4-colour AD-NeRF parsing")


def encode_mask(labels: Int[np.ndarray, "H W"]) -> UInt8[np.ndarray, "H W 3"]:
    """Colour a label image with the SAHS palette, R, G, B order (ready for PIL/imageio)."""
    return PALETTE_RGB[labels]


def encode_adnerf_parsing(labels: Int[np.ndarray, "H W"]) -> UInt8[np.ndarray, "H W 3"]:
    """AD-NeRF's 4-group parsing image (R, G, B order) for a 12-class label image."""
    group = np.full(labels.shape, 0, dtype=np.int64)  # everything on the head is group 0
    group[labels == NECK] = 1
    group[labels == TORSO] = 2
    group[labels == BACKGROUND] = 3
    return ADNERF_PARSING_BGR[:, ::-1][group]


def colorize(labels: Int[torch.Tensor, "*bs"]) -> Float[torch.Tensor, "*bs 3"]:
    """Display colours for integer labels (IGNORE_LABEL shows as background)."""
    return DISPLAY_RGB.to(labels.device)[labels.clamp(min=0)]
