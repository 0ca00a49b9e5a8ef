"""Stage 6: the 12-class labels of a frame from landmark polygons and a person / background split.

Person / background: OpenCV's GrabCut on a downscaled frame, seeded by the landmarks and the
background model: sure person inside the face outline, probable person inside the person prior or
where the frame differs from the background, sure background far from the prior where it matches
the background. Person pixels above the jaw line are hair (ears and hats included; there is no ear
detector), below it neck (a band under the chin as wide as the middle of the jaw) or torso.
Face parts come from landmark polygons: skin (jaw line + forehead, the forehead only on the person), brows, eyes, nose, lips, and
the mouth interior where the inner lips part. Eyeglasses and ears are never labelled.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int, UInt8

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.process.background import (
    background_samples,
    face_frame,
    face_outline,
    person_prior,
)
from sahs_nerfstudio.utils.face_landmarks import INNER_LIPS, JAW, LEFT_BROW, LEFT_EYE, OUTER_LIPS, RIGHT_BROW, RIGHT_EYE

_GRABCUT_SIDE = 112
_DIFF_BACKGROUND = 18.0
_DIFF_PERSON = 45.0
MOUTH_OPEN_FRACTION = 0.04
"""Inner-lip gap (62-66) above this fraction of the face width labels the mouth interior."""


def _fill(labels: np.ndarray, polygon: np.ndarray, cls: int) -> None:
    import cv2

    cv2.fillPoly(labels, [np.round(polygon).astype(np.int32)], (int(cls),))


def _max_abs_diff(a: UInt8[np.ndarray, "H W 3"], b: UInt8[np.ndarray, "H W 3"]) -> UInt8[np.ndarray, "H W"]:
    """Per pixel, the largest channel difference ``|a - b|`` (OpenCV's: numpy's ``max(-1)`` over 3 is 25x slower)."""
    import cv2

    r, g, bl = cv2.split(cv2.absdiff(a, b))
    return cv2.max(cv2.max(r, g), bl)


def person_mask(
    rgb: UInt8[np.ndarray, "H W 3"], lms: Float[np.ndarray, "68 2"], background: UInt8[np.ndarray, "H W 3"]
) -> np.ndarray:
    """Boolean person mask by GrabCut seeded from the landmarks and the background model."""
    import cv2

    h, w = rgb.shape[:2]
    ff = face_frame(lms)
    prior = person_prior(lms, h, w)
    far = background_samples(prior, 0.15 * ff.face_width)
    diff = _max_abs_diff(cv2.GaussianBlur(rgb, (5, 5), 0), background)
    face = np.zeros((h, w), np.uint8)
    _fill(face, face_outline(lms, forehead=0.2), 1)
    seed = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    seed[prior | (diff > _DIFF_PERSON)] = cv2.GC_PR_FGD
    seed[far & (diff < _DIFF_BACKGROUND)] = cv2.GC_BGD
    seed[face.astype(bool)] = cv2.GC_FGD
    scale = min(1.0, _GRABCUT_SIDE / max(h, w))
    size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small_seed = cv2.resize(seed, size, interpolation=cv2.INTER_NEAREST)
    if not ((small_seed == cv2.GC_BGD) | (small_seed == cv2.GC_PR_BGD)).any():
        return prior | face.astype(bool)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(np.ascontiguousarray(small[..., ::-1]), small_seed, (0, 0, 0, 0), bgd, fgd, 1, cv2.GC_INIT_WITH_MASK)
    fg = ((small_seed == cv2.GC_FGD) | (small_seed == cv2.GC_PR_FGD)).astype(np.float32)
    full = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return full | face.astype(bool)


def _face_coords(lms: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's coordinates along the face's right and up axes, from the chin (8), float32."""
    ff = face_frame(lms)
    xx = (np.arange(w, dtype=np.float32) - np.float32(lms[8, 0]))[None, :]
    yy = (np.arange(h, dtype=np.float32) - np.float32(lms[8, 1]))[:, None]
    a = xx * np.float32(ff.right[0]) + yy * np.float32(ff.right[1])
    b = xx * np.float32(ff.up[0]) + yy * np.float32(ff.up[1])
    return a, b


def _below_jaw(lms: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels below the jaw line, in face-aligned coordinates (so a tilted head splits correctly)."""
    ff = face_frame(lms)
    jaw = lms[list(JAW)] - lms[8]
    ja, jb = jaw @ ff.right, jaw @ ff.up
    order = np.argsort(ja)
    line = np.interp(a, ja[order], jb[order]).astype(np.float32)
    # Beside the face (ears, hair down the sides) the split drops by a third of the face height.
    outside = (a < ja.min()) | (a > ja.max())
    line[outside] -= np.float32(0.33 * ff.face_height)
    return b < line


def frame_labels(
    rgb: UInt8[np.ndarray, "H W 3"], lms: Float[np.ndarray, "68 2"], background: UInt8[np.ndarray, "H W 3"]
) -> Int[np.ndarray, "H W"]:
    """The 12-class label image of one frame (module docstring)."""
    h, w = rgb.shape[:2]
    ff = face_frame(lms)
    labels = np.full((h, w), sem.BACKGROUND, np.uint8)
    person = person_mask(rgb, lms, background)
    a, b = _face_coords(lms, h, w)
    below = _below_jaw(lms, a, b)
    labels[person & ~below] = sem.HAIR
    labels[person & below] = sem.TORSO
    # Neck: under the chin, as wide as the jaw between points 4 and 12, down one face height.
    half = 0.5 * float(np.linalg.norm(lms[12] - lms[4]))
    labels[person & below & (np.abs(a) < half) & (b > -1.0 * ff.face_height)] = sem.NECK
    # The forehead is a guess above the brows: keep it only where the person is.
    forehead = np.zeros((h, w), np.uint8)
    _fill(forehead, face_outline(lms), 1)
    labels[forehead.astype(bool) & person] = sem.SKIN
    _fill(labels, face_outline(lms, forehead=0.0), sem.SKIN)
    thickness = 0.08 * ff.face_width
    for brow in (RIGHT_BROW, LEFT_BROW):
        upper = lms[list(brow)]
        _fill(labels, np.concatenate([upper, (upper - thickness * ff.up)[::-1]]), sem.EYEBROWS)
    for eye in (RIGHT_EYE, LEFT_EYE):
        _fill(labels, lms[list(eye)], sem.EYES)
    nose_w = 0.25 * float(np.linalg.norm(lms[35] - lms[31]))
    nose = np.array([lms[27] - nose_w * ff.right, *lms[31:36], lms[27] + nose_w * ff.right])
    _fill(labels, nose, sem.NOSE)
    _fill(labels, lms[list(OUTER_LIPS)], sem.LIPS)
    if np.linalg.norm(lms[66] - lms[62]) > MOUTH_OPEN_FRACTION * ff.face_width:
        _fill(labels, lms[list(INNER_LIPS)], sem.MOUTH_INTERIOR)
    return labels.astype(np.int64)
