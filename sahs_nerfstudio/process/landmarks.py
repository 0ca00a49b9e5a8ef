"""Stage 2: the face mesh and person matte per frame, tracked over the video; gaps; smoothing.

The tracker is :class:`~sahs_nerfstudio.process.face_mesh.MeshTracker` (MediaPipe's 478-point
mesh and selfie matte). The matte of every frame is written as a grey PNG for the later stages.

Frames without a face: gaps up to ``max_gap`` frames between two faces are linearly interpolated;
longer gaps (and gaps at either end) are dropped and reported with their time ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
from jaxtyping import Bool, Float

from sahs_nerfstudio.process import images
from sahs_nerfstudio.process.face_mesh import NUM_POINTS, MeshTracker


@dataclass
class TrackResult:
    """Raw per-frame meshes (NaN where no face) and what the tracker saw."""

    mesh: Float[np.ndarray, "N 478 3"]
    max_faces: int = 0
    """The most faces found in one frame."""
    multi_face_frame: int = -1
    """The first frame with more than one (-1: never)."""


def matte_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def track(
    frames: List[Path],
    read: Callable[[Path], np.ndarray],
    matte_dir: Path,
    on_frame: Optional[Callable[[int], None]] = None,
) -> TrackResult:
    """Run the tracker over frame files in order, writing each frame's matte to ``matte_dir``."""
    tracker = MeshTracker()
    mesh = np.full((len(frames), NUM_POINTS, 3), np.nan)
    try:
        for k, path in enumerate(frames):
            found = tracker.step(read(path), k)
            if found.mesh is not None:
                mesh[k] = found.mesh
            images.write_png(matte_path(matte_dir, k), found.matte)
            if on_frame is not None:
                on_frame(k + 1)
    finally:
        tracker.close()
    return TrackResult(mesh, tracker.max_faces, tracker.multi_face_frame)


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


def fill_gaps(points: Float[np.ndarray, "N P D"], max_gap: int) -> Tuple[np.ndarray, Bool[np.ndarray, " N"], GapReport]:
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


def smooth(points: Float[np.ndarray, "N P D"], kept: Bool[np.ndarray, " N"], sigma: float) -> np.ndarray:
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
