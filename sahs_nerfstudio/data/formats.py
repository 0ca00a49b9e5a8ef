"""Reading and writing the NeRFace and AD-NeRF dataset layouts.

Every rule of the two formats (file names, JSON fields, pixel conventions) lives here once: the
synthetic subject writes through the ``write_*`` functions and the dataparser reads through the
``read_*`` functions, so the two cannot drift apart. Readers validate what they read and raise
:class:`FormatError` naming the file, the field, what was expected and what was found.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Float
from PIL import Image

from sahs_nerfstudio.data import json_fields as jf
from sahs_nerfstudio.errors import FormatError

__all__ = ["FormatError"]

Layout = Literal["nerface", "adnerf"]


# ----------------------------------------------------------------------------------------------
# Shared checks


def check_transform(path: Path, field_name: str, value: Any) -> Float[np.ndarray, "4 4"]:
    """A finite, rigid (rotation + translation) 4x4 camera-to-world matrix, or a FormatError."""
    rows_ok = isinstance(value, list) and all(isinstance(r, list) and all(map(jf.is_number, r)) for r in value)
    if not rows_ok:
        raise FormatError(path, field_name, "a 4x4 matrix of numbers (a list of 4 lists)", jf.shown(value))
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(path, field_name, "a 4x4 matrix of numbers", jf.shown(value)) from None
    if matrix.shape != (4, 4):
        raise FormatError(path, field_name, "a 4x4 matrix", f"shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise FormatError(path, field_name, "finite numbers", "NaN or infinity")
    rot = matrix[:3, :3]
    ortho_err = float(np.abs(rot.T @ rot - np.eye(3)).max())
    det = float(np.linalg.det(rot))
    if ortho_err > 1e-3 or abs(det - 1.0) > 1e-3 or not np.allclose(matrix[3], [0, 0, 0, 1], atol=1e-6):
        raise FormatError(
            path,
            field_name,
            "a rigid transform (orthonormal rotation, det +1, last row 0 0 0 1)",
            f"|R^T R - I| = {ortho_err:.3g}, det = {det:.4g}, last row {matrix[3].tolist()}",
        )
    return matrix


# What Pillow raises for a damaged file: OSError (truncated, broken zlib stream), SyntaxError (broken
# PNG chunks), struct.error / EOFError / ValueError (short headers), DecompressionBombError.
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _unreadable(path: Path, field_name: str, err: BaseException) -> FormatError:
    return FormatError(path, field_name, "a readable image", f"{type(err).__name__}: {str(err)[:100]}")


def image_info(path: Path, field_name: str) -> Tuple[Tuple[int, int], Tuple[str, ...]]:
    """``((width, height), bands)`` of an image from its header only; FormatError if missing or unreadable."""
    if not path.is_file():
        raise FormatError(path, field_name, "an image file", "no such file")
    try:
        with Image.open(path) as img:
            return img.size, tuple(img.getbands())
    except _IMAGE_ERRORS as err:
        raise _unreadable(path, field_name, err) from None


def image_size(path: Path, field_name: str) -> Tuple[int, int]:
    """(width, height) of an image, reading only its header; FormatError if missing or unreadable."""
    return image_info(path, field_name)[0]


def read_rgb(path: Path, field_name: str = "<image>") -> np.ndarray:
    """An image fully decoded as uint8 R, G, B; FormatError if missing, truncated or corrupt.

    The whole file is decoded (a truncated PNG or JPEG, or a PNG whose compressed body is damaged,
    fails here, not only at its header), so whoever caches frames validates them by reading them once.
    """
    if not path.is_file():
        raise FormatError(path, field_name, "an image file", "no such file")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except _IMAGE_ERRORS as err:
        raise _unreadable(path, field_name, err) from None


def write_rgb(path: Path, rgb: np.ndarray, quality: int = 95) -> None:
    """Write uint8 R, G, B as PNG or JPEG (by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=quality)
    else:
        img.save(path)


