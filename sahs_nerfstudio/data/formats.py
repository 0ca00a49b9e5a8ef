"""Reading and writing the NeRFace and AD-NeRF dataset layouts.

Every rule of the two formats (file names, JSON fields, pixel conventions) lives here once: the
synthetic subject writes through the ``write_*`` functions and the dataparser reads through the
``read_*`` functions, so the two cannot drift apart. Readers validate what they read and raise
:class:`FormatError` naming the file, the field, what was expected and what was found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Float
from PIL import Image

Layout = Literal["nerface", "adnerf"]


class FormatError(ValueError):
    """A dataset file does not hold what its format says it should."""

    def __init__(self, path: Path | str, field_name: str, expected: str, found: str) -> None:
        self.path = Path(path)
        self.field_name = field_name
        super().__init__(f"{path}: field '{field_name}': expected {expected}, found {found}")


# ----------------------------------------------------------------------------------------------
# Shared checks


def _load_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FormatError(path, "<file>", "a JSON file", "no such file")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FormatError(path, "<file>", "valid JSON", f"{type(err).__name__}: {err}") from None


def _require(path: Path, obj: Dict[str, Any], key: str, where: str = "") -> Any:
    if key not in obj:
        raise FormatError(path, f"{where}{key}", "the field to be present", "it missing")
    return obj[key]


def check_transform(path: Path, field_name: str, value: Any) -> Float[np.ndarray, "4 4"]:
    """A finite, rigid (rotation + translation) 4x4 camera-to-world matrix, or a FormatError."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(path, field_name, "a 4x4 matrix of numbers", repr(value)[:60]) from None
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


def image_size(path: Path, field_name: str) -> Tuple[int, int]:
    """(width, height) of an image, reading only its header; FormatError if missing or unreadable."""
    if not path.is_file():
        raise FormatError(path, field_name, "an image file", "no such file")
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError) as err:
        raise FormatError(path, field_name, "a readable image", f"{type(err).__name__}: {err}") from None


def read_rgb(path: Path, field_name: str = "<image>") -> np.ndarray:
    """An image as uint8 R, G, B; FormatError if missing or unreadable."""
    image_size(path, field_name)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise FormatError(path, field_name, "a readable image", f"{type(err).__name__}: {err}") from None


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


def read_nerface_split(root: Path, split: str) -> NeRFaceSplit:
    path = nerface_transforms_path(root, split)
    meta = _load_json(path)
    intr = meta.get("intrinsics")
    if intr is None:
        raise FormatError(path, "intrinsics", "[fx, fy, cx, cy]", "it missing")
    if not (isinstance(intr, list) and len(intr) == 4 and all(isinstance(v, (int, float)) for v in intr)):
        raise FormatError(path, "intrinsics", "4 numbers [fx, fy, cx, cy]", repr(intr)[:80])
    if not all(np.isfinite(intr)) or intr[0] == 0 or intr[1] == 0:
        raise FormatError(path, "intrinsics", "finite numbers with non-zero fx, fy", repr(intr))
    frames_raw = _require(path, meta, "frames")
    if not isinstance(frames_raw, list) or not frames_raw:
        raise FormatError(path, "frames", "a non-empty list", repr(frames_raw)[:60])
    frames: List[NeRFaceFrame] = []
    expr_len: Optional[int] = None
    for k, fr in enumerate(frames_raw):
        where = f"frames[{k}]."
        file_path = _require(path, fr, "file_path", where)
        matrix = check_transform(path, f"{where}transform_matrix", _require(path, fr, "transform_matrix", where))
        expr = np.asarray(_require(path, fr, "expression", where), dtype=np.float64)
        if expr.ndim != 1:
            raise FormatError(path, f"{where}expression", "a flat list of numbers", f"shape {expr.shape}")
        if expr_len is None:
            expr_len = expr.shape[0]
        elif expr.shape[0] != expr_len:
            raise FormatError(
                path, f"{where}expression", f"{expr_len} values like frames[0]", f"{expr.shape[0]} values"
            )
        if not np.all(np.isfinite(expr)):
            raise FormatError(path, f"{where}expression", "finite numbers", "NaN or infinity")
        bbox = fr.get("bbox")
        if bbox is not None:
            if not (isinstance(bbox, list) and len(bbox) == 4):
                raise FormatError(path, f"{where}bbox", "[h_min, h_max, w_min, w_max]", repr(bbox)[:60])
            bbox = (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
        frames.append(NeRFaceFrame(file_path=file_path, transform_matrix=matrix, expression=expr, bbox=bbox))
    return NeRFaceSplit(
        camera_angle_x=float(meta.get("camera_angle_x", 0.0)),
        intrinsics=(float(intr[0]), float(intr[1]), float(intr[2]), float(intr[3])),
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
    meta = _load_json(path)
    focal_key = "focal_len" if "focal_len" in meta else "focal_length"
    focal = _require(path, meta, focal_key)
    if not isinstance(focal, (int, float)) or not np.isfinite(focal) or focal == 0:
        raise FormatError(path, focal_key, "a non-zero number of pixels", repr(focal))
    cx = _require(path, meta, "cx")
    cy = _require(path, meta, "cy")
    frames_raw = _require(path, meta, "frames")
    if not isinstance(frames_raw, list) or not frames_raw:
        raise FormatError(path, "frames", "a non-empty list", repr(frames_raw)[:60])
    frames: List[ADNeRFFrame] = []
    for k, fr in enumerate(frames_raw):
        where = f"frames[{k}]."
        id_key = "img_id" if "img_id" in fr else "frame_id"
        img_id = int(_require(path, fr, id_key, where))
        aud_id = int(fr.get("aud_id", img_id))
        matrix = check_transform(path, f"{where}transform_matrix", _require(path, fr, "transform_matrix", where))
        rect = fr.get("face_rect")
        if rect is not None:
            if not (isinstance(rect, list) and len(rect) == 4):
                raise FormatError(path, f"{where}face_rect", "[x, y, w, h] in pixels", repr(rect)[:60])
            rect = (int(rect[0]), int(rect[1]), int(rect[2]), int(rect[3]))
        frames.append(ADNeRFFrame(img_id=img_id, aud_id=aud_id, transform_matrix=matrix, face_rect=rect))
    return ADNeRFSplit(focal_len=float(focal), cx=float(cx), cy=float(cy), frames=frames)


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
    """NeRFace if there is a ``transforms_train.json`` with ``intrinsics``; AD-NeRF with ``focal_len``."""
    path = root / "transforms_train.json"
    meta = _load_json(path)
    if "intrinsics" in meta:
        return "nerface"
    if "focal_len" in meta or "focal_length" in meta:
        return "adnerf"
    raise FormatError(
        path, "intrinsics / focal_len", "'intrinsics' (NeRFace) or 'focal_len' (AD-NeRF)", f"keys {sorted(meta)}"
    )


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(r) for r in rows], axis=0)
