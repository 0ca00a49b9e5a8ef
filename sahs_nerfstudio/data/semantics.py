"""The 12 SAHS semantic classes, their mask palette, and AD-NeRF's 4-group parsing colours.

This module is the single home of every palette rule: the synthetic subject writes masks with
:func:`encode_mask`, the dataparser reads them with :func:`decode_mask`, and the model colours
its semantic output with :data:`DISPLAY_RGB`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8

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


@dataclass
class DecodedMask:
    """A decoded label image and how many of its pixels matched no palette colour."""

    labels: Int[np.ndarray, "H W"]
    num_unmatched: int


def _decode(rgb: UInt8[np.ndarray, "H W 3"], palette_rgb: np.ndarray, classes: Tuple[int, ...]) -> DecodedMask:
    # Pack each colour into one int so matching is a single lookup per pixel.
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = (palette_rgb[:, 0].astype(np.int64) << 16) | (palette_rgb[:, 1].astype(np.int64) << 8) | palette_rgb[:, 2]
    labels = np.full(packed.shape, IGNORE_LABEL, dtype=np.int64)
    for key, cls in zip(keys, classes, strict=True):
        labels[packed == key] = cls
    return DecodedMask(labels=labels, num_unmatched=int((labels == IGNORE_LABEL).sum()))


def decode_mask(rgb: UInt8[np.ndarray, "H W 3"]) -> DecodedMask:
    """Decode a 12-class SAHS mask read as R, G, B (PIL order); unmatched pixels get IGNORE_LABEL."""
    return _decode(rgb, PALETTE_RGB, tuple(range(NUM_CLASSES)))


def decode_adnerf_parsing(rgb: UInt8[np.ndarray, "H W 3"]) -> DecodedMask:
    """Decode AD-NeRF's 4-group parsing (read as R, G, B) into the nearest SAHS classes."""
    return _decode(rgb, ADNERF_PARSING_BGR[:, ::-1], ADNERF_PARSING_TO_CLASS)


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
