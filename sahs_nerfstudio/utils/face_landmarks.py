"""dlib's 68 face landmarks: the iBUG point groups, one-image detection, the tracker, and LMD.

One detector for the whole project: ``sahs-process`` tracks faces with :class:`FaceTracker`, and
the lip-sync metric (LMD) finds the landmarks of a render and of its ground truth with
:func:`detect_landmarks`. The HOG detector and the 68-point shape predictor (shipped offline by
``face-recognition-models``) are loaded once per process.

Tracking: dlib's HOG detector runs on the first frame (and again every ``redetect_every`` frames
near the last face, and on every frame while the face is lost); in between, the shape predictor is
seeded with a box derived from the previous frame's landmarks (the detector-box-to-landmarks
relation is measured at each detection, so the seed box looks like a detector box to the
predictor). A tracked frame is accepted only when its aligned face patch still correlates with
the patch at the last detection; otherwise the detector decides.

LMD (:func:`lmd`, :class:`LipSyncScorer`) follows the talking-head papers' definition (AD-NeRF's
descendants: RAD-NeRF, ER-NeRF, SyncTalk): the mean L2 distance of the 20 mouth points 48-67 after
removing each set's own mean, so a head that is merely displaced scores 0 and the measure is the
mouth's shape. In pixels at the image's resolution (``lmd``), and divided by the ground truth's
inter-ocular distance (``lmd_iod``) so runs at different resolutions compare.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float, UInt8
from nerfstudio.utils.rich_utils import CONSOLE

from sahs_nerfstudio.data.formats import FormatError

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

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
MIN_DETECT_SIZE = 256
"""Images whose short side is below this are upsampled by dlib's pyramid before detection: its HOG
window is 80 px, and the faces of 128-px renders are smaller (one upsampling step, 2x, suffices)."""
_PATCH = 48
_PATCH_POINTS = (36, 39, 42, 45, 30, 48, 54)


def interocular(points: Float[np.ndarray, "*bs 68 D"]) -> Float[np.ndarray, "*bs"]:
    """Distance between the outer eye corners (36, 45): the scale every landmark measure is divided by."""
    return np.linalg.norm(points[..., 45, :] - points[..., 36, :], axis=-1)


def _dlib() -> Any:
    """dlib, typed loosely: its compiled module ships no stubs."""
    import dlib

    return dlib


def predictor_path() -> Path:
    """dlib's 68-point predictor shipped by ``face-recognition-models`` (found without pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FormatError("face_recognition_models", "<package>", "the installed package", "it missing")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise FormatError(path, "<file>", "dlib's 68-point shape predictor", "no such file")
    return path


@lru_cache(maxsize=1)
def dlib_models() -> Tuple[Any, Any]:
    """dlib's frontal face detector and 68-point shape predictor, loaded once (the predictor is ~100 MB)."""
    dlib = _dlib()
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))


def _shape_to_array(shape) -> np.ndarray:
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)


