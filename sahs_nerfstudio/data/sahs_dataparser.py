"""``sahs-data``: the NeRFace and AD-NeRF talking-head layouts as nerfstudio cameras.

Rays match the original loaders exactly: both cast through integer pixel coordinates
(``d = ((i - cx) / fx, -(j - cy) / fy, -1)``) while nerfstudio casts through pixel centres
(``i + 0.5``), so the principal point is shifted by half a pixel here and nowhere else.

Per-frame conditioning travels in ``Cameras.metadata`` (reaching ``ray_bundle.metadata`` per ray):

- ``driver``: the raw driving input, the 76-d expression or the flattened ``[W, C]`` audio window;
- ``pose``: the 6-d head-pose code (Euler angles + translation of the camera-to-world);
- ``frame_index``: the frame's index in its split; ``audio_index``: its clamped ``aud_id``;
- ``bg_projection``: a 3x3 matrix taking a world direction to homogeneous normalised image
  coordinates of this camera, so the model can look up the fixed background image for any ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image

from sahs_nerfstudio.data import formats
from sahs_nerfstudio.data.pose import pose_code
from sahs_nerfstudio.data.semantics import DecodedMask, decode_adnerf_parsing, decode_mask

# Where a semantic label image comes from, which decides how its colours are read.
LabelSource = Literal["palette", "adnerf_parsing"]


@dataclass
class SAHSDataParserConfig(DataParserConfig):
    """Reads a NeRFace (expression-driven) or AD-NeRF (audio-driven) talking-head dataset."""

    _target: Type = field(default_factory=lambda: SAHSDataParser)
    data: Path = Path("data/synthetic/nerface")
    """Dataset root: the folder holding ``transforms_train.json``."""
    layout: Literal["auto", "nerface", "adnerf"] = "auto"
    """Which layout to read; ``auto`` detects it from ``transforms_train.json``."""
    audio_features: str = "aud.npy"
    """AD-NeRF audio feature file in the dataset root (``aud.npy`` [N,16,29], ``aud_eo.npy``, ``aud_hu.npy``)."""
    near: Optional[float] = None
    """Near plane; None uses the layout's default (NeRFace 0.2; AD-NeRF mean camera distance - 0.2)."""
    far: Optional[float] = None
    """Far plane; None uses the layout's default (NeRFace 0.8; AD-NeRF mean camera distance + 0.4)."""
    load_semantics: bool = True
    """Read the 12-class masks (or AD-NeRF's 4-group parsing when those are absent)."""
    adnerf_image_folder: str = "com_imgs"
    """AD-NeRF frames to train on: ``com_imgs`` (background replaced by ``bc.jpg``) as AD-NeRF does."""


@dataclass
class FrameRecord:
    """One frame of either layout, in the terms the rest of this module needs."""

    image: Path
    c2w: Float[np.ndarray, "4 4"]
    driver: Float[np.ndarray, " D"]
    audio_index: int
    face_rect: Optional[Tuple[float, float, float, float]]
    """``(x0, y0, x1, y1)`` as fractions of width and height."""
    label_path: Optional[Path]
    label_source: LabelSource


@dataclass
class SplitRecord:
    frames: List[FrameRecord]
    fx: float
    fy: float
    cx: float
    """Principal point in original integer-pixel convention (pixels)."""
    cy: float
    width: int
    height: int
    background: Path
    driver_kind: Literal["expression", "audio"]
    audio_table: Optional[np.ndarray] = None


def _fraction_rect_from_bbox(bbox: Tuple[float, float, float, float]) -> Tuple[float, float, float, float]:
    h_min, h_max, w_min, w_max = bbox
    return (w_min, h_min, w_max, h_max)


