"""The face's geometry in one frame, from the mesh: what the labels and the clean plate both read.

:class:`FaceRegions` holds a frame's face-aligned axes and sizes and the outlines of its parts
(oval, brows, eyes, nose, lips, mouth opening); :meth:`FaceRegions.face_coords` gives every pixel's
coordinates along the face's right and up axes, from the chin, and :meth:`FaceRegions.below_jaw`
splits the frame along the jaw line in those coordinates, so a tilted head splits correctly.

AD-NeRF's ``face_rect`` and NeRFace's ``bbox`` are defined on the 68 points (:func:`face_rect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from jaxtyping import Bool, Float

from sahs_nerfstudio.process import face_mesh as fm

CHIN, NOSE_BRIDGE, RIGHT_CHEEK, LEFT_CHEEK = 152, 168, 234, 454
"""Mesh vertices: the chin, the top of the nose bridge, the oval's widest points."""
JAW_LINE: Tuple[int, ...] = fm.FACE_OVAL[fm.FACE_OVAL.index(454) : fm.FACE_OVAL.index(234) + 1]
"""The oval's lower half, ear to ear through the chin."""


@dataclass
class FaceRegions:
    """One frame's face geometry in pixels (module docstring)."""

    mesh: Float[np.ndarray, "478 3"]
    up: Float[np.ndarray, "2"]
    """Unit vector from the chin towards the nose bridge."""
    right: Float[np.ndarray, "2"]
    """Unit vector towards the image right of a frontal face (the subject's left)."""
    face_height: float
    """Chin to brows."""
    face_width: float
    """The oval's widest extent."""

    @staticmethod
    def from_mesh(mesh: Float[np.ndarray, "478 3"]) -> "FaceRegions":
        p = mesh[:, :2]
        up = p[NOSE_BRIDGE] - p[CHIN]
        up = up / max(float(np.linalg.norm(up)), 1e-6)
        right = np.array([-up[1], up[0]])
        if np.dot(p[LEFT_CHEEK] - p[RIGHT_CHEEK], right) < 0:
            right = -right
        brows = p[list(fm.RIGHT_BROW + fm.LEFT_BROW)].mean(0)
        return FaceRegions(
            mesh=mesh,
            up=up,
            right=right,
            face_height=float(np.dot(brows - p[CHIN], up)),
            face_width=float(np.linalg.norm(p[LEFT_CHEEK] - p[RIGHT_CHEEK])),
        )

    def points(self, ids: Tuple[int, ...]) -> Float[np.ndarray, "P 2"]:
        return self.mesh[list(ids), :2]

    def polygons(self) -> Dict[str, Float[np.ndarray, "P 2"]]:
        """The parts' outlines (``nose`` from the 68 points' nose, widened at the bridge)."""
        p68 = fm.to_68(self.mesh)[:, :2]
        nose_w = 0.25 * float(np.linalg.norm(p68[35] - p68[31]))
        nose = np.array([p68[27] - nose_w * self.right, *p68[31:36], p68[27] + nose_w * self.right])
        return {
            "oval": self.points(fm.FACE_OVAL),
            "right_brow": self.points(fm.RIGHT_BROW),
            "left_brow": self.points(fm.LEFT_BROW),
            "right_eye": self.points(fm.RIGHT_EYE),
            "left_eye": self.points(fm.LEFT_EYE),
            "nose": nose,
            "lips": self.points(fm.OUTER_LIPS),
            "mouth": self.points(fm.INNER_LIPS),
        }

    def raised_oval(self, reach: float) -> Float[np.ndarray, "P 2"]:
        """The oval with its points above the brows moved up by ``reach`` face heights (scaled by how far
        above the brows each is, so the sides stay where they are)."""
        oval = self.points(fm.FACE_OVAL)
        height = (oval - self.mesh[CHIN, :2]) @ self.up
        brows = float(((self.points(fm.RIGHT_BROW + fm.LEFT_BROW) - self.mesh[CHIN, :2]) @ self.up).mean())
        lift = np.clip((height - brows) / max(height.max() - brows, 1e-6), 0.0, 1.0)
        return oval + (reach * self.face_height * lift)[:, None] * self.up

    def mouth_gap(self) -> float:
        """Mean distance between the facing inner-lip points, pixels."""
        upper, lower = self.points(fm.UPPER_LIP_INNER), self.points(fm.LOWER_LIP_INNER)
        return float(np.linalg.norm(upper - lower, axis=1).mean())

    def face_coords(self, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
        """Every pixel's coordinates along :attr:`right` and :attr:`up` from the chin, float32 ``[H, W]`` each."""
        chin = self.mesh[CHIN, :2]
        xx = (np.arange(width, dtype=np.float32) - np.float32(chin[0]))[None, :]
        yy = (np.arange(height, dtype=np.float32) - np.float32(chin[1]))[:, None]
        a = xx * np.float32(self.right[0]) + yy * np.float32(self.right[1])
        b = xx * np.float32(self.up[0]) + yy * np.float32(self.up[1])
        return a, b

    def below_jaw(self, a: np.ndarray, b: np.ndarray, side_drop: float = 0.33) -> Bool[np.ndarray, "H W"]:
        """Pixels below the jaw line; beside the face the line drops by ``side_drop`` face heights
        (ears and hair down the sides stay above it)."""
        jaw = self.points(JAW_LINE) - self.mesh[CHIN, :2]
        ja, jb = jaw @ self.right, jaw @ self.up
        order = np.argsort(ja)
        line = np.interp(a, ja[order], jb[order]).astype(np.float32)
        outside = (a < ja.min()) | (a > ja.max())
        line[outside] -= np.float32(side_drop * self.face_height)
        return b < line

    def jaw_half_width(self) -> float:
        """Half the jaw's width at mouth height (68 points 4 and 12): the neck's half width."""
        p68 = fm.to_68(self.mesh)[:, :2]
        return 0.5 * float(np.linalg.norm(p68[12] - p68[4]))


def face_rect(lms: Float[np.ndarray, "68 2"], width: int, height: int) -> Tuple[int, int, int, int]:
    """AD-NeRF's ``face_rect`` ``[x, y, w, h]`` from the 68 points, clipped to the image.

    Centre x: the middle of the landmarks' x range; centre y: landmark 27; half width 1.5 x
    (max x - centre x); half height 1.15 x (landmark 8's y - centre y).
    """
    xmin, xmax = float(lms[:, 0].min()), float(lms[:, 0].max())
    cx, cy = 0.5 * (xmin + xmax), float(lms[27, 1])
    hw, hh = 1.5 * (xmax - cx), 1.15 * (float(lms[8, 1]) - cy)
    x0, x1 = int(np.clip(np.floor(cx - hw), 0, width)), int(np.clip(np.ceil(cx + hw), 0, width))
    y0, y1 = int(np.clip(np.floor(cy - hh), 0, height)), int(np.clip(np.ceil(cy + hh), 0, height))
    return x0, y0, x1 - x0, y1 - y0


def nerface_bbox(rect: Tuple[int, int, int, int], width: int, height: int) -> Tuple[float, float, float, float]:
    """The same box as NeRFace's ``bbox`` ``[h_min, h_max, w_min, w_max]`` in fractions."""
    x, y, w, h = rect
    return (y / height, (y + h) / height, x / width, (x + w) / width)
