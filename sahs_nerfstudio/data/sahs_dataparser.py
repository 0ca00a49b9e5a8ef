"""``sahs-data``: the NeRFace and AD-NeRF talking-head layouts as nerfstudio cameras.

Rays match the original loaders exactly: both cast through integer pixel coordinates
(``d = ((i - cx) / fx, -(j - cy) / fy, -1)``) while nerfstudio casts through pixel centres
(``i + 0.5``), so the principal point is shifted by half a pixel here and nowhere else.

Per-frame conditioning travels in ``Cameras.metadata`` (reaching ``ray_bundle.metadata`` per ray):

- ``driver``: the raw driving input, the 76-d expression or the flattened ``[W, C]`` audio window;
- ``pose``: the 6-d head-pose code (Euler angles + translation of the camera-to-world);
- ``frame_index``: the frame's index in its split; ``audio_index``: its clamped ``aud_id``;
- ``bg_projection``: a 3x3 matrix taking a world direction to homogeneous normalised image
  coordinates of this camera, so the model can look up the fixed background image for any ray;
- ``audio_neighbours`` (AD-NeRF): the audio-table rows AudioAttNet smooths the frame over, the frames
  at positions i-4..i+3 of its split, -1 (an all-zero window) outside it, as AD-NeRF's trainer;
- ``eye`` (AD-NeRF with an ``au.csv``): the frame's eye closure, 0 open .. 1 shut (``data/eye.py``).

Bounds (``near``/``far``) are depths along the optical axis (``models/collider.py`` makes them per-ray
distances); for AD-NeRF they come from ``HeadNeRF_config.txt``/``TorsoNeRF_config.txt`` when present
(``data/adnerf_config.py``), which also gives the validation stride ``testskip``. Images are read at the
cameras' size (``downscale_factor``) by ``data/frame_store.py``, which also decodes every mask once.
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

from sahs_nerfstudio.data import adnerf_config, formats, keys, validation
from sahs_nerfstudio.data import audio as audio_io
from sahs_nerfstudio.data import eye as eye_io
from sahs_nerfstudio.data.camera_geometry import background_projection, frustum_corners
from sahs_nerfstudio.data.frame_store import LabelSource, read_labels, resize_rgb
from sahs_nerfstudio.data.pose import pose_code

__all__ = ["LabelSource", "SAHSDataParser", "SAHSDataParserConfig", "read_labels"]

AUDIO_FROM_WAV = "wav"
"""``audio_features`` value: recompute the features from the subject's ``aud.wav`` with the project's extractor."""
ADNERF_FPS = 25.0
"""AD-NeRF's video frame rate (one audio window per frame)."""