def _read_nerface(root: Path, split: str, load_semantics: bool) -> SplitRecord:
    data = formats.read_nerface_split(root, split)
    first = formats.nerface_image_path(root, data.frames[0].file_path)
    width, height = formats.image_size(first, "frames[0].file_path")
    fx, fy, cx_frac, cy_frac = data.intrinsics
    frames = []
    for k, fr in enumerate(data.frames):
        mask = formats.nerface_mask_path(root, fr.file_path)
        frames.append(
            FrameRecord(
                image=formats.nerface_image_path(root, fr.file_path),
                c2w=fr.transform_matrix,
                driver=fr.expression,
                audio_index=k,
                face_rect=None if fr.bbox is None else _fraction_rect_from_bbox(fr.bbox),
                label_path=mask if (load_semantics and mask.is_file()) else None,
                label_source="palette",
            )
        )
    return SplitRecord(
        frames=frames,
        fx=fx,
        fy=fy,
        cx=cx_frac * width,
        cy=cy_frac * height,
        width=width,
        height=height,
        background=root / formats.NERFACE_BACKGROUND,
        driver_kind="expression",
    )


def _read_adnerf(root: Path, split: str, config: SAHSDataParserConfig) -> SplitRecord:
    data = formats.read_adnerf_split(root, split)
    audio_path = root / config.audio_features
    table = formats.read_audio_features(audio_path)
    first = formats.adnerf_image_path(root, data.frames[0].img_id, config.adnerf_image_folder)
    width, height = formats.image_size(first, "frames[0].img_id")
    frames = []
    for fr in data.frames:
        aud = formats.clamp_audio_index(fr.aud_id, table.shape[0])
        label_path: Optional[Path] = None
        source: LabelSource = "palette"
        if config.load_semantics:
            mask = formats.adnerf_mask_path(root, fr.img_id)
            parsing = formats.adnerf_parsing_path(root, fr.img_id)
            if mask.is_file():
                label_path = mask
            elif parsing.is_file():
                label_path, source = parsing, "adnerf_parsing"
        rect = None
        if fr.face_rect is not None:
            x, y, w, h = fr.face_rect
            rect = (x / width, y / height, (x + w) / width, (y + h) / height)
        frames.append(
            FrameRecord(
                image=formats.adnerf_image_path(root, fr.img_id, config.adnerf_image_folder),
                c2w=fr.transform_matrix,
                driver=table[aud].reshape(-1),
                audio_index=aud,
                face_rect=rect,
                label_path=label_path,
                label_source=source,
            )
        )
    return SplitRecord(
        frames=frames,
        fx=data.focal_len,
        fy=data.focal_len,
        cx=data.cx,
        cy=data.cy,
        width=width,
        height=height,
        background=root / formats.ADNERF_BACKGROUND,
        driver_kind="audio",
        audio_table=table,
    )


def read_labels(path: Path, source: LabelSource) -> DecodedMask:
    """Decode a label image into class indices (IGNORE_LABEL where no palette colour matches)."""
    rgb = formats.read_rgb(path, "<mask>")
    return decode_mask(rgb) if source == "palette" else decode_adnerf_parsing(rgb)


def background_projection(
    c2w: Float[torch.Tensor, "N 3 4"],
    fx: Float[torch.Tensor, "N 1"],
    fy: Float[torch.Tensor, "N 1"],
    cx: Float[torch.Tensor, "N 1"],
    cy: Float[torch.Tensor, "N 1"],
    width: Float[torch.Tensor, "N 1"],
    height: Float[torch.Tensor, "N 1"],
) -> Float[torch.Tensor, "N 9"]:
    """Matrices M with ``(M d)[:2] / (M d)[2]`` = the normalised image coordinate a world direction d hits.

    nerfstudio's camera: ``d_cam = ((u - cx)/fx, -(v - cy)/fy, -1)`` (up to scale), so
    ``q = diag(1, -1, -1) R^T d`` gives ``u = cx + fx q_x / q_z``; dividing by the image size makes
    the coordinate independent of the rendering resolution.
    """
    n = c2w.shape[0]
    k = torch.zeros(n, 3, 3, dtype=c2w.dtype, device=c2w.device)
    k[:, 0, 0] = (fx / width)[:, 0]
    k[:, 0, 2] = (cx / width)[:, 0]
    k[:, 1, 1] = (fy / height)[:, 0]
    k[:, 1, 2] = (cy / height)[:, 0]
    k[:, 2, 2] = 1.0
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=c2w.dtype, device=c2w.device))
    m = k @ flip @ c2w[:, :3, :3].transpose(-1, -2)
    return m.reshape(n, 9)


