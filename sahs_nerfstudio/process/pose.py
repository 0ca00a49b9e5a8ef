"""Stage 3: head pose per frame by PnP against the subject's own 3-D face, a sequence focal, smoothing.

The 3-D face is :class:`~sahs_nerfstudio.process.shape.SubjectShape` (the clip's mesh, aligned and
in the template's frame); the 2-D points are the tracked mesh's rigid vertices.

1. **Focal**: PnP on up to 40 frames for focal lengths ``c * min(W, H)``, ``c`` in 0.8 ... 4; the
   reprojection error barely tells these apart (a face is shallow), so the focal nearest the default
   ``1.4 * min(W, H)`` (about 40 degrees of vertical view, the synthetic subject's) among those within
   5 % of the best error wins. ``--focal`` skips the search.
2. **Per frame**: OpenCV ``solvePnP`` on the rigid vertices, each frame seeded by the previous one.
3. **Sequence refinement**: all poses jointly by robust least squares (soft-L1 with a scale of
   ``ROBUST_PX`` pixels, so a few badly tracked vertices cannot pull a frame), reprojection error
   (pixels) plus ``smoothness`` times the frame-to-frame change of the pose (in pixels of head
   motion); runs of kept frames are refined separately (no smoothing across a dropped gap).

The camera-to-world of frame k is the inverse of the head pose (the head is fixed at the origin and
the camera moves), in the layouts' convention (camera looks along -z, y up); the world is scaled so
that the mean camera distance is ``target_distance`` (0.5: inside NeRFace's near/far 0.2/0.8, and
AD-NeRF's mean-distance - 0.2 / + 0.4), which also scales the shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from jaxtyping import Bool, Float

from sahs_nerfstudio.process.shape import SubjectShape
from sahs_nerfstudio.process.template import FLIP as _FLIP

DEFAULT_FOCAL_SCALE = 1.4
TARGET_DISTANCE = 0.5
ROBUST_PX = 2.0
REFINE_POINTS = 60
"""The most stable rigid vertices the sequence refinement uses (its cost grows with them)."""


@dataclass
class PoseResult:
    """Per-frame head pose in OpenCV's camera (NaN for frames not kept) and the sequence focal."""

    rvecs: Float[np.ndarray, "N 3"]
    """Rotation vectors of the template-to-camera rotation ``R @ diag(1,-1,-1)`` (near zero when frontal)."""
    tvecs: Float[np.ndarray, "N 3"]
    """Template-to-camera translation, template units."""
    focal: float
    """Pixels."""
    reprojection: Float[np.ndarray, " N"]
    """RMS reprojection error of the rigid vertices, pixels."""
    problems: List[str] = field(default_factory=list)
    """What did not converge and what was used instead (PnP, the joint refinement): one line each, said once."""


def camera_matrix(focal: float, width: int, height: int) -> np.ndarray:
    """Intrinsics with the principal point at the image centre in integer-pixel coordinates, as both layouts."""
    return np.array([[focal, 0, width / 2.0], [0, focal, height / 2.0], [0, 0, 1.0]])