def _write_json(path: Path, obj: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


# ----------------------------------------------------------------------------------------------
# NeRFace (expression driver)

NERFACE_SPLITS = ("train", "val", "test")
NERFACE_BACKGROUND = Path("bg") / "00050.png"
EXPRESSION_BASIS = "expression_basis.npz"
"""In a dataset folder written by ``sahs-process``: the subject's expression basis, which driver videos are mapped
into (``sahs_nerfstudio.process.expression.ExpressionBasis``)."""


@dataclass
class NeRFaceFrame:
    """One frame of a NeRFace ``transforms_<split>.json``."""

    file_path: str
    """As in the JSON, without extension, e.g. ``./train/f_0000``."""
    transform_matrix: Float[np.ndarray, "4 4"]
    expression: Float[np.ndarray, " D"]
    bbox: Optional[Tuple[float, float, float, float]] = None
    """``[h_min, h_max, w_min, w_max]`` as fractions of the image; None means the whole image."""


@dataclass
class NeRFaceSplit:
    """A parsed ``transforms_<split>.json``."""

    camera_angle_x: float
    intrinsics: Tuple[float, float, float, float]
    """``fx, fy`` in pixels (fx often negative), ``cx, cy`` as fractions of width and height."""
    frames: List[NeRFaceFrame] = field(default_factory=list)


def nerface_camera_angle_x(width: int, fx: float) -> float:
    """The ``camera_angle_x`` whose focal ``0.5 W / tan(angle / 2)`` (NeRFace's fallback) is ``fx``, sign included.

    A mirrored camera (fx < 0) gets a negative angle, so the fallback keeps the mirroring of x.
    """
    return float(2.0 * np.arctan(width / (2.0 * fx)))


def nerface_transforms_path(root: Path, split: str) -> Path:
    return root / f"transforms_{split}.json"


def nerface_image_path(root: Path, file_path: str) -> Path:
    """The original loader appends ``.png`` to ``file_path`` relative to the dataset root."""
    return root / (file_path + ".png")


def nerface_mask_path(root: Path, file_path: str) -> Path:
    """SAHS masks sit in ``<split>/masks/<name>.png`` next to the split's images."""
    rel = Path(file_path)
    return root / rel.parent / "masks" / (rel.name + ".png")


def write_nerface_split(root: Path, split: str, data: NeRFaceSplit) -> Path:
    frames = []
    for fr in data.frames:
        entry: Dict[str, Any] = {
            "file_path": fr.file_path,
            "transform_matrix": np.asarray(fr.transform_matrix).tolist(),
            "expression": np.asarray(fr.expression).tolist(),
        }
        if fr.bbox is not None:
            entry["bbox"] = list(fr.bbox)
        frames.append(entry)
    path = nerface_transforms_path(root, split)
    _write_json(
        path,
        {"camera_angle_x": data.camera_angle_x, "intrinsics": list(data.intrinsics), "frames": frames},
    )
    return path


def nerface_intrinsics_from_angle(width: int, camera_angle_x: float) -> Tuple[float, float, float, float]:
    """NeRFace's fallback without ``intrinsics``: ``[f, f, 0.5, 0.5]`` with ``f = 0.5 W / tan(angle / 2)``.

    As the original loader: one signed focal for both axes (a negative angle mirrors x and y alike).
    """
    focal = 0.5 * width / math.tan(0.5 * camera_angle_x)
    return (focal, focal, 0.5, 0.5)


def _nerface_intrinsics(path: Path, meta: Dict[str, Any], first_image: Path) -> Tuple[float, float, float, float]:
    """``intrinsics`` as NeRFace defines it (fx, fy pixels; cx, cy fractions), or its camera_angle_x fallback."""
    raw = meta.get("intrinsics")
    if raw is None:  # absent or null: the original derives them from camera_angle_x
        if meta.get("camera_angle_x") is None:
            raise FormatError(path, "intrinsics", "[fx, fy, cx, cy] or a camera_angle_x to derive them", "neither")
        angle = jf.as_number(path, "camera_angle_x", meta["camera_angle_x"], "an angle in radians")
        if not 0 < abs(angle) < math.pi:
            raise FormatError(path, "camera_angle_x", "a field of view in radians, 0 < |angle| < pi", f"{angle:g}")
        width = image_size(first_image, "frames[0].file_path")[0]
        return nerface_intrinsics_from_angle(width, angle)
    fx, fy, cx, cy = (float(v) for v in jf.as_numbers(path, "intrinsics", raw, 4))
    if fx == 0 or fy == 0:
        raise FormatError(path, "intrinsics", "non-zero focal lengths fx, fy (pixels)", f"fx={fx:g}, fy={fy:g}")
    if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
        kind = "pixel values" if max(cx, cy) > 1.0 else "outside the image"
        raise FormatError(
            path,
            "intrinsics",
            "cx, cy as fractions of the image width and height (0..1), as NeRFace stores them",
            f"cx={cx:g}, cy={cy:g} ({kind})",
        )
    return (fx, fy, cx, cy)


def _nerface_bbox(path: Path, field_name: str, raw: Any) -> Tuple[float, float, float, float]:
    h_min, h_max, w_min, w_max = (float(v) for v in jf.as_numbers(path, field_name, raw, 4))
    if not (0.0 <= h_min <= h_max <= 1.0 and 0.0 <= w_min <= w_max <= 1.0):
        raise FormatError(
            path,
            field_name,
            "[h_min, h_max, w_min, w_max] as fractions, 0 <= min <= max <= 1",
            jf.shown([h_min, h_max, w_min, w_max]),
        )
    return (h_min, h_max, w_min, w_max)


def read_nerface_split(root: Path, split: str) -> NeRFaceSplit:
    """Parse ``transforms_<split>.json``; every field typed and in range, or a FormatError naming it."""
    path = nerface_transforms_path(root, split)
    meta = jf.load_json_object(path)
    frames_raw = jf.as_list(path, "frames", jf.require(path, meta, "frames"))
    frames: List[NeRFaceFrame] = []
    expr_len: Optional[int] = None
    for k, raw in enumerate(frames_raw):
        where = f"frames[{k}]."
        fr = jf.as_object(path, f"frames[{k}]", raw)
        file_path = jf.as_string(path, f"{where}file_path", jf.require(path, fr, "file_path", where))
        matrix = check_transform(path, f"{where}transform_matrix", jf.require(path, fr, "transform_matrix", where))
        expr = jf.as_numbers(path, f"{where}expression", jf.require(path, fr, "expression", where))
        if expr_len is None:
            expr_len = expr.shape[0]
        elif expr.shape[0] != expr_len:
            raise FormatError(
                path, f"{where}expression", f"{expr_len} values like frames[0]", f"{expr.shape[0]} values"
            )
        bbox = fr.get("bbox")
        box = None if bbox is None else _nerface_bbox(path, f"{where}bbox", bbox)
        frames.append(NeRFaceFrame(file_path=file_path, transform_matrix=matrix, expression=expr, bbox=box))
    angle = meta.get("camera_angle_x")
    return NeRFaceSplit(
        camera_angle_x=0.0 if angle is None else jf.as_number(path, "camera_angle_x", angle, "an angle in radians"),
        intrinsics=_nerface_intrinsics(path, meta, nerface_image_path(root, frames[0].file_path)),
        frames=frames,
    )


# ----------------------------------------------------------------------------------------------
# AD-NeRF (audio driver)

ADNERF_SPLITS = ("train", "val")
ADNERF_BACKGROUND = Path("bc.jpg")
ADNERF_AUDIO = Path("aud.npy")
ADNERF_AUDIO_WAV = Path("aud.wav")
ADNERF_AUDIO_ALTERNATIVES = ("aud.npy", "aud_eo.npy", "aud_hu.npy")


@dataclass
class ADNeRFFrame:
    """One frame of an AD-NeRF ``transforms_<split>.json``."""

    img_id: int
    aud_id: int
    transform_matrix: Float[np.ndarray, "4 4"]
    """Camera-to-world; AD-NeRF stores its translation already divided by 10."""
    face_rect: Optional[Tuple[int, int, int, int]] = None
    """``[x, y, w, h]`` in pixels."""


@dataclass
class ADNeRFSplit:
    focal_len: float
    cx: float
    cy: float
    frames: List[ADNeRFFrame] = field(default_factory=list)


def adnerf_transforms_path(root: Path, split: str) -> Path:
    return root / f"transforms_{split}.json"


def adnerf_image_path(root: Path, img_id: int, folder: str = "com_imgs") -> Path:
    return root / folder / f"{img_id}.jpg"


def adnerf_mask_path(root: Path, img_id: int) -> Path:
    return root / "com_imgs" / "masks" / f"{img_id}.png"


def adnerf_parsing_path(root: Path, img_id: int) -> Path:
    return root / "parsing" / f"{img_id}.png"


def adnerf_split_indices(num_frames: int) -> Dict[str, List[int]]:
    """AD-NeRF's split: the first 10/11 of the frames train, the last 1/11 validate."""
    num_val = max(1, num_frames // 11)
    return {"train": list(range(num_frames - num_val)), "val": list(range(num_frames - num_val, num_frames))}


def write_adnerf_split(root: Path, split: str, data: ADNeRFSplit) -> Path:
    frames = []
    for fr in data.frames:
        entry: Dict[str, Any] = {
            "img_id": int(fr.img_id),
            "aud_id": int(fr.aud_id),
            "transform_matrix": np.asarray(fr.transform_matrix).tolist(),
        }
        if fr.face_rect is not None:
            entry["face_rect"] = [int(v) for v in fr.face_rect]
        frames.append(entry)
    path = adnerf_transforms_path(root, split)
    _write_json(path, {"focal_len": data.focal_len, "cx": data.cx, "cy": data.cy, "frames": frames})
    return path


def read_adnerf_split(root: Path, split: str) -> ADNeRFSplit:
    """Read a training/validation transforms file or a driving file (``focal_length``/``frame_id``)."""
    path = adnerf_transforms_path(root, split)
    return read_adnerf_transforms(path)


def read_adnerf_transforms(path: Path) -> ADNeRFSplit:
    """Parse an AD-NeRF transforms file; every field typed, or a FormatError naming it."""
    meta = jf.load_json_object(path)
    focal_key = "focal_len" if "focal_len" in meta else "focal_length"
    focal = jf.as_number(path, focal_key, jf.require(path, meta, focal_key), "a non-zero number of pixels")
    if focal == 0:
        raise FormatError(path, focal_key, "a non-zero number of pixels", "0")
    cx = jf.as_number(path, "cx", jf.require(path, meta, "cx"), "a number of pixels")
    cy = jf.as_number(path, "cy", jf.require(path, meta, "cy"), "a number of pixels")
    frames_raw = jf.as_list(path, "frames", jf.require(path, meta, "frames"))
    frames: List[ADNeRFFrame] = []
    for k, raw in enumerate(frames_raw):
        where = f"frames[{k}]."
        fr = jf.as_object(path, f"frames[{k}]", raw)
        id_key = "img_id" if "img_id" in fr else "frame_id"
        img_id = jf.as_integer(path, f"{where}{id_key}", jf.require(path, fr, id_key, where), minimum=0)
        # Negative ids are refused with the frame's name when they are resolved against aud.npy.
        aud_id = jf.as_integer(path, f"{where}aud_id", fr.get("aud_id", img_id))
        matrix = check_transform(path, f"{where}transform_matrix", jf.require(path, fr, "transform_matrix", where))
        rect = fr.get("face_rect")
        if rect is not None:
            x, y, w, h = (float(v) for v in jf.as_numbers(path, f"{where}face_rect", rect, 4))
            if min(x, y) < 0 or w <= 0 or h <= 0:
                raise FormatError(
                    path, f"{where}face_rect", "[x, y, w, h] in pixels, x, y >= 0, w, h > 0", jf.shown(rect)
                )
            rect = (int(x), int(y), int(w), int(h))
        frames.append(ADNeRFFrame(img_id=img_id, aud_id=aud_id, transform_matrix=matrix, face_rect=rect))
    return ADNeRFSplit(focal_len=focal, cx=cx, cy=cy, frames=frames)


AUDIO_CLAMP_LIMIT = 8
"""At most this many frames may point past the last audio window (released AD-NeRF subjects have a
few more video frames than DeepSpeech windows; the original clamps them). More is an error."""


def resolve_audio_ids(path: Path, aud_ids: Sequence[int], table_path: Path, num_windows: int) -> Tuple[List[int], int]:
    """Each frame's row of the audio table and how many trailing frames were clamped to the last one.

    A negative ``aud_id``, one more than :data:`AUDIO_CLAMP_LIMIT` windows past the end, or more than
    that many frames past the end is a FormatError naming the (first such) frame.
    """
    last = num_windows - 1
    past = [k for k, a in enumerate(aud_ids) if a > last]
    for k, a in enumerate(aud_ids):
        if a < 0:
            raise FormatError(path, f"frames[{k}].aud_id", f"a window of {table_path.name} (0..{last})", str(a))
        if a > last + AUDIO_CLAMP_LIMIT or (a > last and len(past) > AUDIO_CLAMP_LIMIT):
            raise FormatError(
                path,
                f"frames[{k}].aud_id",
                f"a window of {table_path} (0..{last}; at most {AUDIO_CLAMP_LIMIT} trailing frames past it are "
                "clamped, as AD-NeRF does)",
                f"{a} ({len(past)} frames past the last window, up to {max(aud_ids[j] for j in past)})",
            )
    return [min(a, last) for a in aud_ids], len(past)


def read_audio_features(path: Path) -> Float[np.ndarray, "N W C"]:
    """An AD-NeRF audio feature file: ``[N_frames, window, channels]`` (aud.npy is [N, 16, 29])."""
    if not path.is_file():
        raise FormatError(path, "<file>", "an audio feature .npy", "no such file")
    try:
        feats = np.load(path)
    except (OSError, ValueError) as err:
        raise FormatError(path, "<array>", "a readable .npy array", f"{type(err).__name__}: {err}") from None
    if feats.ndim != 3:
        raise FormatError(
            path, "<array>", "rank 3 [frames, window, channels], e.g. [N, 16, 29]", f"shape {feats.shape}"
        )
    if feats.shape[0] == 0:
        raise FormatError(path, "<array>", "at least one frame", f"shape {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise FormatError(path, "<array>", "finite numbers", "NaN or infinity")
    return feats.astype(np.float32)


def clamp_audio_index(aud_id: int, num_windows: int) -> int:
    """AD-NeRF's loader clamps ``aud_id`` to the last window."""
    return min(max(aud_id, 0), num_windows - 1)


def write_audio_features(path: Path, feats: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(feats, dtype=np.float32))


def detect_layout(root: Path) -> Layout:
    """NeRFace if ``transforms_train.json`` has ``intrinsics`` or ``camera_angle_x``; AD-NeRF with ``focal_len``."""
    path = root / "transforms_train.json"
    meta = jf.load_json_object(path)
    if "intrinsics" in meta or "camera_angle_x" in meta:
        return "nerface"
    if "focal_len" in meta or "focal_length" in meta:
        return "adnerf"
    raise FormatError(
        path, "intrinsics / focal_len", "'intrinsics' (NeRFace) or 'focal_len' (AD-NeRF)", f"keys {sorted(meta)}"
    )


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(r) for r in rows], axis=0)


# ----------------------------------------------------------------------------------------------
# AD-NeRF landmarks (``ori_imgs/<i>.lms``: 68 rows of "x y" in pixels)


def adnerf_landmarks_path(root: Path, img_id: int) -> Path:
    return root / "ori_imgs" / f"{img_id}.lms"


def write_landmarks(path: Path, points: np.ndarray) -> None:
    """Write 68 landmarks as AD-NeRF's ``.lms`` text (one "x y" row per point)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (68, 2) or not np.all(np.isfinite(pts)):
        raise FormatError(path, "<landmarks>", "68 finite (x, y) points", f"shape {pts.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x:.6f} {y:.6f}\n" for x, y in pts))


def read_landmarks(path: Path) -> Float[np.ndarray, "68 2"]:
    """An AD-NeRF ``.lms`` file as ``[68, 2]`` pixels; FormatError if missing or malformed."""
    if not path.is_file():
        raise FormatError(path, "<file>", "a .lms landmark file", "no such file")
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise FormatError(path, "<rows>", "rows of two numbers 'x y'", f"{type(err).__name__}: {err}") from None
    if pts.shape != (68, 2):
        raise FormatError(path, "<rows>", "68 rows of 'x y'", f"shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise FormatError(path, "<rows>", "finite numbers", "NaN or infinity")
    return pts
