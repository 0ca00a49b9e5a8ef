"""Stage 2: 68 landmarks per frame with dlib, detected once and then tracked; gaps; smoothing; LMD.

Tracking: dlib's HOG detector runs on the first frame (and again every ``redetect_every`` frames
near the last face, and on every frame while the face is lost); in between, the shape predictor is
seeded with a box derived from the previous frame's landmarks (the detector-box-to-landmarks
relation is measured at each detection, so the seed box looks like a detector box to the
predictor). A tracked frame is accepted only when its aligned face patch still correlates with
the patch at the last detection; otherwise the detector decides.

Frames without a face: gaps up to ``max_gap`` frames between two faces are linearly interpolated;
longer gaps (and gaps at either end) are dropped and reported with their time ranges.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
from jaxtyping import Bool, Float, UInt8

from sahs_nerfstudio.data.formats import FormatError
from sahs_nerfstudio.process.template import MOUTH, interocular

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
_PATCH = 48
_PATCH_POINTS = (36, 39, 42, 45, 30, 48, 54)


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


@dataclass
class TrackResult:
    """Raw per-frame landmarks (NaN where no face) and what the tracker saw."""

    points: Float[np.ndarray, "N 68 2"]
    detections: int = 0
    """How many frames ran the detector."""
    max_faces: int = 0
    """The most faces the detector found in one frame."""
    multi_face_frame: int = -1
    """The first frame where it found more than one (-1: never)."""


def _shape_to_array(shape) -> np.ndarray:
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)


def _patch(gray: np.ndarray, points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The face warped by a similarity onto ``ref`` (a fixed frontal arrangement), zero-mean unit-norm."""
    import cv2

    m, _ = cv2.estimateAffinePartial2D(points[list(_PATCH_POINTS)].astype(np.float32), ref.astype(np.float32))
    if m is None:
        return np.zeros((_PATCH, _PATCH), np.float32)
    p = cv2.warpAffine(gray, m, (_PATCH, _PATCH), flags=cv2.INTER_LINEAR).astype(np.float32)
    p -= p.mean()
    return p / max(float(np.linalg.norm(p)), 1e-6)


class FaceTracker:
    """Detect once, then track from the previous frame's landmarks (see the module docstring)."""

    def __init__(self, redetect_every: int = 25, min_correlation: float = 0.5) -> None:
        dlib = _dlib()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_path()))
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
        import cv2

        dlib = _dlib()

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
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


def track(frames: List[Path], read: Callable[[Path], np.ndarray], tracker: FaceTracker, on_frame=None) -> TrackResult:
    """Run the tracker over frame files in order."""
    points = np.full((len(frames), 68, 2), np.nan)
    for k, path in enumerate(frames):
        pts = tracker.step(read(path), k)
        if pts is not None:
            points[k] = pts
        if on_frame is not None:
            on_frame(k + 1)
    return TrackResult(points, tracker.result_detections, tracker.max_faces, tracker.multi_face_frame)


@dataclass
class GapReport:
    """Frames without a face: which were filled in and which were dropped."""

    interpolated: List[Tuple[int, int]] = field(default_factory=list)
    """Inclusive frame ranges filled by interpolation."""
    dropped: List[Tuple[int, int]] = field(default_factory=list)
    """Inclusive frame ranges dropped from the dataset."""


def runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """Inclusive (start, end) ranges where ``mask`` is True."""
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def fill_gaps(
    points: Float[np.ndarray, "N 68 2"], max_gap: int
) -> Tuple[np.ndarray, Bool[np.ndarray, " N"], GapReport]:
    """Interpolate interior gaps of at most ``max_gap`` frames; the rest stay NaN and are not kept."""
    points = points.copy()
    missing = np.isnan(points).any(axis=(1, 2))
    report = GapReport()
    n = len(points)
    for a, b in runs(missing):
        if a > 0 and b < n - 1 and b - a + 1 <= max_gap:
            w = (np.arange(a, b + 1) - (a - 1)) / (b + 2 - a)
            points[a : b + 1] = (1 - w)[:, None, None] * points[a - 1] + w[:, None, None] * points[b + 1]
            report.interpolated.append((a, b))
        else:
            report.dropped.append((a, b))
    kept = ~np.isnan(points).any(axis=(1, 2))
    return points, kept, report


def smooth(points: Float[np.ndarray, "N 68 2"], kept: Bool[np.ndarray, " N"], sigma: float) -> np.ndarray:
    """Gaussian smoothing over time (``sigma`` in frames) within each run of kept frames."""
    from scipy.ndimage import gaussian_filter1d

    if sigma <= 0:
        return points.copy()
    out = points.copy()
    for a, b in runs(kept):
        if b > a:
            out[a : b + 1] = gaussian_filter1d(points[a : b + 1], sigma, axis=0, mode="nearest")
    return out


def format_ranges(ranges: List[Tuple[int, int]], fps: float) -> str:
    """``frames 3-7 (0.12-0.32 s), ...`` for a report line."""
    return ", ".join(f"frames {a}-{b} ({a / fps:.2f}-{(b + 1) / fps:.2f} s)" for a, b in ranges)


def lmd(pred: Float[np.ndarray, "*bs 68 2"], target: Float[np.ndarray, "*bs 68 2"], normalise: bool = False) -> float:
    """Landmark distance (LMD): mean L2 distance of the 20 mouth points after removing each set's mean.

    The field's lip-sync measure, in pixels (or in inter-ocular distances of ``target`` with
    ``normalise``); both inputs come from the same detector. Frames with NaN are skipped.
    """
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 68, 2)
    t = np.asarray(target, dtype=np.float64).reshape(-1, 68, 2)
    ok = ~(np.isnan(p).any(axis=(1, 2)) | np.isnan(t).any(axis=(1, 2)))
    if not ok.any():
        raise ValueError("LMD needs at least one frame with landmarks in both sets")
    pm, tm = p[ok][:, list(MOUTH)], t[ok][:, list(MOUTH)]
    pm = pm - pm.mean(axis=1, keepdims=True)
    tm = tm - tm.mean(axis=1, keepdims=True)
    dist = np.linalg.norm(pm - tm, axis=-1)  # [F, 20]
    if normalise:
        dist = dist / interocular(t[ok])[:, None]
    return float(dist.mean())


def detect_landmarks(rgb: UInt8[np.ndarray, "H W 3"]) -> Optional[np.ndarray]:
    """Landmarks of the largest face in one image (for LMD on renders), or None without a face."""
    tracker = FaceTracker()
    return tracker.step(rgb, 0)