@dataclass
class SAHSDataParserConfig(DataParserConfig):
    """Reads a NeRFace (expression-driven) or AD-NeRF (audio-driven) talking-head dataset."""

    _target: Type = field(default_factory=lambda: SAHSDataParser)
    data: Path = Path("data/synthetic/nerface")
    """Dataset root: the folder holding ``transforms_train.json``."""
    layout: Literal["auto", "nerface", "adnerf"] = "auto"
    """Which layout to read; ``auto`` detects it from ``transforms_train.json``."""
    audio_features: str = "aud.npy"
    """AD-NeRF audio features: a ``[N, W, C]`` file in the dataset root (``aud.npy`` [N,16,29] DeepSpeech,
    ``aud_eo.npy``, ``aud_hu.npy`` [N,2,1024], ...), or ``wav`` to recompute them from the subject's ``aud.wav``
    with the project's log-mel extractor (then any recording can drive the model: ``sahs-render --driver x.wav``)."""
    near: Optional[float] = None
    """Near bound, a depth along the optical axis; None: NeRFace 0.2; AD-NeRF the ``near`` of its
    ``HeadNeRF_config.txt``/``TorsoNeRF_config.txt``, else process_data.py's mean camera depth - 0.2."""
    far: Optional[float] = None
    """Far bound, a depth along the optical axis; None: NeRFace 0.8; AD-NeRF the config file's ``far``, else
    process_data.py's mean camera depth + 0.4."""
    testskip: Optional[int] = None
    """AD-NeRF val/test frames: every ``testskip``-th validation frame (0 or 1: all), as AD-NeRF evaluates;
    None: the config file's ``testskip``, else 8 (AD-NeRF's default). NeRFace splits are read whole."""
    downscale_factor: int = 1
    """Divide the image width and height by this (NeRFace's ``half_res`` is 2): intrinsics scaled, images
    area-averaged, masks nearest-neighbour and the background resized alike when they are read."""
    load_semantics: bool = True
    """Read the 12-class masks (or AD-NeRF's 4-group parsing when those are absent)."""
    scene_box: Literal["frustum", "cameras"] = "cameras"
    """Box the grid fields (``sahs-fast``'s hash grids and planes, the proposal grids) cover. ``frustum``: the
    bounding box of every camera's view between ``near`` and ``far`` (nothing outside it is ever sampled),
    within ``cameras``; ``cameras``: a cube of half-side the largest camera distance from the origin."""
    scene_radius: Optional[float] = None
    """Override: a cube of this half-side around the origin for the scene box (world units)."""
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
    audio_neighbours: Tuple[int, ...] = ()
    """Audio-table rows of the smoothing window (positions i-4..i+3 in the split; -1 = zero window)."""
    eye: Optional[float] = None
    """Eye closure (0 open, 1 shut) from the dataset's ``au.csv``; None without one."""


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
    audio_provenance: Optional[str] = None
    """Which extractor made ``audio_table`` (train split only; see ``data/audio.py``)."""
    principal_fraction: Optional[Tuple[float, float]] = None
    """NeRFace's ``cx, cy`` as fractions: applied to the (possibly downscaled) size, as its ``half_res``."""


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
        principal_fraction=(cx_frac, cy_frac),
    )


def _audio_table(root: Path, config: SAHSDataParserConfig, with_provenance: bool) -> Tuple[np.ndarray, Optional[str]]:
    """The ``[N, W, C]`` feature table and (when asked) which extractor made it."""
    wav = root / formats.ADNERF_AUDIO_WAV
    if config.audio_features == AUDIO_FROM_WAV:
        table = audio_io.wav_to_features(wav, fps=ADNERF_FPS)
        return table, audio_io.project_extractor_description(ADNERF_FPS) if with_provenance else None
    path = root / config.audio_features
    table = formats.read_audio_features(path)
    return table, audio_io.feature_provenance(table, path, wav, ADNERF_FPS) if with_provenance else None


def _testskip(root: Path, config: SAHSDataParserConfig) -> int:
    """AD-NeRF's validation stride: the flag, else the config file's, else 8; 0 means every frame."""
    skip = config.testskip
    if skip is None:
        skip = adnerf_config.read_run_config(root).testskip
    if skip is None:
        skip = adnerf_config.DEFAULT_TESTSKIP
    if skip < 0:
        raise formats.FormatError(root, "testskip", "an integer >= 0", str(skip))
    return max(int(skip), 1)


