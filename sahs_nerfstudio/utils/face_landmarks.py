"""dlib's 68 face landmarks: the iBUG point groups, one-image detection, and LMD.

The lip-sync metric (LMD) is defined on dlib's 68 points, so it finds the landmarks of a render and
of its ground truth with :func:`detect_landmarks` (``sahs-process`` tracks with MediaPipe's mesh,
:mod:`sahs_nerfstudio.process.face_mesh`, and maps it to these 68 points for the formats that
use them). The HOG detector and the 68-point shape predictor (shipped offline by
``face-recognition-models``) are loaded once per process.

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

from sahs_nerfstudio.errors import FormatError

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
