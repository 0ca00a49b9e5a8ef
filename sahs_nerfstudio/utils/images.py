"""Rendered images as written to disk (PNG, mp4 frames): one 8-bit conversion for every writer."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from torch import Tensor


def to_uint8(image: Float[Tensor, "h w c"]) -> np.ndarray:
    """``[H, W, C]`` floats in [0, 1] -> ``[H, W, C]`` uint8, rounded to the nearest level."""
    return image.detach().clamp(0, 1).mul(255).round().byte().cpu().numpy()