def _read_adnerf(root: Path, split: str, config: SAHSDataParserConfig) -> SplitRecord:
    data = formats.read_adnerf_split(root, split)
    table, provenance = _audio_table(root, config, with_provenance=split == "train")
    first = formats.adnerf_image_path(root, data.frames[0].img_id, config.adnerf_image_folder)
    width, height = formats.image_size(first, "frames[0].img_id")
    transforms = formats.adnerf_transforms_path(root, split)
    validation.check_pixel_principal_point(transforms, data.cx, data.cy, (width, height))
    table_path = root / (formats.ADNERF_AUDIO_WAV if config.audio_features == AUDIO_FROM_WAV else config.audio_features)
    audio_rows, clamped = formats.resolve_audio_ids(
        transforms, [fr.aud_id for fr in data.frames], table_path, table.shape[0]
    )
    validation.report_clamped_audio(transforms, table_path, clamped, table.shape[0])
    frames = []
    for fr, aud in zip(data.frames, audio_rows, strict=True):
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
    # Smoothing windows over positions in the whole split (AD-NeRF's trainer: the training set), then
    # AD-NeRF's evaluation stride on the validation split.
    positions = audio_io.smoothing_positions(torch.arange(len(frames)), len(frames)).tolist()
    for fr, pos in zip(frames, positions, strict=True):
        fr.audio_neighbours = tuple(frames[p].audio_index if p >= 0 else -1 for p in pos)
    eyes = eye_io.read_eye_track(root, [fr.img_id for fr in data.frames])
    if eyes is not None:
        for fr, closure in zip(frames, eyes.tolist(), strict=True):
            fr.eye = closure
    if split != "train":
        frames = frames[:: _testskip(root, config)]
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
        audio_provenance=provenance,
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
        if layout == "nerface":
            validation.check_nerface_code_widths(root)
        rec = self.read_split(split)
        # Headers only: images and masks are decoded once, into the frame cache (which counts unmatched pixels).
        validation.check_frame_files(
            [f.image for f in rec.frames],
            [f.label_path for f in rec.frames],
            (rec.width, rec.height),
            self.config.load_semantics,
        )

        c2w = torch.from_numpy(np.stack([f.c2w for f in rec.frames])).float()[:, :3, :4]
        n = len(rec.frames)

        def col(v: float) -> torch.Tensor:
            return torch.full((n, 1), float(v))

        size, fx, fy, cx_int, cy_int = self._intrinsics(rec)
        # Shift by half a pixel so nerfstudio's pixel-centre rays equal the originals' integer rays.
        cx, cy = cx_int + 0.5, cy_int + 0.5
        width, height = col(size[0]), col(size[1])
        drivers = torch.from_numpy(np.stack([f.driver for f in rec.frames])).float()
        metadata = {
            keys.DRIVER: drivers,
            keys.POSE: pose_code(c2w),
            keys.FRAME_INDEX: torch.arange(n, dtype=torch.float32)[:, None],
            keys.AUDIO_INDEX: torch.tensor([[float(f.audio_index)] for f in rec.frames]),
            keys.BG_PROJECTION: background_projection(c2w, col(fx), col(fy), col(cx), col(cy), width, height),
        }
        if rec.driver_kind == "audio":
            metadata[keys.AUDIO_NEIGHBOURS] = torch.tensor([list(f.audio_neighbours) for f in rec.frames]).float()
        if all(f.eye is not None for f in rec.frames):
            metadata[keys.EYE] = torch.tensor([[f.eye] for f in rec.frames], dtype=torch.float32)
        cameras = Cameras(
            camera_to_worlds=c2w,
            fx=col(fx),
            fy=col(fy),
            cx=col(cx),
            cy=col(cy),
            width=width.long(),
            height=height.long(),
            camera_type=CameraType.PERSPECTIVE,
            times=torch.linspace(0.0, 1.0, n)[:, None] if n > 1 else torch.zeros(1, 1),
            metadata=metadata,
        )

        near, far, bounds_source = self._near_far(layout)
        scene_box = SceneBox(aabb=self._scene_aabb(c2w, (col(fx), col(fy), col(cx), col(cy), width, height), near, far))
        background = formats.read_rgb(rec.background, "background")
        if background.shape[:2] != (rec.height, rec.width):
            raise formats.FormatError(
                rec.background,
                "<image size>",
                f"{rec.width}x{rec.height} like the frames",
                f"{background.shape[1]}x{background.shape[0]}",
            )
        background = resize_rgb(background, size)
        rects = torch.tensor([f.face_rect if f.face_rect is not None else (0.0, 0.0, 1.0, 1.0) for f in rec.frames])
        out_meta: Dict[str, object] = {
            "layout": layout,
            "driver_kind": rec.driver_kind,
            "driver_dim": int(drivers.shape[1]),
            "drivers": drivers,
            "audio_indices": metadata[keys.AUDIO_INDEX],
            "audio_window": None if rec.audio_table is None else tuple(rec.audio_table.shape[1:]),
            "audio_table": None if rec.audio_table is None else torch.from_numpy(rec.audio_table),
            "background": torch.from_numpy(background.astype(np.float32) / 255.0),
            "near": near,
            "far": far,
            "bounds_source": bounds_source,
            "audio_provenance": rec.audio_provenance,
            "audio_neighbours": metadata.get(keys.AUDIO_NEIGHBOURS),
            keys.EYE: metadata.get(keys.EYE),
            "downscale_factor": int(self.config.downscale_factor),
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

    def _intrinsics(self, rec: SplitRecord) -> Tuple[Tuple[int, int], float, float, float, float]:
        """Size, focal lengths and integer-convention principal point after ``downscale_factor``.

        NeRFace (its ``half_res``): fx, fy divided, cx, cy fractions of the new size. AD-NeRF (pixels): the
        principal point moves with the pixel grid, ``cx' + 0.5 = (cx + 0.5) * W' / W``.
        """
        factor = int(self.config.downscale_factor)
        if factor < 1:
            raise formats.FormatError(self.config.data, "downscale_factor", "an integer >= 1", str(factor))
        width, height = rec.width // factor, rec.height // factor
        if width < 1 or height < 1:
            raise formats.FormatError(
                self.config.data, "downscale_factor", f"at most {min(rec.width, rec.height)}", str(factor)
            )
        fx, fy = rec.fx / factor, rec.fy / factor
        if rec.principal_fraction is not None:
            cx, cy = rec.principal_fraction[0] * width, rec.principal_fraction[1] * height
        else:
            cx = (rec.cx + 0.5) * width / rec.width - 0.5
            cy = (rec.cy + 0.5) * height / rec.height - 0.5
        return (width, height), fx, fy, cx, cy

    def _scene_aabb(
        self,
        c2w: Float[torch.Tensor, "N 3 4"],
        intrinsics: Tuple[torch.Tensor, ...],
        near: float,
        far: float,
    ) -> Float[torch.Tensor, "2 3"]:
        """``[[min xyz], [max xyz]]`` of the scene box the config asks for."""
        if self.config.scene_radius is not None:
            r = self.config.scene_radius
            if not (math.isfinite(r) and r > 0):
                raise formats.FormatError(self.config.data, "--scene-radius", "a positive number", str(r))
            return torch.tensor([[-r] * 3, [r] * 3], dtype=torch.float32)
        radius = float(c2w[:, :3, 3].norm(dim=-1).max())
        cube = torch.tensor([[-radius] * 3, [radius] * 3], dtype=torch.float32)
        if self.config.scene_box == "cameras":
            return cube
        flat = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in intrinsics]
        corners = frustum_corners(c2w[:, :3].float(), *flat, near=near, far=far)
        box = torch.stack([corners.amin(dim=(0, 1)), corners.amax(dim=(0, 1))])
        return torch.stack([torch.maximum(box[0], cube[0]), torch.minimum(box[1], cube[1])])

    def _near_far(self, layout: formats.Layout) -> Tuple[float, float, str]:
        """Bounds (depths along the optical axis) and where they came from; flags override."""
        root = self.config.data
        if layout == "nerface":
            near, far, source = 0.2, 0.8, "NeRFace default"
        else:
            run_cfg = adnerf_config.read_run_config(root)
            near, far = run_cfg.near, run_cfg.far
            source = run_cfg.path.name if run_cfg.path is not None else ""
            if near is None or far is None:
                # process_data.py: the mean depth of the origin over all frames (train and val).
                poses = [fr.transform_matrix for fr in formats.read_adnerf_split(root, "train").frames]
                if formats.adnerf_transforms_path(root, "val").is_file():
                    poses += [fr.transform_matrix for fr in formats.read_adnerf_split(root, "val").frames]
                formula = adnerf_config.bounds_from_poses(np.stack(poses))
                near = formula[0] if near is None else near
                far = formula[1] if far is None else far
                source = (source + " + " if source else "") + "process_data.py mean depth -0.2/+0.4"
        if self.config.near is not None or self.config.far is not None:
            source += " (overridden by --near/--far)"
        near = self.config.near if self.config.near is not None else near
        far = self.config.far if self.config.far is not None else far
        if not (0 <= near < far) or not math.isfinite(far):
            raise formats.FormatError(root, "near/far", "0 <= near < far", f"near={near}, far={far}")
        return float(near), float(far), source
