"""Stage 4: a deterministic expression code per frame from the pose-normalised landmarks.

Pose normalisation: each 2-D landmark is lifted to 3-D at the depth its template point has under
the frame's head pose and taken back into the head frame (``R^T (q - t)``), then expressed in
template inter-ocular distances (IOD). What stays is how this face differs from the template: the
person's shape (constant, removed by subtracting the sequence median) and their expression.

The code (``width`` values, 76 by default so NeRFace-style configs apply):

====  ==============  ===========================================================================
 0    jaw_open        inner-lip gap (61-67, 62-66, 63-65), IOD, minus its sequence median
 1    mouth_width     corner distance (48-54), IOD, minus its median
 2    lip_pucker      outer-lip roundness (height 51-57 / width 48-54) minus its median
 3    right_eye_open  eye aspect ratio of the subject's right eye (36-41) / its median (1: usual, 0: shut)
 4    left_eye_open   the same for the left eye (42-47)
 5    brow_raise      mean brow height above the eyes, IOD, minus its median
 6..  pca_k           scores of the principal components of the normalised landmark motion
                      (x, y of all 68 points minus their median), IOD; signs fixed so each
                      component's largest loading is positive; zeros when there are too few frames
====  ==============  ===========================================================================

It is not a 3DMM fit: there is no identity basis, no depth, no texture; only what 2-D landmarks say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from jaxtyping import Bool, Float

from sahs_nerfstudio.process.pose import PoseResult, camera_matrix, rodrigues, template_cv
from sahs_nerfstudio.utils.face_landmarks import LEFT_BROW, LEFT_EYE, RIGHT_BROW, RIGHT_EYE, interocular

LEADING: Tuple[str, ...] = ("jaw_open", "mouth_width", "lip_pucker", "right_eye_open", "left_eye_open", "brow_raise")
EYE_CHANNELS = (3, 4)
"""Indices of the eye-openness channels (the extra driving channel for audio models)."""


@dataclass
class ExpressionCode:
    codes: Float[np.ndarray, "N D"]
    """NaN for frames that are not kept."""
    names: List[str]
    components: Float[np.ndarray, "K 136"]
    """PCA directions of the normalised landmark motion."""


def normalised_landmarks(
    points: Float[np.ndarray, "N 68 2"], pose: PoseResult, width: int, height: int
) -> Float[np.ndarray, "N 68 2"]:
    """Landmarks in the head frame (x right, y up), in template inter-ocular distances."""
    k = camera_matrix(pose.focal, width, height)
    template = template_cv()
    out = np.full(points.shape, np.nan)
    ok = ~(np.isnan(pose.rvecs).any(1) | np.isnan(points).any(axis=(1, 2)))
    rot = rodrigues(pose.rvecs[ok])  # [n, 3, 3]
    t = pose.tvecs[ok]
    depth = (np.einsum("nij,pj->npi", rot, template) + t[:, None, :])[..., 2]  # [n, 68]
    rays = np.concatenate(
        [(points[ok] - k[:2, 2]) / np.array([k[0, 0], k[1, 1]]), np.ones(points[ok].shape[:-1] + (1,))], axis=-1
    )
    cam = rays * depth[..., None]
    head = np.einsum("nji,npj->npi", rot, cam - t[:, None, :])  # R^T (q - t), template's OpenCV axes
    head[..., 1] *= -1.0  # y up
    out[ok] = head[..., :2] / float(interocular(template[None])[0])
    return out


def _dist(p: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(p[:, a] - p[:, b], axis=-1)


def _eye_ratio(p: np.ndarray, eye: Tuple[int, ...]) -> np.ndarray:
    e = list(eye)
    return (_dist(p, e[1], e[5]) + _dist(p, e[2], e[4])) / (2.0 * _dist(p, e[0], e[3]))


def leading_channels(p: Float[np.ndarray, "n 68 2"]) -> Float[np.ndarray, "n 6"]:
    """The six interpretable channels of kept frames, before median referencing."""
    jaw = (_dist(p, 61, 67) + _dist(p, 62, 66) + _dist(p, 63, 65)) / 3.0
    width = _dist(p, 48, 54)
    round_ = _dist(p, 51, 57) / width
    brows = p[:, list(RIGHT_BROW + LEFT_BROW), 1].mean(1) - p[:, list(RIGHT_EYE + LEFT_EYE), 1].mean(1)
    return np.stack([jaw, width, round_, _eye_ratio(p, RIGHT_EYE), _eye_ratio(p, LEFT_EYE), brows], axis=1)


def expression_codes(
    points: Float[np.ndarray, "N 68 2"],
    kept: Bool[np.ndarray, " N"],
    pose: PoseResult,
    width: int,
    height: int,
    dim: int = 76,
) -> ExpressionCode:
    """The code of the module docstring for every kept frame."""
    if dim < len(LEADING):
        raise ValueError(f"--expression-dim must be at least {len(LEADING)}, got {dim}")
    norm = normalised_landmarks(points, pose, width, height)
    ok = kept & ~np.isnan(norm).any(axis=(1, 2))
    p = norm[ok]
    lead = leading_channels(p)
    med = np.median(lead, axis=0)
    lead = lead - med
    lead[:, list(EYE_CHANNELS)] = lead[:, list(EYE_CHANNELS)] / med[list(EYE_CHANNELS)] + 1.0
    motion = (p - np.median(p, axis=0)).reshape(len(p), -1)
    centred = motion - motion.mean(axis=0)
    num = min(dim - len(LEADING), max(0, len(p) - 1), centred.shape[1])
    components = np.zeros((0, centred.shape[1]))
    scores = np.zeros((len(p), dim - len(LEADING)))
    if num > 0:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        components = vt[:num]
        flip = np.sign(components[np.arange(num), np.abs(components).argmax(axis=1)])
        components = components * flip[:, None]
        scores[:, :num] = centred @ components.T
    codes = np.full((len(points), dim), np.nan)
    codes[ok] = np.concatenate([lead, scores], axis=1)
    names = list(LEADING) + [f"pca_{k}" for k in range(dim - len(LEADING))]
    return ExpressionCode(codes=codes, names=names, components=components)