def _gray(rgb: UInt8[np.ndarray, "H W 3"]) -> UInt8[np.ndarray, "H W"]:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _patch(gray: np.ndarray, points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The face warped by a similarity onto ``ref`` (a fixed frontal arrangement), zero-mean unit-norm."""
    import cv2

    m, _ = cv2.estimateAffinePartial2D(points[list(_PATCH_POINTS)].astype(np.float32), ref.astype(np.float32))
    if m is None:
        return np.zeros((_PATCH, _PATCH), np.float32)
    p = cv2.warpAffine(gray, m, (_PATCH, _PATCH), flags=cv2.INTER_LINEAR).astype(np.float32)
    p -= p.mean()
    return p / max(float(np.linalg.norm(p)), 1e-6)


def detect_landmarks(
    rgb: UInt8[np.ndarray, "H W 3"], near: Optional[Float[np.ndarray, "68 2"]] = None
) -> Optional[Float[np.ndarray, "68 2"]]:
    """Landmarks (pixel x, y) of the most confident face in one image, or None without a face.

    One detector pass (upsampled once when the image's short side is below :data:`MIN_DETECT_SIZE`).
    The most confident, not the largest: on scikit-image's astronaut a weak false detection on the
    suit is larger than the face. With ``near`` (another image's landmarks, say the ground truth's)
    only a face whose centre lies inside their bounding box counts: the same face, not another.
    """
    detector, predictor = dlib_models()
    gray = _gray(rgb)
    rects, scores, _ = detector.run(gray, 1 if min(gray.shape) < MIN_DETECT_SIZE else 0, 0.0)
    candidates = list(zip(scores, rects, strict=True))
    if near is not None:
        lo, hi = near.min(0), near.max(0)
        candidates = [
            (score, r) for score, r in candidates if lo[0] <= r.center().x <= hi[0] and lo[1] <= r.center().y <= hi[1]
        ]
    if not candidates:
        return None
    return _shape_to_array(predictor(gray, max(candidates, key=lambda c: c[0])[1]))


class FaceTracker:
    """Detect once, then track from the previous frame's landmarks (see the module docstring)."""

    def __init__(self, redetect_every: int = 25, min_correlation: float = 0.5) -> None:
        self.detector, self.predictor = dlib_models()
        self.redetect_every = redetect_every
        self.min_correlation = min_correlation
        self.prev: Optional[np.ndarray] = None
        self.relation = np.array([0.0, 0.0, 1.0])  # box centre offset (x, y) and size, in landmark-box units
        self.reference: Optional[np.ndarray] = None
        self.since_detection = 0
        self.result_detections = 0
        self.max_faces = 0
        self.multi_face_frame = -1
        # A fixed frontal arrangement of the patch points (from the first accepted face).
        self.patch_ref: Optional[np.ndarray] = None

    def _landmark_box(self, pts: np.ndarray) -> Tuple[float, float, float]:
        lo, hi = pts.min(0), pts.max(0)
        centre = 0.5 * (lo + hi)
        return float(centre[0]), float(centre[1]), float(max(hi - lo))

    def _detect(self, gray: np.ndarray, index: int):
        import cv2

        dlib = _dlib()

        self.result_detections += 1
        h, w = gray.shape
        # Faces of 80 px are the HOG detector's smallest; shrink big frames to save time when the face is large.
        scale = 1.0
        if self.prev is not None:
            size = self._landmark_box(self.prev)[2]
            scale = float(np.clip(110.0 / max(size, 1.0), 0.25, 1.0))
        img = gray if scale == 1.0 else cv2.resize(gray, (int(w * scale), int(h * scale)))
        rects = list(self.detector(img, 0))
        if not rects and scale != 1.0:
            rects, scale = list(self.detector(gray, 0)), 1.0
        if len(rects) > self.max_faces:
            self.max_faces = len(rects)
        if len(rects) > 1 and self.multi_face_frame < 0:
            self.multi_face_frame = index
        if not rects:
            return None
        boxes = [
            dlib.rectangle(int(r.left() / scale), int(r.top() / scale), int(r.right() / scale), int(r.bottom() / scale))
            for r in rects
        ]
        if self.prev is not None:
            # Keep following the same person: the box nearest the last face.
            cx, cy, _ = self._landmark_box(self.prev)
            return min(boxes, key=lambda b: (b.center().x - cx) ** 2 + (b.center().y - cy) ** 2)
        return max(boxes, key=lambda b: b.area())

    def _accept_detection(self, gray: np.ndarray, box) -> np.ndarray:
        pts = _shape_to_array(self.predictor(gray, box))
        cx, cy, size = self._landmark_box(pts)
        self.relation = np.array(
            [(box.center().x - cx) / size, (box.center().y - cy) / size, (box.width() + box.height()) / (2 * size)]
        )
        if self.patch_ref is None:
            ref = pts[list(_PATCH_POINTS)]
            lo, hi = ref.min(0), ref.max(0)
            self.patch_ref = (ref - lo) / max(float((hi - lo).max()), 1e-6) * (_PATCH * 0.7) + _PATCH * 0.15
        self.reference = _patch(gray, pts, np.asarray(self.patch_ref))
        self.since_detection = 0
        return pts

    def step(self, rgb: UInt8[np.ndarray, "H W 3"], index: int) -> Optional[np.ndarray]:
        """Landmarks ``[68, 2]`` (pixel x, y) of frame ``index``, or None when no face is found."""
        dlib = _dlib()

        gray = _gray(rgb)
        tracked: Optional[np.ndarray] = None
        if self.prev is not None:
            cx, cy, size = self._landmark_box(self.prev)
            bx, by = cx + self.relation[0] * size, cy + self.relation[1] * size
            half = 0.5 * self.relation[2] * size
            box = dlib.rectangle(int(bx - half), int(by - half), int(bx + half), int(by + half))
            pts = _shape_to_array(self.predictor(gray, box))
            assert self.reference is not None and self.patch_ref is not None
            if float((_patch(gray, pts, self.patch_ref) * self.reference).sum()) >= self.min_correlation:
                tracked = pts
                self.since_detection += 1
        if tracked is not None and self.since_detection < self.redetect_every:
            self.prev = tracked
            return tracked
        box = self._detect(gray, index)
        if box is not None:
            tracked = self._accept_detection(gray, box)
        elif tracked is not None:
            # A periodic check the detector missed while the patch still matches: keep tracking, check sooner.
            self.since_detection = self.redetect_every // 2
        self.prev = tracked
        return tracked


def _mouth_distances(
    pred: Float[np.ndarray, "*bs 68 2"], target: Float[np.ndarray, "*bs 68 2"], normalise: bool
) -> Float[np.ndarray, " F"]:
    """Per frame with landmarks in both sets: the mean mouth-point distance after removing each set's mean."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 68, 2)
    t = np.asarray(target, dtype=np.float64).reshape(-1, 68, 2)
    ok = ~(np.isnan(p).any(axis=(1, 2)) | np.isnan(t).any(axis=(1, 2)))
    pm, tm = p[ok][:, list(MOUTH)], t[ok][:, list(MOUTH)]
    pm = pm - pm.mean(axis=1, keepdims=True)
    tm = tm - tm.mean(axis=1, keepdims=True)
    dist = np.linalg.norm(pm - tm, axis=-1)  # [F, 20]
    if normalise:
        dist = dist / interocular(t[ok])[:, None]
    return dist.mean(axis=1)


def lmd(pred: Float[np.ndarray, "*bs 68 2"], target: Float[np.ndarray, "*bs 68 2"], normalise: bool = False) -> float:
    """Landmark distance (LMD): mean L2 distance of the 20 mouth points after removing each set's mean.

    The field's lip-sync measure, in pixels (or in inter-ocular distances of ``target`` with
    ``normalise``); both inputs come from the same detector. Frames with NaN are skipped.
    """
    per_frame = _mouth_distances(pred, target, normalise)
    if per_frame.size == 0:
        raise ValueError("LMD needs at least one frame with landmarks in both sets")
    return float(per_frame.mean())


def _as_uint8(image: Float[torch.Tensor, "H W C"] | UInt8[np.ndarray, "H W C"]) -> UInt8[np.ndarray, "H W 3"]:
    """A float image in [0, 1] (tensor or array) or a uint8 array as uint8 RGB (alpha dropped)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)[..., :3]
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass
class LipSyncScorer:
    """Collects LMD over frames (render vs ground truth), where dlib finds a face in both.

    :meth:`summary` gives ``lmd`` (pixels), ``lmd_iod`` (inter-ocular distances) and
    ``lmd_frames`` (frames scored) over those frames, with ``_std`` keys on request, and
    ``lmd_skipped`` (frames where either image had no face); it says once when it skipped frames.
    """

    pred: List[np.ndarray] = field(default_factory=list)
    target: List[np.ndarray] = field(default_factory=list)
    skipped: int = 0

    def add(
        self,
        pred: Float[torch.Tensor, "H W C"] | UInt8[np.ndarray, "H W C"],
        target: Float[torch.Tensor, "H W C"] | UInt8[np.ndarray, "H W C"],
    ) -> bool:
        """Detect the landmarks of one render and its ground truth; True when both have a face."""
        gt = detect_landmarks(_as_uint8(target))
        found = detect_landmarks(_as_uint8(pred), near=gt) if gt is not None else None
        if gt is None or found is None:
            self.skipped += 1
            return False
        self.pred.append(found)
        self.target.append(gt)
        return True

    @property
    def frames(self) -> int:
        return len(self.pred)

    def summary(self, get_std: bool = False) -> dict[str, float]:
        """The LMD keys described in the class docstring (``lmd_frames`` 0 and no ``lmd`` when nothing was scored)."""
        total = self.frames + self.skipped
        out: dict[str, float] = {"lmd_frames": float(self.frames), "lmd_skipped": float(self.skipped)}
        if self.skipped:
            CONSOLE.print(
                f"LMD skipped: dlib found no face in {self.skipped} of {total} frames (render or ground truth)"
                + (f"; LMD is over the other {self.frames}" if self.frames else ""),
                style="yellow",
                markup=False,
                soft_wrap=True,
            )
        if not self.frames:
            return out
        pred, target = np.stack(self.pred), np.stack(self.target)
        for key, normalise in (("lmd", False), ("lmd_iod", True)):
            per_frame = _mouth_distances(pred, target, normalise)
            out[key] = float(per_frame.mean())
            if get_std:
                # torch.std_mean's convention (unbiased), like nerfstudio's other ``_std`` keys; 0 for one frame.
                out[f"{key}_std"] = float(per_frame.std(ddof=1)) if per_frame.size > 1 else 0.0
        return out
