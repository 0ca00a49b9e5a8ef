"""The subject's own 3-D face: the mesh's 3-D points over the clip, aligned, in the template's frame.

MediaPipe's mesh carries a relative depth per point, so every frame holds a 3-D face up to a
similarity. :func:`subject_shape`:

1. aligns every kept frame's mesh to a reference by a similarity (Umeyama) on a first guess of
   rigid vertices, twice (generalised Procrustes), and takes the per-vertex median: the subject's
   neutral 3-D face in the clip's own axes;
2. chooses the rigid vertices as the most stable ones after that alignment (lips, lids, brows and
   jaw move; the nose, forehead, cheekbones and temples do not), excluding the irises;
3. moves the shape into the generic template's frame (:mod:`.template`) by a similarity on the
   68 points' rigid subset: the template's axes (a frontal face has no rotation), its head origin
   and its metric scale (eye corners 0.079 apart).

Poses are solved against this shape (:mod:`.pose`) and expressions are measured in it
(:mod:`.expression`); it is saved in the work folder as ``shape.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from jaxtyping import Bool, Float, Int

from sahs_nerfstudio.process import face_mesh as fm
from sahs_nerfstudio.process.template import RIGID, template_cv

SEED_RIGID: Tuple[int, ...] = (
    168, 6, 197, 195, 5, 4, 1, 10, 151, 9, 8, 109, 338, 67, 297, 33, 133, 362, 263,
    234, 454, 127, 356, 116, 345, 50, 280, 123, 352,
)  # fmt: skip
"""Nose bridge and tip, forehead, eye corners, cheekbones and temples: the first guess of rigid vertices."""
RIGID_FRACTION = 0.35
"""The share of the mesh (the most stable vertices) poses are solved on."""
MAX_RIGID = 120


@dataclass
class SubjectShape:
    points: Float[np.ndarray, "478 3"]
    """The neutral face in the template's OpenCV axes (x right, y down, z into the face), template units."""
    rigid: Int[np.ndarray, " R"]
    """Vertices poses are solved on."""
    residual: Float[np.ndarray, " 478"]
    """Each vertex's median distance from the aligned shape over the clip, template units."""

    def save(self, path) -> None:
        np.savez(path, points=self.points, rigid=self.rigid, residual=self.residual)

    @staticmethod
    def load(path) -> "SubjectShape":
        z = np.load(path)
        return SubjectShape(z["points"], z["rigid"], z["residual"])


def umeyama(
    src: Float[np.ndarray, "P 3"], dst: Float[np.ndarray, "P 3"]
) -> Tuple[float, Float[np.ndarray, "3 3"], Float[np.ndarray, "3"]]:
    """The similarity ``s R x + t`` that best maps ``src`` onto ``dst`` (least squares)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var = (a**2).sum() / len(src)
    scale = float((sig * d).sum() / max(var, 1e-12))
    return scale, rot, mu_d - scale * rot @ mu_s


def align_to(
    meshes: Float[np.ndarray, "n 478 3"], reference: Float[np.ndarray, "478 3"], ids: np.ndarray
) -> Float[np.ndarray, "n 478 3"]:
    """Each mesh moved onto ``reference`` by the similarity fitted on vertices ``ids``."""
    out = np.empty_like(meshes)
    for k, m in enumerate(meshes):
        s, r, t = umeyama(m[ids], reference[ids])
        out[k] = s * m @ r.T + t
    return out


def subject_shape(
    mesh: Float[np.ndarray, "N 478 3"], kept: Bool[np.ndarray, " N"], max_frames: int = 400
) -> SubjectShape:
    """The shape of the module docstring from the kept frames (at most ``max_frames`` of them, evenly spread)."""
    idx = np.flatnonzero(kept & np.isfinite(mesh).all(axis=(1, 2)))
    if len(idx) == 0:
        raise ValueError("subject_shape needs at least one frame with a face")
    idx = idx[np.linspace(0, len(idx) - 1, min(max_frames, len(idx))).round().astype(int)]
    frames = mesh[idx]
    ids = np.array(SEED_RIGID)
    reference = frames[len(frames) // 2]
    for _ in range(2):
        aligned = align_to(frames, reference, ids)
        reference = np.median(aligned, axis=0)
    residual = np.median(np.linalg.norm(aligned - reference, axis=-1), axis=0)
    residual[[fm.RIGHT_IRIS + k for k in range(5)] + [fm.LEFT_IRIS + k for k in range(5)]] = np.inf
    order = np.argsort(residual)
    count = min(MAX_RIGID, int(RIGID_FRACTION * fm.NUM_POINTS))
    rigid = np.sort(order[:count])
    aligned = align_to(frames, reference, rigid)
    reference = np.median(aligned, axis=0)
    # Into the template's frame: its axes, origin and metric scale.
    s, r, t = umeyama(fm.to_68(reference)[list(RIGID)], template_cv()[list(RIGID)])
    points = s * reference @ r.T + t
    residual = s * np.median(np.linalg.norm(aligned - reference, axis=-1), axis=0)
    return SubjectShape(points=points, rigid=rigid, residual=residual)
