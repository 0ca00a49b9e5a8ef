"""Stage 4: a deterministic expression code per frame from the identity-normalised face mesh.

Normalisation: each frame's 3-D mesh is moved onto the subject's shape (:mod:`.shape`) by the
similarity fitted on its rigid vertices, which removes head pose and distance; what moves against
the rigid skull is expression. Distances are in the subject's inter-ocular distances (IOD, outer
eye corners), and each channel is referenced to the clip's median (the subject's neutral), so the
code describes a change from this person's own resting face, not the face's shape.

The code (``width`` values, 76 by default so NeRFace-style configs apply):

====  ==============  ===========================================================================
 0    jaw_open        inner-lip gap (82-87, 13-14, 312-317), IOD, minus its median
 1    mouth_width     lip-corner distance (61-291), IOD, minus its median
 2    lip_pucker      outer-lip roundness (height 0-17 / width 61-291) minus its median
 3    right_eye_open  lid opening / eye width of the subject's right eye over its median (1: usual, 0: shut)
 4    left_eye_open   the same for the left eye
 5    brow_raise      mean brow height above the eyes, IOD, minus its median
 6    gaze_x          iris centres from the eye-corner midpoints along the face's x, eye widths, minus median
 7    gaze_y          the same upwards
 8..  pca_k           scores of the principal components of the 3-D displacements of the lips, jaw
                      line, lids, brows and irises from their median, IOD; signs fixed so each
                      component's largest loading is positive; zeros when there are too few frames
====  ==============  ===========================================================================

It is not a 3DMM fit: no identity basis and no texture; only what the mesh's points say. The basis
(:class:`ExpressionBasis`) is saved with the dataset so another face's video can be mapped into it
(:meth:`ExpressionBasis.transfer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from jaxtyping import Bool, Float, Int

from sahs_nerfstudio.data.formats import EXPRESSION_BASIS
from sahs_nerfstudio.process import face_mesh as fm
from sahs_nerfstudio.process.regions import JAW_LINE
from sahs_nerfstudio.process.shape import SubjectShape, align_to

LEADING: Tuple[str, ...] = (
    "jaw_open",
    "mouth_width",
    "lip_pucker",
    "right_eye_open",
    "left_eye_open",
    "brow_raise",
    "gaze_x",
    "gaze_y",
)
EYE_CHANNELS = (3, 4)
"""Indices of the eye-openness channels (the extra driving channel for audio models)."""
MOVING: Tuple[int, ...] = tuple(
    sorted(
        set(
            fm.OUTER_LIPS
            + fm.INNER_LIPS
            + JAW_LINE
            + fm.RIGHT_EYE
            + fm.LEFT_EYE
            + fm.RIGHT_BROW
            + fm.LEFT_BROW
            + (fm.RIGHT_IRIS, fm.LEFT_IRIS)
        )
    )
)
"""Vertices whose displacements the PCA part of the code describes."""


BASIS_FILE = EXPRESSION_BASIS
"""The subject's basis, saved in the work folder and in each layout folder, for mapping drivers into it."""


@dataclass
class ExpressionBasis:
    """What turns an identity-normalised mesh into this subject's code (module docstring)."""

    lead_median: Float[np.ndarray, " 8"]
    """The subject's median interpretable channels (its resting face)."""
    neutral: Float[np.ndarray, "478 3"]
    """The subject's median normalised mesh (IOD units, y up)."""
    components: Float[np.ndarray, "K M"]
    """PCA directions of the displacements of :attr:`moving` (x, y, z each)."""
    mean: Float[np.ndarray, " M"]
    """The mean displacement the PCA scores are taken around."""
    moving: Int[np.ndarray, " V"]
    dim: int

    @staticmethod
    def fit(p: Float[np.ndarray, "n 478 3"], dim: int) -> "ExpressionBasis":
        """The basis of normalised meshes ``p`` (the subject's kept frames)."""
        lead_median = np.median(leading_channels(p), axis=0)
        neutral = np.median(p, axis=0)
        moving = np.array(MOVING)
        motion = (p[:, moving] - neutral[moving]).reshape(len(p), -1)
        mean = motion.mean(axis=0)
        centred = motion - mean
        num = min(dim - len(LEADING), max(0, len(p) - 1), centred.shape[1])
        components = np.zeros((0, centred.shape[1]))
        if num > 0:
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            components = vt[:num]
            flip = np.sign(components[np.arange(num), np.abs(components).argmax(axis=1)])
            components = components * flip[:, None]
        return ExpressionBasis(lead_median, neutral, components, mean, moving, dim)

    def encode(self, p: Float[np.ndarray, "n 478 3"]) -> Float[np.ndarray, "n D"]:
        """Codes of normalised meshes ``p``."""
        lead = leading_channels(p) - self.lead_median
        eyes = list(EYE_CHANNELS)
        lead[:, eyes] = lead[:, eyes] / self.lead_median[eyes] + 1.0
        motion = (p[:, self.moving] - self.neutral[self.moving]).reshape(len(p), -1)
        scores = np.zeros((len(p), self.dim - len(LEADING)))
        scores[:, : len(self.components)] = (motion - self.mean) @ self.components.T
        return np.concatenate([lead, scores], axis=1)

    def transfer(
        self, p: Float[np.ndarray, "n 478 3"], own_neutral: Float[np.ndarray, "478 3"]
    ) -> Float[np.ndarray, "n D"]:
        """Codes of another face's normalised meshes ``p``: each frame's change from that face's own neutral
        ``own_neutral``, put on this subject's neutral face, encoded. Both are in inter-ocular distances, so
        the change is scaled by face size; what differs between the two faces at rest cancels."""
        return self.encode(self.neutral[None] + (p - own_neutral[None]))

    def save(self, path) -> None:
        np.savez(
            path,
            lead_median=self.lead_median,
            neutral=self.neutral,
            components=self.components,
            mean=self.mean,
            moving=self.moving,
            dim=np.array(self.dim),
        )

    @staticmethod
    def load(path) -> "ExpressionBasis":
        z = np.load(path)
        return ExpressionBasis(z["lead_median"], z["neutral"], z["components"], z["mean"], z["moving"], int(z["dim"]))


