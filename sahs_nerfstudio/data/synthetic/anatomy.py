"""Where the face parts are and how the controls move them (shared by the scene and the landmarks).

Units: the head is about 0.1 in radius; the head-fixed frame has +y up, +z out of the face toward
the base camera, +x to the subject's left.
"""

from __future__ import annotations

import numpy as np

from sahs_nerfstudio.data.synthetic.config import BLINK, BROW, JAW, PUCKER, SMILE
from sahs_nerfstudio.data.synthetic.geometry import about, normalize, rot_x

HEAD_RADII = np.array([0.072, 0.095, 0.085])
MOUTH_Y = -0.047
JAW_HINGE = np.array([0.0, -0.005, -0.03])
JAW_MAX_ANGLE = 0.22


def head_surface(x: float, y: float) -> np.ndarray:
    a, b, c = HEAD_RADII
    return np.array([x, y, c * np.sqrt(max(1e-4, 1.0 - (x / a) ** 2 - (y / b) ** 2))])


def surface_frame(x: float, y: float, x_hint=(1.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """A point on the head ellipsoid and a rotation whose z axis is the surface normal there."""
    p = head_surface(x, y)
    n = normalize(p / HEAD_RADII**2)
    e1 = np.asarray(x_hint, dtype=np.float64)
    e1 = normalize(e1 - (e1 @ n) * n)
    return p, np.stack([e1, np.cross(n, e1), n], axis=1)


def mouth_shape(c: np.ndarray) -> dict[str, float]:
    width = 0.021 * (1 + 0.25 * c[SMILE] - 0.3 * c[PUCKER])
    return {
        "w": width,
        "slope": 0.3 * c[SMILE] - 0.08 * c[PUCKER],
        "ry_up": 0.0048 * (1 + 0.3 * c[PUCKER]),
        "ry_low": 0.0058 * (1 + 0.3 * c[PUCKER]),
        "forward": 0.006 * c[PUCKER],
        "y_up": MOUTH_Y + 0.0045,
        "y_low": MOUTH_Y - 0.005,
    }


def jaw_transform(c: np.ndarray) -> np.ndarray:
    return about(rot_x(JAW_MAX_ANGLE * c[JAW]), JAW_HINGE, np.zeros(3))


def eye_centre(side: float) -> np.ndarray:
    return np.array([side * 0.029, 0.02, 0.0685])


def eye_opening(c: np.ndarray) -> float:
    return 0.0068 * (1 - c[BLINK]) * (1 + 0.25 * c[BROW])


def brow_pose(side: float, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = 0.046 + 0.009 * c[BROW]
    p, rot = surface_frame(side * 0.031, y, x_hint=(1.0, side * -0.12, 0.0))
    return p - 0.0022 * rot[:, 2], rot
