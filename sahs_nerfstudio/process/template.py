"""The generic 3-D 68-point face template that head poses are solved against, and its rigid points.

The template is data (``face_template.txt`` beside this file, shipped in the wheel): the synthetic subject's neutral
face (:func:`sahs_nerfstudio.data.synthetic.landmarks_3d` with every control at zero), one face model for the whole
project, in the scene units both layouts use (about metres: outer eye corners 0.079 apart, chin 0.095 below the head
origin). Axes: x to the image right of a frontal view (the subject's left), y up, z out of the face towards a frontal
camera. ``tests/test_face_mesh.py`` checks that the file still equals the generator's neutral face.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Tuple

import numpy as np
from jaxtyping import Float

from sahs_nerfstudio.utils.face_landmarks import NOSE

RIGID: Tuple[int, ...] = (0, 1, 2, 14, 15, 16, *NOSE, 36, 39, 42, 45)
"""Points that move with the skull, not with the jaw, lips, lids or brows: the ones poses are solved on."""
TEMPLATE_FILE = Path(__file__).with_name("face_template.txt")
"""The template's 68 points, one ``x y z`` a line."""


@lru_cache(maxsize=1)
def generic_template() -> Float[np.ndarray, "68 3"]:
    """The template's 68 landmarks in its head frame (read once; read-only)."""
    points = np.loadtxt(TEMPLATE_FILE, dtype=np.float64)
    if points.shape != (68, 3):
        raise ValueError(f"{TEMPLATE_FILE}: expected 68 rows of x y z, found shape {points.shape}")
    points.setflags(write=False)
    return points


FLIP = np.diag([1.0, -1.0, -1.0])
"""The layouts' camera (y up, looks along -z) <-> OpenCV's (y down, +z)."""


def template_cv() -> Float[np.ndarray, "68 3"]:
    """The template in OpenCV's axes (x right, y down, z into the face)."""
    return generic_template() @ FLIP.T
