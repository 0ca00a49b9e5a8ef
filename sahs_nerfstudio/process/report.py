"""Stage 9: a contact sheet for a person to check at a glance, and the JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
from jaxtyping import Float, Int, UInt8

from sahs_nerfstudio.data import semantics as sem
from sahs_nerfstudio.data.formats import write_rgb
from sahs_nerfstudio.process.pose import PoseResult, camera_matrix, project

_TILE = 256
_COLUMNS = 4
_AXIS = 0.05  # template units


def annotate(
    rgb: UInt8[np.ndarray, "H W 3"],
    labels: Int[np.ndarray, "H W"],
    lms: Float[np.ndarray, "68 2"],
    rvec: np.ndarray,
    tvec: np.ndarray,
    focal: float,
) -> UInt8[np.ndarray, "h w 3"]:
    """One tile: the mask blended over the frame, landmarks, and the head's x/y/z axes (red/green/blue)."""
    import cv2

    h, w = rgb.shape[:2]
    out = (0.6 * rgb + 0.4 * sem.encode_mask(labels)).astype(np.uint8)
    scale = _TILE / max(h, w)
    out = cv2.resize(out, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
    for x, y in lms * scale:
        cv2.circle(out, (int(round(x)), int(round(y))), 1, (255, 255, 255), -1)
    k = camera_matrix(focal, w, h)
    # Head axes in the template's OpenCV axes (x right, y down, z into the face): flip y and z back.
    axes = np.array([[0, 0, 0], [_AXIS, 0, 0], [0, -_AXIS, 0], [0, 0, -_AXIS]], dtype=np.float64)
    pts = project(rvec[None], tvec[None], axes, k)[0] * scale
    origin = tuple(int(v) for v in np.round(pts[0]))
    for p, colour in zip(pts[1:], ((255, 0, 0), (0, 255, 0), (0, 0, 255)), strict=True):
        cv2.line(out, origin, tuple(int(v) for v in np.round(p)), colour, 2)
    return out


def contact_sheet(
    path: Path,
    picks: List[int],
    read_frame: Callable[[int], np.ndarray],
    read_labels: Callable[[int], np.ndarray],
    landmarks: np.ndarray,
    pose: PoseResult,
    source_index: List[int],
) -> None:
    """A grid of annotated kept frames ``picks`` (``source_index`` maps them to pose rows)."""
    tiles = [
        annotate(
            read_frame(i),
            read_labels(i),
            landmarks[i],
            pose.rvecs[source_index[i]],
            pose.tvecs[source_index[i]],
            pose.focal,
        )
        for i in picks
    ]
    th, tw = tiles[0].shape[:2]
    rows = (len(tiles) + _COLUMNS - 1) // _COLUMNS
    cols = min(_COLUMNS, len(tiles))
    sheet = np.zeros((rows * th, cols * tw, 3), np.uint8)
    for n, tile in enumerate(tiles):
        r, c = divmod(n, _COLUMNS)
        sheet[r * th : r * th + tile.shape[0], c * tw : c * tw + tile.shape[1]] = tile
    write_rgb(path, sheet)


def write_report(path: Path, report: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
