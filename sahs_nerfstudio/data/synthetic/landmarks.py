"""68 face landmarks (dlib/iBUG order) of a frame, from the same face geometry as the scene."""

from __future__ import annotations

import numpy as np

from sahs_nerfstudio.data.synthetic.anatomy import (
    brow_pose,
    eye_centre,
    eye_opening,
    head_surface,
    jaw_transform,
    mouth_shape,
)
from sahs_nerfstudio.data.synthetic.geometry import rot_x
from sahs_nerfstudio.data.synthetic.sequence import SubjectSequence


def landmarks_3d(seq: SubjectSequence, index: int) -> np.ndarray:
    """68 points (dlib/iBUG order) on the face of frame ``index``, in the head frame."""
    c = seq.controls[index]
    jaw = jaw_transform(c)
    m = mouth_shape(c)

    def on_jaw(p: np.ndarray) -> np.ndarray:
        return jaw[:3, :3] @ p + jaw[:3, 3]

    pts: list[np.ndarray] = []
    # 0-16 jaw line, from the subject's right (image left) to the left; the lower part moves with the jaw.
    for k in range(17):
        ang = (-1 + k / 8.0) * np.pi / 2 * 0.95
        x, y = 0.069 * np.sin(ang), 0.005 - 0.1 * np.cos(ang)
        p = np.array([x, y, max(head_surface(x, max(y, -0.094))[2], 0.0)])
        pts.append(on_jaw(p) if abs(ang) < 0.9 else p)
    # 17-26 brows (right brow first), along the brow's upper edge.
    for side in (-1.0, 1.0):
        centre, rot = brow_pose(side, c)
        for s in np.linspace(-1, 1, 5):
            pts.append(centre + rot @ np.array([0.019 * s * 0.9, 0.0035, 0.003]))
    # 27-30 nose bridge to tip, 31-35 nose base.
    nose_rot = rot_x(-0.3)
    for yl in (0.02, 0.007, -0.006, -0.019):
        zl = 0.017 * np.sqrt(max(0.0, 1 - (yl / 0.027) ** 2))
        pts.append(np.array([0, -0.012, 0.079]) + nose_rot @ np.array([0.0, yl, zl]))
    for xl in (-0.009, -0.0045, 0.0, 0.0045, 0.009):
        yl = -0.021
        zl = 0.017 * np.sqrt(max(0.0, 1 - (xl / 0.0115) ** 2 - (yl / 0.027) ** 2))
        pts.append(np.array([0, -0.012, 0.079]) + nose_rot @ np.array([xl, yl, zl]))
    # 36-47 eyes: corner, two upper, corner, two lower (right eye first).
    opening = eye_opening(c)
    for side in (-1.0, 1.0):
        centre = eye_centre(side)
        ring = [(-0.0105, 0.0012), (-0.004, None), (0.004, None), (0.0105, 0.0012), (0.004, "low"), (-0.004, "low")]
        for xl, yl in ring:
            shape = np.clip(1 - (xl / 0.0115) ** 2, 0, 1)
            if yl is None:
                yl = 0.0012 + opening * shape
            elif yl == "low":
                yl = 0.0012 - 0.65 * opening * shape
            zl = np.sqrt(max(0.0, 0.0128**2 - xl**2 - yl**2))
            pts.append(centre + np.array([xl, yl, zl]))

    # 48-67 mouth: outer contour then inner contour.
    def lip_point(x: float, y: float, jawed: bool) -> np.ndarray:
        p = head_surface(x, y)
        p = p + np.array([0.0, 0.0, 0.004 + m["forward"]])
        return on_jaw(p) if jawed else p

    w, s = m["w"], m["slope"]
    xs = (-0.6, -0.3, 0.0, 0.3, 0.6)
    up_c = lambda x: m["y_up"] + s * abs(x)  # noqa: E731
    low_c = lambda x: m["y_low"] + s * abs(x)  # noqa: E731
    corner = lambda side: lip_point(side * 1.05 * w, m["y_up"] + s * w - 0.002, False)  # noqa: E731
    pts.append(corner(-1.0))  # 48
    pts += [lip_point(f * w, up_c(f * w) + m["ry_up"], False) for f in xs]  # 49-53
    pts.append(corner(1.0))  # 54
    pts += [lip_point(f * w, low_c(f * w) - m["ry_low"], True) for f in xs[::-1]]  # 55-59
    pts.append(lip_point(-0.9 * w, up_c(0.9 * w) - 0.002, False))  # 60
    pts += [lip_point(f * w, up_c(f * w) - m["ry_up"] * 0.8, False) for f in (-0.35, 0.0, 0.35)]  # 61-63
    pts.append(lip_point(0.9 * w, up_c(0.9 * w) - 0.002, False))  # 64
    pts += [lip_point(f * w, low_c(f * w) + m["ry_low"] * 0.8, True) for f in (0.35, 0.0, -0.35)]  # 65-67
    out = np.stack(pts)
    assert out.shape == (68, 3)
    return out
