"""The generic 3-D 68-point face template that head poses are solved against, and landmark groups.

The template is the synthetic subject's neutral face (:func:`sahs_nerfstudio.data.synthetic.landmarks_3d`
with every control at zero): one face model for the whole project, in the scene units both layouts use
(about metres: outer eye corners 0.079 apart, chin 0.095 below the head origin). Axes: x to the image
right of a frontal view (the subject's left), y up, z out of the face towards a frontal camera.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace
from typing import Tuple

import numpy as np
from jaxtyping import Float

# iBUG 68-point groups.
JAW = tuple(range(0, 17))
RIGHT_BROW = tuple(range(17, 22))
LEFT_BROW = tuple(range(22, 27))
NOSE = tuple(range(27, 36))
RIGHT_EYE = tuple(range(36, 42))
"""The subject's right eye (image left in a frontal view)."""
LEFT_EYE = tuple(range(42, 48))
OUTER_LIPS = tuple(range(48, 60))
INNER_LIPS = tuple(range(60, 68))
MOUTH = tuple(range(48, 68))
"""The 20 mouth points LMD is measured on."""

RIGID: Tuple[int, ...] = (0, 1, 2, 14, 15, 16, *NOSE, 36, 39, 42, 45)
"""Points that move with the skull, not with the jaw, lips, lids or brows: the ones poses are solved on."""


@lru_cache(maxsize=1)
def generic_template() -> Float[np.ndarray, "68 3"]:
    """The neutral synthetic face's 68 landmarks in its head frame (a fresh copy each call is not needed)."""
    from sahs_nerfstudio.data.synthetic import CONTROL_NAMES, landmarks_3d

    neutral = SimpleNamespace(controls=np.zeros((1, len(CONTROL_NAMES))))
    points = landmarks_3d(neutral, 0)  # type: ignore[arg-type]  # it reads only ``controls``
    points.setflags(write=False)
    return points


def interocular(points: Float[np.ndarray, "*bs 68 D"]) -> Float[np.ndarray, "*bs"]:
    """Distance between the outer eye corners (36, 45): the scale every landmark measure is divided by."""
    return np.linalg.norm(points[..., 45, :] - points[..., 36, :], axis=-1)