def cameras_background_projection(cameras: Cameras) -> Float[torch.Tensor, "N 9"]:
    """:func:`background_projection` for every camera of a nerfstudio ``Cameras``."""
    cams = cameras.flatten() if cameras.shape else cameras.reshape((1,))
    return background_projection(
        cams.camera_to_worlds,
        cams.fx,
        cams.fy,
        cams.cx,
        cams.cy,
        cams.width.to(cams.fx.dtype),
        cams.height.to(cams.fx.dtype),
    )


@dataclass
class SAHSDataParser(DataParser):
    """Parses either talking-head layout into nerfstudio cameras with per-frame conditioning."""

    config: SAHSDataParserConfig
    includes_time: bool = True

    def layout(self) -> formats.Layout:
        if self.config.layout != "auto":
            return self.config.layout
        return formats.detect_layout(self.config.data)

    def _split_name(self, layout: formats.Layout, split: str) -> str:
        # AD-NeRF defines only train and val; ns-eval asks for "test", which is AD-NeRF's val.
        if layout == "adnerf" and split == "test":
            return "val"
        return split

    def read_split(self, split: str) -> SplitRecord:
        layout = self.layout()
        name = self._split_name(layout, split)
        if layout == "nerface":
            return _read_nerface(self.config.data, name, self.config.load_semantics)
        return _read_adnerf(self.config.data, name, self.config)

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        root = self.config.data
        if not root.is_dir():
            raise formats.FormatError(root, "<data>", "a dataset folder", "no such folder")
        layout = self.layout()
        rec = self.read_split(split)
        num_unmatched = self._check_images(rec)
        if num_unmatched:
            CONSOLE.print(
                f"[yellow]sahs-data: {num_unmatched} mask pixels in {root} ({split}) match no palette colour "
                "(e.g. JPEG noise); they are ignored by the semantic loss."
            )

        c2w = torch.from_numpy(np.stack([f.c2w for f in rec.frames])).float()[:, :3, :4]
        n = len(rec.frames)

        def col(v: float) -> torch.Tensor:
            return torch.full((n, 1), float(v))

        # Shift by half a pixel so nerfstudio's pixel-centre rays equal the originals' integer rays.
        cx, cy = rec.cx + 0.5, rec.cy + 0.5
        width, height = col(rec.width), col(rec.height)
        drivers = torch.from_numpy(np.stack([f.driver for f in rec.frames])).float()
        metadata = {
            "driver": drivers,
            "pose": pose_code(c2w),
            "frame_index": torch.arange(n, dtype=torch.float32)[:, None],
            "audio_index": torch.tensor([[float(f.audio_index)] for f in rec.frames]),
            "bg_projection": background_projection(c2w, col(rec.fx), col(rec.fy), col(cx), col(cy), width, height),
        }
        cameras = Cameras(
            camera_to_worlds=c2w,
            fx=col(rec.fx),
            fy=col(rec.fy),
            cx=col(cx),
            cy=col(cy),
            width=width.long(),
            height=height.long(),
            camera_type=CameraType.PERSPECTIVE,
            times=torch.linspace(0.0, 1.0, n)[:, None] if n > 1 else torch.zeros(1, 1),
            metadata=metadata,
        )

        near, far = self._near_far(layout, c2w)
        radius = float(c2w[:, :3, 3].norm(dim=-1).max())
        scene_box = SceneBox(aabb=torch.tensor([[-radius] * 3, [radius] * 3], dtype=torch.float32))
        background = formats.read_rgb(rec.background, "background")
        if background.shape[:2] != (rec.height, rec.width):
            raise formats.FormatError(
                rec.background,
                "<image size>",
                f"{rec.width}x{rec.height} like the frames",
                f"{background.shape[1]}x{background.shape[0]}",
            )
        rects = torch.tensor([f.face_rect if f.face_rect is not None else (0.0, 0.0, 1.0, 1.0) for f in rec.frames])
        out_meta: Dict[str, object] = {
            "layout": layout,
            "driver_kind": rec.driver_kind,
            "driver_dim": int(drivers.shape[1]),
            "drivers": drivers,
            "audio_indices": metadata["audio_index"],
            "audio_window": None if rec.audio_table is None else tuple(rec.audio_table.shape[1:]),
            "audio_table": None if rec.audio_table is None else torch.from_numpy(rec.audio_table),
            "background": torch.from_numpy(background.astype(np.float32) / 255.0),
            "near": near,
            "far": far,
            "face_rects": rects,
            "label_paths": [f.label_path for f in rec.frames],
            "label_sources": [f.label_source for f in rec.frames],
            "has_semantics": all(f.label_path is not None for f in rec.frames),
        }
        return DataparserOutputs(
            image_filenames=[f.image for f in rec.frames],
            cameras=cameras,
            scene_box=scene_box,
            metadata=out_meta,
        )

    def _near_far(self, layout: formats.Layout, c2w: torch.Tensor) -> Tuple[float, float]:
        if layout == "nerface":
            near, far = 0.2, 0.8
        else:
            # AD-NeRF: the mean camera distance to the origin, -0.2 / +0.4.
            dist = float(c2w[:, :3, 3].norm(dim=-1).mean())
            near, far = dist - 0.2, dist + 0.4
        near = self.config.near if self.config.near is not None else near
        far = self.config.far if self.config.far is not None else far
        if not (0 <= near < far) or not math.isfinite(far):
            raise formats.FormatError(self.config.data, "near/far", "0 <= near < far", f"near={near}, far={far}")
        return near, far

    def _check_images(self, rec: SplitRecord) -> int:
        """Every image readable and of one size, every mask of that size; returns unmatched mask pixels."""
        unmatched = 0
        for k, fr in enumerate(rec.frames):
            size = formats.image_size(fr.image, f"frames[{k}] image")
            if size != (rec.width, rec.height):
                raise formats.FormatError(
                    fr.image, "<image size>", f"{rec.width}x{rec.height} like frame 0", f"{size[0]}x{size[1]}"
                )
            if fr.label_path is not None:
                msize = formats.image_size(fr.label_path, f"frames[{k}] mask")
                if msize != size:
                    raise formats.FormatError(
                        fr.label_path, "<mask size>", f"{size[0]}x{size[1]} like its image", f"{msize[0]}x{msize[1]}"
                    )
                unmatched += read_labels(fr.label_path, fr.label_source).num_unmatched
        return unmatched


def load_label_tensor(path: Path, source: LabelSource, scale_factor: float = 1.0) -> torch.Tensor:
    """Labels as a ``[H, W, 1]`` long tensor, resized by nearest neighbour with the image's scale factor."""
    labels = read_labels(path, source).labels
    if scale_factor != 1.0:
        h, w = labels.shape
        size = (int(w * scale_factor), int(h * scale_factor))
        # Shift labels by one so IGNORE_LABEL (-1) survives as a valid uint8 value.
        img = Image.fromarray((labels + 1).astype(np.uint8)).resize(size, resample=Image.Resampling.NEAREST)
        labels = np.asarray(img).astype(np.int64) - 1
    return torch.from_numpy(labels)[..., None]