@dataclass
class ExpressionCode:
    codes: Float[np.ndarray, "N D"]
    """NaN for frames that are not kept."""
    names: List[str]
    basis: ExpressionBasis


def normalised_meshes(mesh: Float[np.ndarray, "n 478 3"], shape: SubjectShape) -> Float[np.ndarray, "n 478 3"]:
    """Meshes moved onto the face's shape, in its inter-ocular distances, y up."""
    right, left = fm.EYE_CORNERS["right"][0], fm.EYE_CORNERS["left"][1]
    iod = float(np.linalg.norm(shape.points[left] - shape.points[right]))
    return align_to(mesh, shape.points, shape.rigid) * np.array([1.0, -1.0, 1.0]) / iod


def _dist(p: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(p[:, a] - p[:, b], axis=-1)


def _eye_ratio(p: np.ndarray, side: str) -> np.ndarray:
    (u1, l1), (u2, l2) = fm.EYE_LIDS[side]
    c0, c1 = fm.EYE_CORNERS[side]
    return (_dist(p, u1, l1) + _dist(p, u2, l2)) / (2.0 * _dist(p, c0, c1))


def leading_channels(p: Float[np.ndarray, "n 478 3"]) -> Float[np.ndarray, "n 8"]:
    """The interpretable channels of aligned meshes (y up, IOD units), before median referencing."""
    jaw = np.mean([_dist(p, a, b) for a, b in zip(fm.UPPER_LIP_INNER, fm.LOWER_LIP_INNER, strict=True)], axis=0)
    width = _dist(p, 61, 291)
    round_ = _dist(p, 0, 17) / width
    brows = p[:, list(fm.RIGHT_BROW + fm.LEFT_BROW), 1].mean(1) - p[:, list(fm.RIGHT_EYE + fm.LEFT_EYE), 1].mean(1)
    gaze = []
    for side, iris in (("right", fm.RIGHT_IRIS), ("left", fm.LEFT_IRIS)):
        c0, c1 = fm.EYE_CORNERS[side]
        mid = 0.5 * (p[:, c0, :2] + p[:, c1, :2])
        gaze.append((p[:, iris, :2] - mid) / _dist(p, c0, c1)[:, None])
    g = np.mean(gaze, axis=0)
    return np.stack(
        [jaw, width, round_, _eye_ratio(p, "right"), _eye_ratio(p, "left"), brows, g[:, 0], g[:, 1]], axis=1
    )


def expression_codes(
    mesh: Float[np.ndarray, "N 478 3"], kept: Bool[np.ndarray, " N"], shape: SubjectShape, dim: int = 76
) -> ExpressionCode:
    """The code of the module docstring for every kept frame, and the subject's basis."""
    if dim < len(LEADING):
        raise ValueError(f"--expression-dim must be at least {len(LEADING)}, got {dim}")
    ok = kept & np.isfinite(mesh).all(axis=(1, 2))
    p = normalised_meshes(mesh[ok], shape)
    basis = ExpressionBasis.fit(p, dim)
    codes = np.full((len(mesh), dim), np.nan)
    codes[ok] = basis.encode(p)
    names = list(LEADING) + [f"pca_{k}" for k in range(dim - len(LEADING))]
    return ExpressionCode(codes, names, basis)