def rodrigues(r: np.ndarray) -> np.ndarray:
    """Batched Rodrigues ``[n, 3] -> [n, 3, 3]``."""
    theta = np.linalg.norm(r, axis=-1, keepdims=True)
    k = r / np.maximum(theta, 1e-12)
    kx = np.zeros(r.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    kx = kx - np.swapaxes(kx, -1, -2)
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    return np.eye(3) + s * kx + (1 - c) * (kx @ kx)


def project(
    rvecs: Float[np.ndarray, "n 3"], tvecs: Float[np.ndarray, "n 3"], points: Float[np.ndarray, "P 3"], k: np.ndarray
) -> Float[np.ndarray, "n P 2"]:
    """Pixels of template points under poses (``points`` already in OpenCV's axes)."""
    cam = np.einsum("nij,pj->npi", rodrigues(rvecs), points) + tvecs[:, None, :]
    uv = cam[..., :2] / cam[..., 2:3]
    return uv * np.array([k[0, 0], k[1, 1]]) + np.array([k[0, 2], k[1, 2]])


def _frontal_guess(points2d: np.ndarray, obj: np.ndarray, k: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A frontal pose at the distance the points' spread implies."""
    img = points2d.astype(np.float64)
    size = np.sqrt(((img - img.mean(0)) ** 2).sum(-1).mean())
    extent = np.sqrt(((obj[:, :2] - obj[:, :2].mean(0)) ** 2).sum(-1).mean())
    depth = k[0, 0] * extent / max(size, 1e-6)
    centre = (img.mean(0) - k[:2, 2]) / k[0, 0] * depth
    return np.zeros(3), np.array([centre[0], centre[1], depth])


def _solve(points2d: np.ndarray, obj: np.ndarray, k: np.ndarray, guess: Optional[Tuple[np.ndarray, np.ndarray]]):
    """PnP of one frame: 2-D ``points2d`` [P, 2] against 3-D ``obj`` [P, 3]; rvec, tvec, RMS pixels."""
    import cv2

    img = points2d.astype(np.float64)
    if guess is None:
        guess = _frontal_guess(img, obj, k)
    rvec, tvec = guess[0].reshape(3, 1).copy(), guess[1].reshape(3, 1).copy()
    ok = cv2.solvePnP(obj, img, k, np.zeros(4), rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    r, t = rvec.reshape(3), tvec.reshape(3)
    if not ok or not (np.isfinite(r).all() and np.isfinite(t).all()):
        return r, t, float("inf")  # not solved: callers see an infinite error, never a pose taken for a solution
    err = project(r[None], t[None], obj, k)[0] - img
    return r, t, float(np.sqrt((err**2).sum(-1).mean()))


def _per_frame(
    points: np.ndarray, obj: np.ndarray, kept: np.ndarray, k: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[int]]:
    """PnP per kept frame, seeded by the previous one; also the frames where PnP failed from both the previous
    pose and the frontal guess (they start from the previous pose, or the frontal guess at a run's start)."""
    n = len(points)
    rvecs, tvecs, errs = np.full((n, 3), np.nan), np.full((n, 3), np.nan), np.full(n, np.nan)
    guess = None
    failed: List[int] = []
    for f in range(n):
        if not kept[f]:
            guess = None
            continue
        r, t, e = _solve(points[f], obj, k, guess)
        if not np.isfinite(e) or t[2] <= 0:  # failed or behind the camera: restart from the frontal guess
            r, t, e = _solve(points[f], obj, k, None)
        if not np.isfinite(e) or t[2] <= 0:
            failed.append(f)
            r, t = guess if guess is not None else _frontal_guess(points[f], obj, k)
        rvecs[f], tvecs[f], errs[f] = r, t, e
        guess = (r, t)
    return rvecs, tvecs, errs, failed


def estimate_focal(points: np.ndarray, obj: np.ndarray, kept: np.ndarray, width: int, height: int) -> float:
    """The sequence focal (see the module docstring); ``points`` [N, P, 2] against ``obj`` [P, 3]."""
    idx = np.flatnonzero(kept)
    idx = idx[np.linspace(0, len(idx) - 1, min(40, len(idx))).round().astype(int)]
    scales = np.geomspace(0.8, 4.0, 15)
    errors = []
    for c in scales:
        k = camera_matrix(c * min(width, height), width, height)
        errors.append(float(np.median([_solve(points[f], obj, k, None)[2] for f in idx])))
    errors_arr = np.asarray(errors)
    ok = errors_arr <= errors_arr.min() * 1.05 + 1e-9
    best = scales[ok][np.argmin(np.abs(np.log(scales[ok] / DEFAULT_FOCAL_SCALE)))]
    return float(best * min(width, height))


def _refine_run(
    points: np.ndarray, obj: np.ndarray, rvecs: np.ndarray, tvecs: np.ndarray, k: np.ndarray, smoothness: float
) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Joint robust least squares over one run of consecutive frames (``points`` [n, P, 2], ``obj`` [P, 3]); None
    when the solver reports no solution (its status) or returns non-finite poses. Stopping at the evaluation cap is
    by design: each step lowers the robust cost from the per-frame poses it starts at."""
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    n, p = points.shape[:2]
    depth = float(np.mean(tvecs[:, 2]))
    head = 0.08  # template units: a typical lever arm of the rigid points
    f = k[0, 0]
    # Frame-to-frame pose change in pixels of image motion it causes.
    weights = np.sqrt(smoothness) * np.array([f * head / depth] * 3 + [f / depth] * 2 + [f * head / depth**2])

    def residuals(x: np.ndarray) -> np.ndarray:
        pose = x.reshape(n, 6)
        reproj = (project(pose[:, :3], pose[:, 3:], obj, k) - points).reshape(-1)
        steps = ((pose[1:] - pose[:-1]) * weights).reshape(-1)
        return np.concatenate([reproj, steps])

    sparsity = lil_matrix((n * p * 2 + (n - 1) * 6, n * 6), dtype=np.int8)
    for fr in range(n):
        sparsity[fr * p * 2 : (fr + 1) * p * 2, fr * 6 : (fr + 1) * 6] = 1
    for fr in range(n - 1):
        rows = slice(n * p * 2 + fr * 6, n * p * 2 + (fr + 1) * 6)
        sparsity[rows, fr * 6 : (fr + 2) * 6] = 1
    x0 = np.concatenate([rvecs, tvecs], axis=1).reshape(-1)
    sol = least_squares(
        residuals,
        x0,
        jac_sparsity=sparsity,
        method="trf",
        x_scale="jac",
        loss="soft_l1",
        f_scale=ROBUST_PX,
        max_nfev=30,
    )
    pose = sol.x.reshape(n, 6)
    if sol.status < 0 or not np.isfinite(pose).all():  # improper input or a non-finite result: not a solution
        return None
    return pose[:, :3], pose[:, 3:]


def solve_poses(
    mesh2d: Float[np.ndarray, "N 478 2"],
    kept: Bool[np.ndarray, " N"],
    shape: SubjectShape,
    width: int,
    height: int,
    focal: Optional[float] = None,
    smoothness: float = 1.0,
) -> PoseResult:
    """Focal, per-frame PnP, then the smoothed sequence refinement (module docstring)."""
    from sahs_nerfstudio.process.landmarks import runs

    obj, points = shape.points[shape.rigid], mesh2d[:, shape.rigid]
    if focal is None:
        focal = estimate_focal(points, obj, kept, width, height)
    k = camera_matrix(focal, width, height)
    rvecs, tvecs, _, failed = _per_frame(points, obj, kept, k)
    problems = []
    if failed:
        problems.append(
            f"PnP found no pose for {len(failed)} frame(s) ({_frame_list(failed)}): each starts from the previous "
            "frame's pose"
            + (", then the joint refinement fits it" if smoothness > 0 else " (no refinement: kept as is)")
        )
    if smoothness > 0:
        stable = np.argsort(shape.residual[shape.rigid])[:REFINE_POINTS]
        for a, b in runs(kept):
            if b > a:
                refined = _refine_run(
                    points[a : b + 1, stable], obj[stable], rvecs[a : b + 1], tvecs[a : b + 1], k, smoothness
                )
                if refined is None:
                    problems.append(f"pose refinement failed on frames {a}-{b}: their per-frame PnP poses are kept")
                else:
                    rvecs[a : b + 1], tvecs[a : b + 1] = refined
    errs = np.full(len(points), np.nan)
    ok = np.flatnonzero(kept)
    if len(ok):
        diff = project(rvecs[ok], tvecs[ok], obj, k) - points[ok]
        errs[ok] = np.sqrt((diff**2).sum(-1).mean(-1))
    return PoseResult(rvecs=rvecs, tvecs=tvecs, focal=float(focal), reprojection=errs, problems=problems)


def _frame_list(frames: List[int], most: int = 8) -> str:
    shown = ", ".join(str(f) for f in frames[:most])
    return shown + (f", ... {len(frames) - most} more" if len(frames) > most else "")


def head_to_camera(pose: PoseResult) -> Float[np.ndarray, "N 4 4"]:
    """World(head)-to-camera transforms in the layouts' camera axes, template units (NaN where not kept)."""
    n = len(pose.rvecs)
    out = np.full((n, 4, 4), np.nan)
    ok = ~np.isnan(pose.rvecs).any(axis=1)
    r = rodrigues(pose.rvecs[ok])  # template(cv axes) -> camera(cv)
    # x_gl = F (R (F X) + t)  for a template point X in its own axes.
    out[ok, :3, :3] = _FLIP @ r @ _FLIP
    out[ok, :3, 3] = pose.tvecs[ok] @ _FLIP.T
    out[ok, 3] = [0, 0, 0, 1]
    return out


def camera_to_world(pose: PoseResult, target_distance: float = TARGET_DISTANCE) -> Tuple[np.ndarray, float]:
    """Camera-to-world matrices (NaN where not kept) scaled so the mean camera distance is ``target_distance``;
    also the scale applied to template units."""
    w2c = head_to_camera(pose)
    ok = ~np.isnan(w2c).any(axis=(1, 2))
    c2w = np.full_like(w2c, np.nan)
    rot = np.swapaxes(w2c[ok, :3, :3], -1, -2)
    c2w[ok, :3, :3] = rot
    c2w[ok, :3, 3] = -np.einsum("nij,nj->ni", rot, w2c[ok, :3, 3])
    c2w[ok, 3] = [0, 0, 0, 1]
    scale = target_distance / float(np.linalg.norm(c2w[ok, :3, 3], axis=-1).mean())
    c2w[ok, :3, 3] *= scale
    return c2w, scale
