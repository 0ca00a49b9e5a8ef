"""Where to crop the clip: one square box around the tracked head and shoulders, for the whole clip.

A phone video or a full-body clip shows the face small; centre-cropping it leaves the face a few
dozen pixels of the frame. With ``--crop face`` (and with ``--crop auto`` when the face is small)
:func:`face_crop_box` runs MediaPipe's full-range face detector on up to ``samples`` frames spread
over the clip and picks one square: centred on the median face centre, lowered by
``SHOULDER_SHIFT`` face heights to take in the shoulders, ``HEAD_AND_SHOULDERS`` face heights on a
side plus how far the face travels, shifted (never shrunk past the frame) to lie inside the frame.
One box for the whole clip keeps the camera model of a fixed camera; a box per frame would move it.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from sahs_nerfstudio.process.decode import CropBox, open_video, resampled_frames

HEAD_AND_SHOULDERS = 3.2
"""Side of the box in face heights (the detector's box: about brows to chin)."""
SHOULDER_SHIFT = 0.35
"""How far below the face centre the box centre goes, face heights."""
SMALL_FACE = 0.8
"""``--crop auto`` crops to the face when its box would be under this fraction of the frame's short side."""


def box_from_faces(faces: List[Tuple[float, float, float, float]], width: int, height: int) -> CropBox:
    """The module docstring's box from face boxes ``(x, y, w, h)`` (one per sampled frame)."""
    arr = np.asarray(faces, dtype=np.float64)
    centres = arr[:, :2] + 0.5 * arr[:, 2:]
    size = float(np.median(arr[:, 3]))
    travel = float((centres.max(0) - centres.min(0)).max())
    side = int(round(min(HEAD_AND_SHOULDERS * size + travel, width, height)))
    cx, cy = np.median(centres[:, 0]), np.median(centres[:, 1]) + SHOULDER_SHIFT * size
    x = int(np.clip(round(cx - side / 2), 0, width - side))
    y = int(np.clip(round(cy - side / 2), 0, height - side))
    return CropBox(x, y, side)


def face_crop_box(frames: List[np.ndarray], scale: float = 1.0) -> Optional[CropBox]:
    """The box over sampled RGB ``frames`` shrunk by ``scale`` from the source (None when no face was
    found in any of them), in source pixels."""
    from sahs_nerfstudio.process.face_mesh import detect_faces, face_detector

    detector = face_detector()
    faces = []
    try:
        for rgb in frames:
            found = detect_faces(rgb, detector)
            if found:
                faces.append(tuple(v / scale for v in max(found, key=lambda b: b[2] * b[3])))
    finally:
        detector.close()
    if not faces:
        return None
    h, w = (round(n / scale) for n in frames[0].shape[:2])
    return box_from_faces(faces, w, h)


def choose_crop(mode: str, video: Path, fps: float) -> Tuple[str, Optional[CropBox]]:
    """The crop that ``--crop mode`` means for ``video``: ("face", box), ("centre", None) or ("none", None).
    ``auto`` is ``face`` when the face is small, else ``centre``; no face found falls back to ``centre``."""
    if mode in ("centre", "none"):
        return mode, None
    frames, scale = sample_frames(video, fps)
    box = face_crop_box(frames, scale) if frames else None
    if box is None:
        return "centre", None
    h, w = (round(n / scale) for n in frames[0].shape[:2])
    if mode == "auto" and box.side >= SMALL_FACE * min(h, w):
        return "centre", None
    return "face", box


MIN_KEYFRAMES = 8
"""With at least this many keyframes the samples are keyframes (decoded alone, a few ms for a whole clip);
otherwise every frame is decoded and thinned."""


def _scaled(rgb: np.ndarray, side: int) -> Tuple[np.ndarray, float]:
    import cv2

    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0:
        return rgb, scale
    return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), scale


def _keyframes(video: Path) -> List[np.ndarray]:
    """The clip's keyframes (the decoder skips everything else)."""
    import av

    container = open_video(video)  # a missing or unreadable file is one FormatError line
    try:
        if not container.streams.video:
            return []  # decoding says what is wrong with it, in its own words
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except (av.error.FFmpegError, ValueError):  # type: ignore[attr-defined]
        return []
    finally:
        container.close()


def sample_frames(video: Path, fps: float, samples: int = 24, side: int = 640) -> Tuple[List[np.ndarray], float]:
    """About ``samples`` frames spread evenly over the clip, scaled so the long side is at most ``side``
    (the detector looks at 192 pixels, so more only costs time), and the scale applied.

    The keyframes when there are enough (:data:`MIN_KEYFRAMES`); else one decoding pass keeping every
    ``stride``-th frame: whenever twice ``samples`` are held, every other one is dropped and the stride
    doubles, so the kept frames stay evenly spread whatever the length.
    """
    keys = _keyframes(video)
    if len(keys) >= MIN_KEYFRAMES:
        picks = np.linspace(0, len(keys) - 1, min(samples, len(keys))).round().astype(int)
        scaled = [_scaled(keys[i], side) for i in sorted(set(picks.tolist()))]
        return [f for f, _ in scaled], scaled[0][1]
    kept: List[np.ndarray] = []
    stride, scale = 1, 1.0
    for k, (rgb, _) in enumerate(resampled_frames(video, fps)):
        if k % stride:
            continue
        small, scale = _scaled(rgb, side)
        kept.append(small)
        if len(kept) >= 2 * samples:
            kept, stride = kept[::2], stride * 2
    return kept, scale
